//! Unit tests of the SEG writer on tiny series: frame selection, determinism, geometry checks.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;

use super::*;
use crate::dicom::write::{write_mr_series, SeriesInfo};
use crate::volume::Geometry;

fn geometry() -> Geometry {
    Geometry {
        origin: [-10.0, 20.5, 3.25],
        spacing: [0.8, 0.9, 1.5],
        direction: [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
    }
}

/// A 5 × 5 × `nz` MR series (25 pixels a frame: frames are not byte-aligned).
fn series(dir: &Path, nz: usize) -> Vec<PathBuf> {
    let data = (0..25 * nz).map(|i| (i % 251) as u16).collect();
    let image = Volume::from_vec([5, 5, nz], data, geometry()).unwrap();
    let mut files = write_mr_series(&image, &SeriesInfo::default(), dir).unwrap();
    files.reverse(); // any order will do
    files
}

/// Labels: 7 (femur) on slices 0 and 2, 2 (femoral cartilage) on slice 3, 200 (not in the
/// catalogue) on slice 1.
fn labels(nz: usize) -> Volume<u8> {
    let mut v = Volume::from_vec([5, 5, nz], vec![0; 25 * nz], geometry()).unwrap();
    v.set(0, 0, 0, 7);
    v.set(4, 4, 0, 7);
    v.set(2, 3, 2, 7);
    v.set(1, 1, 1, 200);
    v.set(3, 0, 3, 2);
    v
}

fn request<'a>(
    labels: &'a Volume<u8>,
    sources: &'a [PathBuf],
    catalog: &'a SegmentCatalog,
    job_id: &'a str,
) -> SegRequest<'a> {
    SegRequest {
        labels,
        sources,
        catalog,
        job_id,
        algorithm_name: "kneenode demo",
        algorithm_version: "1",
        series_number: 1001,
        created: chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .and_then(|d| d.and_hms_opt(3, 4, 5))
            .unwrap(),
    }
}

#[test]
fn segments_are_present_catalogued_labels_and_frames_only_non_empty_slices() {
    let p = plan(&labels(4), &SegmentCatalog::builtin());
    let names: Vec<(u16, u8)> = p.segments.iter().map(|s| (s.number, s.label)).collect();
    assert_eq!(names, vec![(1, 2), (2, 7)]);
    assert_eq!(
        p.segments[1].name,
        SegmentCatalog::builtin().segments[&7].name
    );
    // Segment 1 (label 2) on slice 3; segment 2 (label 7) on slices 0 and 2.
    assert_eq!(p.frames, vec![(0, 3), (1, 0), (1, 2)]);
    let empty = Volume::from_vec([5, 5, 2], vec![0; 50], geometry()).unwrap();
    assert!(plan(&empty, &SegmentCatalog::builtin()).frames.is_empty());
}

#[test]
fn writing_twice_gives_identical_bytes_and_job_derived_uids() {
    let dir = tempfile::tempdir().unwrap();
    let sources = series(&dir.path().join("mr"), 4);
    let (labels, catalog) = (labels(4), SegmentCatalog::builtin());
    let a = write_seg(
        &request(&labels, &sources, &catalog, "job-7"),
        &dir.path().join("a.dcm"),
    )
    .unwrap();
    // Sources in another order, same job: the same object.
    let mut shuffled = sources.clone();
    shuffled.rotate_left(1);
    let b = write_seg(
        &request(&labels, &shuffled, &catalog, "job-7"),
        &dir.path().join("b.dcm"),
    )
    .unwrap();
    let bytes = std::fs::read(&a.path).unwrap();
    assert_eq!(bytes, std::fs::read(&b.path).unwrap());
    assert_eq!(a.sop_instance_uid, derived_uid(&["job-7", "seg-instance"]));
    assert_eq!(a.series_instance_uid, derived_uid(&["job-7", "seg-series"]));
    assert_eq!(a.frames, 3);
    let c = write_seg(
        &request(&labels, &sources, &catalog, "job-8"),
        &dir.path().join("c.dcm"),
    )
    .unwrap();
    assert_ne!(c.sop_instance_uid, a.sop_instance_uid);
    assert_ne!(c.series_instance_uid, a.series_instance_uid);
    // No temporary file is left beside the output.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn frames_read_back_with_their_bits_and_source_positions() {
    let dir = tempfile::tempdir().unwrap();
    let sources = series(&dir.path().join("mr"), 4);
    let (labels, catalog) = (labels(4), SegmentCatalog::builtin());
    let out = dir.path().join("seg.dcm");
    write_seg(&request(&labels, &sources, &catalog, "job-1"), &out).unwrap();
    let obj = dicom_object::open_file(&out).unwrap();
    let pixels = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    // 3 frames × 25 bits = 75 bits: 10 bytes, already even.
    assert_eq!(pixels.len(), 10);
    let on: Vec<usize> = (0..75).filter(|&n| bits::bit(&pixels, n)).collect();
    // Frame 0: label 2 at (3, 0) of slice 3; frame 1: label 7 at (0, 0) and (4, 4) of slice 0;
    // frame 2: label 7 at (2, 3) of slice 2.
    assert_eq!(on, vec![3, 25, 25 + 24, 50 + 3 * 5 + 2]);
    let per_frame = obj
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let position = |f: &dicom_object::InMemDicomObject| {
        let p = source::item(f, tags::PLANE_POSITION_SEQUENCE).unwrap();
        p.element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap()
    };
    for (f, k) in per_frame.iter().zip([3.0, 0.0, 2.0]) {
        let want = geometry().index_to_point([0.0, 0.0, k]);
        let got = position(f);
        assert!(
            (0..3).all(|a| (got[a] - want[a]).abs() < 1e-9),
            "{got:?} {want:?}"
        );
    }
}

