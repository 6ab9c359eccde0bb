//! The results of one job as files: `results.json` (numbers, models, timings) and the zip that
//! clinicians download. Pure: it knows nothing of jobs tables or DICOM networking.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::volume::{orientation_code, Volume};

/// One model that contributed to the results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelUsed {
    /// What it did: `segmentation`, `nsm`.
    pub role: String,
    /// Registry name.
    pub name: String,
    /// Manifest version.
    pub version: String,
}

/// What `results.json` holds. Fields of later stages (thickness, NSM) are `null` until those
/// stages run, so readers can rely on the keys being present.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    /// The kneenode version that produced the results.
    pub kneenode_version: String,
    /// The job (absent for `kneenode run`).
    pub job_id: Option<String>,
    /// The name outputs are prefixed with.
    pub prefix: String,
    /// The input grid: voxels, spacing (mm) and orientation code.
    pub input: InputGrid,
    /// The device the models ran on.
    pub device: String,
    /// Models used, with versions.
    pub models: Vec<ModelUsed>,
    /// Volume of each tissue present, mm³, by label name.
    pub tissue_volumes_mm3: BTreeMap<String, f64>,
    /// Cartilage thickness statistics by region (mm); `null` until the thickness stage runs.
    pub thickness_mm: Option<BTreeMap<String, f64>>,
    /// NSM latent, BScore and ASSD per NSM type (`femur_bone_and_cart`, `femur_bone_only`), the
    /// `knee_side` and any `notes` (e.g. why NSM was skipped); `null` unless NSM was asked for.
    pub nsm: Option<serde_json::Value>,
    /// Seconds per stage, in order.
    pub timings_s: Vec<(String, f64)>,
    /// Files in the results folder, by name.
    pub files: Vec<String>,
}

/// The input grid, as results.json reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputGrid {
    /// Voxels along i, j, k.
    pub dims: [usize; 3],
    /// Spacing along i, j, k, mm.
    pub spacing_mm: [f64; 3],
    /// Orientation code of i, j, k (e.g. `PIR`).
    pub orientation: String,
}

impl InputGrid {
    /// The grid of `volume`.
    pub fn of<T>(volume: &Volume<T>) -> Self {
        Self {
            dims: volume.dims(),
            spacing_mm: volume.geometry().spacing,
            orientation: orientation_code(volume.geometry()),
        }
    }
}

/// Volume of one voxel, mm³ (the determinant of the index-to-space matrix).
pub fn voxel_volume_mm3<T>(volume: &Volume<T>) -> f64 {
    let m = volume.geometry().index_matrix();
    (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
        .abs()
}

/// Voxel count of every label, 0 included.
pub fn label_counts(labels: &Volume<u8>) -> [u64; 256] {
    let mut counts = [0u64; 256];
    for &l in labels.data() {
        counts[usize::from(l)] += 1;
    }
    counts
}

/// Volume of each non-zero label present, mm³, by label value.
pub fn label_volumes_mm3(labels: &Volume<u8>) -> BTreeMap<u8, f64> {
    let voxel = voxel_volume_mm3(labels);
    label_counts(labels)
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, &n)| n > 0)
        .map(|(l, &n)| (l as u8, n as f64 * voxel))
        .collect()
}

/// Writes `results.json` pretty-printed.
pub fn write_results(path: &Path, results: &Results) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(results).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Zips every file of `dir` (not sub-folders) into `zip_path`, under a top folder named
/// `top` so that unpacking never scatters files. Written to a temporary name and renamed, so a
/// reader never sees half a zip. Returns the zip's size in bytes.
pub fn zip_dir(dir: &Path, top: &str, zip_path: &Path) -> std::io::Result<u64> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let tmp = zip_path.with_extension("zip.partial");
    let out = std::fs::File::create(&tmp)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(out));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Already-compressed files gain nothing from deflate.
        let stored = name.ends_with(".gz") || name.ends_with(".png") || name.ends_with(".zip");
        let opts = if stored {
            options.compression_method(zip::CompressionMethod::Stored)
        } else {
            options
        };
        zip.start_file(format!("{top}/{name}"), opts)
            .map_err(std::io::Error::other)?;
        let mut input = std::fs::File::open(f)?;
        std::io::copy(&mut input, &mut zip)?;
    }
    let mut w = zip.finish().map_err(std::io::Error::other)?;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, zip_path)?;
    Ok(std::fs::metadata(zip_path)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    #[test]
    fn label_volumes_use_the_voxel_size() {
        let g = Geometry {
            spacing: [0.5, 0.5, 2.0],
            ..Geometry::default()
        };
        let mut v = Volume::filled([4, 4, 4], 0u8, g);
        v.set(0, 0, 0, 7);
        v.set(1, 0, 0, 7);
        v.set(2, 0, 0, 2);
        let vols = label_volumes_mm3(&v);
        assert_eq!(vols.len(), 2);
        assert!((vols[&7] - 1.0).abs() < 1e-12);
        assert!((vols[&2] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn zip_holds_every_file_under_one_folder() {
        let dir = tempfile::tempdir().unwrap();
        let res = dir.path().join("res");
        std::fs::create_dir(&res).unwrap();
        std::fs::write(res.join("a.json"), "{}").unwrap();
        std::fs::write(res.join("b.nii.gz"), [1u8, 2, 3]).unwrap();
        let zip_path = dir.path().join("x_results.zip");
        let size = zip_dir(&res, "x_results", &zip_path).unwrap();
        assert!(size > 0);
        let mut z = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
        let mut names: Vec<String> = (0..z.len())
            .map(|i| z.by_index(i).unwrap().name().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x_results/a.json", "x_results/b.nii.gz"]);
        assert!(!dir.path().join("x_results.zip.partial").exists());
    }
}
