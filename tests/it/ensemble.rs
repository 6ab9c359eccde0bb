//! slice2d models, ensembles and cascades, with the analytic test models of
//! tests/data/models (tools/make_test_models.py): an intensity classifier that labels a voxel
//! holding the value k as k, a broken model that says 7 everywhere, a coronal model wrong on
//! label 2, a column-maximum 2D model, and a cascade stage that passes its one-hot input through.
//!
//! The image is a volume of blocks whose voxels hold their label, on an oblique grid stored in
//! "RSA" order, so that every model (PIR, IRA, ARI, LPS) has to reorient it and the labels have
//! to come back onto the source grid.

use std::path::Path;

use kneenode::pipeline::models::{Fusion, ModelSpec, Registry};
use kneenode::pipeline::run::{run, RunOptions};
use kneenode::pipeline::segment::{segment, SegmentVolumeError, Segmentation};
use kneenode::volume::geometry::rotation;
use kneenode::volume::{orientation_code, reorient_to, Geometry, Selection, Volume};
use tch::Device;

const DIMS: [usize; 3] = [16, 20, 24];

fn registry() -> Registry {
    Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/registry.toml"))
        .unwrap()
}

/// i → right, j → superior, k → anterior, tilted by 0.15 rad: oblique, and a permutation with
/// flips of every model's orientation. The spacing differs per axis, so a model's spacing
/// only matches when the axes are matched up correctly.
fn geometry() -> Geometry {
    let rsa = [[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];
    let tilt = rotation([1.0, 1.0, 1.0], 0.15);
    let mut direction = [[0.0; 3]; 3];
    for (r, row) in direction.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|x| tilt[r][x] * rsa[x][c]).sum();
        }
    }
    Geometry {
        origin: [10.0, -20.0, 35.0],
        spacing: [1.5, 1.0, 0.8],
        direction,
    }
}

/// 2 × 4 × 2 blocks of 8 × 5 × 12 voxels, with labels 0–9 (every one occurs).
fn truth() -> Volume<u8> {
    let mut v = Volume::filled(DIMS, 0u8, geometry());
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                let (a, b, c) = (i / 8, j / 5, k / 12);
                v.set(i, j, k, ((a * 7 + b * 3 + c * 5 + a * c) % 10) as u8);
            }
        }
    }
    v
}

/// The image: each voxel holds its label's number.
fn image() -> Volume<f32> {
    truth().map(|&l| f32::from(l))
}

fn run_model(registry: &Registry, spec: &ModelSpec) -> Result<Segmentation, SegmentVolumeError> {
    segment(registry, spec, &image(), Device::Cpu, false, None)
}

fn segment_named(registry: &Registry, name: &str) -> Segmentation {
    let spec = registry.spec(Some(name)).unwrap();
    run_model(registry, &spec).unwrap()
}

/// Voxels where `labels` differ from `want`.
fn differing(labels: &Volume<u8>, want: &Volume<u8>) -> Vec<usize> {
    assert_eq!(labels.dims(), want.dims());
    (0..want.len())
        .filter(|&o| labels.data()[o] != want.data()[o])
        .collect()
}

