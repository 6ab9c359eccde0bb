//! Writing a volume as a classic DICOM MR series: one MR Image Storage instance per slice, with the
//! geometry tags a reader needs to rebuild the volume exactly (position, orientation, spacing).
//! Used by the phantom generator and by tests that need realistic series to push at the SCP.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::uid::new_uid;
use super::uids;
use crate::volume::Volume;

/// Descriptive attributes of a series to write. Patient fields are synthetic in every caller.
#[derive(Debug, Clone)]
pub struct SeriesInfo {
    /// Patient's Name.
    pub patient_name: String,
    /// Patient ID.
    pub patient_id: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// Series Description.
    pub series_description: String,
    /// Body Part Examined.
    pub body_part: String,
    /// Protocol Name.
    pub protocol_name: String,
    /// Series Number.
    pub series_number: i32,
    /// Laterality of the knee (`L` or `R`).
    pub laterality: String,
    /// Echo Numbers (0018,0086) of every slice.
    pub echo_number: i32,
}

impl Default for SeriesInfo {
    fn default() -> Self {
        Self {
            patient_name: "PHANTOM^KNEE".into(),
            patient_id: "KN-PHANTOM".into(),
            study_uid: new_uid(),
            series_uid: new_uid(),
            series_description: "SAG 3D DESS".into(),
            body_part: "KNEE".into(),
            protocol_name: "knee_dess_sag".into(),
            series_number: 1,
            laterality: "R".into(),
            echo_number: 1,
        }
    }
}

/// A series that could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The file could not be written.
    #[error("{path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The volume cannot be a DICOM series (too large in-plane).
    #[error("volume of {0:?} voxels cannot be written as DICOM slices")]
    TooLarge([usize; 3]),
}

/// A decimal string (DS) value as precise as its 16 characters allow, so that geometry written
/// and read back agrees to far better than 1e-6.
pub fn ds(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
    let shortest = format!("{v}");
    if shortest.len() <= 16 {
        return shortest;
    }
    for decimals in (0..=15).rev() {
        let s = format!("{v:.decimals$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        };
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.9e}")
}

fn put(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, v.into()));
}

