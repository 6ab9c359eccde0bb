//! The model registry (`dicom_config/models.toml`) and model manifests.
//!
//! The registry names models and points at their manifests; a manifest says what a model is
//! (kind, TorchScript file, spacing, orientation, patch size, normalisation, label map). Reading
//! the registry never loads weights and never fails because a model file is missing: that is
//! found out when a job asks for the model, and the job ends with MODEL_ERROR while the node
//! keeps running.
//!
//! A segmentation model trained on knees of one side only says so with `side = "right"` (or
//! `"left"`); [`segment`](super::ensemble::segment) then mirrors a knee of the other side
//! before the model sees it and mirrors the labels back.
//!
//! Neural shape models (kind `nsm`, /tmp/nsm/CONTRACT.md) add `latent_size`, `surfaces` (the
//! decoder's SDF columns, e.g. `["femur", "femoral_cartilage"]`) and a `[bscore.<nsm_type>]`
//! table per NSM type (`vector`, `mean_healthy`, `std_healthy`). The registry's optional
//! top-level `nsm = "<name>"` says which NSM jobs use; without it, the first model (by name)
//! whose manifest is of kind `nsm` is used, and without one NSM is skipped with a note.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::volume::Side;

mod check;
use check::{check_kind, check_nsm};

/// What kind of model a manifest describes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A 3D network applied in sliding-window patches (nnU-Net-like).
    Patch3d,
    /// A 2D network applied slice by slice in one plane.
    Slice2d,
    /// Several models fused (majority vote or STAPLE).
    Ensemble,
    /// A neural shape model decoder.
    Nsm,
}

/// Intensity normalisation before inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// (x − mean) / std over the whole volume.
    Zscore,
    /// No change.
    None,
}

/// How an ensemble fuses its members' labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// Multi-label STAPLE (Warfield 2004).
    Staple,
    /// The most votes per voxel.
    Majority,
}

/// A model manifest (`models/<name>/manifest.toml`).
///
/// Which fields a kind needs (checked by [`ModelSpec::load`]):
/// - `patch3d`: `file`, `num_classes`, `spacing`, `orientation`, `patch_size`; with `cascade`
///   also `in_channels`;
/// - `slice2d`: `file`, `num_classes`, `orientation`, `slice_size`, `normalization`;
/// - `ensemble`: `members`, `fusion`, `num_classes`;
/// - `nsm`: see the module documentation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Model name.
    pub name: String,
    /// Kind.
    pub kind: ModelKind,
    /// Version, shown in results.
    pub version: String,
    /// TorchScript file, relative to the manifest.
    pub file: Option<PathBuf>,
    /// Input channels (patch3d, slice2d): 1, or for the second stage of a cascade
    /// `1 + (num_classes of the low-res model − 1)`.
    pub in_channels: Option<usize>,
    /// Output classes, background included.
    pub num_classes: Option<usize>,
    /// Target spacing in mm along the canonical orientation's axes.
    pub spacing: Option<[f64; 3]>,
    /// Canonical orientation code the network expects, e.g. `PIR`.
    pub orientation: Option<String>,
    /// Sliding-window patch size (patch3d).
    pub patch_size: Option<[usize; 3]>,
    /// slice2d: the in-plane size `[H, W]` every slice is resized to; H runs along the first
    /// axis of `orientation`, W along the second (slices are taken along the third).
    pub slice_size: Option<[usize; 2]>,
    /// slice2d: slices per forward pass (default 8).
    pub batch: Option<usize>,
    /// patch3d: the registry name of the low-res model whose labels this (full-res) model
    /// takes as one-hot input channels (nnU-Net's `3d_cascade_fullres`).
    pub cascade: Option<String>,
    /// ensemble: the registry names of the member models (patch3d or slice2d).
    #[serde(default)]
    pub members: Vec<String>,
    /// ensemble: how the members' labels are fused.
    pub fusion: Option<Fusion>,
    /// ensemble: member name → labels that member is not trusted for, overriding the default
    /// (a slice2d member's plane trust, all labels for a patch3d member).
    #[serde(default)]
    pub trust: BTreeMap<String, Vec<u8>>,
    /// Input normalisation.
    pub normalization: Option<Normalization>,
    /// Axes safe for mirroring test-time augmentation.
    #[serde(default)]
    pub mirror_axes: Vec<usize>,
    /// patch3d, slice2d: the network was trained on knees of this side only (`"right"` or
    /// `"left"`). A knee of the other side is mirrored across the patient's left–right axis
    /// before segmentation and its labels are mirrored back (with no medial/lateral swap: a
    /// mirrored left knee is a right knee). Unset: the model takes either side as it is.
    pub side: Option<Side>,
    /// Where the weights came from.
    pub trained_on: Option<String>,
    /// Output index → tissue name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// NSM: the latent vector's length.
    pub latent_size: Option<usize>,
    /// NSM: what each SDF column of the decoder's output is (`femur`, `femoral_cartilage`).
    #[serde(default)]
    pub surfaces: Vec<String>,
    /// NSM: BScore constants per NSM type.
    pub bscore: Option<BScoreTable>,
    /// Any other key, kept unread (a manifest written for a later kneenode still loads).
    #[serde(flatten)]
    pub extra: BTreeMap<String, toml::Value>,
}

