//! Neural shape model analysis of the femur (DOMAIN.md, "Neural shape model"; the shared
//! contract with the decoder's trainer is /tmp/nsm/CONTRACT.md): fit a TorchScript SDF
//! decoder's latent to a knee's femur (and femoral cartilage), reconstruct the surfaces, and
//! score the shape (BScore).
//!
//! [`fit_knee`] does it all for one knee: [`prepare`] (mirror a left knee, clip the femur top,
//! normalise), [`icp`] (similarity ICP onto the mean shape, the decoder at latent 0),
//! [`fit`] (the latent fit, Adam through libtorch autograd), then marching cubes of the
//! decoder's SDF grid ([`decoder`]), mapped back to patient mm, the ASSD between input and
//! reconstruction, and the BScore from the manifest's constants. [`write_outputs`] writes the
//! original pipeline's files: `NSM_recon_femur.vtk`, `NSM_recon_femoral_cartilage.vtk` and
//! `NSM_recon_params.json` for the bone-and-cartilage fit, `NSM_bone_only_recon_femur.vtk` and
//! `NSM_bone_only_recon_params.json` for the bone-only one (`both` writes both sets).
//!
//! Frames: the decoder sees `p = T · ((x − center) / scale)`, where `x` is LPS mm after the
//! mirror (x → −x for a left knee), `center`/`scale` the normalisation and `T` the ICP's 4×4
//! (`icp_transform` in the params). Reconstructions undo all three.

pub mod decoder;
pub mod fit;
pub mod icp;
pub mod prepare;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::pipeline::mesh::vtk::{self, Encoding, MeshIoError};
use crate::pipeline::mesh::Mesh;
use crate::pipeline::models::{ModelError, ModelSpec};
use crate::pipeline::thickness::bvh::Bvh;
use crate::pipeline::NsmType;
use decoder::Decoder;
use fit::{fit_latent, FitOptions, Target};
use icp::{IcpOptions, Matrix4};

/// Name of the femur surface (decoder column and file name).
pub const FEMUR: &str = "femur";
/// Name of the femoral cartilage surface.
pub const FEMORAL_CARTILAGE: &str = "femoral_cartilage";

/// Settings of an NSM analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct NsmOptions {
    /// Grid points per axis of the reconstruction (DOMAIN.md: 256).
    pub resolution: usize,
    /// Grid points per axis of the mean shape ICP aligns to.
    pub mean_resolution: usize,
    /// The latent fit.
    pub fit: FitOptions,
    /// The alignment.
    pub icp: IcpOptions,
    /// Points per decoder call when evaluating grids.
    pub chunk: usize,
}

impl Default for NsmOptions {
    fn default() -> Self {
        NsmOptions {
            resolution: 256,
            mean_resolution: 128,
            fit: FitOptions::default(),
            icp: IcpOptions::default(),
            chunk: 65_536,
        }
    }
}

/// One fitted NSM.
#[derive(Debug, Clone)]
pub struct NsmResult {
    /// `BoneAndCart` or `BoneOnly`.
    pub nsm_type: NsmType,
    /// Model name and version.
    pub model: (String, String),
    /// The fitted latent.
    pub latent: Vec<f32>,
    /// The BScore; `None` when the manifest has no constants for this NSM type.
    pub bscore: Option<f64>,
    /// Normalised input → decoder frame.
    pub icp_transform: Matrix4,
    /// Normalisation centre, mm (after mirroring).
    pub center: [f64; 3],
    /// Normalisation scale, mm.
    pub scale: f64,
    /// Mean symmetric surface distance of the femur, input vs reconstruction, mm.
    pub assd_bone_mm: f64,
    /// The same for the femoral cartilage (bone-and-cartilage fits).
    pub assd_cartilage_mm: Option<f64>,
    /// Whether the knee was mirrored (a left knee).
    pub left: bool,
    /// Adam steps run.
    pub steps: usize,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Lowest loss, that of `latent`.
    pub best_loss: f64,
    /// Seconds: alignment (shared), fit, reconstruction.
    pub timings: Vec<(String, f64)>,
    /// Reconstructed femur, LPS mm.
    pub femur: Mesh,
    /// Reconstructed femoral cartilage, LPS mm (bone-and-cartilage fits).
    pub cartilage: Option<Mesh>,
}

impl NsmResult {
    /// The file-name prefix of this NSM type (the original pipeline's).
    pub fn prefix(&self) -> &'static str {
        match self.nsm_type {
            NsmType::BoneOnly => "NSM_bone_only_recon_",
            _ => "NSM_recon_",
        }
    }

    /// `nsm_type` as the job option writes it.
    pub fn type_name(&self) -> &'static str {
        type_name(self.nsm_type)
    }

    /// The contents of `NSM_recon_params.json` (DOMAIN.md keys, plus what produced them).
    pub fn params(&self) -> serde_json::Value {
        let finite = |x: f64| x.is_finite().then_some(x);
        json!({
            "latent": self.latent,
            "Bscore": self.bscore.and_then(finite),
            "icp_transform": self.icp_transform,
            "center": self.center,
            "scale": self.scale,
            "assd_bone_mm": finite(self.assd_bone_mm),
            "assd_cartilage_mm": self.assd_cartilage_mm.and_then(finite),
            "nsm_type": self.type_name(),
            "model": self.model.0,
            "version": self.model.1,
            "knee_side": if self.left { "left" } else { "right" },
            "steps": self.steps,
            "final_loss": finite(self.final_loss),
            "best_loss": finite(self.best_loss),
        })
    }
}

