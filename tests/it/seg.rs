//! DICOM SEG written from a phantom's ground truth, for a classic single-frame MR series and
//! for an enhanced MR multi-frame instance: validated by dciodvfy (dicom3tools) and read back
//! frame by frame against the source positions and the label voxels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use kneenode::dicom::codes::SegmentCatalog;
use kneenode::dicom::seg::{write_seg, SegRequest, SegSummary};
use kneenode::dicom::uid::new_uid;
use kneenode::dicom::uids;
use kneenode::dicom::write::{ds, write_mr_series, SeriesInfo};
use kneenode::phantom::{generate, Phantom, PhantomParams};
use kneenode::volume::{read_dicom_dir, Geometry, Volume};

use crate::dicom_checks::dciodvfy;

/// Image Position (Patient) of each source frame, by (SOP Instance UID, frame number).
type SourcePositions = HashMap<(String, Option<i64>), Vec<f64>>;

fn phantom() -> Phantom {
    generate(&PhantomParams::small(11))
}

/// A small phantom whose frames hold 61 × 63 = 3843 pixels, not a multiple of 8: SEG frames
/// then start mid-byte.
fn odd_phantom() -> Phantom {
    generate(&PhantomParams {
        dims: [61, 63, 40],
        ..PhantomParams::small(12)
    })
}

fn request<'a>(
    labels: &'a Volume<u8>,
    sources: &'a [PathBuf],
    catalog: &'a SegmentCatalog,
) -> SegRequest<'a> {
    SegRequest {
        labels,
        sources,
        catalog,
        job_id: "it-seg-job",
        algorithm_name: "kneenode demo",
        algorithm_version: "1",
        series_number: 901,
        created: chrono::NaiveDate::from_ymd_opt(2026, 3, 4)
            .and_then(|d| d.and_hms_opt(5, 6, 7))
            .unwrap(),
    }
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    obj.element(tag).unwrap().to_multi_float64().unwrap()
}

fn first(obj: &InMemDicomObject, tag: Tag) -> &InMemDicomObject {
    &obj.element(tag).unwrap().items().unwrap()[0]
}

fn uid(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_owned()
}

/// Reads the SEG back and checks every frame against its source and the labels: the referenced
/// source (instance, frame) is one of `sources` (its Image Position (Patient) by key), the
/// frame's position equals that source's, and its bits are exactly the label's voxels on that
/// slice. Also checks the voxel count of every segment.
fn verify(summary: &SegSummary, labels: &Volume<u8>, sources: &SourcePositions) {
    let seg = dicom_object::open_file(&summary.path).unwrap();
    assert_eq!(uid(&seg, tags::SOP_CLASS_UID), uids::SEGMENTATION);
    assert_eq!(uid(&seg, tags::SOP_INSTANCE_UID), summary.sop_instance_uid);
    let [nx, ny, nz] = labels.dims();
    let n_frames: usize = seg
        .element(tags::NUMBER_OF_FRAMES)
        .unwrap()
        .to_int()
        .unwrap();
    assert_eq!(n_frames, summary.frames);
    let segment_labels: HashMap<u16, u8> = summary
        .segments
        .iter()
        .map(|s| (s.number, s.label))
        .collect();
    let pixels = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let frame_bits = nx * ny;
    assert_eq!(
        pixels.len(),
        (n_frames * frame_bits).div_ceil(8).next_multiple_of(2)
    );
    let bit = |n: usize| pixels[n / 8] >> (n % 8) & 1 == 1;
    let per_frame = seg
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(per_frame.len(), n_frames);
    let mut counted: HashMap<u8, usize> = HashMap::new();
    let mut frames_of: HashMap<u8, usize> = HashMap::new();
    for (f, groups) in per_frame.iter().enumerate() {
        let derivation = first(groups, tags::DERIVATION_IMAGE_SEQUENCE);
        let source = first(derivation, tags::SOURCE_IMAGE_SEQUENCE);
        let key = (
            uid(source, tags::REFERENCED_SOP_INSTANCE_UID),
            source
                .element_opt(tags::REFERENCED_FRAME_NUMBER)
                .unwrap()
                .map(|e| e.to_int::<i64>().unwrap()),
        );
        let source_position = sources
            .get(&key)
            .unwrap_or_else(|| panic!("frame {f} references an unknown source {key:?}"));
        let position = floats(
            first(groups, tags::PLANE_POSITION_SEQUENCE),
            tags::IMAGE_POSITION_PATIENT,
        );
        assert_eq!(&position, source_position, "frame {f}");
        let number: u16 = first(groups, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .element(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int()
            .unwrap();
        let label = segment_labels[&number];
        let index = labels
            .geometry()
            .point_to_index([position[0], position[1], position[2]]);
        let k = index[2].round() as usize;
        assert!(
            k < nz && index[0].abs() < 1e-6 && index[1].abs() < 1e-6,
            "{index:?}"
        );
        let slice = &labels.data()[k * frame_bits..(k + 1) * frame_bits];
        let mut on = 0;
        for (p, &v) in slice.iter().enumerate() {
            let set = bit(f * frame_bits + p);
            assert_eq!(set, v == label, "frame {f} pixel {p}");
            on += usize::from(set);
        }
        assert!(on > 0, "frame {f} is empty");
        *counted.entry(label).or_default() += on;
        *frames_of.entry(label).or_default() += 1;
    }
    for s in &summary.segments {
        let voxels = labels.data().iter().filter(|&&v| v == s.label).count();
        assert_eq!(counted[&s.label], voxels, "{} voxels", s.name);
        let slices = labels
            .data()
            .chunks_exact(frame_bits)
            .filter(|sl| sl.contains(&s.label))
            .count();
        assert_eq!(frames_of[&s.label], slices, "{} frames", s.name);
    }
}

#[test]
fn a_seg_of_a_classic_mr_series_is_valid_and_matches_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    let phantom = odd_phantom();
    let files = write_mr_series(
        &phantom.image,
        &SeriesInfo::default(),
        &dir.path().join("mr"),
    )
    .unwrap();
    let image = read_dicom_dir(&dir.path().join("mr")).unwrap();
    let mut labels = phantom.labels.clone();
    labels.set_geometry(*image.geometry());
    let catalog = SegmentCatalog::builtin();
    let out = dir.path().join("out").join("seg.dcm");
    let summary = write_seg(&request(&labels, &files, &catalog), &out).unwrap();
    assert_eq!(summary.segments.len(), 9, "{:?}", summary.segments);
    assert!(summary.segments.windows(2).all(|w| w[0].label < w[1].label));
    dciodvfy(&out);

    let mut sources = HashMap::new();
    for f in &files {
        let obj = dicom_object::open_file(f).unwrap();
        let key = (uid(&obj, tags::SOP_INSTANCE_UID), None);
        sources.insert(key, floats(&obj, tags::IMAGE_POSITION_PATIENT));
    }
    verify(&summary, &labels, &sources);

    let seg = dicom_object::open_file(&out).unwrap();
    let source = dicom_object::open_file(&files[0]).unwrap();
    for tag in [
        tags::STUDY_INSTANCE_UID,
        tags::FRAME_OF_REFERENCE_UID,
        tags::PATIENT_ID,
    ] {
        assert_eq!(uid(&seg, tag), uid(&source, tag), "{tag}");
    }
    assert_eq!(
        uid(&seg, tags::IMAGE_LATERALITY),
        uid(&source, tags::LATERALITY)
    );
    let referenced = first(&seg, tags::REFERENCED_SERIES_SEQUENCE);
    assert_eq!(
        referenced
            .element(tags::REFERENCED_INSTANCE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .len(),
        files.len()
    );
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, v.into()));
}

