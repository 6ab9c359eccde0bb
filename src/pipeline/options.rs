//! The job options of the original web form (DOMAIN.md, "Job options"), with their names kept.
//!
//! Options travel as JSON in the job row, as TOML tables in routing rules and as form fields in the
//! portal; all three deserialize into [`JobOptions`], which rejects unknown names so that a typo in
//! a routing rule fails at start-up instead of silently running with defaults.

use serde::{Deserialize, Serialize};

use super::label_map::LabelMap;
use super::models::Side;
use crate::volume::{Echo, Plane, Selection};

/// Which neural shape model(s) to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NsmType {
    /// The model fitted to bone and cartilage surfaces together (the original's default).
    #[default]
    BoneAndCart,
    /// The bone-only model.
    BoneOnly,
    /// Both models.
    Both,
}

/// Options of one job. Missing fields take the original pipeline's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobOptions {
    /// Model name from the registry; `None` means the registry's default model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segmentation_model: Option<String>,
    /// Run the neural-shape-model analysis.
    pub perform_nsm: bool,
    /// Which NSM(s) to fit.
    pub nsm_type: NsmType,
    /// Gaussian variance (mm²) applied before the cartilage surface is extracted, 0–2.
    pub cartilage_smoothing: f64,
    /// kneenode's addition for multi-echo series: which echo to analyse (a number, or "rss" for
    /// the root sum of squares of the echoes). Unset: the series must hold one echo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<Echo>,
    /// kneenode's addition for series that mix orientations: which plane to analyse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plane: Option<Plane>,
    /// kneenode's addition for models trained on one side only: which knee the image shows
    /// (`"left"` or `"right"`), overriding the DICOM series' laterality. Unset: the laterality
    /// the series states, else such a model tries both sides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    /// kneenode's addition for research users: the input is an existing segmentation (a NIfTI
    /// or NRRD label volume), numbered as this map says. Segmentation is skipped; meshes,
    /// thickness and NSM run on the given labels. Unset: the input is an MR image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_map: Option<LabelMap>,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            segmentation_model: None,
            perform_nsm: true,
            nsm_type: NsmType::BoneAndCart,
            cartilage_smoothing: 0.3125,
            echo: None,
            plane: None,
            side: None,
            label_map: None,
        }
    }
}

/// An option value outside its allowed range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// `cartilage_smoothing` is not a finite number in 0–2.
    #[error("cartilage_smoothing must be between 0 and 2 (mm²), got {0}")]
    CartilageSmoothing(f64),
    /// `segmentation_model` is empty or has characters a model name cannot have.
    #[error("segmentation_model {0:?} is not a valid model name")]
    ModelName(String),
    /// `label_map` has no tissue, a tissue on 0, or two tissues on one value.
    #[error("label_map: {0}")]
    LabelMap(String),
}

impl JobOptions {
    /// Checks ranges that the types alone cannot express.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !(0.0..=2.0).contains(&self.cartilage_smoothing) {
            return Err(OptionsError::CartilageSmoothing(self.cartilage_smoothing));
        }
        if let Some(name) = &self.segmentation_model {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return Err(OptionsError::ModelName(name.clone()));
            }
        }
        if let Some(map) = &self.label_map {
            map.check().map_err(OptionsError::LabelMap)?;
        }
        Ok(())
    }

    /// The part of a DICOM series these options select.
    pub fn selection(&self) -> Selection {
        Selection {
            plane: self.plane,
            echo: self.echo,
        }
    }

    /// The canonical JSON form: fixed key order, defaults written out. Two option sets that mean
    /// the same thing give the same string, which is what job idempotency hashes.
    pub fn canonical_json(&self) -> String {
        // serde_json::Value keeps object keys sorted (no `preserve_order` feature), so a round trip
        // through Value fixes the order independently of the struct's field order.
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields() {
        let o: JobOptions = serde_json::from_str(r#"{"perform_nsm": false}"#).unwrap();
        assert!(!o.perform_nsm);
        assert_eq!(o.nsm_type, NsmType::BoneAndCart);
        assert_eq!(o.cartilage_smoothing, 0.3125);
    }

    #[test]
    fn unknown_option_is_rejected() {
        let err = serde_json::from_str::<JobOptions>(r#"{"perform_nms": true}"#).unwrap_err();
        assert!(err.to_string().contains("perform_nms"), "{err}");
    }

    #[test]
    fn smoothing_range_is_checked() {
        let o = JobOptions {
            cartilage_smoothing: 2.5,
            ..Default::default()
        };
        assert!(o.validate().is_err());
        assert!(JobOptions::default().validate().is_ok());
        let mut labels = JobOptions {
            label_map: Some(LabelMap::default()),
            ..Default::default()
        };
        assert!(labels.validate().is_ok());
        labels.label_map.as_mut().unwrap().tibia = Some(7);
        let e = labels.validate().unwrap_err().to_string();
        assert!(e.contains("already labels.femur"), "{e}");
    }

    #[test]
    fn a_label_map_travels_in_the_options_json() {
        let json = r#"{"label_map": {"femur": 5, "femoral_cartilage": 1}}"#;
        let o: JobOptions = serde_json::from_str(json).unwrap();
        let map = o.label_map.unwrap();
        assert_eq!(map.entries(), [("femur", 5), ("femoral_cartilage", 1)]);
        let back: JobOptions = serde_json::from_str(&o.canonical_json()).unwrap();
        assert_eq!(back.label_map, Some(map));
        assert!(!JobOptions::default().canonical_json().contains("label_map"));
        assert!(serde_json::from_str::<JobOptions>(r#"{"label_map": {"femurr": 5}}"#).is_err());
    }

    #[test]
    fn a_side_travels_in_the_options_json() {
        let o: JobOptions = serde_json::from_str(r#"{"side": "left"}"#).unwrap();
        assert_eq!(o.side, Some(Side::Left));
        let back: JobOptions = serde_json::from_str(&o.canonical_json()).unwrap();
        assert_eq!(back.side, Some(Side::Left));
        assert!(!JobOptions::default().canonical_json().contains("side"));
        let err = serde_json::from_str::<JobOptions>(r#"{"side": "L"}"#).unwrap_err();
        assert!(err.to_string().contains("left"), "{err}");
    }

    #[test]
    fn canonical_json_is_stable() {
        let a = JobOptions::default();
        let b: JobOptions = serde_json::from_str(&a.canonical_json()).unwrap();
        assert_eq!(a.canonical_json(), b.canonical_json());
        assert!(a.canonical_json().starts_with(r#"{"cartilage_smoothing""#));
    }
}
