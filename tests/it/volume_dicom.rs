//! Volumes read back from DICOM series: geometry, voxels, and the errors a bad series gives.

use std::path::{Path, PathBuf};
use std::process::Command;

use kneenode::dicom::write::{write_mr_series, SeriesInfo};
use kneenode::volume::geometry::rotation;
use kneenode::volume::{read_dicom_dir, read_dicom_series, Geometry, Volume, VolumeError};

fn oblique_volume() -> Volume<u16> {
    let dims = [24, 20, 12];
    let data = (0..dims.iter().product::<usize>())
        .map(|i| (i * 7 % 4000) as u16)
        .collect();
    let geometry = Geometry {
        origin: [-40.5, 12.25, 77.0],
        spacing: [0.55, 0.6, 1.2],
        direction: rotation([0.3, -0.5, 0.8], 0.4),
    };
    Volume::from_vec(dims, data, geometry).unwrap()
}

fn affine_close(a: &Geometry, b: &Geometry) -> f64 {
    let (a, b) = (a.affine_lps(), b.affine_lps());
    (0..4)
        .flat_map(|r| (0..4).map(move |c| (r, c)))
        .map(|(r, c)| (a[r][c] - b[r][c]).abs())
        .fold(0.0, f64::max)
}

#[test]
fn an_oblique_series_reads_back_with_the_same_affine_and_voxels() {
    let dir = tempfile::tempdir().unwrap();
    let vol = oblique_volume();
    write_mr_series(&vol, &SeriesInfo::default(), dir.path()).unwrap();
    let back = read_dicom_dir(dir.path()).unwrap();
    assert_eq!(back.dims(), vol.dims());
    let err = affine_close(back.geometry(), vol.geometry());
    assert!(err < 1e-6, "affine differs by {err}");
    let want: Vec<f32> = vol.data().iter().map(|&v| f32::from(v)).collect();
    assert_eq!(back.data(), &want[..]);
}

#[test]
fn every_uncompressed_transfer_syntax_gives_the_same_voxels() {
    let dir = tempfile::tempdir().unwrap();
    let vol = oblique_volume();
    let files = write_mr_series(&vol, &SeriesInfo::default(), &dir.path().join("le")).unwrap();
    let reference = read_dicom_dir(&dir.path().join("le")).unwrap();
    for (name, flag) in [
        ("implicit", "+ti"),
        ("big-endian", "+tb"),
        ("deflated", "+td"),
    ] {
        let out_dir = dir.path().join(name);
        std::fs::create_dir_all(&out_dir).unwrap();
        for f in &files {
            let ok = Command::new("dcmconv")
                .arg(flag)
                .arg(f)
                .arg(out_dir.join(f.file_name().unwrap()))
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let back = read_dicom_dir(&out_dir).unwrap();
        assert_eq!(back.data(), reference.data(), "{name}");
        assert!(
            affine_close(back.geometry(), reference.geometry()) < 1e-9,
            "{name}"
        );
    }
}

#[test]
fn a_missing_slice_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_mr_series(&oblique_volume(), &SeriesInfo::default(), dir.path()).unwrap();
    std::fs::remove_file(&files[5]).unwrap();
    let err = read_dicom_dir(dir.path()).unwrap_err();
    assert!(matches!(err, VolumeError::DicomSeries { .. }), "{err}");
    assert!(err.to_string().contains("1 missing slice"), "{err}");
}

#[test]
fn a_duplicate_slice_and_two_orientations_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let info = SeriesInfo::default();
    let files = write_mr_series(&oblique_volume(), &info, &dir.path().join("a")).unwrap();
    // The same slice twice (another SOP instance at the same position).
    let mut with_dup: Vec<PathBuf> = files.clone();
    let again = write_mr_series(&oblique_volume(), &info, &dir.path().join("b")).unwrap();
    with_dup.push(again[3].clone());
    let err = read_dicom_series(&with_dup, Path::new("series")).unwrap_err();
    assert!(err.to_string().contains("same position"), "{err}");
    // The same series with an axial stack added.
    let mut axial = oblique_volume();
    let mut g = *axial.geometry();
    g.direction = rotation([1.0, 0.0, 0.0], 1.2);
    axial.set_geometry(g);
    let axial_files = write_mr_series(&axial, &info, &dir.path().join("c")).unwrap();
    let mixed: Vec<PathBuf> = files.iter().chain(axial_files.iter()).cloned().collect();
    let err = read_dicom_series(&mixed, Path::new("series")).unwrap_err();
    assert!(err.to_string().contains("mixes 2 orientations"), "{err}");
}

