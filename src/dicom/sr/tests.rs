use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::content::{put_seq, put_str};
use super::*;
use crate::dicom::codes::SegmentCatalog;

/// A header-only SEG-like file: the attributes the SR reads, no pixel data.
fn seg_file(dir: &Path, segments: &[u16]) -> PathBuf {
    let mut obj = InMemDicomObject::new_empty();
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.1");
    put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.2");
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3");
    put_str(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        "1.2.826.0.1.4",
    );
    put_str(&mut obj, tags::PATIENT_NAME, VR::PN, "Müller^Knee");
    put_str(&mut obj, tags::PATIENT_ID, VR::LO, "KN-1");
    put_str(&mut obj, tags::STUDY_DATE, VR::DA, "20260101");
    put_str(&mut obj, tags::LATERALITY, VR::CS, "R");
    let sources = (1..=3)
        .map(|i| {
            let mut s = InMemDicomObject::new_empty();
            put_str(
                &mut s,
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                uids::MR_IMAGE,
            );
            let uid = format!("1.2.826.0.1.5.{i}");
            put_str(&mut s, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &uid);
            s
        })
        .collect();
    let mut series = InMemDicomObject::new_empty();
    put_str(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.5",
    );
    put_seq(&mut series, tags::REFERENCED_INSTANCE_SEQUENCE, sources);
    put_seq(&mut obj, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
    let segs = segments
        .iter()
        .map(|n| {
            let mut s = InMemDicomObject::new_empty();
            s.put(DataElement::new(
                tags::SEGMENT_NUMBER,
                VR::US,
                PrimitiveValue::from(*n),
            ));
            s
        })
        .collect();
    put_seq(&mut obj, tags::SEGMENT_SEQUENCE, segs);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LE)
        .media_storage_sop_class_uid(uids::SEGMENTATION)
        .media_storage_sop_instance_uid("1.2.826.0.1.1");
    let path = dir.join("seg.dcm");
    obj.with_meta(meta).unwrap().write_to_file(&path).unwrap();
    path
}

fn groups() -> Vec<MeasurementGroup> {
    let catalog = SegmentCatalog::builtin();
    let femoral = &catalog.segments[&2];
    let regions = [
        RegionThickness {
            region: concepts::thickness_region("med_wb_fem_cart"),
            mean: 2.125,
            std: 0.3,
            median: 2.0,
            max: Some(3.75),
        },
        RegionThickness {
            region: concepts::thickness_region("ant_fem_cart"),
            mean: 1.0 / 3.0, // needs more than 16 characters: Floating Point Value
            std: 0.25,
            median: 0.5,
            max: None,
        },
    ];
    vec![
        volume_group(femoral, 1, 12_345.678),
        volume_group(&catalog.segments[&3], 2, 4321.0),
        thickness_group(femoral, 1, &regions),
        bscore_group(-0.6568, None),
    ]
}

fn request<'a>(seg: &'a Path, groups: &'a [MeasurementGroup], job: &'a str) -> SrRequest<'a> {
    SrRequest {
        seg,
        groups,
        job_id: job,
        algorithm_name: "demo",
        algorithm_version: "1.0",
        series_number: 901,
        created: chrono::NaiveDate::from_ymd_opt(2026, 2, 3)
            .unwrap()
            .and_hms_opt(4, 5, 6)
            .unwrap(),
    }
}

fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(|e| e.items()).unwrap_or(&[])
}

fn string(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.get(tag)
        .map(|e| e.to_str().unwrap().trim_end_matches(['\0', ' ']).to_owned())
        .unwrap_or_default()
}

/// (code value, scheme) of an item's concept name.
fn concept(obj: &InMemDicomObject) -> (String, String) {
    let c = &items(obj, tags::CONCEPT_NAME_CODE_SEQUENCE)[0];
    (
        string(c, tags::CODE_VALUE),
        string(c, tags::CODING_SCHEME_DESIGNATOR),
    )
}

fn child<'a>(obj: &'a InMemDicomObject, value: &str) -> &'a InMemDicomObject {
    items(obj, tags::CONTENT_SEQUENCE)
        .iter()
        .find(|c| concept(c).0 == value)
        .unwrap_or_else(|| panic!("no child {value}"))
}

fn template(obj: &InMemDicomObject) -> String {
    string(
        &items(obj, tags::CONTENT_TEMPLATE_SEQUENCE)[0],
        tags::TEMPLATE_IDENTIFIER,
    )
}

fn written(dir: &Path, groups: &[MeasurementGroup]) -> (SrSummary, InMemDicomObject) {
    let seg = seg_file(dir, &[1, 2, 3]);
    let summary = write_sr(&request(&seg, groups, "job-1"), &dir.join("out/sr.dcm")).unwrap();
    let file = dicom_object::open_file(&summary.path).unwrap();
    assert_eq!(file.meta().transfer_syntax(), uids::EXPLICIT_VR_LE);
    (summary, file.into_inner())
}

