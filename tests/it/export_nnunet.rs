//! `tools/export_nnunet.py` end to end: a fake nnU-Net v2 result folder (a randomly initialised
//! network of nnU-Net's exact shape, saved as nnU-Net's trainer saves it, by
//! tools/tests/nnunet_fixture.py) is exported, registered and run by `kneenode run`.
//!
//! The model's grid is the input's own (spacing and orientation of a small phantom, patch = the
//! whole image), so kneenode resamples nothing and runs a single window. Its labels can then be
//! compared voxel by voxel with what nnU-Net's network predicts for the same image read nnU-Net's
//! way (SimpleITK's (k, j, i) array, `transpose_forward`, back with `transpose_backward`),
//! computed in python from the checkpoint. The plans' `transpose_forward` is [0, 2, 1] and the
//! phantom's grid is anisotropic (2 × 2 × 2.5 mm, 64 × 64 × 48), so a wrong permutation in the
//! exported module, or a manifest spacing or patch size in the wrong axis order, changes the
//! labels (tools/tests/test_export_nnunet.py shows each wrong mapping gives other logits).

use std::path::Path;
use std::process::{Command, Output};

use kneenode::pipeline::models::{ModelKind, Normalization, Registry};
use kneenode::pipeline::postprocess::{fill_bone_holes, keep_largest_components};
use kneenode::pipeline::segment::{load_model, segment_volume};
use kneenode::volume::{orientation_code, read_image, read_labels};
use tch::Device;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Kneenode's PyTorch venv python, with nnU-Net's architecture package (tools/tests/nnunet-deps.sh
/// installs it when missing).
fn python() -> String {
    let out = crate::common::run_ok(&mut Command::new(root().join("tools/tests/nnunet-deps.sh")));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn run_python(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(python());
    cmd.current_dir(dir).args(args);
    let out = crate::common::run_ok(&mut cmd);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    out
}

fn kneenode(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kneenode"));
    c.current_dir(dir)
        .env_remove("KNEENODE_CONFIG")
        .env("KNEENODE_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("KNEENODE__") {
            c.env_remove(k);
        }
    }
    c
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_exported_nnunet_model_runs_in_kneenode_as_nnunet_would() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::common::run_ok(kneenode(dir).args(["phantom", "--small", "--seed", "3", "--out", "p"]));
    let input = dir.join("p/image.nii.gz");
    let image = read_image(&input).unwrap();
    let geometry = *image.geometry();
    let dims = image.dims();
    let code = orientation_code(&geometry);
    eprintln!(
        "input {dims:?} at {:?} mm, orientation {code}",
        geometry.spacing
    );

    // The fake result folder, on the image's grid (spacing and patch given in i, j, k; the
    // fixture writes them into the plans in nnU-Net's transposed order).
    let result =
        dir.join("nnUNet_results/Dataset999_KneeFixture/nnUNetTrainer__nnUNetPlans__3d_fullres");
    let spacing: Vec<String> = geometry.spacing.iter().map(|s| s.to_string()).collect();
    let patch: Vec<String> = dims.iter().map(|n| n.to_string()).collect();
    let fixture = root().join("tools/tests/nnunet_fixture.py");
    let mut make = vec![
        path_str(&fixture),
        "make",
        path_str(&result),
        "--kn-spacing",
    ];
    make.extend(spacing.iter().map(String::as_str));
    make.push("--kn-patch");
    make.extend(patch.iter().map(String::as_str));
    make.extend(["--transpose-forward", "0", "2", "1", "--boost-logits", "4"]);
    run_python(dir, &make);

    let model_dir = dir.join("models/nnunet_fixture");
    let exporter = root().join("tools/export_nnunet.py");
    let exported = run_python(
        dir,
        &[
            path_str(&exporter),
            path_str(&result),
            "--out",
            path_str(&model_dir),
            "--orientation",
            &code,
        ],
    );
    assert!(String::from_utf8_lossy(&exported.stdout).contains("[models.nnunet_fixture]"));

    let registry_file = dir.join("models.toml");
    std::fs::write(
        &registry_file,
        format!(
            "default = \"nnunet_fixture\"\n[models.nnunet_fixture]\nmanifest = {:?}\n",
            model_dir.join("manifest.toml")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("kneenode.toml"),
        format!("[models]\nregistry = {registry_file:?}\n"),
    )
    .unwrap();

    // The manifest as kneenode reads it: every key known, the grid in i, j, k order.
    let registry = Registry::load(&registry_file).unwrap();
    let spec = registry.spec(Some("nnunet_fixture")).unwrap();
    let m = &spec.manifest;
    assert!(
        m.extra.is_empty(),
        "keys kneenode does not know: {:?}",
        m.extra
    );
    assert_eq!(m.kind, ModelKind::Patch3d);
    assert_eq!(m.in_channels, Some(1));
    assert_eq!(m.num_classes, Some(10));
    assert_eq!(m.spacing, Some(geometry.spacing));
    assert_eq!(m.patch_size, Some(dims));
    assert_eq!(m.orientation.as_deref(), Some(code.as_str()));
    assert_eq!(m.normalization, Some(Normalization::Zscore));
    assert_eq!(m.labels.len(), 10);
    assert_eq!(m.labels["7"], "femur");

    // `kneenode run` with the exported model.
    let out = crate::common::run_ok(kneenode(dir).args([
        "--config",
        "kneenode.toml",
        "run",
        "p/image.nii.gz",
        "--out",
        "o",
        "--model",
        "nnunet_fixture",
        "--segment-only",
        "--device",
        "cpu",
    ]));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr).trim());
    let labels = read_labels(&dir.join("o/image_all-labels.nii.gz")).unwrap();
    assert_eq!(labels.dims(), dims);
    let g = labels.geometry();
    for a in 0..3 {
        assert!(
            (g.spacing[a] - geometry.spacing[a]).abs() < 1e-5,
            "{g:?} vs {geometry:?}"
        );
        assert!(
            (g.origin[a] - geometry.origin[a]).abs() < 1e-3,
            "{g:?} vs {geometry:?}"
        );
        for r in 0..3 {
            assert!((g.direction[r][a] - geometry.direction[r][a]).abs() < 1e-5);
        }
    }
    let mut seen = [0usize; 10];
    for &v in labels.data() {
        assert!(
            m.labels.contains_key(&v.to_string()),
            "label {v} is not in the manifest"
        );
        seen[v as usize] += 1;
    }
    eprintln!("kneenode run labels per class: {seen:?}");

    // What nnU-Net's network predicts for the same image (z-scored as kneenode does it).
    let raw = dir.join("image.f32");
    let bytes: Vec<u8> = image.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&raw, bytes).unwrap();
    let reference_file = dir.join("reference.u8");
    run_python(
        dir,
        &[
            path_str(&fixture),
            "predict",
            path_str(&result),
            path_str(&raw),
            &dims[0].to_string(),
            &dims[1].to_string(),
            &dims[2].to_string(),
            path_str(&reference_file),
        ],
    );
    let reference = std::fs::read(&reference_file).unwrap();
    let mut classes = [0usize; 10];
    for &v in &reference {
        classes[v as usize] += 1;
    }
    let present = classes.iter().filter(|&&n| n > 0).count();
    let largest = *classes.iter().max().unwrap();
    assert!(
        present >= 4 && largest < reference.len() * 9 / 10,
        "the reference is too uniform to tell permutations apart: {classes:?}"
    );

    // kneenode's labels before post-processing agree with the reference up to float ties...
    let model = load_model(&spec, Device::Cpu).unwrap();
    let mut segmented = segment_volume(&image, &spec, &model, Device::Cpu, false).unwrap();
    assert_eq!(segmented.dims(), dims);
    let same = segmented
        .data()
        .iter()
        .zip(&reference)
        .filter(|(a, b)| a == b)
        .count();
    let agreement = same as f64 / reference.len() as f64;
    eprintln!("kneenode vs nnU-Net's network: {agreement:.6} of voxels agree; reference classes {classes:?}");
    assert!(agreement > 0.999, "only {agreement:.4} of the voxels agree");

    // ...and `kneenode run` wrote exactly those labels, post-processed.
    keep_largest_components(&mut segmented);
    fill_bone_holes(&mut segmented);
    let written: Vec<u8> = labels.data().iter().map(|&v| v as u8).collect();
    assert!(
        written == segmented.data(),
        "kneenode run wrote other labels"
    );
}

#[test]
fn python_tests_of_the_exporter_pass() {
    let out = Command::new(python())
        .arg(root().join("tools/tests/test_export_nnunet.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tools/tests/test_export_nnunet.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