fn ran(s: &Segmentation) -> Vec<&str> {
    s.models_run.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn the_test_volume_is_what_the_models_expect() {
    assert_eq!(orientation_code(&geometry()), "RSA");
    let t = truth();
    let mut seen = [false; 10];
    t.data().iter().for_each(|&l| seen[usize::from(l)] = true);
    assert!(seen.iter().all(|&s| s), "every label occurs");
    // The slice sizes in the manifests are the in-plane sizes of the reoriented volume.
    assert_eq!(reorient_to(&t, "PIR").unwrap().dims(), [24, 20, 16]);
    assert_eq!(reorient_to(&t, "IRA").unwrap().dims(), [20, 16, 24]);
    assert_eq!(reorient_to(&t, "ARI").unwrap().dims(), [24, 16, 20]);
}

#[test]
fn slice2d_models_in_every_plane_label_the_blocks_exactly() {
    let registry = registry();
    let image = image();
    for name in ["sag2d", "cor2d", "ax2d"] {
        let s = segment_named(&registry, name);
        assert_eq!(ran(&s), [name]);
        assert_eq!(s.labels.geometry(), image.geometry(), "{name}: source grid");
        let wrong = differing(&s.labels, &truth());
        assert!(wrong.is_empty(), "{name}: {} voxels differ", wrong.len());
    }
}

/// The column-maximum model's labels depend on which axes form a slice: the maximum of the
/// truth along the orientation's first axis (PIR: posterior), per slice along its third.
#[test]
fn slice2d_takes_slices_along_the_third_axis_with_h_along_the_first() {
    let registry = registry();
    let s = segment_named(&registry, "colmax2d");
    let canon = reorient_to(&truth(), "PIR").unwrap();
    let [ni, nj, nk] = canon.dims();
    let mut want = canon.clone();
    for k in 0..nk {
        for j in 0..nj {
            let max = (0..ni).map(|i| canon[[i, j, k]]).max().unwrap();
            for i in 0..ni {
                want.set(i, j, k, max);
            }
        }
    }
    let mut want = reorient_to(&want, "RSA").unwrap();
    want.set_geometry(geometry());
    assert!(!differing(&want, &truth()).is_empty(), "the test can fail");
    let wrong = differing(&s.labels, &want);
    assert!(wrong.is_empty(), "{} voxels differ", wrong.len());
}

/// Whether voxel `o` has a neighbour with another truth label in the plane of the slices, the
/// plane normal to source axis `across` (8-neighbourhood: bilinear weights reach the diagonal).
fn on_a_boundary(t: &Volume<u8>, o: usize, across: usize) -> bool {
    let [nx, ny, _] = t.dims();
    let at = [o % nx, (o / nx) % ny, o / (nx * ny)];
    let here = t.data()[o];
    let near = |a: usize| {
        let (c, n) = (at[a], t.dims()[a]);
        if a == across {
            c..=c
        } else {
            c.saturating_sub(1)..=(c + 1).min(n - 1)
        }
    };
    near(2).any(|k| near(1).any(|j| near(0).any(|i| t[[i, j, k]] != here)))
}

/// Resized slices: bilinear interpolation mixes neighbouring blocks within a slice, so voxels
/// next to a block boundary in the slice's plane may change, and only those. The slices of
/// PIR, IRA and ARI lie across the source's i (R), k (A) and j (S) axes. Both in-plane axes
/// are shrunk (by less than 2, so a voxel's resized pixel mixes only its neighbours): a slice
/// taken in the wrong plane would change voxels at boundaries across it.
#[test]
fn slice2d_resized_slices_differ_only_next_to_in_plane_boundaries() {
    let registry = registry();
    let t = truth();
    for (name, size, across) in [
        ("sag2d", [15, 11], 0),
        ("cor2d", [13, 9], 2),
        ("ax2d", [17, 9], 1),
    ] {
        let boundary: Vec<usize> = (0..t.len())
            .filter(|&o| on_a_boundary(&t, o, across))
            .collect();
        let mut spec = registry.spec(Some(name)).unwrap();
        spec.manifest.slice_size = Some(size);
        let s = run_model(&registry, &spec).unwrap();
        let wrong = differing(&s.labels, &t);
        let inner = wrong.iter().filter(|o| boundary.binary_search(o).is_err());
        assert_eq!(
            inner.count(),
            0,
            "{name} {size:?}: voxels away from any in-plane boundary differ"
        );
        // Something changed, and only boundary voxels: well under a third of the volume.
        assert!(
            !wrong.is_empty() && wrong.len() * 3 < t.len(),
            "{name} {size:?}: {} of {} voxels differ",
            wrong.len(),
            t.len()
        );
    }
}

#[test]
fn three_planes_fused_by_staple_or_majority_equal_the_truth() {
    let registry = registry();
    for (name, how) in [("ens-staple", "STAPLE"), ("ens-majority", "majority vote")] {
        let s = segment_named(&registry, name);
        assert_eq!(ran(&s), ["sag2d", "cor2d", "ax2d"], "{name}");
        assert!(
            s.notes
                .iter()
                .any(|n| n.contains(how) && n.contains("cor2d")),
            "{name}: {:?}",
            s.notes
        );
        assert_eq!(s.labels.geometry(), &geometry());
        let wrong = differing(&s.labels, &truth());
        assert!(wrong.is_empty(), "{name}: {} voxels differ", wrong.len());
    }
}

#[test]
fn fusion_outvotes_a_broken_member() {
    let registry = registry();
    let broken = segment_named(&registry, "constant3d");
    assert!(broken.labels.data().iter().all(|&l| l == 7));
    let mut spec = registry.spec(Some("ens-outvote")).unwrap();
    for fusion in [Fusion::Staple, Fusion::Majority] {
        spec.manifest.fusion = Some(fusion);
        let s = run_model(&registry, &spec).unwrap();
        assert_eq!(ran(&s), ["constant3d", "intensity3d", "sag2d"]);
        let wrong = differing(&s.labels, &truth());
        assert!(
            wrong.is_empty(),
            "{fusion:?}: {} voxels differ",
            wrong.len()
        );
    }
}

/// `[trust] constant3d = [7]` makes the broken member abstain everywhere; without it, every
/// voxel is a 1:1 tie that goes to the first member, the broken one.
#[test]
fn a_trust_entry_silences_a_member() {
    let registry = registry();
    let mut spec = registry.spec(Some("ens-trust")).unwrap();
    let s = run_model(&registry, &spec).unwrap();
    let wrong = differing(&s.labels, &truth());
    assert!(wrong.is_empty(), "{} voxels differ", wrong.len());
    spec.manifest.trust.clear();
    let s = run_model(&registry, &spec).unwrap();
    assert!(
        s.labels.data().iter().all(|&l| l == 7),
        "ties go to the first member"
    );
}

/// cor2d-bad12 says 1 where the truth is 2. The coronal plane is not trusted for label 1, so
/// those votes are dropped and the sagittal member decides; trusted (an empty `[trust]` entry),
/// they win the 1:1 ties as the first member's.
#[test]
fn the_coronal_plane_is_not_trusted_for_label_1() {
    let registry = registry();
    let t = truth();
    let twos: Vec<usize> = (0..t.len()).filter(|&o| t.data()[o] == 2).collect();
    let bad = segment_named(&registry, "cor2d-bad12");
    assert!(twos.iter().all(|&o| bad.labels.data()[o] == 1));

    let mut spec = registry.spec(Some("ens-planes")).unwrap();
    let s = run_model(&registry, &spec).unwrap();
    let wrong = differing(&s.labels, &t);
    assert!(wrong.is_empty(), "{} voxels differ", wrong.len());

    spec.manifest.trust.insert("cor2d-bad12".into(), Vec::new());
    let s = run_model(&registry, &spec).unwrap();
    assert_eq!(differing(&s.labels, &t), twos);
}

/// The second stage returns its one-hot channels as logits, on a grid at half the spacing in
/// another orientation: its labels are the first stage's exactly. Channels in the wrong order,
/// the image anywhere but first, or labels that are not the first stage's would show.
#[test]
fn a_cascade_feeds_the_first_stage_one_hot_in_label_order() {
    let registry = registry();
    let low = segment_named(&registry, "cascade-low");
    // The first stage, at twice the spacing, is near the truth but not on it.
    let off = differing(&low.labels, &truth()).len();
    assert!(off > 0 && off * 4 < truth().len(), "{off} voxels differ");
    let s = segment_named(&registry, "cascade");
    assert_eq!(ran(&s), ["cascade-low", "cascade"]);
    assert!(
        s.notes.iter().any(|n| n.contains("cascade-low")),
        "{:?}",
        s.notes
    );
    assert_eq!(s.labels.geometry(), &geometry());
    let wrong = differing(&s.labels, &low.labels);
    assert!(
        wrong.is_empty(),
        "{} voxels differ from the first stage",
        wrong.len()
    );
}

#[test]
fn a_cascade_with_the_wrong_in_channels_is_a_model_error() {
    let registry = registry();
    let spec = registry.spec(Some("cascade-bad-channels")).unwrap();
    let err = run_model(&registry, &spec).unwrap_err();
    assert!(matches!(err, SegmentVolumeError::Model(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("in_channels is 4") && text.contains("= 10 channels"),
        "{text}"
    );
}

#[test]
fn a_neural_shape_model_does_not_segment() {
    let registry = registry();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/nsm-analytic/manifest.toml");
    let spec = ModelSpec::load("nsm-analytic", &path).unwrap();
    let err = run_model(&registry, &spec).unwrap_err();
    assert!(matches!(err, SegmentVolumeError::Model(_)), "{err:?}");
    assert!(err.to_string().contains("does not segment"), "{err}");
}

/// `run` segments with the ensemble, reports it as the model and lists its members in the notes.
#[test]
fn a_run_reports_the_ensemble_and_its_members() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("knee.nii.gz");
    kneenode::volume::write_nifti(&input, &image()).unwrap();
    let options = RunOptions {
        model: Some("ens-majority".into()),
        device: Device::Cpu,
        tta: false,
        select: Selection::default(),
        side: None,
        shapes: None,
        nsm: None,
    };
    let out = run(
        &input,
        &dir.path().join("out"),
        &registry(),
        &options,
        &mut (),
    )
    .unwrap();
    assert_eq!(out.model, Some(("ens-majority".into(), "1".into())));
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("sag2d") && n.contains("cor2d") && n.contains("ax2d")),
        "{:?}",
        out.notes
    );
    assert_eq!(out.labels.dims(), DIMS);
}