#[test]
fn the_content_tree_follows_tid_1500() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, sr) = written(dir.path(), &groups());
    assert_eq!(string(&sr, tags::SOP_CLASS_UID), uids::COMPREHENSIVE_3D_SR);
    assert_eq!(
        string(&sr, tags::SOP_INSTANCE_UID),
        summary.sop_instance_uid
    );
    assert_eq!(
        summary.sop_instance_uid,
        derived_uid(&["job-1", "sr-instance"])
    );
    assert_eq!(
        summary.series_instance_uid,
        derived_uid(&["job-1", "sr-series"])
    );
    assert_eq!(string(&sr, tags::MODALITY), "SR");
    assert_eq!(string(&sr, tags::STUDY_INSTANCE_UID), "1.2.826.0.1.2");
    assert_eq!(string(&sr, tags::PATIENT_NAME), "Müller^Knee");
    assert_eq!(string(&sr, tags::CONTENT_DATE), "20260203");
    assert_eq!(string(&sr, tags::COMPLETION_FLAG), "COMPLETE");
    assert_eq!(
        string(&sr, tags::SOFTWARE_VERSIONS),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(concept(&sr), ("126000".into(), "DCM".into()));
    assert_eq!(template(&sr), "1500");

    let lang = child(&sr, "121049");
    assert_eq!(string(lang, tags::RELATIONSHIP_TYPE), "HAS CONCEPT MOD");
    assert_eq!(
        string(child(&sr, "121012"), tags::UID),
        derived_uid(&["kneenode", "device-observer"])
    );
    assert_eq!(string(child(&sr, "121013"), tags::TEXT_VALUE), "kneenode");
    child(&sr, "121058");
    let library = child(&sr, "111028");
    assert_eq!(
        items(child(library, "126200"), tags::CONTENT_SEQUENCE).len(),
        2 + 3
    );

    let measurements = items(child(&sr, "126010"), tags::CONTENT_SEQUENCE);
    assert_eq!(measurements.len(), 4);
    let femoral = &measurements[0];
    assert_eq!(concept(femoral).0, "125007");
    assert_eq!(template(femoral), "1411");
    assert_eq!(
        string(child(femoral, "112039"), tags::TEXT_VALUE),
        "Femoral cartilage"
    );
    assert!(string(child(femoral, "112040"), tags::UID).starts_with("2.25."));
    let segment = &items(child(femoral, "121191"), tags::REFERENCED_SOP_SEQUENCE)[0];
    assert_eq!(
        string(segment, tags::REFERENCED_SOP_INSTANCE_UID),
        "1.2.826.0.1.1"
    );
    assert_eq!(
        segment
            .get(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int::<u16>()
            .unwrap(),
        1
    );
    assert_eq!(string(child(femoral, "121232"), tags::UID), "1.2.826.0.1.5");
    let site = child(femoral, "363698007");
    assert_eq!(
        string(
            &items(site, tags::CONCEPT_CODE_SEQUENCE)[0],
            tags::CODE_VALUE
        ),
        "71341001"
    );
    let side = &items(child(site, "272741003"), tags::CONCEPT_CODE_SEQUENCE)[0];
    assert_eq!(string(side, tags::CODE_VALUE), "24028007");
    let volume = child(femoral, "118565006");
    assert_eq!(string(volume, tags::VALUE_TYPE), "NUM");
    let unit = &items(
        &items(volume, tags::MEASURED_VALUE_SEQUENCE)[0],
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
    )[0];
    assert_eq!(
        (
            string(unit, tags::CODE_VALUE),
            string(unit, tags::CODING_SCHEME_DESIGNATOR)
        ),
        ("mm3".into(), "UCUM".into())
    );

    // Medial tibial cartilage: Tibia, modified by Medial.
    let tibial_site = child(&measurements[1], "363698007");
    let modifier = &items(child(tibial_site, "106233006"), tags::CONCEPT_CODE_SEQUENCE)[0];
    assert_eq!(string(modifier, tags::CODE_VALUE), "255561001");

    // Thickness: 4 + 3 values, each with a Derivation and the region as Finding Site.
    let thickness: Vec<_> = items(&measurements[2], tags::CONTENT_SEQUENCE)
        .iter()
        .filter(|c| concept(c).0 == "THICKNESS")
        .collect();
    assert_eq!(thickness.len(), 7);
    let derivation = &items(child(thickness[1], "121401"), tags::CONCEPT_CODE_SEQUENCE)[0];
    assert_eq!(string(derivation, tags::CODE_VALUE), "386136009");
    let region = &items(
        child(thickness[1], "363698007"),
        tags::CONCEPT_CODE_SEQUENCE,
    )[0];
    assert_eq!(string(region, tags::CODE_VALUE), "FC-MED-WB");

    // BScore: no segment, so TID 1501 and no Referenced Segment.
    let bscore = &measurements[3];
    assert_eq!(template(bscore), "1501");
    assert!(items(bscore, tags::CONTENT_SEQUENCE)
        .iter()
        .all(|c| concept(c).0 != "121191"));
    assert_eq!(concept(child(bscore, "BSCORE")).1, "99KNEENODE");

    // The private scheme is declared; the evidence names the SEG and its sources.
    let scheme = &items(&sr, tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE)[0];
    assert_eq!(string(scheme, tags::CODING_SCHEME_DESIGNATOR), "99KNEENODE");
    let study = &items(&sr, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)[0];
    let series = items(study, tags::REFERENCED_SERIES_SEQUENCE);
    assert_eq!(series.len(), 2);
    assert_eq!(
        string(&series[1], tags::SERIES_INSTANCE_UID),
        "1.2.826.0.1.3"
    );
}

#[test]
fn values_round_trip_through_decimal_strings() {
    let dir = tempfile::tempdir().unwrap();
    let groups = groups();
    let (_, sr) = written(dir.path(), &groups);
    let wanted: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.measurements.iter().map(|m| m.value))
        .collect();
    let mut got = Vec::new();
    for group in items(child(&sr, "126010"), tags::CONTENT_SEQUENCE) {
        for num in items(group, tags::CONTENT_SEQUENCE) {
            if string(num, tags::VALUE_TYPE) != "NUM" {
                continue;
            }
            let m = &items(num, tags::MEASURED_VALUE_SEQUENCE)[0];
            let text = string(m, tags::NUMERIC_VALUE);
            assert!(text.len() <= 16, "{text}");
            let decimal: f64 = text.trim().parse().unwrap();
            let exact = m
                .get(tags::FLOATING_POINT_VALUE)
                .map(|e| e.to_float64().unwrap());
            got.push((decimal, exact));
        }
    }
    assert_eq!(got.len(), wanted.len());
    for ((decimal, exact), want) in got.iter().zip(&wanted) {
        assert!(
            (decimal - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{decimal} vs {want}"
        );
        // Floating Point Value appears exactly when the decimal string is not exact.
        assert_eq!(
            exact.is_some(),
            decimal.to_bits() != want.to_bits(),
            "{want}"
        );
        match exact {
            Some(x) => assert_eq!(x.to_bits(), want.to_bits()),
            None => assert_eq!(decimal.to_bits(), want.to_bits()),
        }
    }
    assert!(
        got.iter().any(|(_, exact)| exact.is_some()),
        "1/3 needs a Floating Point Value"
    );
}

#[test]
fn writing_twice_gives_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let seg = seg_file(dir.path(), &[1, 2, 3]);
    let groups = groups();
    let (a, b) = (dir.path().join("a.dcm"), dir.path().join("b/b.dcm"));
    write_sr(&request(&seg, &groups, "job-7"), &a).unwrap();
    write_sr(&request(&seg, &groups, "job-7"), &b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Rewriting in place replaces the file and leaves no temporary behind.
    write_sr(&request(&seg, &groups, "job-7"), &a).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let other = write_sr(&request(&seg, &groups, "job-8"), &dir.path().join("c.dcm")).unwrap();
    assert_ne!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&other.path).unwrap()
    );
}

