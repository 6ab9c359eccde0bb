//! The model registry (`dicom_config/models.toml`) and model manifests.
//!
//! The registry names models and points at their manifests; a manifest says what a model is
//! (kind, TorchScript file, spacing, orientation, patch size, normalisation, label map). Reading
//! the registry never loads weights and never fails because a model file is missing: that is
//! found out when a job asks for the model, and the job ends with MODEL_ERROR while the node
//! keeps running.
//!
//! Neural shape models (kind `nsm`, /tmp/nsm/CONTRACT.md) add `latent_size`, `surfaces` (the
//! decoder's SDF columns, e.g. `["femur", "femoral_cartilage"]`) and a `[bscore.<nsm_type>]`
//! table per NSM type (`vector`, `mean_healthy`, `std_healthy`). The registry's optional
//! top-level `nsm = "<name>"` says which NSM jobs use; without it, the first model (by name)
//! whose manifest is of kind `nsm` is used, and without one NSM is skipped with a note.

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
    /// NSM: the latent vector's length.
    pub latent_size: Option<usize>,
    /// NSM: what each SDF column of the decoder's output is (`femur`, `femoral_cartilage`).
    #[serde(default)]
    pub surfaces: Vec<String>,
    /// NSM: BScore constants per NSM type.
    pub bscore: Option<BScoreTable>,
    /// Anything a later kind needs (ensemble members) is kept here unread.
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

/// What an NSM manifest must hold (CONTRACT.md): a file, `latent_size`, `surfaces` naming the
/// femur, and BScore vectors of the latent's length, of unit norm, with a positive spread.
fn check_nsm(m: &Manifest) -> Result<(), String> {
    let mut missing = Vec::new();
    if m.file.is_none() {
        missing.push("file");
    }
    if m.latent_size.is_none_or(|l| l == 0) {
        missing.push("latent_size");
    }
    if !m.surfaces.iter().any(|s| s == "femur") {
        missing.push("surfaces with \"femur\"");
    }
    if !missing.is_empty() {
        return Err(format!("an nsm model needs {}", missing.join(", ")));
    }
    let latent = m.latent_size.unwrap_or(0);
    let table = m.bscore.clone().unwrap_or_default();
    for (name, spec) in [
        ("bone_and_cart", &table.bone_and_cart),
        ("bone_only", &table.bone_only),
    ] {
        let Some(b) = spec else { continue };
        if b.vector.len() != latent {
            return Err(format!(
                "bscore.{name}.vector has {} values, latent_size is {latent}",
                b.vector.len()
            ));
        }
        let norm = b.vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        if (norm - 1.0).abs() > 1e-3 {
            return Err(format!(
                "bscore.{name}.vector must be a unit vector (norm {norm})"
            ));
        }
        if !(b.std_healthy.is_finite() && b.std_healthy > 0.0 && b.mean_healthy.is_finite()) {
            return Err(format!(
                "bscore.{name}: mean_healthy must be finite and std_healthy positive"
            ));
        }
    }
    Ok(())
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
        assert_eq!(registry.nsm_model(), None);
    }

    #[test]
    fn nsm_manifests_are_validated_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let reg = write(dir.path(), "models.toml", "[models.a]\nmanifest = \"a.toml\"\n[models.shape]\nmanifest = \"s.toml\"\n[models.bad]\nmanifest = \"b.toml\"\n");
        write(
            dir.path(),
            "a.toml",
            "name = \"a\"\nkind = \"slice2d\"\nversion = \"1\"\n",
        );
        write(
            dir.path(),
            "s.toml",
            "name = \"shape\"\nkind = \"nsm\"\nversion = \"2\"\nfile = \"nsm.pt\"\nlatent_size = 2\n\
             surfaces = [\"femur\", \"femoral_cartilage\"]\n\
             [bscore.bone_and_cart]\nvector = [0.6, 0.8]\nmean_healthy = -0.5\nstd_healthy = 0.5\n",
        );
        write(
            dir.path(),
            "b.toml",
            "name = \"bad\"\nkind = \"nsm\"\nversion = \"1\"\nfile = \"nsm.pt\"\nlatent_size = 3\n\
             surfaces = [\"femur\"]\n[bscore.bone_only]\nvector = [1.0, 1.0, 0.0]\nmean_healthy = 0.0\nstd_healthy = 1.0\n",
        );
        let registry = Registry::load(&reg).unwrap();
        // "bad" sorts first, but its vector is not a unit vector: passed over.
        assert_eq!(registry.nsm_model().as_deref(), Some("shape"));
        let err = registry.spec(Some("bad")).unwrap_err().to_string();
        assert!(err.contains("unit vector"), "{err}");
        let spec = registry.spec(Some("shape")).unwrap();
        let b = spec.manifest.bscore.unwrap().bone_and_cart.unwrap();
        assert!((b.score(&[1.0, 1.0]) - 3.8).abs() < 1e-12);
        // A named nsm model must be listed.
        let reg2 = write(
            dir.path(),
            "r2.toml",
            "nsm = \"gone\"\n[models.a]\nmanifest = \"a.toml\"\n",
        );
        assert!(Registry::load(&reg2).is_err());
        let reg3 = write(
            dir.path(),
            "r3.toml",
            "nsm = \"bad\"\n[models.bad]\nmanifest = \"b.toml\"\n",
        );
        assert_eq!(
            Registry::load(&reg3).unwrap().nsm_model().as_deref(),
            Some("bad")
        );
    }
}
