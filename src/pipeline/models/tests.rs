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

/// A registry of `(name, manifest body)` pairs in a temporary folder.
fn registry_of(dir: &Path, models: &[(&str, &str)]) -> Registry {
    let mut reg = String::new();
    for (name, body) in models {
        reg.push_str(&format!("[models.{name}]\nmanifest = \"{name}.toml\"\n"));
        write(
            dir,
            &format!("{name}.toml"),
            &format!("name = \"{name}\"\nversion = \"1\"\n{body}"),
        );
    }
    Registry::load(&write(dir, "models.toml", &reg)).unwrap()
}

const PATCH: &str = "kind = \"patch3d\"\nfile = \"m.pt\"\nnum_classes = 4\nspacing = [1.0, 1.0, 1.0]\norientation = \"PIR\"\npatch_size = [8, 8, 8]\n";
const SLICE: &str = "kind = \"slice2d\"\nfile = \"m.pt\"\nnum_classes = 4\norientation = \"IRA\"\nslice_size = [16, 16]\nnormalization = \"zscore\"\n";

fn error(registry: &Registry, name: &str) -> String {
    registry
        .spec(Some(name))
        .and_then(|s| registry.check_references(&s))
        .unwrap_err()
        .to_string()
}

#[test]
fn new_kinds_name_what_their_manifest_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_of(
        dir.path(),
        &[
            ("s", "kind = \"slice2d\"\nfile = \"m.pt\"\nnum_classes = 4\n"),
            ("e", "kind = \"ensemble\"\nnum_classes = 4\n"),
            ("c", &format!("{PATCH}cascade = \"p\"\n")),
            ("p", PATCH),
            ("ok", SLICE),
            ("wrong", &format!("{SLICE}patch_size = [1, 1, 1]\nfusion = \"staple\"\n")),
            ("orient", &SLICE.replace("IRA", "IRL")),
            ("mirror", &format!("{SLICE}mirror_axes = [2]\n")),
            ("chan", &format!("{PATCH}in_channels = 3\n")),
            ("fusion", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"ok\"]\nfusion = \"mean\"\n"),
            ("twice", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"ok\", \"ok\"]\nfusion = \"staple\"\n"),
            ("stranger", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"ok\"]\nfusion = \"staple\"\n[trust]\np = [1]\n"),
        ],
    );
    let e = error(&registry, "s");
    assert!(
        e.contains("a slice2d model needs orientation, slice_size, normalization"),
        "{e}"
    );
    let e = error(&registry, "e");
    assert!(e.contains("an ensemble model needs members, fusion"), "{e}");
    let e = error(&registry, "c");
    assert!(e.contains("in_channels (for a cascade)"), "{e}");
    let e = error(&registry, "wrong");
    assert!(e.contains("fusion not used by a slice2d model"), "{e}");
    let e = error(&registry, "orient");
    assert!(e.contains("orientation \"IRL\""), "{e}");
    let e = error(&registry, "mirror");
    assert!(e.contains("mirror axis 2"), "{e}");
    let e = error(&registry, "chan");
    assert!(e.contains("in_channels is 3"), "{e}");
    let e = error(&registry, "fusion");
    assert!(e.contains("mean"), "{e}");
    let e = error(&registry, "twice");
    assert!(e.contains("listed twice"), "{e}");
    let e = error(&registry, "stranger");
    assert!(e.contains("[trust] names \"p\""), "{e}");
    let ok = registry.spec(Some("ok")).unwrap();
    assert_eq!(ok.manifest.slice_size, Some([16, 16]));
    registry.check_references(&ok).unwrap();
}