/// Writes `volume` (slices along its k axis) as MR Image Storage files `dir/IM{k:04}.dcm` in
/// explicit VR little endian; returns the paths in slice order.
pub fn write_mr_series(
    volume: &Volume<u16>,
    info: &SeriesInfo,
    dir: &Path,
) -> Result<Vec<PathBuf>, WriteError> {
    let [nx, ny, nz] = volume.dims();
    let (rows, cols) = (u16::try_from(ny), u16::try_from(nx));
    let (Ok(rows), Ok(cols)) = (rows, cols) else {
        return Err(WriteError::TooLarge(volume.dims()));
    };
    std::fs::create_dir_all(dir).map_err(|e| WriteError::Write {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let g = volume.geometry();
    let d = g.direction;
    let orientation = [d[0][0], d[1][0], d[2][0], d[0][1], d[1][1], d[2][1]]
        .map(ds)
        .join("\\");
    let frame_of_reference = new_uid();
    let mut paths = Vec::with_capacity(nz);
    let slice_len = nx * ny;
    for k in 0..nz {
        let sop = new_uid();
        let mut obj = InMemDicomObject::new_empty();
        put(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            "ORIGINAL\\PRIMARY\\OTHER",
        );
        put(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE);
        put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop.as_str());
        put(&mut obj, tags::STUDY_DATE, VR::DA, "20260101");
        put(&mut obj, tags::STUDY_TIME, VR::TM, "120000");
        put(&mut obj, tags::ACCESSION_NUMBER, VR::SH, "");
        put(&mut obj, tags::MODALITY, VR::CS, "MR");
        put(&mut obj, tags::MANUFACTURER, VR::LO, "kneenode phantom");
        put(&mut obj, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
        put(
            &mut obj,
            tags::SERIES_DESCRIPTION,
            VR::LO,
            info.series_description.as_str(),
        );
        put(
            &mut obj,
            tags::PATIENT_NAME,
            VR::PN,
            info.patient_name.as_str(),
        );
        put(&mut obj, tags::PATIENT_ID, VR::LO, info.patient_id.as_str());
        put(&mut obj, tags::PATIENT_BIRTH_DATE, VR::DA, "");
        put(&mut obj, tags::PATIENT_SEX, VR::CS, "O");
        put(
            &mut obj,
            tags::BODY_PART_EXAMINED,
            VR::CS,
            info.body_part.as_str(),
        );
        put(&mut obj, tags::SCANNING_SEQUENCE, VR::CS, "GR");
        put(&mut obj, tags::SEQUENCE_VARIANT, VR::CS, "SS");
        put(&mut obj, tags::SCAN_OPTIONS, VR::CS, "");
        put(&mut obj, tags::MR_ACQUISITION_TYPE, VR::CS, "3D");
        put(
            &mut obj,
            tags::SLICE_THICKNESS,
            VR::DS,
            ds(g.spacing[2]).as_str(),
        );
        put(&mut obj, tags::ECHO_TIME, VR::DS, "5.0");
        put(&mut obj, tags::REPETITION_TIME, VR::DS, "16.0");
        put(
            &mut obj,
            tags::ECHO_NUMBERS,
            VR::IS,
            info.echo_number.to_string(),
        );
        put(&mut obj, tags::ECHO_TRAIN_LENGTH, VR::IS, "1");
        put(&mut obj, tags::MAGNETIC_FIELD_STRENGTH, VR::DS, "3");
        put(&mut obj, tags::PATIENT_POSITION, VR::CS, "FFS");
        put(
            &mut obj,
            tags::PROTOCOL_NAME,
            VR::LO,
            info.protocol_name.as_str(),
        );
        put(
            &mut obj,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            info.study_uid.as_str(),
        );
        put(
            &mut obj,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            info.series_uid.as_str(),
        );
        put(&mut obj, tags::STUDY_ID, VR::SH, "1");
        put(
            &mut obj,
            tags::SERIES_NUMBER,
            VR::IS,
            info.series_number.to_string().as_str(),
        );
        put(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            (k + 1).to_string().as_str(),
        );
        put(&mut obj, tags::LATERALITY, VR::CS, info.laterality.as_str());
        let p = g.index_to_point([0.0, 0.0, k as f64]);
        put(
            &mut obj,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            p.map(ds).join("\\").as_str(),
        );
        put(
            &mut obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            orientation.as_str(),
        );
        put(
            &mut obj,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            frame_of_reference.as_str(),
        );
        put(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        put(
            &mut obj,
            tags::IMAGES_IN_ACQUISITION,
            VR::IS,
            nz.to_string().as_str(),
        );
        put(
            &mut obj,
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(1u16),
        );
        put(
            &mut obj,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        put(&mut obj, tags::ROWS, VR::US, PrimitiveValue::from(rows));
        put(&mut obj, tags::COLUMNS, VR::US, PrimitiveValue::from(cols));
        let spacing = format!("{}\\{}", ds(g.spacing[1]), ds(g.spacing[0]));
        put(&mut obj, tags::PIXEL_SPACING, VR::DS, spacing.as_str());
        put(
            &mut obj,
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(16u16),
        );
        put(
            &mut obj,
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(16u16),
        );
        put(
            &mut obj,
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(15u16),
        );
        put(
            &mut obj,
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        );
        let pixels = &volume.data()[k * slice_len..(k + 1) * slice_len];
        put(
            &mut obj,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.iter().copied().collect()),
        );
        let path = dir.join(format!("IM{:04}.dcm", k + 1));
        let fail = |reason: String| WriteError::Write {
            path: path.clone(),
            reason,
        };
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LE)
            .media_storage_sop_class_uid(uids::MR_IMAGE)
            .media_storage_sop_instance_uid(sop.as_str())
            .implementation_class_uid(uids::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(uids::IMPLEMENTATION_VERSION);
        obj.with_meta(meta)
            .map_err(|e| fail(e.to_string()))?
            .write_to_file(&path)
            .map_err(|e| fail(e.to_string()))?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::ds;

    #[test]
    fn decimal_strings_fit_16_characters_and_keep_precision() {
        for v in [
            0.0,
            -0.0,
            1.5,
            -60.0,
            0.123_456_789_012_345_67,
            -123.456_789_012_345,
            1e-7,
            98_765.432_101_234,
        ] {
            let s = ds(v);
            assert!(s.len() <= 16, "{s}");
            let back: f64 = s.parse().unwrap();
            assert!((back - v).abs() <= 1e-10 * v.abs().max(1.0), "{v} -> {s}");
        }
        assert_eq!(ds(-0.0), "0");
    }
}