#[test]
fn the_phantom_series_reads_back_as_the_phantom() {
    let dir = tempfile::tempdir().unwrap();
    let phantom = kneenode::phantom::generate(&kneenode::phantom::PhantomParams::small(4));
    write_mr_series(&phantom.image, &SeriesInfo::default(), dir.path()).unwrap();
    let back = read_dicom_dir(dir.path()).unwrap();
    assert!(affine_close(back.geometry(), phantom.image.geometry()) < 1e-6);
    assert!(back
        .data()
        .iter()
        .zip(phantom.image.data())
        .all(|(a, b)| *a == f32::from(*b)));
}

#[test]
fn a_rule_picks_an_echo_combines_echoes_or_picks_a_plane() {
    use kneenode::volume::{read_dicom_selected, Echo, Plane, Selection};
    let dir = tempfile::tempdir().unwrap();
    let info = SeriesInfo::default();
    let vol = oblique_volume();
    let echo1 = write_mr_series(&vol, &info, &dir.path().join("e1")).unwrap();
    let doubled = vol.map(|v| v * 2);
    let echo2_info = SeriesInfo {
        echo_number: 2,
        ..info.clone()
    };
    let echo2 = write_mr_series(&doubled, &echo2_info, &dir.path().join("e2")).unwrap();
    let both: Vec<PathBuf> = echo1.iter().chain(echo2.iter()).cloned().collect();
    let here = Path::new("series");

    let err = read_dicom_series(&both, here).unwrap_err();
    assert!(err.to_string().contains("echo = N"), "{err}");
    let pick = |echo, plane| Selection { plane, echo };
    let (v, files) = read_dicom_selected(&both, here, &pick(Some(Echo::Number(2)), None)).unwrap();
    assert_eq!(v.data()[5], f32::from(doubled.data()[5]));
    assert!(files.iter().all(|f| echo2.contains(f)) && files.len() == echo2.len());
    let (rss, files) =
        read_dicom_selected(&both, here, &pick(Some(Echo::RootSumOfSquares), None)).unwrap();
    for i in [0, 17, 999] {
        let want = (f32::from(vol.data()[i]).powi(2) + f32::from(doubled.data()[i]).powi(2)).sqrt();
        assert!(
            (rss.data()[i] - want).abs() < 1e-3,
            "{i}: {} vs {want}",
            rss.data()[i]
        );
    }
    assert!(
        files.iter().all(|f| echo1.contains(f)),
        "the SEG references echo 1"
    );
    let err = read_dicom_selected(&both, here, &pick(Some(Echo::Number(3)), None)).unwrap_err();
    assert!(err.to_string().contains("no echo 3"), "{err}");

    // A sagittal stack stored in the same series: the rule picks one plane or the other.
    let mut sag = oblique_volume();
    let mut g = *sag.geometry();
    g.direction = [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]];
    sag.set_geometry(g);
    let sag_files = write_mr_series(&sag, &info, &dir.path().join("sag")).unwrap();
    let mixed: Vec<PathBuf> = echo1.iter().chain(sag_files.iter()).cloned().collect();
    let plane = Plane::of_normal({
        let d = vol.geometry().direction;
        [d[0][2], d[1][2], d[2][2]]
    });
    assert_ne!(plane, Plane::Sagittal, "the test needs two planes");
    let (v, files) = read_dicom_selected(&mixed, here, &pick(None, Some(plane))).unwrap();
    assert_eq!(v.dims(), vol.dims());
    assert_eq!(files.len(), echo1.len());
    let (v, files) = read_dicom_selected(&mixed, here, &pick(None, Some(Plane::Sagittal))).unwrap();
    assert_eq!(v.geometry().direction, g.direction);
    assert!(files.iter().all(|f| sag_files.contains(f)));
    let err = read_dicom_selected(&both, here, &pick(None, Some(Plane::Sagittal))).unwrap_err();
    assert!(err.to_string().contains("no sagittal slices"), "{err}");
}