fn put_item(obj: &mut InMemDicomObject, tag: Tag, item: InMemDicomObject) {
    obj.put(DataElement::new(
        tag,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![item]),
    ));
}

fn item(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tag, vr, v);
    o
}

/// A small Enhanced MR Image instance of `image`: frames in reverse slice order, Pixel
/// Measures shared, Plane Orientation per frame.
fn enhanced_mr(image: &Volume<u16>, path: &Path) -> String {
    let [nx, ny, nz] = image.dims();
    let g = image.geometry();
    let d = g.direction;
    let orientation = [d[0][0], d[1][0], d[2][0], d[0][1], d[1][1], d[2][1]]
        .map(ds)
        .join("\\");
    let sop = new_uid();
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, uids::ENHANCED_MR_IMAGE);
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop.as_str());
    put(
        &mut o,
        tags::IMAGE_TYPE,
        VR::CS,
        "ORIGINAL\\PRIMARY\\VOLUME\\NONE",
    );
    put(&mut o, tags::MODALITY, VR::CS, "MR");
    put(&mut o, tags::PATIENT_NAME, VR::PN, "PHANTOM^ENHANCED");
    put(&mut o, tags::PATIENT_ID, VR::LO, "KN-ENH");
    put(&mut o, tags::PATIENT_SEX, VR::CS, "F");
    put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, new_uid());
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, new_uid());
    put(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, new_uid());
    put(&mut o, tags::STUDY_DATE, VR::DA, "20260102");
    put(&mut o, tags::STUDY_TIME, VR::TM, "101500");
    put(&mut o, tags::STUDY_ID, VR::SH, "7");
    put(&mut o, tags::BODY_PART_EXAMINED, VR::CS, "KNEE");
    put(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, nz.to_string());
    put(&mut o, tags::ROWS, VR::US, ny as u16);
    put(&mut o, tags::COLUMNS, VR::US, nx as u16);
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put(&mut o, tags::BITS_ALLOCATED, VR::US, 16u16);
    put(&mut o, tags::BITS_STORED, VR::US, 16u16);
    put(&mut o, tags::HIGH_BIT, VR::US, 15u16);
    put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    let mut anatomy = item(tags::FRAME_LATERALITY, VR::CS, "L");
    put_item(
        &mut anatomy,
        tags::ANATOMIC_REGION_SEQUENCE,
        item(tags::CODE_VALUE, VR::SH, "72696002"),
    );
    let mut measures = item(
        tags::PIXEL_SPACING,
        VR::DS,
        format!("{}\\{}", ds(g.spacing[1]), ds(g.spacing[0])),
    );
    put(
        &mut measures,
        tags::SLICE_THICKNESS,
        VR::DS,
        ds(g.spacing[2]),
    );
    let mut shared = InMemDicomObject::new_empty();
    put_item(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, measures);
    put_item(&mut shared, tags::FRAME_ANATOMY_SEQUENCE, anatomy);
    put_item(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, shared);
    let slice = nx * ny;
    let mut pixels = Vec::with_capacity(slice * nz);
    let mut per_frame = Vec::with_capacity(nz);
    for k in (0..nz).rev() {
        let mut f = InMemDicomObject::new_empty();
        let position = g.index_to_point([0.0, 0.0, k as f64]).map(ds).join("\\");
        put_item(
            &mut f,
            tags::PLANE_POSITION_SEQUENCE,
            item(tags::IMAGE_POSITION_PATIENT, VR::DS, position),
        );
        put_item(
            &mut f,
            tags::PLANE_ORIENTATION_SEQUENCE,
            item(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                orientation.as_str(),
            ),
        );
        put_item(
            &mut f,
            tags::FRAME_CONTENT_SEQUENCE,
            item(tags::IN_STACK_POSITION_NUMBER, VR::UL, (k + 1) as u32),
        );
        per_frame.push(f);
        pixels.extend_from_slice(&image.data()[k * slice..(k + 1) * slice]);
    }
    o.put(DataElement::new(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(per_frame),
    ));
    put(
        &mut o,
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into_iter().collect()),
    );
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LE)
        .media_storage_sop_class_uid(uids::ENHANCED_MR_IMAGE)
        .media_storage_sop_instance_uid(sop.as_str())
        .implementation_class_uid(uids::IMPLEMENTATION_CLASS_UID);
    o.with_meta(meta).unwrap().write_to_file(path).unwrap();
    sop
}

