//! Meshes and cartilage thickness end to end: the files open in VTK's own reader (and meshio)
//! with the same points and scalars, and a phantom knee gives the cartilage thickness it was
//! drawn with.

use std::path::{Path, PathBuf};
use std::process::Command;

use kneenode::phantom::{generate, PhantomParams};
use kneenode::pipeline::label_map::LabelMap;
use kneenode::pipeline::mesh::vtk::{self, Encoding};
use kneenode::pipeline::mesh::{
    label_surface, ply_stl, Mesh, PointScalars, ScalarValues, SurfaceOptions,
};
use kneenode::pipeline::shapes::analyse_shapes;
use kneenode::pipeline::thickness::RegionStats;
use kneenode::volume::{Geometry, Volume};

/// The python with `vtk` and `meshio` (tests/helpers/mesh-readers.sh installs them).
fn reader_python() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = crate::common::run_ok(&mut Command::new(
        root.join("tests/helpers/mesh-readers.sh"),
    ));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One JSON object per file, as tests/helpers/read_vtk.py prints them.
fn read_with_python(files: &[PathBuf], meshio: bool) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(reader_python());
    cmd.arg(root.join("tests/helpers/read_vtk.py"));
    if meshio {
        cmd.arg("--meshio");
    }
    cmd.args(files);
    let out = crate::common::run_ok(&mut cmd);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A small closed mesh with a thickness ramp and integer labels.
fn sample_mesh() -> Mesh {
    let geometry = Geometry {
        origin: [-10.0, 5.0, 30.0],
        spacing: [0.8, 0.9, 1.1],
        ..Geometry::default()
    };
    let mut v = Volume::filled([24, 22, 20], 0u8, geometry);
    for k in 4..16 {
        for j in 5..17 {
            for i in 3..20 {
                v.set(i, j, k, 7);
            }
        }
    }
    let mut mesh = label_surface(&v, |l| l == 7, &SurfaceOptions::bone()).unwrap();
    let n = mesh.vertices.len();
    mesh.set_scalars(
        "thickness (mm)",
        ScalarValues::F32((0..n).map(|i| (i % 97) as f32 * 0.037).collect()),
    );
    mesh.set_scalars(
        "labels",
        ScalarValues::I32((0..n).map(|i| [0, 11, 12, 13, 14, 15][i % 6]).collect()),
    );
    mesh
}

fn assert_same(ours: &Mesh, theirs: &serde_json::Value, thickness_name: &str) {
    assert_eq!(
        theirs["points"].as_u64().unwrap() as usize,
        ours.vertices.len()
    );
    assert_eq!(
        theirs["triangles"].as_u64().unwrap() as usize,
        ours.triangles.len()
    );
    let first = floats(&theirs["first_point"]);
    for (got, want) in first.iter().zip(ours.vertices[0]) {
        assert!((got - want).abs() < 1e-9);
    }
    let arrays = theirs["arrays"].as_object().unwrap();
    for s in &ours.point_scalars {
        let name = if s.name == "thickness (mm)" {
            thickness_name
        } else {
            s.name.as_str()
        };
        let got = floats(
            arrays
                .get(name)
                .unwrap_or_else(|| panic!("no `{name}` in {arrays:?}", arrays = arrays.keys())),
        );
        assert_eq!(got.len(), ours.vertices.len());
        // Compared as f32, what the files hold (serde_json may round the last f64 digit).
        for (i, g) in got.iter().enumerate() {
            assert_eq!(
                *g as f32,
                s.values.get_f64(i).unwrap() as f32,
                "{name}[{i}]"
            );
        }
    }
}

/// Our ASCII and binary VTK files, read by VTK's `vtkPolyDataReader` (the reader of ParaView,
/// Slicer, pyvista and pymskt): same points, triangles and scalars, `thickness%20(mm)` decoded
/// to `thickness (mm)`. Our PLY and STL files, read by meshio: same triangles, and for PLY the
/// same points and scalars.
#[test]
fn mesh_files_open_in_vtk_and_meshio() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = sample_mesh();
    let files: Vec<PathBuf> = [("ascii", Encoding::Ascii), ("binary", Encoding::Binary)]
        .into_iter()
        .map(|(name, enc)| {
            let path = dir.path().join(format!("{name}.vtk"));
            vtk::write(&path, &mesh, enc).unwrap();
            path
        })
        .collect();
    for r in read_with_python(&files, false) {
        assert_eq!(r["cell_sizes"], serde_json::json!([3]));
        assert_same(&mesh, &r, "thickness (mm)");
    }
    let ply = dir.path().join("mesh.ply");
    let stl = dir.path().join("mesh.stl");
    ply_stl::write_ply(&ply, &mesh).unwrap();
    ply_stl::write_stl(&stl, &mesh).unwrap();
    let read = read_with_python(&[ply, stl], true);
    let ply_mesh = Mesh {
        // PLY stores f32 coordinates and float scalars under PLY-safe names.
        vertices: mesh
            .vertices
            .iter()
            .map(|v| v.map(|x| f64::from(x as f32)))
            .collect(),
        triangles: mesh.triangles.clone(),
        point_scalars: vec![
            PointScalars {
                name: "thickness_mm".into(),
                values: mesh.scalars("thickness (mm)").unwrap().clone(),
            },
            PointScalars {
                name: "labels".into(),
                values: mesh.scalars("labels").unwrap().clone(),
            },
        ],
    };
    assert_same(&ply_mesh, &read[0], "thickness_mm");
    assert_eq!(
        read[1]["triangles"].as_u64().unwrap() as usize,
        mesh.triangles.len()
    );
}