#[test]
fn only_the_latest_revision_of_an_instance_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_mr_series(&oblique_volume(), &SeriesInfo::default(), dir.path()).unwrap();
    // The store keeps a changed re-send of an instance beside it as <name>.r2.dcm.
    let first = &files[0];
    let r2 = first.with_extension("r2.dcm");
    std::fs::copy(first, &r2).unwrap();
    let listed = kneenode::volume::dicom_files(dir.path()).unwrap();
    assert_eq!(listed.len(), files.len());
    assert!(listed.contains(&r2) && !listed.contains(first));
    assert!(read_dicom_dir(dir.path()).is_ok());
}

#[test]
fn every_accepted_compressed_syntax_decodes_to_the_same_voxels() {
    let dir = tempfile::tempdir().unwrap();
    let phantom = kneenode::phantom::generate(&kneenode::phantom::PhantomParams::small(5));
    let original = write_mr_series(
        &phantom.image,
        &SeriesInfo::default(),
        &dir.path().join("o"),
    )
    .unwrap();
    let want = read_dicom_dir(&dir.path().join("o")).unwrap();
    // dcmtk's encoders (as the SCP test uses them), and GDCM's for JPEG 2000 lossless.
    let mut tools: Vec<(&str, Vec<&str>)> = crate::scp::TRANSCODES
        .iter()
        .map(|(name, tool, _, _)| (*name, tool.to_vec()))
        .collect();
    tools.push(("JPEG 2000 lossless", vec!["gdcmconv", "--j2k"]));
    for (name, tool) in tools {
        let out_dir = dir.path().join(name.replace(' ', "_"));
        std::fs::create_dir_all(&out_dir).unwrap();
        for f in &original {
            let out = out_dir.join(f.file_name().unwrap());
            crate::common::run_ok(Command::new(tool[0]).args(&tool[1..]).arg(f).arg(&out));
        }
        let got = read_dicom_dir(&out_dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert!(got.geometry().approx_eq(want.geometry(), 1e-9), "{name}");
        assert!(
            got.data() == want.data(),
            "{name}: voxels differ from the uncompressed series"
        );
    }
}

#[test]
fn an_enhanced_instance_reads_like_the_classic_series_and_its_echoes_can_be_picked() {
    use kneenode::dicom::write_enhanced::write_enhanced_mr;
    use kneenode::volume::{read_dicom_selected, Echo, Selection};
    let dir = tempfile::tempdir().unwrap();
    let vol = oblique_volume();
    let info = SeriesInfo::default();
    write_mr_series(&vol, &info, &dir.path().join("classic")).unwrap();
    let classic = read_dicom_dir(&dir.path().join("classic")).unwrap();
    write_enhanced_mr(&[&vol], &info, &dir.path().join("enh/one.dcm")).unwrap();
    let enhanced = read_dicom_dir(&dir.path().join("enh")).unwrap();
    assert_eq!(enhanced.dims(), classic.dims());
    assert!(affine_close(enhanced.geometry(), classic.geometry()) < 1e-9);
    assert!(enhanced.data() == classic.data());

    // Two echoes in one instance: pick one, or combine them.
    let doubled = vol.map(|v| v * 2);
    let two = write_enhanced_mr(&[&vol, &doubled], &info, &dir.path().join("two.dcm")).unwrap();
    let here = Path::new("series");
    let err = read_dicom_series(std::slice::from_ref(&two), here).unwrap_err();
    assert!(err.to_string().contains("(echo 2)"), "{err}");
    let pick = |echo| Selection {
        plane: None,
        echo: Some(echo),
    };
    let (v, files) =
        read_dicom_selected(std::slice::from_ref(&two), here, &pick(Echo::Number(2))).unwrap();
    assert_eq!(v.data()[7], f32::from(doubled.data()[7]));
    assert_eq!(files, std::slice::from_ref(&two), "one file, listed once");
    let (rss, _) = read_dicom_selected(
        std::slice::from_ref(&two),
        here,
        &pick(Echo::RootSumOfSquares),
    )
    .unwrap();
    let want = (f32::from(vol.data()[7]).powi(2) + f32::from(doubled.data()[7]).powi(2)).sqrt();
    assert!((rss.data()[7] - want).abs() < 1e-3);
}
