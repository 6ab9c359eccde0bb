use super::*;

fn spec(toml: &str) -> ModelSpec {
    ModelSpec {
        manifest: toml::from_str(&format!("name = \"m\"\nversion = \"1\"\n{toml}")).unwrap(),
        dir: ".".into(),
    }
}

#[test]
fn members_are_trusted_by_plane_unless_the_ensemble_says_otherwise() {
    let ensemble = spec(
        "kind = \"ensemble\"\nmembers = [\"sag\", \"cor\", \"ax\", \"p\"]\nfusion = \"staple\"\n\
         num_classes = 10\n[trust]\np = [9]\n",
    )
    .manifest;
    let slice = |o: &str| spec(&format!("kind = \"slice2d\"\norientation = \"{o}\"\n"));
    let patch = spec("kind = \"patch3d\"\norientation = \"PIR\"\n");
    assert_eq!(member_trust("sag", &slice("PIR"), &ensemble), Trust::all());
    assert_eq!(
        member_trust("cor", &slice("IRA"), &ensemble),
        plane_trust("coronal")
    );
    assert_eq!(
        member_trust("ax", &slice("ARI"), &ensemble),
        plane_trust("axial")
    );
    assert!(!member_trust("ax", &slice("ARI"), &ensemble).trusts(5));
    // A patch3d model sees the whole volume, whatever its orientation.
    assert_eq!(member_trust("q", &patch, &ensemble), Trust::all());
    // The manifest's [trust] table wins, for any kind.
    assert_eq!(member_trust("p", &patch, &ensemble), Trust::dropping(&[9]));
    assert_eq!(
        member_trust("p", &slice("IRA"), &ensemble),
        Trust::dropping(&[9])
    );
}

/// An oblique grid whose i axis runs (nearly) inferior, j towards the patient's right and k
/// posterior, so the left–right axis is j, not the first voxel axis.
fn oblique_irp() -> Geometry {
    let base = [[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]];
    let r = crate::volume::geometry::rotation([1.0, 1.0, 1.0], 0.2);
    let direction = std::array::from_fn(|row| {
        std::array::from_fn(|col| (0..3).map(|n| r[row][n] * base[n][col]).sum())
    });
    Geometry {
        origin: [4.0, -3.0, 2.0],
        spacing: [1.0, 1.5, 2.0],
        direction,
    }
}

const DIMS: [usize; 3] = [10, 12, 9];

/// An image on [`oblique_irp`] whose value at each voxel is `f` of its LPS position.
fn image_of(f: impl Fn([f64; 3]) -> f32) -> Volume<f32> {
    let g = oblique_irp();
    let mut data = Vec::new();
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                data.push(f(g.index_to_point([i as f64, j as f64, k as f64])));
            }
        }
    }
    Volume::from_vec(DIMS, data, g).unwrap()
}

/// A patch3d model traced by `forward`, saved with a PIR manifest whose spacing is the
/// oblique grid's once reoriented (so nothing is interpolated) and whose patch holds the whole
/// image, trained (it says) on right knees.
fn one_sided_model(
    dir: &std::path::Path,
    mut forward: impl FnMut(&[tch::Tensor]) -> Vec<tch::Tensor>,
) -> ModelSpec {
    let example = tch::Tensor::zeros([1, 1, 16, 16, 16], (tch::Kind::Float, Device::Cpu));
    let model = tch::CModule::create_by_tracing("M", "forward", &[example], &mut forward).unwrap();
    model.save(dir.join("m.pt")).unwrap();
    let mut spec = spec(
        "kind = \"patch3d\"\nfile = \"m.pt\"\nnum_classes = 3\nspacing = [2.0, 1.0, 1.5]\n\
         orientation = \"PIR\"\npatch_size = [16, 16, 16]\nnormalization = \"zscore\"\n\
         side = \"right\"\n",
    );
    spec.dir = dir.to_owned();
    spec
}

/// Class 1 where the image rises towards the patient's right (along PIR's k), class 2 where
/// it falls, the latter with half the logit, so less surely.
fn rightwards_model(dir: &std::path::Path) -> ModelSpec {
    // Made outside the closure: a tensor created while tracing is not kept as a constant.
    let kernel = tch::Tensor::from_slice(&[-1.0f32, 0.0, 1.0]).view([1, 1, 1, 1, 3]);
    one_sided_model(dir, move |x| {
        let d = x[0].conv3d::<tch::Tensor>(&kernel, None, [1, 1, 1], [0, 0, 1], [1, 1, 1], 1);
        vec![tch::Tensor::cat(&[d.zeros_like(), &d * 5.0, &d * -2.5], 1)]
    })
}