/// The other way round: files VTK's own writer makes (a sphere with normals and pymskt's two
/// point arrays, a double `thickness (mm)` and an int64 `labels`), ASCII and binary, read by
/// our reader with the same points, triangles and values.
#[test]
fn vtk_written_files_open_in_our_reader() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for binary in [false, true] {
        let path = dir.path().join(format!("vtk-{binary}.vtk"));
        let mut cmd = Command::new(reader_python());
        cmd.arg(root.join("tests/helpers/read_vtk.py"))
            .arg("--write-sphere")
            .arg(&path);
        if binary {
            cmd.arg("--binary");
        }
        let out = crate::common::run_ok(&mut cmd);
        let theirs: serde_json::Value =
            serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        let ours = vtk::read(&path).unwrap();
        assert!(ours.is_closed_and_oriented());
        assert_eq!(ours.point_scalars.len(), 2, "{:?}", ours.point_scalars);
        assert_same(&ours, &theirs, "thickness (mm)");
    }
}

/// The small phantom (2 × 2 × 2.5 mm voxels; cartilage drawn 2 mm ± 10 % thick along the
/// bone normal, tapering to nothing at the edges of the articular surfaces), a right and a
/// left knee: every mesh is written, the bone meshes are closed and carry both scalars, every
/// region is measured, and the femoral cartilage's mean thickness is within 0.3 mm of the
/// drawn 2 mm. Why 0.3: at 2–2.5 mm voxels a 2 mm layer is one voxel deep, so each thickness
/// is quantised to about ±1 voxel and only the average is meaningful; the tapering rim pulls
/// the mean below nominal (measured: about −0.1 mm); 0.3 mm is 15 % of the thickness, well
/// under the 2 mm a voxel-level error (an extra or missing layer) would give.
#[test]
fn phantom_knee_meshes_and_thickness() {
    for (seed, left) in [(7, false), (3, true)] {
        phantom_case(PhantomParams {
            left,
            ..PhantomParams::small(seed)
        });
    }
}

