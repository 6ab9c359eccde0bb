//! Bone and cartilage meshes with regional cartilage thickness, from a label volume: the
//! "meshes and thickness" stage of the original pipeline, as one pure function
//! ([`analyse_shapes`]) that writes its files into a folder.
//!
//! Files (the original's names): `femur_mesh.vtk`, `tibia_mesh.vtk`, `patella_mesh.vtk` with
//! point scalars `thickness (mm)` and `labels`; `femur_cart_0_mesh.vtk`,
//! `tibia_cart_0_mesh.vtk` (medial), `tibia_cart_1_mesh.vtk` (lateral),
//! `patella_cart_0_mesh.vtk`; `{prefix}_results.csv` and `.json` with
//! `{region}_mm_{mean,std,median}`. Unlike pymskt, a cartilage mesh keeps its number when an
//! earlier one is missing (no medial tibial cartilage still writes the lateral one as
//! `tibia_cart_1_mesh.vtk`), so a file name always means the same tissue. Bone meshes are
//! decimated to at most 20 000 (femur, tibia) or 10 000 (patella) vertices before thickness is
//! measured, as the original resampled them; pymskt uses pyacvd's clustering, we use
//! quadric edge collapse ([`crate::pipeline::mesh::decimate`]).
//!
//! A tissue missing from the volume is skipped with a note; its statistics are empty (`null`
//! in JSON, an empty CSV cell; the original wrote NaN).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::pipeline::label_map::LabelMap;
use crate::pipeline::mesh::decimate::decimate;
use crate::pipeline::mesh::vtk::{self, Encoding, MeshIoError};
use crate::pipeline::mesh::{label_surface, BoneCrop, Mesh, ScalarValues, SurfaceOptions};
use crate::pipeline::thickness::regions::{self, region_volume};
use crate::pipeline::thickness::{assign_regions, cartilage_thickness, region_stats, RegionStats};
use crate::volume::Volume;

/// The femur and tibia are cut to this multiple of their medial–lateral width.
pub const LONG_BONE_CROP: f64 = 0.8;

/// Name of the thickness point scalars.
pub const THICKNESS_SCALARS: &str = "thickness (mm)";
/// Name of the region point scalars.
pub const LABEL_SCALARS: &str = "labels";

/// What [`analyse_shapes`] produced.
#[derive(Debug, Clone, Default)]
pub struct ShapeResults {
    /// Per-region statistics, in the results files' order (patella, femur, tibia).
    pub regions: Vec<RegionStats>,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// Things users should know (skipped tissues, assumptions).
    pub notes: Vec<String>,
    /// Seconds per step (`femur mesh`, `femur thickness`, …).
    pub timings: Vec<(String, f64)>,
    /// The femur mesh as written to `femur_mesh.vtk` (what the NSM fit starts from).
    pub femur: Option<Mesh>,
    /// The femoral cartilage mesh as written to `femur_cart_0_mesh.vtk`.
    pub femoral_cartilage: Option<Mesh>,
}

impl ShapeResults {
    /// The results as `(key, value)` in file order: `{region}_mm_{mean,std,median}`, `None`
    /// for a region without measured vertices.
    pub fn keyed(&self) -> Vec<(String, Option<f64>)> {
        self.regions
            .iter()
            .flat_map(|r| {
                [("mean", r.mean), ("std", r.std), ("median", r.median)]
                    .map(|(s, v)| (format!("{}_mm_{s}", r.name), v))
            })
            .collect()
    }

    /// The measured values by key (regions without vertices left out).
    pub fn thickness(&self) -> std::collections::BTreeMap<String, f64> {
        self.keyed()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}

/// The shape analysis failed (a missing tissue is not a failure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// A mesh could not be written.
    #[error(transparent)]
    Mesh(#[from] MeshIoError),
    /// A results file or the output folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An option is out of range.
    #[error("{0}")]
    Invalid(String),
}

struct Bone {
    name: &'static str,
    label: Option<u16>,
    crop: Option<BoneCrop>,
    /// Vertex count the bone mesh is decimated to.
    target_vertices: usize,
    /// Cartilage labels; the position is the file index (`{bone}_cart_{i}_mesh.vtk`).
    cartilage: Vec<Option<u16>>,
    regions: &'static [(&'static str, u8)],
}