#[test]
fn labels_off_the_source_grid_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sources = series(&dir.path().join("mr"), 4);
    let catalog = SegmentCatalog::builtin();
    let out = dir.path().join("seg.dcm");
    let check = |labels: &Volume<u8>, sources: &[PathBuf], expect: &str| {
        let err = write_seg(&request(labels, sources, &catalog, "j"), &out).unwrap_err();
        assert!(matches!(err, SegError::GridMismatch { .. }), "{err}");
        assert!(err.to_string().contains(expect), "{err}");
        assert!(!out.exists());
    };
    // Shifted by half a slice along the normal.
    let mut shifted = labels(4);
    let mut g = geometry();
    g.origin[0] += 0.75;
    shifted.set_geometry(g);
    check(&shifted, &sources, "not the origin of any label slice");
    // Shifted in-plane by half a pixel.
    let mut g = geometry();
    g.origin[2] -= 0.45;
    shifted.set_geometry(g);
    check(&shifted, &sources, "not the origin of any label slice");
    // One slice more than the sources.
    let mut five = Volume::from_vec([5, 5, 5], vec![0; 125], geometry()).unwrap();
    five.set(0, 0, 0, 7);
    check(&five, &sources, "no source frame lies at label slice 4");
    // Rows and columns swapped.
    let mut g = geometry();
    for row in &mut g.direction {
        row.swap(0, 1);
    }
    let mut swapped = labels(4);
    swapped.set_geometry(g);
    check(&swapped, &sources, "orientation");
    // Another matrix.
    let wide = Volume::from_vec([6, 5, 4], vec![7; 120], geometry()).unwrap();
    check(&wide, &sources, "5×5 pixels, the labels 6×5");
    // Another pixel spacing.
    let mut g = geometry();
    g.spacing[0] = 1.0;
    let mut coarse = labels(4);
    coarse.set_geometry(g);
    check(&coarse, &sources, "pixel spacing");
}

#[test]
fn other_failures_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let sources = series(&dir.path().join("mr"), 4);
    let catalog = SegmentCatalog::builtin();
    let out = dir.path().join("seg.dcm");
    let empty = Volume::from_vec([5, 5, 4], vec![0; 100], geometry()).unwrap();
    let err = write_seg(&request(&empty, &sources, &catalog, "j"), &out).unwrap_err();
    assert!(matches!(err, SegError::NothingToWrite), "{err}");
    let err = write_seg(&request(&labels(4), &[], &catalog, "j"), &out).unwrap_err();
    assert!(matches!(err, SegError::NoSources), "{err}");
    let junk = dir.path().join("junk.dcm");
    std::fs::write(&junk, b"not dicom").unwrap();
    let err = write_seg(&request(&labels(4), &[junk], &catalog, "j"), &out).unwrap_err();
    assert!(matches!(err, SegError::Source { .. }), "{err}");
    assert!(err.to_string().contains("junk.dcm"), "{err}");
}