fn phantom_case(params: PhantomParams) {
    let phantom = generate(&params);
    let dir = tempfile::tempdir().unwrap();
    let res = analyse_shapes(
        &phantom.labels,
        &LabelMap::default(),
        0.3125,
        dir.path(),
        "phantom",
    )
    .unwrap();
    for r in &res.regions {
        eprintln!(
            "{}: n {} mean {:?} std {:?} median {:?}",
            r.name, r.vertices, r.mean, r.std, r.median
        );
    }
    assert!(res.notes.is_empty(), "{:?}", res.notes);
    let names = [
        "femur_mesh.vtk",
        "tibia_mesh.vtk",
        "patella_mesh.vtk",
        "femur_cart_0_mesh.vtk",
        "tibia_cart_0_mesh.vtk",
        "tibia_cart_1_mesh.vtk",
        "patella_cart_0_mesh.vtk",
        "phantom_results.csv",
        "phantom_results.json",
    ];
    for n in names {
        assert!(
            res.files.contains(&dir.path().join(n)),
            "{n} missing: {:?}",
            res.files
        );
    }
    let femur = vtk::read(&dir.path().join("femur_mesh.vtk")).unwrap();
    assert!(femur.is_closed_and_oriented());
    let t = match femur.scalars("thickness (mm)").unwrap() {
        ScalarValues::F32(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    let l = match femur.scalars("labels").unwrap() {
        ScalarValues::I32(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    let fem: Vec<f64> = t
        .iter()
        .zip(&l)
        .filter(|(&t, &l)| t > 0.0 && (11..=15).contains(&l))
        .map(|(&t, _)| f64::from(t))
        .collect();
    let mean = fem.iter().sum::<f64>() / fem.len() as f64;
    eprintln!(
        "seed {} left {}: femoral cartilage {} vertices, mean {mean:.3} mm (drawn {} mm)",
        params.seed,
        params.left,
        fem.len(),
        params.cartilage_thickness_mm
    );
    for r in &res.regions {
        assert!(r.vertices > 0, "{} has no measured vertex", r.name);
    }
    // The regions lie where they should: medial on the medial side (+x in LPS for a right
    // knee, −x for a left one), anterior in front of weight-bearing, in front of posterior.
    let centre = |want: &[i32]| {
        let pts: Vec<[f64; 3]> = femur
            .vertices
            .iter()
            .zip(&l)
            .filter(|(_, l)| want.contains(l))
            .map(|(p, _)| *p)
            .collect();
        let n = pts.len() as f64;
        [0, 1, 2].map(|a| pts.iter().map(|p| p[a]).sum::<f64>() / n)
    };
    let side = if params.left { -1.0 } else { 1.0 };
    assert!(side * (centre(&[12, 14])[0] - centre(&[13, 15])[0]) > 10.0);
    assert!(side * (centre(&[12])[0] - centre(&[13])[0]) > 10.0);
    let (ant, wb, post) = (centre(&[11])[1], centre(&[12, 13])[1], centre(&[14, 15])[1]);
    assert!(ant < wb && wb < post, "AP order {ant} {wb} {post}");
    // Weight-bearing cartilage is at the bottom of the femur, posterior above it.
    assert!(centre(&[12, 13])[2] < centre(&[14, 15])[2]);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("phantom_results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json.as_object().unwrap().len(), 24);
    assert!(json["med_wb_fem_cart_mm_mean"].as_f64().unwrap() > 0.0);
    let csv = std::fs::read_to_string(dir.path().join("phantom_results.csv")).unwrap();
    assert!(csv
        .starts_with("pat_cart_mm_mean,pat_cart_mm_std,pat_cart_mm_median,ant_fem_cart_mm_mean,"));
    // VTK reads what analyse_shapes wrote.
    let files: Vec<PathBuf> = names[..7].iter().map(|n| dir.path().join(n)).collect();
    for (r, f) in read_with_python(&files, false).iter().zip(&files) {
        let ours = vtk::read(f).unwrap();
        assert_eq!(
            r["points"].as_u64().unwrap() as usize,
            ours.vertices.len(),
            "{f:?}"
        );
        assert_eq!(
            r["triangles"].as_u64().unwrap() as usize,
            ours.triangles.len(),
            "{f:?}"
        );
    }
    assert!(
        (mean - params.cartilage_thickness_mm).abs() < 0.3,
        "femoral cartilage mean {mean}"
    );
}

/// The full-size default phantom (192 × 192 × 80 voxels of 0.75 × 0.75 × 1.5 mm): the femur
/// mesh is decimated to its 20 000 vertices and stays closed, and the femoral cartilage's mean
/// is within 0.3 mm of the drawn 2 mm. On this grid the method itself is unbiased to 0.01 mm
/// (`thickness::tests::shell_on_anisotropic_grids`); what pulls the mean down (measured
/// 1.79 mm, medians 1.8–1.96) is the phantom's own taper: its cartilage thins to nothing over a
/// 4.5–6 mm rim that the finer grid resolves. About 25 s in a debug build, so ignored by
/// default.
#[test]
#[ignore = "slow in debug builds; run with --ignored"]
fn full_size_phantom_thickness() {
    let params = PhantomParams::default();
    let t0 = std::time::Instant::now();
    let phantom = generate(&params);
    eprintln!("phantom: {:.1} s", t0.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    let res = analyse_shapes(
        &phantom.labels,
        &LabelMap::default(),
        0.3125,
        dir.path(),
        "p",
    )
    .unwrap();
    for (k, s) in &res.timings {
        eprintln!("{k}: {s:.2} s");
    }
    for r in &res.regions {
        eprintln!(
            "{}: n {} mean {:?} median {:?}",
            r.name, r.vertices, r.mean, r.median
        );
    }
    let femur = vtk::read(&dir.path().join("femur_mesh.vtk")).unwrap();
    eprintln!("femur mesh: {} vertices", femur.vertices.len());
    assert!(femur.vertices.len() <= 21_000);
    assert!(femur.is_closed_and_oriented());
    let fem: Vec<&RegionStats> = res
        .regions
        .iter()
        .filter(|r| r.name.contains("fem"))
        .collect();
    let n: usize = fem.iter().map(|r| r.vertices).sum();
    let mean = fem
        .iter()
        .map(|r| r.mean.unwrap() * r.vertices as f64)
        .sum::<f64>()
        / n as f64;
    eprintln!("femoral cartilage mean {mean:.3} mm over {n} vertices");
    assert!((mean - params.cartilage_thickness_mm).abs() < 0.2, "{mean}");
}
