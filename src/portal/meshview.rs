//! The job page's 3D view: which result meshes a job has, a small JSON manifest of them, and a
//! compact binary form of each mesh for the browser's WebGL viewer (`assets/viewer.js`, served
//! from the binary as [`VIEWER_JS`]).
//!
//! The meshes are the ones `pipeline::shapes` writes (legacy VTK): the bones carry cartilage
//! thickness projected onto them as the point scalars `thickness (mm)` (0 or NaN where there is
//! no cartilage), the cartilage meshes carry nothing the viewer needs. Parsing VTK in the browser
//! would mean shipping a parser for a big-endian, text-tokenised format; instead the node sends
//! exactly what WebGL wants, in the byte order every browser has (little-endian), so the viewer
//! only wraps typed arrays around the response.
//!
//! # Payload (`KNMESH1`)
//!
//! All numbers little-endian, every section 4-byte aligned:
//!
//! | bytes            | content                                                   |
//! |------------------|-----------------------------------------------------------|
//! | 8                | magic `b"KNMESH1\0"`                                      |
//! | 4                | `u32` vertex count `V`                                    |
//! | 4                | `u32` triangle count `T`                                  |
//! | 4                | `u32` flags: bit 0 = per-vertex scalars follow            |
//! | 12 V             | `f32` x, y, z per vertex (LPS mm)                         |
//! | 12 V             | `f32` unit normal per vertex (outward)                    |
//! | 12 T             | `u32` vertex indices, three per triangle (CCW from outside)|
//! | 4 V (if bit 0)   | `f32` scalar per vertex; NaN = no value                   |
//!
//! The routes (`GET /jobs/{id}/meshes.json` → [`manifest`], `GET /jobs/{id}/meshes/{name}.bin`
//! → [`encode_file`] of the entry [`find`] returns) belong to the portal's job pages.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::pipeline::mesh::vtk::{self, MeshIoError};
use crate::pipeline::mesh::Mesh;
use crate::pipeline::shapes::THICKNESS_SCALARS;

/// The viewer script, served as is (`application/javascript`) to pages that hold a
/// `canvas#viewer`.
pub const VIEWER_JS: &str = include_str!("assets/viewer.js");

/// The first eight bytes of every payload.
pub const MAGIC: &[u8; 8] = b"KNMESH1\0";

/// Size of the payload header: magic and three `u32`s.
pub const HEADER_LEN: usize = 20;

/// Flag bit: per-vertex `f32` scalars follow the indices.
pub const FLAG_SCALARS: u32 = 1;

/// The meshes the viewer knows, in display order (bones first): file stem, label, whether it is
/// a bone (which carries thickness).
const KNOWN: [(&str, &str, bool); 7] = [
    ("femur", "Femur", true),
    ("tibia", "Tibia", true),
    ("patella", "Patella", true),
    ("femur_cart_0", "Femoral cartilage", false),
    ("tibia_cart_0", "Medial tibial cartilage", false),
    ("tibia_cart_1", "Lateral tibial cartilage", false),
    ("patella_cart_0", "Patellar cartilage", false),
];

/// One result mesh of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshEntry {
    /// The file stem without `_mesh.vtk` (`femur`, `tibia_cart_0`): the name in the URLs.
    pub name: String,
    /// What it shows, for people (`Femur`, `Medial tibial cartilage`).
    pub tissue: String,
    /// The VTK file.
    pub file: PathBuf,
    /// Whether this is a bone mesh, which the pipeline writes with `thickness (mm)` scalars.
    /// [`list`] decides this from the name alone; [`manifest`] reports what the file holds.
    pub has_thickness: bool,
}

/// A mesh could not be turned into a payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshViewError {
    /// Reading or parsing the VTK file.
    #[error(transparent)]
    Read(#[from] MeshIoError),
    /// More vertices or triangles than a `u32` counts.
    #[error("{path}: mesh too large for the viewer ({vertices} vertices, {triangles} triangles)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its vertex count.
        vertices: usize,
        /// Its triangle count.
        triangles: usize,
    },
}

