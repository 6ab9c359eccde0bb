//! A segmentation uploaded for shape analysis (issue 5, item 7): the file must be a label
//! volume (whole numbers, NIfTI or NRRD), and the label map that comes with it must name at
//! least one of the values it holds, so that a wrong map is caught at the upload instead of as
//! an empty analysis an hour later.

use std::collections::BTreeSet;

use super::{Accepted, IntakeError, UploadKind};
use crate::pipeline::label_map::LabelMap;

/// Checks an accepted upload against the label map it is to be read with.
pub fn check_segmentation(accepted: &Accepted, map: &LabelMap) -> Result<(), IntakeError> {
    if accepted.kind == UploadKind::DicomZip {
        return Err(IntakeError::NotSegmentation(
            "a segmentation must be a NIfTI (.nii, .nii.gz) or NRRD (.nrrd) label volume, not DICOM"
                .into(),
        ));
    }
    let labels = crate::volume::read_labels(&accepted.input_path)
        .map_err(|e| IntakeError::NotSegmentation(e.to_string()))?;
    let present: BTreeSet<u16> = labels.data().iter().copied().filter(|&v| v > 0).collect();
    if present.is_empty() {
        return Err(IntakeError::NotSegmentation(
            "the volume holds only background (0)".into(),
        ));
    }
    let named: Vec<(&str, u16)> = map
        .entries()
        .into_iter()
        .filter(|(_, v)| present.contains(v))
        .collect();
    if named.is_empty() {
        let shown: Vec<String> = present.iter().take(20).map(u16::to_string).collect();
        return Err(IntakeError::NotSegmentation(format!(
            "none of the label map's values occurs in the volume (it holds {}{}); \
             upload the label map that goes with this segmentation",
            shown.join(", "),
            if present.len() > 20 { ", …" } else { "" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Geometry, Volume};

    fn accepted(dir: &std::path::Path, values: &[u16]) -> Accepted {
        let mut v = Volume::filled([4, 4, 4], 0u16, Geometry::default());
        for (n, &value) in values.iter().enumerate() {
            v.set(n, 0, 0, value);
        }
        let path = dir.join("seg.nii.gz");
        crate::volume::write_nifti(&path, &v).unwrap();
        Accepted {
            kind: UploadKind::NiftiGz,
            input_path: path,
            size_bytes: 1,
        }
    }

    #[test]
    fn a_map_must_name_a_value_the_volume_holds() {
        let dir = tempfile::tempdir().unwrap();
        let ours = LabelMap::default();
        assert!(check_segmentation(&accepted(dir.path(), &[7, 2]), &ours).is_ok());
        let e = check_segmentation(&accepted(dir.path(), &[11, 12]), &ours).unwrap_err();
        assert!(e.to_string().contains("it holds 11, 12"), "{e}");
        let e = check_segmentation(&accepted(dir.path(), &[]), &ours).unwrap_err();
        assert!(e.to_string().contains("only background"), "{e}");
        let zip = Accepted {
            kind: UploadKind::DicomZip,
            ..accepted(dir.path(), &[7])
        };
        assert!(check_segmentation(&zip, &ours).is_err());
    }

    #[test]
    fn an_image_is_not_a_segmentation() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Volume::filled([4, 4, 4], 0.0f32, Geometry::default());
        v.set(1, 1, 1, 0.5);
        let path = dir.path().join("img.nii.gz");
        crate::volume::write_nifti(&path, &v).unwrap();
        let a = Accepted {
            kind: UploadKind::NiftiGz,
            input_path: path,
            size_bytes: 1,
        };
        let e = check_segmentation(&a, &LabelMap::default()).unwrap_err();
        assert_eq!(
            e.status(),
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
        );
        assert!(
            e.to_string().starts_with("not a usable segmentation"),
            "{e}"
        );
    }
}