fn type_name(t: NsmType) -> &'static str {
    match t {
        NsmType::BoneAndCart => "bone_and_cart",
        NsmType::BoneOnly => "bone_only",
        NsmType::Both => "both",
    }
}

/// NSM failures. A missing or broken model maps to MODEL_ERROR, the rest to PIPELINE_ERROR
/// (GPU_OOM when libtorch ran out of memory).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NsmError {
    /// The model is missing, invalid or does not load.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// libtorch failed during the fit or the reconstruction.
    #[error("NSM: {0}")]
    Torch(#[from] tch::TchError),
    /// The femur mesh is empty after clipping.
    #[error("NSM: the femur mesh is empty")]
    NoFemur,
    /// A bone-and-cartilage fit without a femoral cartilage mesh.
    #[error("NSM: the bone-and-cartilage model needs a femoral cartilage mesh")]
    NoCartilage,
    /// The decoder lacks a surface the fit needs.
    #[error("NSM model {model}: no {surface:?} column in its surfaces")]
    NoColumn {
        /// The model.
        model: String,
        /// The surface.
        surface: String,
    },
    /// The decoder's mean shape has no surface in [−1, 1]³: ICP has nothing to align to.
    #[error("NSM model {0}: the mean shape (latent 0) has no femur surface in [-1, 1]^3")]
    NoMeanShape(String),
    /// A file could not be written.
    #[error(transparent)]
    Mesh(#[from] MeshIoError),
    /// The params file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl NsmError {
    /// Whether libtorch ran out of (GPU) memory.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, NsmError::Torch(e) if e.to_string().contains("out of memory"))
    }
}

/// Fits the NSM(s) `kind` asks for (`Both`: bone-and-cartilage, then bone-only) to a femur and
/// its cartilage, LPS mm; `left` mirrors a left knee first. One decoder load and one ICP serve
/// both fits.
pub fn fit_knee(
    femur: &Mesh,
    cartilage: Option<&Mesh>,
    left: bool,
    spec: &ModelSpec,
    kind: NsmType,
    options: &NsmOptions,
    device: Device,
) -> Result<Vec<NsmResult>, NsmError> {
    let kinds: &[NsmType] = match kind {
        NsmType::Both => &[NsmType::BoneAndCart, NsmType::BoneOnly],
        NsmType::BoneAndCart => &[NsmType::BoneAndCart],
        NsmType::BoneOnly => &[NsmType::BoneOnly],
    };
    let clock = Instant::now();
    let prepared = prepare::prepare(femur, cartilage, left).ok_or(NsmError::NoFemur)?;
    if kinds.contains(&NsmType::BoneAndCart) && prepared.cartilage.is_none() {
        return Err(NsmError::NoCartilage);
    }
    let mut decoder = Decoder::load(spec, device)?;
    decoder.chunk = options.chunk;
    let name = spec.manifest.name.clone();
    let column = |surface: &str| {
        decoder.column(surface).ok_or_else(|| NsmError::NoColumn {
            model: name.clone(),
            surface: surface.into(),
        })
    };
    let bone_column = column(FEMUR)?;
    let zeros = vec![0f32; decoder.latent_size() as usize];
    let mean = decoder.surface(&zeros, options.mean_resolution, bone_column)?;
    if mean.is_empty() {
        return Err(NsmError::NoMeanShape(name));
    }
    let norm = prepared.normalisation;
    let bone_n: Vec<[f64; 3]> = prepared
        .bone
        .vertices
        .iter()
        .map(|&v| norm.apply(v))
        .collect();
    let icp = icp::similarity_icp(&bone_n, &Bvh::new(&mean), &options.icp);
    let to_decoder = |m: &Mesh| -> Vec<[f32; 3]> {
        m.vertices
            .iter()
            .map(|&v| icp::apply(&icp.transform, norm.apply(v)).map(|x| x as f32))
            .collect()
    };
    let bone_points = points_tensor(&to_decoder(&prepared.bone), device)?;
    let cart_points = match &prepared.cartilage {
        Some(c) => Some(points_tensor(&to_decoder(c), device)?),
        None => None,
    };
    let align_s = clock.elapsed().as_secs_f64();
    let back = icp::invert_similarity(&icp.transform);
    let to_mm = |m: Mesh| -> Mesh {
        Mesh {
            vertices: m
                .vertices
                .iter()
                .map(|&p| norm.undo(icp::apply(&back, p)))
                .collect(),
            ..m
        }
    };
    let bscores = spec.manifest.bscore.clone().unwrap_or_default();
    let mut results = Vec::new();
    for &k in kinds {
        let clock = Instant::now();
        let mut targets = vec![Target {
            column: bone_column,
            points: bone_points.shallow_clone(),
        }];
        let cart_column = if k == NsmType::BoneAndCart {
            let c = column(FEMORAL_CARTILAGE)?;
            if let Some(p) = &cart_points {
                targets.push(Target {
                    column: c,
                    points: p.shallow_clone(),
                });
            }
            Some(c)
        } else {
            None
        };
        let fitted = fit_latent(&decoder, &targets, &options.fit)?;
        let fit_s = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let columns: Vec<i64> = std::iter::once(bone_column).chain(cart_column).collect();
        let mut meshes = decoder
            .surfaces(&fitted.latent, options.resolution, &columns)?
            .into_iter()
            .map(to_mm);
        let recon_bone = meshes.next().unwrap_or_default();
        let recon_cart = meshes.next();
        let assd_bone_mm = assd(&prepared.bone, &recon_bone);
        let assd_cartilage_mm = match (&prepared.cartilage, &recon_cart) {
            (Some(a), Some(b)) => Some(assd(a, b)),
            _ => None,
        };
        let latent64: Vec<f64> = fitted.latent.iter().map(|&x| f64::from(x)).collect();
        let constants = match k {
            NsmType::BoneOnly => &bscores.bone_only,
            _ => &bscores.bone_and_cart,
        };
        let unmirror = |m: Mesh| if left { prepare::mirror_x(&m) } else { m };
        results.push(NsmResult {
            nsm_type: k,
            model: (spec.manifest.name.clone(), spec.manifest.version.clone()),
            bscore: constants.as_ref().map(|b| b.score(&latent64)),
            latent: fitted.latent,
            icp_transform: icp.transform,
            center: norm.center,
            scale: norm.scale,
            assd_bone_mm,
            assd_cartilage_mm,
            left,
            steps: fitted.steps,
            final_loss: fitted.final_loss,
            best_loss: fitted.best_loss,
            timings: vec![
                ("alignment".into(), align_s),
                ("fit".into(), fit_s),
                ("reconstruction".into(), clock.elapsed().as_secs_f64()),
            ],
            femur: unmirror(recon_bone),
            cartilage: recon_cart.map(unmirror),
        });
    }
    Ok(results)
}