/// Whether `path` is a regular file (not a link) that starts like a legacy VTK file. Cheap: a
/// page asks for the list on every mesh request, so this does not parse the mesh.
fn looks_like_vtk(path: &Path) -> bool {
    use std::io::Read;
    let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    if !regular {
        return false;
    }
    let mut head = [0u8; 22];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head.starts_with(b"# vtk DataFile Version"))
}

/// The job's result meshes that exist, in display order (bones, then cartilage). The files are
/// looked for in `results_dir` itself, then in its subfolders one level down (a results zip
/// unpacked with its `{prefix}_results/` folder), in name order. Files that do not start like a
/// VTK file are left out; a damaged file that does is listed, and [`manifest`] and
/// [`encode_file`] find out.
pub fn list(results_dir: &Path) -> Vec<MeshEntry> {
    let mut dirs = vec![results_dir.to_path_buf()];
    if let Ok(read) = std::fs::read_dir(results_dir) {
        let mut subs: Vec<PathBuf> = read
            .filter_map(Result::ok)
            // `file_type` does not follow links: a link out of the job's folder is not followed.
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        subs.sort();
        dirs.extend(subs);
    }
    KNOWN
        .iter()
        .filter_map(|&(name, tissue, bone)| {
            let file_name = format!("{name}_mesh.vtk");
            let file = dirs
                .iter()
                .map(|d| d.join(&file_name))
                .find(|p| looks_like_vtk(p))?;
            Some(MeshEntry {
                name: name.to_string(),
                tissue: tissue.to_string(),
                file,
                has_thickness: bone,
            })
        })
        .collect()
}

/// The entry called `name` (as in the URL, without `.bin`), if the job has it: the route's
/// check that a requested name is one of [`list`]'s.
pub fn find(results_dir: &Path, name: &str) -> Option<MeshEntry> {
    list(results_dir).into_iter().find(|e| e.name == name)
}

