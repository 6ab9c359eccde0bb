//! The model registry (`dicom_config/models.toml`) and model manifests.
//!
//! The registry names models and points at their manifests; a manifest says what a model is
//! (kind, TorchScript file, spacing, orientation, patch size, normalisation, label map). Reading
//! the registry never loads weights and never fails because a model file is missing: that is
//! found out when a job asks for the model, and the job ends with MODEL_ERROR while the node
//! keeps running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

/// A model manifest (`models/<name>/manifest.toml`).
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
    /// Input channels (patch3d, slice2d).
    pub in_channels: Option<usize>,
    /// Output classes, background included.
    pub num_classes: Option<usize>,
    /// Target spacing in mm along the canonical orientation's axes.
    pub spacing: Option<[f64; 3]>,
    /// Canonical orientation code the network expects, e.g. `PIR`.
    pub orientation: Option<String>,
    /// Sliding-window patch size (patch3d).
    pub patch_size: Option<[usize; 3]>,
    /// Input normalisation.
    pub normalization: Option<Normalization>,
    /// Axes safe for mirroring test-time augmentation.
    #[serde(default)]
    pub mirror_axes: Vec<usize>,
    /// Where the weights came from.
    pub trained_on: Option<String>,
    /// Output index → tissue name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Anything a later kind needs (ensemble members, NSM constants) is kept here unread.
    #[serde(flatten)]
    pub extra: BTreeMap<String, toml::Value>,
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
        Ok(Registry {
            default: file.default,
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

    /// Reads the manifest of `name` (or of the default model when `name` is `None`).
    pub fn spec(&self, name: Option<&str>) -> Result<ModelSpec, ModelError> {
        let name = name
            .or(self.default.as_deref())
            .ok_or_else(|| ModelError::Unknown("(no default model)".into()))?;
        let path = self
            .manifests
            .get(name)
            .ok_or_else(|| ModelError::Unknown(name.to_owned()))?;
        let fail = |reason: String| ModelError::Manifest {
            name: name.to_owned(),
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if manifest.kind == ModelKind::Patch3d {
            let missing: Vec<&str> = [
                ("file", manifest.file.is_none()),
                ("num_classes", manifest.num_classes.is_none()),
                ("spacing", manifest.spacing.is_none()),
                ("orientation", manifest.orientation.is_none()),
                ("patch_size", manifest.patch_size.is_none()),
            ]
            .into_iter()
            .filter_map(|(k, m)| m.then_some(k))
            .collect();
            if !missing.is_empty() {
                return Err(fail(format!(
                    "a patch3d model needs {}",
                    missing.join(", ")
                )));
            }
        }
        Ok(ModelSpec {
            manifest,
            dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
        })
    }

    /// Every registered model with whether it can be loaded: for `doctor`.
    pub fn check_all(&self) -> Vec<(String, Result<ModelSpec, ModelError>)> {
        self.names()
            .map(|n| {
                let spec = self.spec(Some(n)).and_then(|s| match s.weights_path() {
                    Some(w) if !w.is_file() => Err(ModelError::Weights {
                        name: n.to_owned(),
                        path: w,
                        reason: "file not found".into(),
                    }),
                    _ => Ok(s),
                });
                (n.to_owned(), spec)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn registry_resolves_manifests_and_reports_missing_weights() {
        let dir = tempfile::tempdir().unwrap();
        let reg = write(dir.path(), "cfg/models.toml", "default = \"demo\"\n[models.demo]\nmanifest = \"../m/demo/manifest.toml\"\n[models.gone]\nmanifest = \"../m/gone/manifest.toml\"\n");
        write(
            dir.path(),
            "m/demo/manifest.toml",
            "name = \"demo\"\nkind = \"patch3d\"\nversion = \"1\"\nfile = \"seg.pt\"\nnum_classes = 10\nspacing = [1.0, 1.0, 1.0]\norientation = \"PIR\"\npatch_size = [32, 32, 32]\nnormalization = \"zscore\"\n[labels]\n0 = \"background\"\n",
        );
        let registry = Registry::load(&reg).unwrap();
        assert_eq!(registry.default_model(), Some("demo"));
        let spec = registry.spec(None).unwrap();
        assert_eq!(spec.manifest.patch_size, Some([32, 32, 32]));
        assert_eq!(
            spec.weights_path().unwrap(),
            dir.path().join("cfg/../m/demo/seg.pt")
        );
        let checks = registry.check_all();
        assert!(
            matches!(checks[0].1, Err(ModelError::Weights { .. })),
            "seg.pt is missing"
        );
        assert!(
            matches!(checks[1].1, Err(ModelError::Manifest { .. })),
            "no manifest at all"
        );
        assert!(matches!(
            registry.spec(Some("nope")),
            Err(ModelError::Unknown(_))
        ));
    }
}
