//! Reading the SEG an SR measures: its identity (SOP class and instance, series, frame of
//! reference), the source series it segments, its segment numbers, and the patient and study
//! attributes the SR copies so that it files next to the SEG in the same study.

use std::path::{Path, PathBuf};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use super::SrError;

/// Patient and General Study module attributes copied from the SEG, in tag order. Those with
/// `Some(vr)` are of type 2 and written empty when the SEG lacks them.
const COPIED: [(Tag, Option<VR>); 18] = [
    (tags::STUDY_DATE, Some(VR::DA)),
    (tags::STUDY_TIME, Some(VR::TM)),
    (tags::ACCESSION_NUMBER, Some(VR::SH)),
    (tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE, None),
    (tags::REFERRING_PHYSICIAN_NAME, Some(VR::PN)),
    (tags::STUDY_DESCRIPTION, None),
    (tags::PATIENT_NAME, Some(VR::PN)),
    (tags::PATIENT_ID, Some(VR::LO)),
    (tags::ISSUER_OF_PATIENT_ID, None),
    (tags::PATIENT_BIRTH_DATE, Some(VR::DA)),
    (tags::PATIENT_SEX, Some(VR::CS)),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, None),
    (tags::PATIENT_AGE, None),
    (tags::PATIENT_SIZE, None),
    (tags::PATIENT_WEIGHT, None),
    (tags::PATIENT_IDENTITY_REMOVED, None),
    (tags::STUDY_INSTANCE_UID, None),
    (tags::STUDY_ID, Some(VR::SH)),
];

/// What an SR needs from the SEG it measures (read with [`SegReference::read`]).
#[derive(Debug, Clone)]
pub struct SegReference {
    /// The SEG file.
    pub path: PathBuf,
    /// SOP Class UID (Segmentation Storage, normally).
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Series Instance UID of the SEG.
    pub series_instance_uid: String,
    /// Study Instance UID (the SR joins this study).
    pub study_instance_uid: String,
    /// Frame of Reference UID, if the SEG has one.
    pub frame_of_reference_uid: Option<String>,
    /// The series the SEG segments (its Referenced Series Sequence), if it names one.
    pub source_series_uid: Option<String>,
    /// The instances the SEG was made from (its Referenced Instance Sequences), in the SEG's
    /// order; empty when it lists none.
    pub source_instances: Vec<SourceInstance>,
    /// Laterality of the knee (`L` or `R`, from Laterality or Image Laterality), if given.
    pub laterality: Option<String>,
    /// The Segment Numbers of the SEG's Segment Sequence.
    pub segment_numbers: Vec<u16>,
    /// Patient and study elements to copy, in tag order.
    pub(super) copied: Vec<InMemElement>,
}

/// One instance the SEG was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInstance {
    /// Referenced SOP Class UID.
    pub sop_class_uid: String,
    /// Referenced SOP Instance UID.
    pub sop_instance_uid: String,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    (!s.is_empty()).then(|| s.to_owned())
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(|e| e.items()).unwrap_or(&[])
}

impl SegReference {
    /// Reads the SEG's header (not its pixel data).
    pub fn read(path: &Path) -> Result<Self, SrError> {
        let fail = |reason: String| SrError::Seg {
            path: path.to_owned(),
            reason,
        };
        let file = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|e| fail(e.to_string()))?;
        let obj: &InMemDicomObject = &file;
        let required = |tag: Tag, name: &str| {
            text(obj, tag).ok_or_else(|| fail(format!("the SEG has no {name}")))
        };
        let sop_class_uid = required(tags::SOP_CLASS_UID, "SOP Class UID")?;
        let sop_instance_uid = required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
        let series_instance_uid = required(tags::SERIES_INSTANCE_UID, "Series Instance UID")?;
        let study_instance_uid = required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?;
        let referenced = items(obj, tags::REFERENCED_SERIES_SEQUENCE);
        let source_series_uid = referenced
            .iter()
            .find_map(|s| text(s, tags::SERIES_INSTANCE_UID));
        let source_instances = referenced
            .iter()
            .flat_map(|s| items(s, tags::REFERENCED_INSTANCE_SEQUENCE))
            .filter_map(|i| {
                Some(SourceInstance {
                    sop_class_uid: text(i, tags::REFERENCED_SOP_CLASS_UID)?,
                    sop_instance_uid: text(i, tags::REFERENCED_SOP_INSTANCE_UID)?,
                })
            })
            .collect();
        let segment_numbers = items(obj, tags::SEGMENT_SEQUENCE)
            .iter()
            .filter_map(|s| s.get(tags::SEGMENT_NUMBER)?.to_int::<u16>().ok())
            .collect();
        let mut copied = Vec::with_capacity(COPIED.len());
        for (tag, type2) in COPIED {
            match (obj.get(tag), type2) {
                (Some(e), _) => copied.push(e.clone()),
                (None, Some(vr)) => copied.push(InMemElement::empty(tag, vr)),
                (None, None) => {}
            }
        }
        Ok(Self {
            path: path.to_owned(),
            sop_class_uid,
            sop_instance_uid,
            series_instance_uid,
            study_instance_uid,
            frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID),
            source_series_uid,
            source_instances,
            laterality: text(obj, tags::LATERALITY).or_else(|| text(obj, tags::IMAGE_LATERALITY)),
            segment_numbers,
            copied,
        })
    }
}