#[test]
fn the_left_right_axis_is_the_one_nearest_patient_x() {
    assert_eq!(left_right_axis(&Geometry::default()), 0);
    assert_eq!(left_right_axis(&oblique_irp()), 1);
    let pir = Geometry {
        direction: [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
        ..Geometry::default()
    };
    assert_eq!(crate::volume::orientation_code(&pir), "PIR");
    assert_eq!(left_right_axis(&pir), 2);
}

#[test]
fn mirroring_reverses_one_axis_and_undoes_itself() {
    let v = image_of(|p| (p[0] * 3.0 + p[1] * 0.7 - p[2] * 0.2) as f32);
    let [nx, ny, nz] = DIMS;
    for axis in 0..3 {
        let m = mirror(&v, axis).unwrap();
        assert_eq!(m.geometry(), v.geometry());
        for (i, j, k) in [
            (0, 0, 0),
            (3, 5, 2),
            (nx - 1, ny - 1, nz - 1),
            (1, 0, nz - 2),
        ] {
            let mut from = [i, j, k];
            from[axis] = DIMS[axis] - 1 - from[axis];
            assert_eq!(m[[i, j, k]], v[from], "axis {axis} at ({i}, {j}, {k})");
        }
        assert!(mirror(&m, axis).unwrap() == v, "axis {axis}");
    }
}

/// A pointwise model segments a mirrored image into the mirrored labels, so a left knee
/// (mirrored, segmented, mirrored back) must get exactly the labels it gets when taken as a
/// right knee: every label lands back on its own voxel, on an oblique grid whose left–right
/// axis is the second voxel axis.
#[test]
fn labels_of_a_mirrored_knee_land_where_they_belong() {
    let dir = tempfile::tempdir().unwrap();
    let spec = one_sided_model(dir.path(), |x| {
        vec![tch::Tensor::cat(
            &[x[0].zeros_like(), x[0].shallow_clone(), &x[0] * 2.0 - 1.5],
            1,
        )]
    });
    // Asymmetric along every axis: a hash of the position.
    let image = image_of(|p| {
        let h = (p[0] * 12.9898 + p[1] * 78.233 + p[2] * 37.719).sin() * 43758.5453;
        (h - h.floor()) as f32 + 0.1 * p[0] as f32
    });
    let registry = Registry::default();
    let run = |side| segment(&registry, &spec, &image, Device::Cpu, false, Some(side)).unwrap();
    let (left, right) = (run(Side::Left), run(Side::Right));
    assert_eq!(left.labels.geometry(), image.geometry());
    let classes: std::collections::BTreeSet<u8> = right.labels.data().iter().copied().collect();
    assert_eq!(classes.len(), 3, "every class occurs: {classes:?}");
    assert!(
        left.labels == right.labels,
        "the mirror did not undo itself"
    );
    assert_eq!(
        (left.side, right.side),
        (Some(Side::Left), Some(Side::Right))
    );
    assert!(
        left.notes
            .iter()
            .any(|n| n.contains("the left knee was mirrored left–right")
                && n.contains("voxel axis j")),
        "{:?}",
        left.notes
    );
    assert!(right.notes.is_empty(), "{:?}", right.notes);
}

/// The model really sees the mirrored image: a ramp that rises towards the patient's right
/// looks like one that falls once mirrored.
#[test]
fn a_knee_of_the_other_side_is_seen_mirrored() {
    let dir = tempfile::tempdir().unwrap();
    let spec = rightwards_model(dir.path());
    // LPS x points to the patient's left: −x rises towards the right.
    let image = image_of(|p| -p[0] as f32);
    let registry = Registry::default();
    let count = |side, class| {
        let s = segment(&registry, &spec, &image, Device::Cpu, false, Some(side)).unwrap();
        // Away from the ends of the left–right axis (j), where the kernel meets padding.
        (0..DIMS[2])
            .flat_map(|k| (1..DIMS[1] - 1).flat_map(move |j| (0..DIMS[0]).map(move |i| [i, j, k])))
            .filter(|&at| s.labels[at] == class)
            .count()
    };
    let inner = DIMS[0] * (DIMS[1] - 2) * DIMS[2];
    assert_eq!(count(Side::Right, 1), inner);
    assert_eq!(count(Side::Left, 2), inner);
}

/// Without a side, the knee's position in the scanner decides; a knee near the centre is taken
/// for one of the model's own side. The reason is given either way.
#[test]
fn an_unknown_side_comes_from_the_position_in_the_scanner_or_the_model() {
    let dims = [11, 11, 11];
    // Identity direction, 1 mm voxels: the centre is 5 mm from the origin along x.
    let at = |x: f64| Geometry {
        origin: [x - 5.0, 0.0, 0.0],
        ..Geometry::default()
    };
    let (side, why) = assumed_side(&at(-90.0), dims, Side::Right);
    assert_eq!(side, Side::Right);
    assert!(why.contains("90 mm to the patient's right"), "{why}");
    let (side, why) = assumed_side(&at(85.0), dims, Side::Right);
    assert_eq!(side, Side::Left);
    assert!(why.contains("85 mm to the patient's left"), "{why}");
    for x in [0.0, 39.0, -39.0] {
        let (side, why) = assumed_side(&at(x), dims, Side::Right);
        assert_eq!(side, Side::Right, "{x}");
        assert!(why.contains("--side left"), "{why}");
    }
    assert_eq!(assumed_side(&at(0.0), dims, Side::Left).0, Side::Left);
}

/// Without a side, one segmentation runs: the one for the assumed side, with a note.
#[test]
fn without_a_side_the_knee_is_segmented_once_as_the_assumed_side() {
    let dir = tempfile::tempdir().unwrap();
    let spec = rightwards_model(dir.path());
    let registry = Registry::default();
    let image = image_of(|p| -p[0] as f32);
    for shift in [0.0, 100.0] {
        let mut g = *image.geometry();
        g.origin[0] += shift;
        let moved = Volume::from_vec(image.dims(), image.data().to_vec(), g).unwrap();
        let (want, _) = assumed_side(moved.geometry(), moved.dims(), Side::Right);
        assert_eq!(want, if shift > 0.0 { Side::Left } else { Side::Right });
        let s = segment(&registry, &spec, &moved, Device::Cpu, false, None).unwrap();
        assert_eq!(s.side, Some(want));
        let note = format!("knee side not given; taken as {want}: ");
        assert!(
            s.notes.iter().any(|n| n.starts_with(&note)),
            "{:?}",
            s.notes
        );
        assert_eq!(s.models_run.len(), 1, "one run, not one per side");
        let given = segment(&registry, &spec, &moved, Device::Cpu, false, Some(want)).unwrap();
        assert!(given.labels == s.labels);
    }
}
