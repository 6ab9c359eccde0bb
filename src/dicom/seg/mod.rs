//! The DICOM Segmentation (SEG) writer: a label volume on the grid of its source MR series
//! becomes one BINARY Segmentation Storage instance that a PACS shows next to that series.
//!
//! Every label that occurs in the volume and has an entry in the [`SegmentCatalog`] becomes a
//! segment (numbered 1…n in ascending label order). A frame is written for each segment and
//! each source slice where that label has at least one voxel, in that order (segment, then
//! position along the slice normal); empty frames are left out. Each frame repeats its source
//! frame's Image Position (Patient) exactly and references that source instance (and frame,
//! for an enhanced multi-frame source).
//!
//! Sources may be classic single-frame MR instances (one file per slice, in any order) or an
//! enhanced multi-frame instance; only their headers are read. Patient, study and frame of
//! reference are copied from them; the series, the instance and the dimension organisation get
//! UIDs derived from the job id, and with the same [`SegRequest::created`] a rewrite gives the
//! same bytes, so a resent SEG is the same object to a PACS.

mod bits;
mod dataset;
mod source;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};

use dicom_object::FileMetaTableBuilder;

use super::codes::SegmentCatalog;
use super::uid::derived_uid;
use super::uids;
use crate::volume::Volume;

/// What to write: the labels, the source instances they were computed from, and provenance.
#[derive(Debug, Clone, Copy)]
pub struct SegRequest<'a> {
    /// Labels on the grid of the source series (the geometry `read_dicom_dir` gives: i along a
    /// row, j down the columns, k along the slice normal).
    pub labels: &'a Volume<u8>,
    /// The source instance files: classic single-frame MR (one per slice, any order) or one
    /// enhanced MR multi-frame file.
    pub sources: &'a [PathBuf],
    /// What each label means.
    pub catalog: &'a SegmentCatalog,
    /// The job; every UID is derived from it, so a resend has the same UIDs.
    pub job_id: &'a str,
    /// Segment Algorithm Name, e.g. "kneenode demo".
    pub algorithm_name: &'a str,
    /// Algorithm Version, e.g. "1".
    pub algorithm_version: &'a str,
    /// Series Number of the new series.
    pub series_number: i32,
    /// Series, content and instance creation date and time. Pass the job's fixed time, so that
    /// writing again gives identical bytes.
    pub created: chrono::NaiveDateTime,
}

/// One segment written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Segment Number (1…n).
    pub number: u16,
    /// The label it stands for.
    pub label: u8,
    /// Segment Label.
    pub name: String,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegSummary {
    /// The file.
    pub path: PathBuf,
    /// SOP Instance UID of the SEG.
    pub sop_instance_uid: String,
    /// Series Instance UID of the SEG's new series.
    pub series_instance_uid: String,
    /// Study Instance UID (the sources').
    pub study_instance_uid: String,
    /// Frame of Reference UID (the sources').
    pub frame_of_reference_uid: String,
    /// The segments, by number.
    pub segments: Vec<SegmentInfo>,
    /// Number of frames.
    pub frames: usize,
}

/// Why a SEG could not be written. Messages name files, UIDs and geometry, never patient data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegError {
    /// No source files were given.
    #[error("no source instances were given for the segmentation")]
    NoSources,
    /// A source file could not be read or lacks what a SEG needs from it.
    #[error("source {}: {reason}", path.display())]
    Source {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The sources do not form one series a SEG can reference (several studies or frames of
    /// reference).
    #[error("the source instances are inconsistent: {reason}")]
    InconsistentSources {
        /// What differs.
        reason: String,
    },
    /// The label volume is not on the sources' grid.
    #[error("the labels do not lie on the source images' grid: {reason}")]
    GridMismatch {
        /// What does not match.
        reason: String,
    },
    /// No label of the catalogue occurs in the volume: a SEG needs at least one frame.
    #[error("the label volume contains none of the catalogue's labels; there is nothing to write")]
    NothingToWrite,
    /// The object could not be encoded.
    #[error("could not encode the segmentation: {reason}")]
    Encode {
        /// Why.
        reason: String,
    },
    /// The file could not be written.
    #[error("{}: {reason}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The segments and frames to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub segments: Vec<SegmentInfo>,
    /// (index into `segments`, label slice k), segment-major, k ascending.
    pub frames: Vec<(usize, usize)>,
}

/// Chooses segments (labels present and catalogued, ascending) and their non-empty slices.
pub(crate) fn plan(labels: &Volume<u8>, catalog: &SegmentCatalog) -> Plan {
    let [nx, ny, nz] = labels.dims();
    let slice_len = nx * ny;
    // present[k][label]: whether slice k holds that label.
    let mut present = vec![[false; 256]; nz];
    if slice_len > 0 {
        for (k, slice) in labels.data().chunks_exact(slice_len).enumerate() {
            for &v in slice {
                present[k][usize::from(v)] = true;
            }
        }
    }
    let mut segments = Vec::new();
    let mut frames = Vec::new();
    for (&label, def) in &catalog.segments {
        let slices: Vec<usize> = (0..nz)
            .filter(|&k| present[k][usize::from(label)])
            .collect();
        if slices.is_empty() || label == 0 {
            continue;
        }
        let index = segments.len();
        segments.push(SegmentInfo {
            number: u16::try_from(index + 1).unwrap_or(u16::MAX),
            label,
            name: def.name.clone(),
        });
        frames.extend(slices.into_iter().map(|k| (index, k)));
    }
    Plan { segments, frames }
}

/// Writes the SEG for `req` to `out` (a Part-10 file in explicit VR little endian), atomically:
/// the bytes go to a temporary file beside it, which is synced and renamed over `out`.
pub fn write_seg(req: &SegRequest, out: &Path) -> Result<SegSummary, SegError> {
    if req.sources.is_empty() {
        return Err(SegError::NoSources);
    }
    let sources = source::read_sources(req.sources)?;
    let slice_frames =
        source::match_slices(req.labels.geometry(), req.labels.dims(), &sources.frames)?;
    let plan = plan(req.labels, req.catalog);
    if plan.frames.is_empty() {
        return Err(SegError::NothingToWrite);
    }
    let sop_instance_uid = derived_uid(&[req.job_id, "seg-instance"]);
    let built = dataset::build(req, &sources, &slice_frames, &plan, &sop_instance_uid)?;
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LE)
        .media_storage_sop_class_uid(uids::SEGMENTATION)
        .media_storage_sop_instance_uid(sop_instance_uid.as_str())
        .implementation_class_uid(uids::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uids::IMPLEMENTATION_VERSION);
    let encode = |e: &dyn std::fmt::Display| SegError::Encode {
        reason: e.to_string(),
    };
    let file = built.object.with_meta(meta).map_err(|e| encode(&e))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| encode(&e))?;
    write_atomically(out, &bytes).map_err(|e| SegError::Write {
        path: out.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(SegSummary {
        path: out.to_owned(),
        sop_instance_uid,
        series_instance_uid: built.series_uid,
        study_instance_uid: built.study_uid,
        frame_of_reference_uid: built.frame_of_reference_uid,
        segments: plan.segments,
        frames: plan.frames.len(),
    })
}

/// Writes `bytes` to a temporary file next to `out`, syncs it and renames it into place, so a
/// reader (or a sender) never sees half a file.
fn write_atomically(out: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "seg.dcm".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        // Make the rename itself durable; a directory that cannot be opened is no reason to fail.
        if let Ok(d) = std::fs::File::open(&dir) {
            d.sync_all().ok();
        }
        Ok(())
    })();
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    result
}