#[test]
fn ensembles_and_cascades_must_name_models_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let big = PATCH.replace("num_classes = 4", "num_classes = 12");
    let registry = registry_of(
        dir.path(),
        &[
            ("p", PATCH),
            ("s", SLICE),
            ("big", &big),
            ("nsm", "kind = \"nsm\"\nfile = \"n.pt\"\nlatent_size = 2\nsurfaces = [\"femur\"]\n"),
            ("good", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"p\", \"s\", \"cas\"]\nfusion = \"majority\"\n"),
            ("gone", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"p\", \"nope\"]\nfusion = \"majority\"\n"),
            ("nested", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"p\", \"good\"]\nfusion = \"staple\"\n"),
            ("shape", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"nsm\"]\nfusion = \"staple\"\n"),
            ("many", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"big\"]\nfusion = \"staple\"\n"),
            ("cas", &format!("{PATCH}cascade = \"p\"\nin_channels = 4\n")),
            ("cas3", &format!("{PATCH}cascade = \"p\"\nin_channels = 3\n")),
            ("cas2d", &format!("{PATCH}cascade = \"s\"\nin_channels = 4\n")),
            ("cascas", &format!("{PATCH}cascade = \"cas\"\nin_channels = 4\n")),
        ],
    );
    registry
        .check_references(&registry.spec(Some("good")).unwrap())
        .unwrap();
    registry
        .check_references(&registry.spec(Some("cas")).unwrap())
        .unwrap();
    let e = error(&registry, "gone");
    assert!(e.contains("\"nope\" is not in the registry"), "{e}");
    let e = error(&registry, "nested");
    assert!(e.contains("member \"good\" is of kind Ensemble"), "{e}");
    let e = error(&registry, "shape");
    assert!(e.contains("member \"nsm\" is of kind Nsm"), "{e}");
    let e = error(&registry, "many");
    assert!(e.contains("12 classes, the ensemble 4"), "{e}");
    let e = error(&registry, "cas3");
    assert!(
        e.contains("in_channels is 3") && e.contains("1 + (4 − 1) = 4 channels"),
        "{e}"
    );
    let e = error(&registry, "cas2d");
    assert!(e.contains("must be a plain patch3d model"), "{e}");
    let e = error(&registry, "cascas");
    assert!(e.contains("must be a plain patch3d model"), "{e}");
    // doctor sees the same (ensembles have no weights file to miss).
    let checks: BTreeMap<String, bool> = registry
        .check_all()
        .into_iter()
        .map(|(n, r)| (n, matches!(r, Err(ModelError::Composition { .. }))))
        .collect();
    assert!(checks["nested"] && checks["many"] && !checks["good"]);
}

#[test]
fn a_side_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_of(
        dir.path(),
        &[
            ("right", &format!("{PATCH}side = \"right\"\n")),
            ("left2d", &format!("{SLICE}side = \"left\"\n")),
            ("both", &format!("{PATCH}side = \"both\"\n")),
            // PIR: axis 2 runs left–right, axis 0 does not.
            ("tta_lr", &format!("{PATCH}side = \"right\"\nmirror_axes = [2]\n")),
            ("tta_ap", &format!("{PATCH}side = \"right\"\nmirror_axes = [0]\n")),
            ("ens", "kind = \"ensemble\"\nnum_classes = 4\nmembers = [\"right\"]\nfusion = \"staple\"\nside = \"right\"\n"),
            ("cas_ok", &format!("{PATCH}cascade = \"right\"\nin_channels = 4\nside = \"right\"\n")),
            ("cas_bad", &format!("{PATCH}cascade = \"right\"\nin_channels = 4\nside = \"left\"\n")),
            ("cas_none", &format!("{PATCH}cascade = \"right\"\nin_channels = 4\n")),
        ],
    );
    assert_eq!(
        registry.spec(Some("right")).unwrap().manifest.side,
        Some(Side::Right)
    );
    assert_eq!(
        registry.spec(Some("left2d")).unwrap().manifest.side,
        Some(Side::Left)
    );
    let e = error(&registry, "both");
    assert!(
        e.contains("both") && e.contains("right") && e.contains("left"),
        "{e}"
    );
    let e = error(&registry, "tta_lr");
    assert!(
        e.contains("mirror axis 2 is the left–right axis of PIR"),
        "{e}"
    );
    registry
        .check_references(&registry.spec(Some("tta_ap")).unwrap())
        .unwrap();
    let e = error(&registry, "ens");
    assert!(e.contains("side not used by an ensemble model"), "{e}");
    registry
        .check_references(&registry.spec(Some("cas_ok")).unwrap())
        .unwrap();
    let e = error(&registry, "cas_bad");
    assert!(
        e.contains("\"right\" has side = \"right\" and the full-res model side = \"left\""),
        "{e}"
    );
    let e = error(&registry, "cas_none");
    assert!(e.contains("and the full-res model none"), "{e}");
}
