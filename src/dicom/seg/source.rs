//! The source images of a SEG: the frames of classic single-frame or enhanced multi-frame
//! instances, with the geometry each frame states, and the match of each label slice to one of
//! them.

use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use super::SegError;
use crate::volume::Geometry;

/// Tolerance, in voxels, for a source frame's position to count as a label slice's position
/// (1 % of the spacing, far above DS rounding, far below a slice).
const POSITION_TOLERANCE: f64 = 0.01;
/// Tolerance on direction cosines (unit vectors, so about 0.06°).
const ORIENTATION_TOLERANCE: f64 = 1e-3;

/// One source frame: a classic instance, or one frame of an enhanced one.
#[derive(Debug, Clone)]
pub(crate) struct SourceFrame {
    /// The file it came from (for error messages).
    pub path: PathBuf,
    pub sop_class: String,
    pub sop_instance: String,
    pub series_uid: String,
    pub study_uid: String,
    pub frame_of_reference_uid: String,
    /// 1-based frame number in a multi-frame instance; `None` for a single-frame one.
    pub frame_number: Option<u32>,
    /// Image Position (Patient) as the source wrote it, so the SEG repeats it exactly.
    pub position_text: Vec<String>,
    pub position: [f64; 3],
    pub orientation_text: Vec<String>,
    pub orientation: [f64; 6],
    /// Pixel Spacing: between rows, between columns.
    pub pixel_spacing: [f64; 2],
    pub slice_thickness: Option<f64>,
    pub rows: usize,
    pub cols: usize,
}

impl SourceFrame {
    /// The file, and the frame in a multi-frame file, for messages.
    fn describe(&self) -> String {
        match self.frame_number {
            Some(n) => format!("{} frame {n}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

/// The frames of all source files, and the header of the first, to copy patient and study from.
pub(crate) struct Sources {
    pub frames: Vec<SourceFrame>,
    pub header: InMemDicomObject,
}

fn bad(path: &Path, reason: impl Into<String>) -> SegError {
    SegError::Source {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// A string value without DICOM padding.
pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(['\0', ' ']);
    (!s.is_empty()).then(|| s.to_owned())
}

/// The first item of a sequence.
pub(crate) fn item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag)?.items()?.first()
}

/// A multi-valued DS, both as written (trimmed) and as numbers.
fn numbers(
    obj: &InMemDicomObject,
    tag: Tag,
    n: usize,
    path: &Path,
    name: &str,
) -> Result<(Vec<String>, Vec<f64>), SegError> {
    let elem = obj
        .get(tag)
        .ok_or_else(|| bad(path, format!("no {name}")))?;
    let strings: Vec<String> = elem
        .to_multi_str()
        .map_err(|_| bad(path, format!("{name} is not a decimal string")))?
        .iter()
        .map(|s| s.trim_matches(['\0', ' ']).to_owned())
        .collect();
    let values: Vec<f64> = strings.iter().filter_map(|s| s.parse().ok()).collect();
    if strings.len() != n || values.len() != n || values.iter().any(|v| !v.is_finite()) {
        return Err(bad(path, format!("{name} must have {n} numbers")));
    }
    Ok((strings, values))
}

/// A functional group's first item: per-frame if the frame has it, else shared.
fn group<'a>(
    per_frame: Option<&'a InMemDicomObject>,
    shared: Option<&'a InMemDicomObject>,
    tag: Tag,
) -> Option<&'a InMemDicomObject> {
    per_frame
        .and_then(|f| item(f, tag))
        .or_else(|| shared.and_then(|s| item(s, tag)))
}

/// Reads every source file's frames (the headers only: reading stops before Pixel Data).
pub(crate) fn read_sources(paths: &[PathBuf]) -> Result<Sources, SegError> {
    let mut frames = Vec::new();
    let mut header = None;
    for path in paths {
        let obj = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|e| bad(path, format!("not a readable DICOM file: {e}")))?
            .into_inner();
        frames.extend(frames_of(&obj, path)?);
        header.get_or_insert(obj);
    }
    let header = header.ok_or(SegError::NoSources)?;
    Ok(Sources { frames, header })
}

