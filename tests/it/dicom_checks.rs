//! Checks on the DICOM objects kneenode writes, shared by the SEG, SR and worker tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_dictionary_std::tags;
use dicom_object::open_file;

/// Runs dciodvfy (dicom3tools) on `file` and fails on any "Error" line, showing its whole
/// output; returns the output (warnings included) for the log.
pub fn dciodvfy(file: &Path) -> String {
    let out = Command::new("dciodvfy")
        .arg(file)
        .output()
        .expect("dciodvfy runs (Debian package dicom3tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors = text.lines().filter(|l| l.starts_with("Error")).count();
    assert_eq!(
        errors,
        0,
        "dciodvfy found {errors} error(s) in {}:\n{text}",
        file.display()
    );
    eprintln!("dciodvfy {}:\n{text}", file.display());
    text
}

/// The Modality of a DICOM file.
pub fn modality(file: &Path) -> String {
    open_file(file)
        .unwrap()
        .element(tags::MODALITY)
        .unwrap()
        .to_str()
        .unwrap()
        .trim()
        .to_owned()
}

fn position(obj: &dicom_object::InMemDicomObject) -> Vec<f64> {
    obj.element(tags::IMAGE_POSITION_PATIENT)
        .unwrap()
        .to_multi_float64()
        .unwrap()
}

/// Image Position (Patient) of every source frame, by (SOP Instance UID, frame number): frame
/// `None` for a classic instance, 1-based numbers for the frames of an enhanced one.
fn source_positions(sources: &[PathBuf]) -> HashMap<(String, Option<i64>), Vec<f64>> {
    let mut out = HashMap::new();
    for p in sources {
        let o = open_file(p).unwrap();
        let uid = o.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap();
        let uid = uid.trim_end_matches('\0').to_owned();
        match o.element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE) {
            Ok(frames) => {
                for (i, f) in frames.items().unwrap().iter().enumerate() {
                    let plane = &f
                        .element(tags::PLANE_POSITION_SEQUENCE)
                        .unwrap()
                        .items()
                        .unwrap()[0];
                    out.insert((uid.clone(), Some(i as i64 + 1)), position(plane));
                }
            }
            Err(_) => {
                out.insert((uid, None), position(&o));
            }
        }
    }
    out
}

/// Every frame of the SEG derives from one of `sources` (a classic instance, or a frame of an
/// enhanced one) and lies at that source's position.
pub fn assert_frames_reference_sources(seg: &Path, sources: &[PathBuf]) {
    let by_source = source_positions(sources);
    let seg = open_file(seg).unwrap();
    let frames = seg
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert!(!frames.is_empty());
    for (n, frame) in frames.iter().enumerate() {
        let derivation = &frame
            .element(tags::DERIVATION_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let source = &derivation
            .element(tags::SOURCE_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let uid = source
            .element(tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap();
        let key = (
            uid.trim_end_matches('\0').to_owned(),
            source
                .element(tags::REFERENCED_FRAME_NUMBER)
                .ok()
                .and_then(|e| e.to_int::<i64>().ok()),
        );
        let want = by_source
            .get(&key)
            .unwrap_or_else(|| panic!("frame {n} references {key:?}, not a source frame"));
        let plane = &frame
            .element(tags::PLANE_POSITION_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let got = position(plane);
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() < 1e-3,
                "frame {n}: position {got:?} vs source {want:?}"
            );
        }
    }
}