fn bones(map: &LabelMap) -> [Bone; 3] {
    [
        Bone {
            name: "patella",
            label: map.patella,
            crop: None,
            target_vertices: 10_000,
            cartilage: vec![map.patellar_cartilage],
            regions: &[("pat_cart", regions::PATELLAR)],
        },
        Bone {
            name: "femur",
            label: map.femur,
            crop: Some(BoneCrop::KeepInferior(LONG_BONE_CROP)),
            target_vertices: 20_000,
            cartilage: vec![map.femoral_cartilage],
            regions: &[
                ("ant_fem_cart", regions::ANTERIOR_FEMORAL),
                ("med_wb_fem_cart", regions::MEDIAL_WB_FEMORAL),
                ("lat_wb_fem_cart", regions::LATERAL_WB_FEMORAL),
                ("med_post_fem_cart", regions::MEDIAL_POSTERIOR_FEMORAL),
                ("lat_post_fem_cart", regions::LATERAL_POSTERIOR_FEMORAL),
            ],
        },
        Bone {
            name: "tibia",
            label: map.tibia,
            crop: Some(BoneCrop::KeepSuperior(LONG_BONE_CROP)),
            target_vertices: 20_000,
            cartilage: vec![map.medial_tibial_cartilage, map.lateral_tibial_cartilage],
            regions: &[
                ("med_tib_cart", regions::MEDIAL_TIBIAL),
                ("lat_tib_cart", regions::LATERAL_TIBIAL),
            ],
        },
    ]
}