#[test]
fn requests_that_cannot_be_reports_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let seg = seg_file(dir.path(), &[1]);
    let out = dir.path().join("sr.dcm");
    let mut g = groups();
    let e = write_sr(&request(&seg, &g, "j"), &out).unwrap_err();
    assert!(
        matches!(&e, SrError::Seg { .. }) && e.to_string().contains("segment"),
        "{e}"
    );
    assert!(write_sr(&request(&seg, &[], "j"), &out).is_err());
    g.truncate(2);
    g[1].measurements[0].value = f64::NAN;
    let e = write_sr(&request(&seg, &g, "j"), &out).unwrap_err();
    assert!(matches!(e, SrError::Invalid(_)), "{e}");
    g[1].measurements.clear();
    assert!(write_sr(&request(&seg, &g, "j"), &out).is_err());
    let e = write_sr(&request(&dir.path().join("missing.dcm"), &g, "j"), &out).unwrap_err();
    assert!(matches!(e, SrError::Seg { .. }), "{e}");
    assert!(!out.exists());
}

#[test]
fn only_volumes_need_no_private_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = SegmentCatalog::builtin();
    let g = vec![volume_group(&catalog.segments[&7], 3, 1000.0)];
    let (_, sr) = written(dir.path(), &g);
    assert!(sr
        .get(tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE)
        .is_none());
}

#[test]
fn codes_fit_their_value_representations() {
    let mut all = vec![
        concepts::cartilage_thickness(),
        concepts::bscore(),
        concepts::volume(),
        concepts::no_units(),
        concepts::mm(),
        concepts::mm3(),
    ];
    for key in [
        "ant_fem_cart",
        "med_wb_fem_cart",
        "lat_wb_fem_cart",
        "med_post_fem_cart",
        "lat_post_fem_cart",
        "med_tib_cart",
        "lat_tib_cart",
        "pat_cart",
    ] {
        all.push(concepts::thickness_region(key).unwrap());
    }
    assert!(concepts::thickness_region("femur").is_none());
    for c in &all {
        assert!(c.value.len() <= 16 && c.meaning.len() <= 64, "{c:?}");
    }
}
