//! Writing volumes as one Enhanced MR Image Storage instance: every slice a frame, one set of
//! frames per echo, with per-frame position, frame content and echo time and shared orientation
//! and pixel measures. Used by the phantom generator (`kneenode phantom --enhanced`) and tests.

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::uid::new_uid;
use super::uids;
use super::write::{ds, SeriesInfo, WriteError};
use crate::volume::Volume;

fn put(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, v.into()));
}

fn put_seq(obj: &mut InMemDicomObject, tag: dicom_core::Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn item(tag: dicom_core::Tag, vr: VR, v: impl Into<PrimitiveValue>) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tag, vr, v);
    o
}

/// Writes `echoes` (volumes on one grid, slices along k; echo e has effective echo time
/// 5 + 10·e ms) as one Enhanced MR instance at `path`, explicit VR little endian.
pub fn write_enhanced_mr(
    echoes: &[&Volume<u16>],
    info: &SeriesInfo,
    path: &Path,
) -> Result<PathBuf, WriteError> {
    let Some(first) = echoes.first() else {
        return Err(WriteError::TooLarge([0, 0, 0]));
    };
    let [nx, ny, nz] = first.dims();
    let (Ok(rows), Ok(cols)) = (u16::try_from(ny), u16::try_from(nx)) else {
        return Err(WriteError::TooLarge(first.dims()));
    };
    if echoes.iter().any(|e| e.dims() != first.dims()) {
        return Err(WriteError::TooLarge(first.dims()));
    }
    let g = first.geometry();
    let d = g.direction;
    let orientation = [d[0][0], d[1][0], d[2][0], d[0][1], d[1][1], d[2][1]]
        .map(ds)
        .join("\\");
    let sop = new_uid();
    let mut o = InMemDicomObject::new_empty();
    let text = [
        (
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::ENHANCED_MR_IMAGE.to_owned(),
        ),
        (tags::SOP_INSTANCE_UID, VR::UI, sop.clone()),
        (
            tags::IMAGE_TYPE,
            VR::CS,
            "ORIGINAL\\PRIMARY\\VOLUME\\NONE".into(),
        ),
        (tags::MODALITY, VR::CS, "MR".into()),
        (tags::MANUFACTURER, VR::LO, "kneenode phantom".into()),
        (tags::PATIENT_NAME, VR::PN, info.patient_name.clone()),
        (tags::PATIENT_ID, VR::LO, info.patient_id.clone()),
        (tags::PATIENT_BIRTH_DATE, VR::DA, String::new()),
        (tags::PATIENT_SEX, VR::CS, "O".into()),
        (tags::STUDY_INSTANCE_UID, VR::UI, info.study_uid.clone()),
        (tags::SERIES_INSTANCE_UID, VR::UI, info.series_uid.clone()),
        (tags::FRAME_OF_REFERENCE_UID, VR::UI, new_uid()),
        (tags::POSITION_REFERENCE_INDICATOR, VR::LO, String::new()),
        (tags::STUDY_DATE, VR::DA, "20260101".into()),
        (tags::STUDY_TIME, VR::TM, "120000".into()),
        (tags::STUDY_ID, VR::SH, "1".into()),
        (tags::ACCESSION_NUMBER, VR::SH, String::new()),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN, String::new()),
        (
            tags::SERIES_DESCRIPTION,
            VR::LO,
            info.series_description.clone(),
        ),
        (tags::PROTOCOL_NAME, VR::LO, info.protocol_name.clone()),
        (tags::BODY_PART_EXAMINED, VR::CS, info.body_part.clone()),
        (tags::LATERALITY, VR::CS, info.laterality.clone()),
        (tags::SERIES_NUMBER, VR::IS, info.series_number.to_string()),
        (tags::INSTANCE_NUMBER, VR::IS, "1".into()),
        (
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        ),
        (
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            (nz * echoes.len()).to_string(),
        ),
    ];
    for (tag, vr, v) in text {
        put(&mut o, tag, vr, v);
    }
    for (tag, v) in [
        (tags::ROWS, rows),
        (tags::COLUMNS, cols),
        (tags::SAMPLES_PER_PIXEL, 1),
        (tags::BITS_ALLOCATED, 16),
        (tags::BITS_STORED, 16),
        (tags::HIGH_BIT, 15),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        put(&mut o, tag, VR::US, v);
    }
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
    put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    put_seq(
        &mut shared,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![item(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, orientation)],
    );
    put_seq(
        &mut o,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared],
    );
    let plane = nx * ny;
    let mut pixels = Vec::with_capacity(plane * nz * echoes.len());
    let mut frames = Vec::with_capacity(nz * echoes.len());
    for (e, volume) in echoes.iter().enumerate() {
        for k in 0..nz {
            let mut f = InMemDicomObject::new_empty();
            let position = g.index_to_point([0.0, 0.0, k as f64]).map(ds).join("\\");
            put_seq(
                &mut f,
                tags::PLANE_POSITION_SEQUENCE,
                vec![item(tags::IMAGE_POSITION_PATIENT, VR::DS, position)],
            );
            let mut content = item(tags::STACK_ID, VR::SH, "1");
            put(
                &mut content,
                tags::IN_STACK_POSITION_NUMBER,
                VR::UL,
                (k + 1) as u32,
            );
            put_seq(&mut f, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
            put_seq(
                &mut f,
                tags::MR_ECHO_SEQUENCE,
                vec![item(
                    tags::EFFECTIVE_ECHO_TIME,
                    VR::FD,
                    5.0 + 10.0 * e as f64,
                )],
            );
            frames.push(f);
            pixels.extend_from_slice(&volume.data()[k * plane..(k + 1) * plane]);
        }
    }
    put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frames);
    put(
        &mut o,
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    );
    let fail = |reason: String| WriteError::Write {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LE)
        .media_storage_sop_class_uid(uids::ENHANCED_MR_IMAGE)
        .media_storage_sop_instance_uid(sop.as_str())
        .implementation_class_uid(uids::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uids::IMPLEMENTATION_VERSION);
    o.with_meta(meta)
        .map_err(|e| fail(e.to_string()))?
        .write_to_file(path)
        .map_err(|e| fail(e.to_string()))?;
    Ok(path.to_owned())
}