/// The frames one instance holds.
fn frames_of(obj: &InMemDicomObject, path: &Path) -> Result<Vec<SourceFrame>, SegError> {
    let required = |tag, name: &str| text(obj, tag).ok_or_else(|| bad(path, format!("no {name}")));
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<i64>().ok());
    let rows = int(tags::ROWS).filter(|r| *r > 0);
    let cols = int(tags::COLUMNS).filter(|c| *c > 0);
    let (Some(rows), Some(cols)) = (rows, cols) else {
        return Err(bad(path, "no Rows or Columns"));
    };
    let base = SourceFrame {
        path: path.to_owned(),
        sop_class: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
        sop_instance: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        series_uid: required(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        study_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
        frame_of_reference_uid: required(tags::FRAME_OF_REFERENCE_UID, "Frame of Reference UID")?,
        frame_number: None,
        position_text: Vec::new(),
        position: [0.0; 3],
        orientation_text: Vec::new(),
        orientation: [0.0; 6],
        pixel_spacing: [0.0; 2],
        slice_thickness: None,
        rows: rows as usize,
        cols: cols as usize,
    };
    let per_frame = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items());
    let Some(per_frame) = per_frame else {
        // Classic: the geometry is at the top level.
        return Ok(vec![with_geometry(base, obj, obj, obj, path)?]);
    };
    let declared = int(tags::NUMBER_OF_FRAMES).unwrap_or(0);
    if usize::try_from(declared).ok() != Some(per_frame.len()) {
        return Err(bad(
            path,
            format!(
                "Number of Frames is {declared} but there are {} per-frame functional groups",
                per_frame.len()
            ),
        ));
    }
    let shared = item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let mut frames = Vec::with_capacity(per_frame.len());
    for (i, f) in per_frame.iter().enumerate() {
        let which = format!("frame {}", i + 1);
        let position = group(Some(f), None, tags::PLANE_POSITION_SEQUENCE)
            .ok_or_else(|| bad(path, format!("{which} has no Plane Position Sequence")))?;
        let orientation = group(Some(f), shared, tags::PLANE_ORIENTATION_SEQUENCE)
            .ok_or_else(|| bad(path, format!("{which} has no Plane Orientation Sequence")))?;
        let measures = group(Some(f), shared, tags::PIXEL_MEASURES_SEQUENCE)
            .ok_or_else(|| bad(path, format!("{which} has no Pixel Measures Sequence")))?;
        let frame = SourceFrame {
            frame_number: u32::try_from(i + 1).ok(),
            ..base.clone()
        };
        frames.push(with_geometry(frame, position, orientation, measures, path)?);
    }
    Ok(frames)
}

/// Fills a frame's geometry from the items (or top-level data set) that hold it.
fn with_geometry(
    mut frame: SourceFrame,
    position: &InMemDicomObject,
    orientation: &InMemDicomObject,
    measures: &InMemDicomObject,
    path: &Path,
) -> Result<SourceFrame, SegError> {
    let (pt, p) = numbers(
        position,
        tags::IMAGE_POSITION_PATIENT,
        3,
        path,
        "Image Position (Patient)",
    )?;
    let (ot, o) = numbers(
        orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        6,
        path,
        "Image Orientation (Patient)",
    )?;
    let (_, s) = numbers(measures, tags::PIXEL_SPACING, 2, path, "Pixel Spacing")?;
    frame.position_text = pt;
    frame.position = [p[0], p[1], p[2]];
    frame.orientation_text = ot;
    frame.orientation = [o[0], o[1], o[2], o[3], o[4], o[5]];
    frame.pixel_spacing = [s[0], s[1]];
    frame.slice_thickness = measures
        .get(tags::SLICE_THICKNESS)
        .and_then(|e| e.to_float64().ok())
        .filter(|t| t.is_finite() && *t > 0.0);
    Ok(frame)
}

fn mismatch(reason: String) -> SegError {
    SegError::GridMismatch { reason }
}

/// For each label slice k, the index in `frames` of the source frame at its position.
///
/// The label grid must be the sources' grid: same matrix, pixel spacing and in-plane axes, and
/// every slice's origin within 1 % of a voxel of exactly one source frame's position.
pub(crate) fn match_slices(
    geometry: &Geometry,
    dims: [usize; 3],
    frames: &[SourceFrame],
) -> Result<Vec<usize>, SegError> {
    let d = geometry.direction;
    let axis_i = [d[0][0], d[1][0], d[2][0]];
    let axis_j = [d[0][1], d[1][1], d[2][1]];
    let close = |a: [f64; 3], b: &[f64]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= ORIENTATION_TOLERANCE)
    };
    let mut slice_of = vec![None; dims[2]];
    for (n, f) in frames.iter().enumerate() {
        let name = f.describe();
        if [f.cols, f.rows] != [dims[0], dims[1]] {
            return Err(mismatch(format!(
                "{name} has {}×{} pixels, the labels {}×{}",
                f.cols, f.rows, dims[0], dims[1]
            )));
        }
        if !close(axis_i, &f.orientation[..3]) || !close(axis_j, &f.orientation[3..]) {
            return Err(mismatch(format!(
                "{name} has orientation {:?}; the labels' rows and columns run along {axis_i:?} and {axis_j:?}",
                f.orientation
            )));
        }
        let spacing = [f.pixel_spacing[1], f.pixel_spacing[0]];
        if (0..2).any(|a| (spacing[a] - geometry.spacing[a]).abs() > 0.01 * geometry.spacing[a]) {
            return Err(mismatch(format!(
                "{name} has pixel spacing {:?} mm, the labels {:?} mm",
                f.pixel_spacing,
                [geometry.spacing[1], geometry.spacing[0]]
            )));
        }
        let index = geometry.point_to_index(f.position);
        let k = index[2].round();
        let on_grid = index[0].abs() <= POSITION_TOLERANCE
            && index[1].abs() <= POSITION_TOLERANCE
            && (index[2] - k).abs() <= POSITION_TOLERANCE;
        if !on_grid || k < 0.0 || k >= dims[2] as f64 {
            return Err(mismatch(format!(
                "{name} at {:?} is not the origin of any label slice (voxel index {index:.3?})",
                f.position
            )));
        }
        let k = k as usize;
        if let Some(other) = slice_of[k].replace(n) {
            return Err(mismatch(format!(
                "label slice {k} matches two source frames, {} and {name}",
                frames[other].describe()
            )));
        }
    }
    slice_of
        .into_iter()
        .enumerate()
        .map(|(k, n)| n.ok_or_else(|| mismatch(format!("no source frame lies at label slice {k}"))))
        .collect()
}