/// Builds the bone and cartilage meshes of `labels` (numbered as `map` says), measures
/// cartilage thickness by region, and writes the meshes (binary legacy VTK) and
/// `{prefix}_results.csv`/`.json` into `out_dir` (created if needed).
/// `cartilage_smoothing_mm2` is the `cartilage_smoothing` job option (0–2 mm²).
pub fn analyse_shapes<T: Copy + Into<u16>>(
    labels: &Volume<T>,
    map: &LabelMap,
    cartilage_smoothing_mm2: f64,
    out_dir: &Path,
    prefix: &str,
) -> Result<ShapeResults, ShapeError> {
    if !(0.0..=2.0).contains(&cartilage_smoothing_mm2) {
        return Err(ShapeError::Invalid(format!(
            "cartilage_smoothing must be between 0 and 2 (mm²), got {cartilage_smoothing_mm2}"
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|source| ShapeError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut res = ShapeResults::default();
    let mut clock = Instant::now();
    let mut lap = |res: &mut ShapeResults, what: String| {
        res.timings.push((what, clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };
    let (region_labels, notes) = region_volume(labels, map);
    res.notes.extend(notes);
    lap(&mut res, "cartilage regions".into());

    for bone in bones(map) {
        let empty = |r: &(&str, u8)| region_stats(r.0, r.1, &[], &[]);
        let bone_mesh = bone.label.and_then(|b| {
            let options = SurfaceOptions {
                crop: bone.crop,
                ..SurfaceOptions::bone()
            };
            label_surface(labels, |l| l.into() == b, &options)
                .map(|m| decimate(&m, bone.target_vertices))
        });
        lap(&mut res, format!("{} mesh", bone.name));
        // Cartilage is only measured on its bone (as in pymskt, where it belongs to the bone).
        let Some(mut bone_mesh) = bone_mesh else {
            res.notes.push(format!(
                "{}: not in the labels, skipped with its cartilage",
                bone.name
            ));
            res.regions.extend(bone.regions.iter().map(empty));
            continue;
        };
        let mut carts: Vec<(usize, Mesh)> = Vec::new();
        for (idx, cart) in bone.cartilage.iter().enumerate() {
            let options = SurfaceOptions::cartilage(cartilage_smoothing_mm2);
            match cart.and_then(|c| label_surface(labels, |l| l.into() == c, &options)) {
                Some(m) => carts.push((idx, m)),
                None => res.notes.push(format!(
                    "{} cartilage {idx}: not in the labels, skipped",
                    bone.name
                )),
            }
        }
        lap(&mut res, format!("{} cartilage meshes", bone.name));
        let cart_refs: Vec<&Mesh> = carts.iter().map(|(_, m)| m).collect();
        let thickness = cartilage_thickness(&bone_mesh, &cart_refs);
        let allowed: Vec<u8> = bone.regions.iter().map(|r| r.1).collect();
        let vertex_regions = assign_regions(&thickness, &region_labels, &allowed);
        for r in bone.regions {
            res.regions.push(region_stats(
                r.0,
                r.1,
                &thickness.thickness,
                &vertex_regions,
            ));
        }
        lap(&mut res, format!("{} thickness", bone.name));
        bone_mesh.set_scalars(THICKNESS_SCALARS, ScalarValues::F32(thickness.thickness));
        bone_mesh.set_scalars(LABEL_SCALARS, ScalarValues::I32(vertex_regions));
        let path = out_dir.join(format!("{}_mesh.vtk", bone.name));
        vtk::write(&path, &bone_mesh, Encoding::Binary)?;
        res.files.push(path);
        for (idx, m) in &carts {
            let path = out_dir.join(format!("{}_cart_{idx}_mesh.vtk", bone.name));
            vtk::write(&path, m, Encoding::Binary)?;
            res.files.push(path);
        }
        lap(&mut res, format!("{} files", bone.name));
        if bone.name == "femur" {
            res.femoral_cartilage = carts.into_iter().find(|(i, _)| *i == 0).map(|(_, m)| m);
            res.femur = Some(bone_mesh);
        }
    }
    res.files.extend(write_results(&res, out_dir, prefix)?);
    Ok(res)
}

/// Writes `{prefix}_results.csv` (a header row of keys, one row of values) and
/// `{prefix}_results.json` (an object in the same order, 4-space indent like the original).
pub fn write_results(
    res: &ShapeResults,
    out_dir: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>, ShapeError> {
    let keyed = res.keyed();
    let csv_value = |v: &Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let csv = format!(
        "{}\n{}\n",
        keyed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(","),
        keyed
            .iter()
            .map(|(_, v)| csv_value(v))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut json = String::from("{");
    for (i, (k, v)) in keyed.iter().enumerate() {
        let value = match v {
            Some(x) if x.is_finite() => x.to_string(),
            _ => "null".to_string(),
        };
        let key = serde_json::to_string(k).unwrap_or_default();
        json.push_str(if i == 0 { "\n    " } else { ",\n    " });
        json.push_str(&format!("{key}: {value}"));
    }
    json.push_str(if keyed.is_empty() { "}\n" } else { "\n}\n" });
    let mut files = Vec::new();
    for (ext, text) in [("csv", csv), ("json", json)] {
        let path = out_dir.join(format!("{prefix}_results.{ext}"));
        std::fs::write(&path, text).map_err(|source| ShapeError::Io {
            path: path.clone(),
            source,
        })?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    /// A femur block with a cartilage slab under it and nothing else: the femur and its
    /// cartilage are measured, the missing tissues are notes, and all 24 keys are written.
    #[test]
    fn missing_tissues_are_notes_not_errors() {
        let geometry = Geometry::default();
        let mut v = Volume::filled([40, 30, 40], 0u8, geometry);
        for k in 10..36 {
            for j in 5..25 {
                for i in 5..35 {
                    v.set(i, j, k, if k < 13 { 2 } else { 7 });
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let res = analyse_shapes(&v, &LabelMap::default(), 0.3125, dir.path(), "x").unwrap();
        assert!(res
            .notes
            .iter()
            .any(|n| n.starts_with("patella: not in the labels")));
        assert!(res
            .notes
            .iter()
            .any(|n| n.starts_with("tibia: not in the labels")));
        let keyed = res.keyed();
        assert_eq!(keyed.len(), 24);
        assert!(keyed.iter().any(|(_, v)| v.is_some()));
        assert_eq!(res.thickness().get("pat_cart_mm_mean"), None);
        for f in [
            "femur_mesh.vtk",
            "femur_cart_0_mesh.vtk",
            "x_results.csv",
            "x_results.json",
        ] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        assert!(!dir.path().join("tibia_mesh.vtk").exists());
        let json = std::fs::read_to_string(dir.path().join("x_results.json")).unwrap();
        assert!(json.contains("\"pat_cart_mm_mean\": null"));
        let csv = std::fs::read_to_string(dir.path().join("x_results.csv")).unwrap();
        assert_eq!(csv.lines().count(), 2);
        assert!(analyse_shapes(&v, &LabelMap::default(), 3.0, dir.path(), "x").is_err());
    }
}
