//! The Segmentation IOD (PS3.3 A.51) as a data set: patient and study copied from the sources,
//! a new SEG series, the segment descriptions, the functional groups and the packed frames.

use std::collections::{BTreeMap, BTreeSet};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::bits::BitPacker;
use super::source::{item, text, SourceFrame, Sources};
use super::{Plan, SegError, SegRequest};
use crate::dicom::codes::Code;
use crate::dicom::uid::derived_uid;
use crate::dicom::uids;
use crate::dicom::write::ds;

/// The data set and the UIDs it carries.
pub(crate) struct Built {
    pub object: InMemDicomObject,
    pub series_uid: String,
    pub study_uid: String,
    pub frame_of_reference_uid: String,
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, value.into()));
}

fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(
        tag,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(items),
    ));
}

fn strs(values: &[String]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().cloned().collect())
}

/// A sequence item of one coded concept.
fn code_item(code: &Code) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::CODE_VALUE, VR::SH, code.value.as_str());
    put(
        &mut o,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        code.scheme.as_str(),
    );
    put(&mut o, tags::CODE_MEANING, VR::LO, code.meaning.as_str());
    o
}

/// At most 64 characters, the limit of LO.
fn lo(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Copies an element from the source header, or writes it empty (a type 2 attribute).
fn copy(dst: &mut InMemDicomObject, src: &InMemDicomObject, tag: Tag, vr: VR) {
    match src.get(tag) {
        Some(e) => {
            dst.put(e.clone());
        }
        None => put(dst, tag, vr, PrimitiveValue::Empty),
    }
}

/// The knee's laterality (R, L, U or B) from wherever the source states it: series, image or
/// shared Frame Anatomy.
fn laterality(header: &InMemDicomObject) -> Option<String> {
    let frame = item(header, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|s| item(s, tags::FRAME_ANATOMY_SEQUENCE))
        .and_then(|a| text(a, tags::FRAME_LATERALITY));
    [
        text(header, tags::IMAGE_LATERALITY),
        text(header, tags::LATERALITY),
        frame,
    ]
    .into_iter()
    .flatten()
    .find(|l| ["R", "L", "U", "B"].contains(&l.as_str()))
}

/// The one value every source frame has for `field`, or an error naming what differs.
fn single<'a>(
    frames: &'a [SourceFrame],
    what: &str,
    field: impl Fn(&'a SourceFrame) -> &'a str,
) -> Result<String, SegError> {
    let values: BTreeSet<&str> = frames.iter().map(field).collect();
    match values.len() {
        1 => Ok(values.into_iter().next().unwrap_or_default().to_owned()),
        n => Err(SegError::InconsistentSources {
            reason: format!("they have {n} different {what}s"),
        }),
    }
}

/// Builds the SEG data set (everything but the file meta group).
pub(crate) fn build(
    req: &SegRequest,
    sources: &Sources,
    slice_frames: &[usize],
    plan: &Plan,
    sop_instance_uid: &str,
) -> Result<Built, SegError> {
    let frames = &sources.frames;
    let header = &sources.header;
    let study_uid = single(frames, "Study Instance UID", |f| &f.study_uid)?;
    let frame_of_reference_uid = single(frames, "Frame of Reference UID", |f| {
        &f.frame_of_reference_uid
    })?;
    let series_uid = derived_uid(&[req.job_id, "seg-series"]);
    let dimension_uid = derived_uid(&[req.job_id, "seg-dimension-organization"]);
    let [nx, ny, _] = req.labels.dims();
    let (Ok(rows), Ok(cols)) = (u16::try_from(ny), u16::try_from(nx)) else {
        return Err(SegError::GridMismatch {
            reason: format!("{nx}×{ny} pixels do not fit a DICOM frame"),
        });
    };
    let date = req.created.format("%Y%m%d").to_string();
    let time = req.created.format("%H%M%S").to_string();
    let mut o = InMemDicomObject::new_empty();

    // SOP Common. UTF-8 whenever anything might not be ASCII: dicom-rs re-encodes every copied
    // string in the character set declared here.
    let any_non_ascii = [req.algorithm_name, req.algorithm_version]
        .into_iter()
        .chain(req.catalog.segments.values().map(|s| s.name.as_str()))
        .any(|s| !s.is_ascii());
    if any_non_ascii || text(header, tags::SPECIFIC_CHARACTER_SET).is_some() {
        put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    }
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION);
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid);
    put(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str());
    put(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str());

    // Patient and General Study, as the sources have them.
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ] {
        copy(&mut o, header, tag, vr);
    }
    put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, study_uid.as_str());

    // General Series and Segmentation Series: a new series.
    put(&mut o, tags::MODALITY, VR::CS, "SEG");
    put(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        series_uid.as_str(),
    );
    put(
        &mut o,
        tags::SERIES_NUMBER,
        VR::IS,
        req.series_number.to_string(),
    );
    put(&mut o, tags::SERIES_DATE, VR::DA, date.as_str());
    put(&mut o, tags::SERIES_TIME, VR::TM, time.as_str());
    let description = lo(&format!("Segmentation ({})", req.algorithm_name));
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, description);
    if let Some(body_part) = text(header, tags::BODY_PART_EXAMINED) {
        put(&mut o, tags::BODY_PART_EXAMINED, VR::CS, body_part);
    }

    // Frame of Reference.
    put(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        frame_of_reference_uid.as_str(),
    );
    copy(&mut o, header, tags::POSITION_REFERENCE_INDICATOR, VR::LO);

    // General and Enhanced General Equipment.
    put(&mut o, tags::MANUFACTURER, VR::LO, "kneenode");
    put(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, "kneenode");
    put(&mut o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "kneenode");
    put(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );

    // General Image, Segmentation Image, Image Pixel, Multi-frame Functional Groups.
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put(&mut o, tags::CONTENT_DATE, VR::DA, date.as_str());
    put(&mut o, tags::CONTENT_TIME, VR::TM, time.as_str());
    put(&mut o, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    put(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    // Image Laterality rather than the series' Laterality: General Series allows Laterality
    // only where no image-level laterality is sent (dciodvfy reports it as an error otherwise).
    if let Some(side) = laterality(header) {
        put(&mut o, tags::IMAGE_LATERALITY, VR::CS, side);
    }
    put(&mut o, tags::CONTENT_LABEL, VR::CS, "SEGMENTATION");
    let content = lo(&format!("{} {}", req.algorithm_name, req.algorithm_version));
    put(&mut o, tags::CONTENT_DESCRIPTION, VR::LO, content);
    // A family name alone ("kneenode^"): a PN without a component separator is the retired form.
    put(&mut o, tags::CONTENT_CREATOR_NAME, VR::PN, "kneenode^");
    put(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put(&mut o, tags::ROWS, VR::US, rows);
    put(&mut o, tags::COLUMNS, VR::US, cols);
    put(&mut o, tags::BITS_ALLOCATED, VR::US, 1u16);
    put(&mut o, tags::BITS_STORED, VR::US, 1u16);
    put(&mut o, tags::HIGH_BIT, VR::US, 0u16);
    put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    put(
        &mut o,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        plan.frames.len().to_string(),
    );

    put_seq(&mut o, tags::SEGMENT_SEQUENCE, segment_items(req, plan));
    put_dimensions(&mut o, &dimension_uid);
    put_seq(
        &mut o,
        tags::REFERENCED_SERIES_SEQUENCE,
        referenced_series(frames),
    );
    let first = &frames[*slice_frames.first().ok_or(SegError::NothingToWrite)?];
    put_seq(
        &mut o,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared_groups(first, req.labels.geometry().spacing[2])],
    );
    put_seq(
        &mut o,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame_groups(frames, slice_frames, plan),
    );

    // Frames follow the plan: segment by segment, slice by slice.
    let slice_len = nx * ny;
    let mut packer = BitPacker::with_capacity(slice_len * plan.frames.len());
    let data = req.labels.data();
    for &(segment, k) in &plan.frames {
        let label = plan.segments[segment].label;
        packer.push_frame(&data[k * slice_len..(k + 1) * slice_len], |v| v == label);
    }
    put(&mut o, tags::PIXEL_DATA, VR::OB, packer.finish());

    Ok(Built {
        object: o,
        series_uid,
        study_uid,
        frame_of_reference_uid,
    })
}

/// Segment Sequence items: what each segment is, how it was made, how to show it.
fn segment_items(req: &SegRequest, plan: &Plan) -> Vec<InMemDicomObject> {
    let algorithm = lo(req.algorithm_name);
    let mut items = Vec::with_capacity(plan.segments.len());
    for s in &plan.segments {
        let Some(def) = req.catalog.segments.get(&s.label) else {
            continue;
        };
        let mut i = InMemDicomObject::new_empty();
        put(&mut i, tags::SEGMENT_NUMBER, VR::US, s.number);
        put(&mut i, tags::SEGMENT_LABEL, VR::LO, lo(&def.name));
        put(&mut i, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
        put(
            &mut i,
            tags::SEGMENT_ALGORITHM_NAME,
            VR::LO,
            algorithm.as_str(),
        );
        let mut identification = InMemDicomObject::new_empty();
        put_seq(
            &mut identification,
            tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
            vec![code_item(&Code::dcm("123110", "Artificial Intelligence"))],
        );
        put(
            &mut identification,
            tags::ALGORITHM_NAME,
            VR::LO,
            algorithm.as_str(),
        );
        put(
            &mut identification,
            tags::ALGORITHM_VERSION,
            VR::LO,
            lo(req.algorithm_version),
        );
        put_seq(
            &mut i,
            tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
            vec![identification],
        );
        put_seq(
            &mut i,
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            vec![code_item(&def.category)],
        );
        let mut property = code_item(&def.property_type);
        if let Some(modifier) = &def.type_modifier {
            put_seq(
                &mut property,
                tags::SEGMENTED_PROPERTY_TYPE_MODIFIER_CODE_SEQUENCE,
                vec![code_item(modifier)],
            );
        }
        put_seq(
            &mut i,
            tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
            vec![property],
        );
        if let Some(region) = &def.region {
            put_seq(
                &mut i,
                tags::ANATOMIC_REGION_SEQUENCE,
                vec![code_item(region)],
            );
        }
        put(
            &mut i,
            tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
            VR::US,
            PrimitiveValue::U16(def.colour.iter().copied().collect()),
        );
        items.push(i);
    }
    items
}

/// Multi-frame Dimension: frames are indexed by segment number, then by image position.
fn put_dimensions(o: &mut InMemDicomObject, uid: &str) {
    let mut organisation = InMemDicomObject::new_empty();
    put(
        &mut organisation,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        uid,
    );
    put_seq(o, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![organisation]);
    let index = |pointer: Tag, group: Tag, label: &str| {
        let mut i = InMemDicomObject::new_empty();
        put(&mut i, tags::DIMENSION_ORGANIZATION_UID, VR::UI, uid);
        put(&mut i, tags::DIMENSION_INDEX_POINTER, VR::AT, pointer);
        put(&mut i, tags::FUNCTIONAL_GROUP_POINTER, VR::AT, group);
        put(&mut i, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
        i
    };
    put_seq(
        o,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            index(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Segment Number",
            ),
            index(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position (Patient)",
            ),
        ],
    );
}

/// Common Instance Reference: every source instance, by series, in UID order.
fn referenced_series(frames: &[SourceFrame]) -> Vec<InMemDicomObject> {
    let mut by_series: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for f in frames {
        by_series
            .entry(&f.series_uid)
            .or_default()
            .insert((&f.sop_instance, &f.sop_class));
    }
    by_series
        .into_iter()
        .map(|(series, instances)| {
            let mut s = InMemDicomObject::new_empty();
            let items = instances
                .into_iter()
                .map(|(instance, class)| {
                    let mut r = InMemDicomObject::new_empty();
                    put(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
                    put(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
                    r
                })
                .collect();
            put_seq(&mut s, tags::REFERENCED_INSTANCE_SEQUENCE, items);
            put(&mut s, tags::SERIES_INSTANCE_UID, VR::UI, series);
            s
        })
        .collect()
}

/// Pixel Measures and Plane Orientation, as the first matched source frame states them.
fn shared_groups(first: &SourceFrame, slice_spacing: f64) -> InMemDicomObject {
    let mut measures = InMemDicomObject::new_empty();
    let spacing = first.pixel_spacing.map(ds).join("\\");
    put(&mut measures, tags::PIXEL_SPACING, VR::DS, spacing);
    let thickness = first.slice_thickness.unwrap_or(slice_spacing);
    put(&mut measures, tags::SLICE_THICKNESS, VR::DS, ds(thickness));
    put(
        &mut measures,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        ds(slice_spacing),
    );
    let mut orientation = InMemDicomObject::new_empty();
    put(
        &mut orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        strs(&first.orientation_text),
    );
    let mut shared = InMemDicomObject::new_empty();
    put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    put_seq(
        &mut shared,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![orientation],
    );
    shared
}

/// Per-frame groups: derivation from the source frame, dimension indices, position, segment.
fn per_frame_groups(
    frames: &[SourceFrame],
    slice_frames: &[usize],
    plan: &Plan,
) -> Vec<InMemDicomObject> {
    // The position index counts the distinct positions the SEG uses, in slice order.
    let used: BTreeSet<usize> = plan.frames.iter().map(|&(_, k)| k).collect();
    let rank: BTreeMap<usize, u32> = used.into_iter().zip(1..).collect();
    plan.frames
        .iter()
        .map(|&(segment, k)| {
            let source = &frames[slice_frames[k]];
            let number = plan.segments[segment].number;
            let mut g = InMemDicomObject::new_empty();

            let mut image = InMemDicomObject::new_empty();
            put(
                &mut image,
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                source.sop_class.as_str(),
            );
            put(
                &mut image,
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                source.sop_instance.as_str(),
            );
            if let Some(n) = source.frame_number {
                put(
                    &mut image,
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    n.to_string(),
                );
            }
            put_seq(
                &mut image,
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                vec![code_item(&Code::dcm(
                    "121322",
                    "Source image for image processing operation",
                ))],
            );
            let mut derivation = InMemDicomObject::new_empty();
            put_seq(
                &mut derivation,
                tags::DERIVATION_CODE_SEQUENCE,
                vec![code_item(&Code::dcm("113076", "Segmentation"))],
            );
            put_seq(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![image]);
            put_seq(&mut g, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);

            let mut content = InMemDicomObject::new_empty();
            let position_index = rank.get(&k).copied().unwrap_or(1);
            put(
                &mut content,
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::U32([u32::from(number), position_index].into_iter().collect()),
            );
            put_seq(&mut g, tags::FRAME_CONTENT_SEQUENCE, vec![content]);

            let mut position = InMemDicomObject::new_empty();
            put(
                &mut position,
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                strs(&source.position_text),
            );
            put_seq(&mut g, tags::PLANE_POSITION_SEQUENCE, vec![position]);

            let mut segment_id = InMemDicomObject::new_empty();
            put(
                &mut segment_id,
                tags::REFERENCED_SEGMENT_NUMBER,
                VR::US,
                number,
            );
            put_seq(
                &mut g,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                vec![segment_id],
            );
            g
        })
        .collect()
}