/// Points as a `[N, 3]` float tensor on `device`.
pub fn points_tensor(points: &[[f32; 3]], device: Device) -> Result<Tensor, tch::TchError> {
    let flat: Vec<f32> = points.iter().flatten().copied().collect();
    Tensor::f_from_slice(&flat)?
        .f_view([-1, 3])?
        .f_to_kind(Kind::Float)?
        .f_to_device(device)
}

/// Average symmetric surface distance: the mean, over the vertices of both meshes, of the
/// distance to the other mesh's surface (NaN when either is empty).
pub fn assd(a: &Mesh, b: &Mesh) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (ta, tb) = (Bvh::new(a), Bvh::new(b));
    let total = distance_sum(&a.vertices, &tb) + distance_sum(&b.vertices, &ta);
    total / (a.vertices.len() + b.vertices.len()) as f64
}

/// Σ distance from each point to the surface, over the available cores.
fn distance_sum(points: &[[f64; 3]], surface: &Bvh) -> f64 {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let per = points.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = points
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|&p| surface.closest_point(p))
                        .map(|(_, d)| d)
                        .sum::<f64>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(f64::NAN))
            .sum()
    })
}

/// Writes each result's meshes (binary legacy VTK) and params JSON into `dir`; returns the
/// files written.
pub fn write_outputs(results: &[NsmResult], dir: &Path) -> Result<Vec<PathBuf>, NsmError> {
    std::fs::create_dir_all(dir).map_err(|source| NsmError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for r in results {
        let prefix = r.prefix();
        let mut meshes = vec![(FEMUR, &r.femur)];
        if let Some(c) = &r.cartilage {
            meshes.push((FEMORAL_CARTILAGE, c));
        }
        for (surface, mesh) in meshes {
            let path = dir.join(format!("{prefix}{surface}.vtk"));
            vtk::write(&path, mesh, Encoding::Binary)?;
            files.push(path);
        }
        let path = dir.join(format!("{prefix}params.json"));
        let text = serde_json::to_string_pretty(&r.params()).unwrap_or_default();
        std::fs::write(&path, text + "\n").map_err(|source| NsmError::Io {
            path: path.clone(),
            source,
        })?;
        files.push(path);
    }
    Ok(files)
}

/// The `nsm` object of results.json: the original's layout, `{"knee_side": …,
/// "femur_bone_and_cart": params, "femur_bone_only": params}`, plus notes.
pub fn results_json(results: &[NsmResult], notes: &[String]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    if let Some(r) = results.first() {
        map.insert(
            "knee_side".into(),
            json!(if r.left { "left" } else { "right" }),
        );
    }
    for r in results {
        map.insert(format!("femur_{}", r.type_name()), r.params());
    }
    if !notes.is_empty() {
        map.insert("notes".into(), json!(notes));
    }
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests;