/// The BScore of one NSM type: `(latent · vector − mean_healthy) / std_healthy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BScoreSpec {
    /// Unit vector from the mean healthy latent to the mean OA latent (length `latent_size`).
    pub vector: Vec<f64>,
    /// Mean of `latent · vector` over healthy knees.
    pub mean_healthy: f64,
    /// Standard deviation of `latent · vector` over healthy knees.
    pub std_healthy: f64,
}

impl BScoreSpec {
    /// The BScore of a latent (as long as `vector`).
    pub fn score(&self, latent: &[f64]) -> f64 {
        let projection: f64 = latent.iter().zip(&self.vector).map(|(a, b)| a * b).sum();
        (projection - self.mean_healthy) / self.std_healthy
    }
}

/// `[bscore.*]` of an NSM manifest: constants per NSM type.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BScoreTable {
    /// For the fit to bone and cartilage.
    pub bone_and_cart: Option<BScoreSpec>,
    /// For the bone-only fit.
    pub bone_only: Option<BScoreSpec>,
}

/// A model that cannot be used. Jobs report these as MODEL_ERROR.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The registry file is unreadable or invalid.
    #[error("model registry {path}: {reason}")]
    Registry {
        /// The registry file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No model of that name is registered.
    #[error("model {0:?} is not in the registry")]
    Unknown(String),
    /// The manifest is missing or invalid.
    #[error("model {name}: manifest {path}: {reason}")]
    Manifest {
        /// The model.
        name: String,
        /// The manifest file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The weights file is missing or does not load.
    #[error("model {name}: {path}: {reason}")]
    Weights {
        /// The model.
        name: String,
        /// The TorchScript file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The models a manifest names (ensemble members, a cascade's low-res model) are missing or
    /// do not fit it.
    #[error("model {name}: {reason}")]
    Composition {
        /// The ensemble or cascade.
        name: String,
        /// What does not fit, naming the other model.
        reason: String,
    },
    /// The model is not a segmentation model (an NSM).
    #[error("model {name}: kind {kind:?} does not segment images")]
    NotSegmentation {
        /// The model.
        name: String,
        /// Its kind.
        kind: ModelKind,
    },
    /// The model exists but its kind cannot run yet.
    #[error("model {name}: kind {kind:?} is not available in this version")]
    KindNotAvailable {
        /// The model.
        name: String,
        /// Its kind.
        kind: ModelKind,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    default: Option<String>,
    nsm: Option<String>,
    #[serde(default)]
    models: BTreeMap<String, RegistryEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryEntry {
    manifest: PathBuf,
}

/// The registry: model names → manifest paths, plus the default model.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    default: Option<String>,
    nsm: Option<String>,
    manifests: BTreeMap<String, PathBuf>,
}

/// A model's manifest with the folder its files are relative to.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The manifest.
    pub manifest: Manifest,
    /// The manifest's folder.
    pub dir: PathBuf,
}

impl ModelSpec {
    /// Reads and checks the manifest at `path` (of the model registered as `name`).
    pub fn load(name: &str, path: &Path) -> Result<ModelSpec, ModelError> {
        let fail = |reason: String| ModelError::Manifest {
            name: name.to_owned(),
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        check_kind(&manifest).map_err(fail)?;
        if manifest.kind == ModelKind::Nsm {
            check_nsm(&manifest).map_err(fail)?;
        }
        Ok(ModelSpec {
            manifest,
            dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
        })
    }

    /// The TorchScript file's full path.
    pub fn weights_path(&self) -> Option<PathBuf> {
        self.manifest.file.as_ref().map(|f| self.dir.join(f))
    }
}

impl Registry {
    /// Reads a registry file. Manifest paths are relative to the registry's folder.
    pub fn load(path: &Path) -> Result<Registry, ModelError> {
        let fail = |reason: String| ModelError::Registry {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let file: RegistryFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(d) = &file.default {
            if !file.models.contains_key(d) {
                return Err(fail(format!(
                    "default model {d:?} is not listed under [models]"
                )));
            }
        }
        if let Some(n) = &file.nsm {
            if !file.models.contains_key(n) {
                return Err(fail(format!(
                    "nsm model {n:?} is not listed under [models]"
                )));
            }
        }
        Ok(Registry {
            default: file.default,
            nsm: file.nsm,
            manifests: file
                .models
                .into_iter()
                .map(|(k, v)| (k, base.join(v.manifest)))
                .collect(),
        })
    }

    /// Model names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.manifests.keys().map(String::as_str)
    }

    /// The default model's name.
    pub fn default_model(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The NSM jobs use: the registry's `nsm` key, else the first model by name whose
    /// manifest is of kind `nsm`; `None` when there is none. Unreadable manifests of other
    /// models are passed over here (`doctor` reports them).
    pub fn nsm_model(&self) -> Option<String> {
        if let Some(n) = &self.nsm {
            return Some(n.clone());
        }
        self.names()
            .find(|n| {
                self.spec(Some(n))
                    .is_ok_and(|s| s.manifest.kind == ModelKind::Nsm)
            })
            .map(str::to_owned)
    }

    /// Reads the manifest of `name` (or of the default model when `name` is `None`).
    pub fn spec(&self, name: Option<&str>) -> Result<ModelSpec, ModelError> {
        let name = name
            .or(self.default.as_deref())
            .ok_or_else(|| ModelError::Unknown("(no default model)".into()))?;
        let path = self
            .manifests
            .get(name)
            .ok_or_else(|| ModelError::Unknown(name.to_owned()))?;
        ModelSpec::load(name, path)
    }

    /// Checks the models `spec` names against this registry: an ensemble's members must be
    /// registered patch3d or slice2d models with no more classes than the ensemble; a cascade's
    /// low-res model must be a registered patch3d model that is not itself a cascade, with
    /// `num_classes` equal to the full-res model's `in_channels` (the image plus one one-hot
    /// channel per foreground label), and with no `side` other than the full-res model's (both
    /// stages see the same, possibly mirrored, image).
    pub fn check_references(&self, spec: &ModelSpec) -> Result<(), ModelError> {
        let m = &spec.manifest;
        let fail = |reason: String| ModelError::Composition {
            name: m.name.clone(),
            reason,
        };
        let named = |other: &str| -> Result<ModelSpec, ModelError> {
            if !self.manifests.contains_key(other) {
                return Err(fail(format!("{other:?} is not in the registry")));
            }
            self.spec(Some(other))
                .map_err(|e| fail(format!("{other:?} cannot be used: {e}")))
        };
        if m.kind == ModelKind::Ensemble {
            let classes = m.num_classes.unwrap_or(0);
            for member in &m.members {
                let s = named(member)?;
                if !matches!(s.manifest.kind, ModelKind::Patch3d | ModelKind::Slice2d) {
                    return Err(fail(format!(
                        "member {member:?} is of kind {:?}; members must be patch3d or slice2d models",
                        s.manifest.kind
                    )));
                }
                let member_classes = s.manifest.num_classes.unwrap_or(0);
                if member_classes > classes {
                    return Err(fail(format!(
                        "member {member:?} has {member_classes} classes, the ensemble {classes}"
                    )));
                }
                self.check_references(&s)?;
            }
        }
        if let (ModelKind::Patch3d, Some(low)) = (&m.kind, &m.cascade) {
            let s = named(low)?;
            if s.manifest.kind != ModelKind::Patch3d || s.manifest.cascade.is_some() {
                return Err(fail(format!(
                    "the cascade's low-res model {low:?} must be a plain patch3d model"
                )));
            }
            if let Some(low_side) = s.manifest.side.filter(|&l| Some(l) != m.side) {
                return Err(fail(format!(
                    "the cascade's low-res model {low:?} has side = \"{low_side}\" and the \
                     full-res model {}; both stages segment the same (possibly mirrored) image, so \
                     their sides must agree",
                    m.side
                        .map_or("none".to_owned(), |s| format!("side = \"{s}\""))
                )));
            }
            let low_classes = s.manifest.num_classes.unwrap_or(0);
            let want = low_classes.max(1);
            if m.in_channels != Some(want) {
                return Err(fail(format!(
                    "in_channels is {}, but a cascade on {low:?} ({low_classes} classes) feeds \
                     1 + ({low_classes} − 1) = {want} channels: the image and one one-hot \
                     channel per foreground label",
                    m.in_channels.map_or("missing".into(), |c| c.to_string()),
                )));
            }
        }
        Ok(())
    }

    /// Every registered model with whether it can be loaded: for `doctor`.
    pub fn check_all(&self) -> Vec<(String, Result<ModelSpec, ModelError>)> {
        self.names()
            .map(|n| {
                let spec = self
                    .spec(Some(n))
                    .and_then(|s| match s.weights_path() {
                        Some(w) if !w.is_file() => Err(ModelError::Weights {
                            name: n.to_owned(),
                            path: w,
                            reason: "file not found".into(),
                        }),
                        _ => Ok(s),
                    })
                    .and_then(|s| self.check_references(&s).map(|()| s));
                (n.to_owned(), spec)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