/// The payload of `mesh` (see the module docs), with the per-vertex values of the scalar array
/// `scalar` if given and present (integer arrays are converted; values are sent as they are,
/// 0 included). Counts beyond `u32` are the caller's to refuse, as [`encode_file`] does.
pub fn encode(mesh: &Mesh, scalar: Option<&str>) -> Vec<u8> {
    let values = scalar.and_then(|s| mesh.scalars(s));
    let n = mesh.vertices.len();
    let len =
        HEADER_LEN + n * 24 + mesh.triangles.len() * 12 + if values.is_some() { n * 4 } else { 0 };
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(mesh.triangles.len() as u32).to_le_bytes());
    let flags = if values.is_some() { FLAG_SCALARS } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    let mut put = |x: f64| out.extend_from_slice(&(x as f32).to_le_bytes());
    for v in &mesh.vertices {
        v.iter().for_each(|&x| put(x));
    }
    for normal in mesh.vertex_normals() {
        normal.iter().for_each(|&x| put(x));
    }
    for t in &mesh.triangles {
        for i in t {
            out.extend_from_slice(&i.to_le_bytes());
        }
    }
    if let Some(values) = values {
        for i in 0..n {
            let x = values.get_f64(i).map_or(f32::NAN, |x| x as f32);
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Reads a VTK mesh and encodes it, with its `thickness (mm)` scalars when it has them.
pub fn encode_file(path: &Path) -> Result<Vec<u8>, MeshViewError> {
    let mesh = vtk::read(path)?;
    let fits = |n: usize| u32::try_from(n).is_ok();
    if !fits(mesh.vertices.len()) || !fits(mesh.triangles.len()) {
        return Err(MeshViewError::TooLarge {
            path: path.to_path_buf(),
            vertices: mesh.vertices.len(),
            triangles: mesh.triangles.len(),
        });
    }
    Ok(encode(&mesh, Some(THICKNESS_SCALARS)))
}

/// Smallest and largest thickness over the mesh's vertices that have cartilage (finite and
/// positive values); `None` without thickness scalars or without such a vertex.
pub fn thickness_range(mesh: &Mesh) -> Option<(f64, f64)> {
    let values = mesh.scalars(THICKNESS_SCALARS)?;
    (0..values.len())
        .filter_map(|i| values.get_f64(i))
        .filter(|x| x.is_finite() && *x > 0.0)
        .fold(None, |acc, x| match acc {
            None => Some((x, x)),
            Some((lo, hi)) => Some((f64::min(lo, x), f64::max(hi, x))),
        })
}

fn union(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> Option<(f64, f64)> {
    match (a, b) {
        (Some((l1, h1)), Some((l2, h2))) => Some((l1.min(l2), h1.max(h2))),
        (a, None) => a,
        (None, b) => b,
    }
}

fn bounds_json(lo: [f64; 3], hi: [f64; 3]) -> Value {
    json!({ "min": lo, "max": hi })
}

/// The viewer's manifest of a job's meshes: the [`list`] entries that read as non-empty meshes
/// (damaged or unreadable files are left out, with a warning in the log), each with its
/// counts and bounds, plus the thickness range over all bones (one colour scale for all) and
/// the union of the bounds (for the camera):
///
/// ```json
/// { "version": 1,
///   "meshes": [ { "name": "femur", "tissue": "Femur", "kind": "bone", "has_thickness": true,
///                 "vertices": 20000, "triangles": 39996,
///                 "bounds": { "min": [x, y, z], "max": [x, y, z] } }, … ],
///   "thickness": { "min": 0.4, "max": 3.9, "unit": "mm" },   // null without any
///   "bounds": { "min": [x, y, z], "max": [x, y, z] } }          // null without meshes
/// ```
///
/// Reads every mesh: meant for one request per page view, not per mesh.
pub fn manifest(results_dir: &Path) -> Value {
    let mut meshes = Vec::new();
    let mut range = None;
    let mut all: Option<([f64; 3], [f64; 3])> = None;
    for entry in list(results_dir) {
        let mesh = match vtk::read(&entry.file) {
            Ok(mesh) => mesh,
            Err(e) => {
                tracing::warn!("mesh viewer: skipping {}: {e}", entry.file.display());
                continue;
            }
        };
        let Some((lo, hi)) = mesh.bounds().filter(|_| !mesh.is_empty()) else {
            continue;
        };
        let finite = lo.iter().chain(&hi).all(|x| x.is_finite());
        if !finite {
            tracing::warn!(
                "mesh viewer: skipping {}: non-finite points",
                entry.file.display()
            );
            continue;
        }
        range = union(range, thickness_range(&mesh));
        all = Some(match all {
            None => (lo, hi),
            Some((a, b)) => (
                std::array::from_fn(|i| a[i].min(lo[i])),
                std::array::from_fn(|i| b[i].max(hi[i])),
            ),
        });
        meshes.push(json!({
            "name": entry.name,
            "tissue": entry.tissue,
            "kind": if entry.has_thickness { "bone" } else { "cartilage" },
            "has_thickness": mesh.scalars(THICKNESS_SCALARS).is_some(),
            "vertices": mesh.vertices.len(),
            "triangles": mesh.triangles.len(),
            "bounds": bounds_json(lo, hi),
        }));
    }
    json!({
        "version": 1,
        "meshes": meshes,
        "thickness": range.map(|(min, max)| json!({ "min": min, "max": max, "unit": "mm" })),
        "bounds": all.map(|(lo, hi)| bounds_json(lo, hi)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::mesh::vtk::Encoding;
    use crate::pipeline::mesh::ScalarValues;

    /// A unit tetrahedron, outward CCW, with thickness 0 (no cartilage), NaN, 1.5 and 2.5.
    fn tetra() -> Mesh {
        let mut m = Mesh {
            vertices: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
            ],
            triangles: vec![[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]],
            point_scalars: Vec::new(),
        };
        m.set_scalars(
            THICKNESS_SCALARS,
            ScalarValues::F32(vec![0.0, f32::NAN, 1.5, 2.5]),
        );
        m.set_scalars("labels", ScalarValues::I32(vec![1, 2, 3, 4]));
        m
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn f32_at(b: &[u8], at: usize) -> f32 {
        f32::from_bits(u32_at(b, at))
    }

    #[test]
    fn encode_header_layout_and_scalars() {
        let m = tetra();
        let b = encode(&m, Some(THICKNESS_SCALARS));
        assert_eq!(&b[..8], MAGIC);
        let (v, t) = (u32_at(&b, 8) as usize, u32_at(&b, 12) as usize);
        assert_eq!((v, t), (4, 4));
        assert_eq!(u32_at(&b, 16), FLAG_SCALARS);
        assert_eq!(b.len(), HEADER_LEN + 24 * v + 12 * t + 4 * v);

        // Positions, then unit normals: vertex 3 = (0,0,1), its normal points away from the
        // centroid of the tetrahedron.
        let pos = HEADER_LEN;
        assert_eq!(
            [
                f32_at(&b, pos + 36),
                f32_at(&b, pos + 40),
                f32_at(&b, pos + 44)
            ],
            [0.0, 0.0, 1.0]
        );
        let nrm = pos + 12 * v;
        let n3 = [0, 4, 8].map(|o| f32_at(&b, nrm + 36 + o));
        let len = n3.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((len - 1.0).abs() < 1e-5, "{n3:?}");
        assert!(n3[2] > 0.0, "{n3:?}");

        let idx = nrm + 12 * v;
        let indices: Vec<u32> = (0..3 * t).map(|i| u32_at(&b, idx + 4 * i)).collect();
        assert_eq!(indices, [0, 2, 1, 0, 1, 3, 0, 3, 2, 1, 2, 3]);

        let sc = idx + 12 * t;
        let s: Vec<f32> = (0..v).map(|i| f32_at(&b, sc + 4 * i)).collect();
        assert_eq!(s[0], 0.0);
        assert!(s[1].is_nan());
        assert_eq!(&s[2..], [1.5, 2.5]);
        assert_eq!(sc + 4 * v, b.len());
    }

    #[test]
    fn encode_without_or_with_missing_scalars() {
        let m = tetra();
        for scalar in [None, Some("no such array")] {
            let b = encode(&m, scalar);
            assert_eq!(u32_at(&b, 16), 0);
            assert_eq!(b.len(), HEADER_LEN + 24 * 4 + 12 * 4);
        }
        // Integer arrays are sent as f32.
        let b = encode(&m, Some("labels"));
        let sc = HEADER_LEN + 24 * 4 + 12 * 4;
        assert_eq!(f32_at(&b, sc + 12), 4.0);

        let empty = encode(&Mesh::default(), Some(THICKNESS_SCALARS));
        assert_eq!(empty.len(), HEADER_LEN);
        assert_eq!((u32_at(&empty, 8), u32_at(&empty, 12)), (0, 0));
    }

    #[test]
    fn thickness_range_ignores_zero_and_nan() {
        assert_eq!(thickness_range(&tetra()), Some((1.5, 2.5)));
        let mut none = tetra();
        none.set_scalars(THICKNESS_SCALARS, ScalarValues::F32(vec![0.0; 4]));
        assert_eq!(thickness_range(&none), None);
        assert_eq!(thickness_range(&Mesh::default()), None);
    }

    #[test]
    fn list_and_manifest_skip_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path();
        // The bone at the top, a cartilage mesh in a `{prefix}_results/` folder.
        vtk::write(&results.join("tibia_mesh.vtk"), &tetra(), Encoding::Binary).unwrap();
        let nested = results.join("x_results");
        std::fs::create_dir(&nested).unwrap();
        let mut cart = tetra();
        cart.point_scalars.clear();
        cart.vertices.iter_mut().for_each(|p| p[0] += 10.0);
        vtk::write(
            &nested.join("tibia_cart_1_mesh.vtk"),
            &cart,
            Encoding::Ascii,
        )
        .unwrap();
        // A second bone with a higher thickness, to check the shared range.
        let mut femur = tetra();
        femur.set_scalars(
            THICKNESS_SCALARS,
            ScalarValues::F32(vec![0.0, 0.5, 4.0, f32::NAN]),
        );
        femur.vertices.iter_mut().for_each(|p| p[2] -= 5.0);
        vtk::write(&results.join("femur_mesh.vtk"), &femur, Encoding::Binary).unwrap();
        // Garbage: not even listed. A truncated VTK file: listed, but not in the manifest.
        std::fs::write(
            results.join("patella_mesh.vtk"),
            b"not a mesh at all, sorry",
        )
        .unwrap();
        let good = vtk::to_bytes(&tetra(), Encoding::Binary);
        std::fs::write(
            results.join("femur_cart_0_mesh.vtk"),
            &good[..good.len() / 2],
        )
        .unwrap();
        // Unknown names are never listed.
        vtk::write(
            &results.join("menisci_mesh.vtk"),
            &tetra(),
            Encoding::Binary,
        )
        .unwrap();

        let names: Vec<String> = list(results).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["femur", "tibia", "femur_cart_0", "tibia_cart_1"]);
        let cart_entry = find(results, "tibia_cart_1").unwrap();
        assert_eq!(cart_entry.file, nested.join("tibia_cart_1_mesh.vtk"));
        assert_eq!(cart_entry.tissue, "Lateral tibial cartilage");
        assert!(!cart_entry.has_thickness);
        assert!(find(results, "../tibia").is_none());
        assert!(find(results, "patella").is_none());

        let m = manifest(results);
        let names: Vec<&str> = m["meshes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["femur", "tibia", "tibia_cart_1"]);
        assert_eq!(m["meshes"][0]["has_thickness"], true);
        assert_eq!(m["meshes"][0]["kind"], "bone");
        assert_eq!(m["meshes"][1]["tissue"], "Tibia");
        assert_eq!(m["meshes"][1]["vertices"], 4);
        assert_eq!(m["meshes"][2]["has_thickness"], false);
        assert_eq!(m["meshes"][2]["kind"], "cartilage");
        assert_eq!(m["thickness"]["min"], 0.5);
        assert_eq!(m["thickness"]["max"], 4.0);
        assert_eq!(m["bounds"]["min"], json!([0.0, 0.0, -5.0]));
        assert_eq!(m["bounds"]["max"], json!([11.0, 1.0, 1.0]));

        // The payload of a listed file; a damaged one is an error, not a panic.
        let b = encode_file(&results.join("femur_mesh.vtk")).unwrap();
        assert_eq!(u32_at(&b, 16), FLAG_SCALARS);
        assert_eq!(f32_at(&b, b.len() - 8), 4.0);
        assert!(encode_file(&results.join("femur_cart_0_mesh.vtk")).is_err());
        let b = encode_file(&nested.join("tibia_cart_1_mesh.vtk")).unwrap();
        assert_eq!(u32_at(&b, 16), 0);
    }

    /// The pipeline's own output (a femur block with a cartilage slab): listed, measured, and
    /// encoded with its thickness.
    #[test]
    fn pipeline_output() {
        use crate::pipeline::label_map::LabelMap;
        use crate::volume::{Geometry, Volume};
        let mut v = Volume::filled([40, 30, 40], 0u8, Geometry::default());
        for k in 10..36 {
            for j in 5..25 {
                for i in 5..35 {
                    v.set(i, j, k, if k < 13 { 2 } else { 7 });
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x_results");
        crate::pipeline::shapes::analyse_shapes(&v, &LabelMap::default(), 0.3125, &out, "x")
            .unwrap();
        let names: Vec<String> = list(dir.path()).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["femur", "femur_cart_0"]);
        let m = manifest(dir.path());
        let (lo, hi) = (
            m["thickness"]["min"].as_f64().unwrap(),
            m["thickness"]["max"].as_f64().unwrap(),
        );
        // The slab is three voxels (mm) thick.
        assert!(
            0.0 < lo && lo <= hi && (2.0..4.5).contains(&hi),
            "{lo}..{hi}"
        );
        let b = encode_file(&find(dir.path(), "femur").unwrap().file).unwrap();
        assert_eq!(u32_at(&b, 16), FLAG_SCALARS);
        assert_eq!(m["meshes"][0]["vertices"], u32_at(&b, 8));
    }

    #[test]
    fn manifest_of_missing_or_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(dir.path());
        assert_eq!(m["meshes"], json!([]));
        assert!(m["thickness"].is_null());
        assert!(m["bounds"].is_null());
        let m = manifest(&dir.path().join("nope"));
        assert_eq!(m["meshes"], json!([]));
        assert!(list(&dir.path().join("nope")).is_empty());
    }

    #[test]
    fn viewer_script_is_embedded() {
        assert!(VIEWER_JS.contains("KNMESH1"));
        assert!(VIEWER_JS.contains("viewer-status"));
    }
}