/// The grid of an enhanced instance's frames, as a reader would build it: axes from the
/// orientation, origin at the frame lowest along the normal, slice spacing from positions.
fn grid_of_frames(path: &Path) -> (Geometry, SourcePositions) {
    let obj = dicom_object::open_file(path).unwrap();
    let sop = uid(&obj, tags::SOP_INSTANCE_UID);
    let per_frame = obj
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let shared = first(&obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let spacing = floats(
        first(shared, tags::PIXEL_MEASURES_SEQUENCE),
        tags::PIXEL_SPACING,
    );
    let o = floats(
        first(&per_frame[0], tags::PLANE_ORIENTATION_SEQUENCE),
        tags::IMAGE_ORIENTATION_PATIENT,
    );
    let n = [
        o[1] * o[5] - o[2] * o[4],
        o[2] * o[3] - o[0] * o[5],
        o[0] * o[4] - o[1] * o[3],
    ];
    let mut positions = HashMap::new();
    let mut along: Vec<(f64, Vec<f64>)> = Vec::new();
    for (f, groups) in per_frame.iter().enumerate() {
        let p = floats(
            first(groups, tags::PLANE_POSITION_SEQUENCE),
            tags::IMAGE_POSITION_PATIENT,
        );
        along.push((p[0] * n[0] + p[1] * n[1] + p[2] * n[2], p.clone()));
        positions.insert((sop.clone(), Some(f as i64 + 1)), p);
    }
    along.sort_by(|a, b| a.0.total_cmp(&b.0));
    let geometry = Geometry {
        origin: [along[0].1[0], along[0].1[1], along[0].1[2]],
        spacing: [spacing[1], spacing[0], along[1].0 - along[0].0],
        direction: [[o[0], o[3], n[0]], [o[1], o[4], n[1]], [o[2], o[5], n[2]]],
    };
    (geometry, positions)
}

#[test]
fn a_seg_of_an_enhanced_mr_instance_references_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    let phantom = phantom();
    let source = dir.path().join("enhanced.dcm");
    let sop = enhanced_mr(&phantom.image, &source);
    let (geometry, positions) = grid_of_frames(&source);
    let want = phantom.labels.geometry().affine_lps();
    let got = geometry.affine_lps();
    for r in 0..4 {
        for c in 0..4 {
            assert!((want[r][c] - got[r][c]).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }
    let mut labels = phantom.labels.clone();
    labels.set_geometry(geometry);
    let catalog = SegmentCatalog::builtin();
    let out = dir.path().join("seg.dcm");
    let sources = [source];
    let summary = write_seg(&request(&labels, &sources, &catalog), &out).unwrap();
    dciodvfy(&out);
    verify(&summary, &labels, &positions);

    let seg = dicom_object::open_file(&out).unwrap();
    assert_eq!(uid(&seg, tags::IMAGE_LATERALITY), "L");
    let referenced = first(&seg, tags::REFERENCED_SERIES_SEQUENCE);
    let instances = referenced
        .element(tags::REFERENCED_INSTANCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(uid(&instances[0], tags::REFERENCED_SOP_INSTANCE_UID), sop);
    assert_eq!(
        uid(&instances[0], tags::REFERENCED_SOP_CLASS_UID),
        uids::ENHANCED_MR_IMAGE
    );
}
