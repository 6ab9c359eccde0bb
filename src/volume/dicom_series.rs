//! Volumes from classic single-frame DICOM series: slices grouped, sorted along the slice normal,
//! checked for gaps, duplicates and uneven spacing, and stacked with exact LPS geometry.
//!
//! Slice spacing comes from the positions, never from SliceThickness (which is the excitation
//! thickness and often differs). Rescale slope and intercept are applied. Every transfer syntax
//! the SCP accepts is read: uncompressed ones directly, JPEG, JPEG-LS, JPEG 2000 and RLE through
//! dicom-pixeldata. Enhanced multi-frame objects are read frame by frame (`super::enhanced`).
//!
//! The knee's side ([`Side`]) is read beside the pixels ([`read_dicom_part`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dicom_core::PrimitiveValue;
use dicom_dictionary_std::tags;

use super::select::{Echo, Plane, Selection};
use super::side::stated_side;
use super::side::Side;
use super::{Geometry, Volume, VolumeError};

/// Relative tolerance on slice spacing before a series counts as unevenly spaced.
const SPACING_TOLERANCE: f64 = 0.01;

/// One slice's header and pixels (a classic instance, or one frame of an enhanced one).
pub(super) struct Slice {
    pub(super) path: PathBuf,
    pub(super) series_uid: String,
    pub(super) orientation: [f64; 6],
    pub(super) position: [f64; 3],
    pub(super) pixel_spacing: [f64; 2],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) echo: Option<i32>,
    /// The side the slice states (Frame Laterality, Image Laterality or Laterality).
    pub(super) laterality: Option<Side>,
    pub(super) pixels: Vec<f32>,
}

/// The side the slices of a volume state: the one side those that state any agree on; `None`
/// when none states one, or when they disagree (then nothing can be trusted).
fn side_of<'a>(slices: impl IntoIterator<Item = &'a Slice>) -> Option<Side> {
    let sides: BTreeSet<Side> = slices.into_iter().filter_map(|s| s.laterality).collect();
    match sides.len() {
        1 => sides.into_iter().next(),
        _ => None,
    }
}

pub(super) fn series_error(dir: &Path, reason: impl Into<String>) -> VolumeError {
    VolumeError::DicomSeries {
        dir: dir.to_owned(),
        reason: reason.into(),
    }
}

pub(super) fn malformed(path: &Path, reason: impl Into<String>) -> VolumeError {
    VolumeError::Malformed {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The first `N` values (the caller checked the length with [`floats`]).
pub(super) fn array<const N: usize>(v: &[f64]) -> [f64; N] {
    std::array::from_fn(|i| v.get(i).copied().unwrap_or(0.0))
}

/// `n` finite numbers from a multi-valued element, or a clear error naming it.
pub(super) fn floats(
    obj: &dicom_object::InMemDicomObject,
    tag: dicom_core::Tag,
    n: usize,
    path: &Path,
    name: &str,
) -> Result<Vec<f64>, VolumeError> {
    let v = obj
        .get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .ok_or_else(|| malformed(path, format!("no {name}")))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        return Err(malformed(path, format!("{name} must have {n} numbers")));
    }
    Ok(v)
}

/// The slices of one file: one for a classic instance, one per frame for an enhanced one.
fn read_file(path: &Path) -> Result<Vec<Slice>, VolumeError> {
    let obj = dicom_object::open_file(path)
        .map_err(|e| malformed(path, format!("not a readable DICOM file: {e}")))?;
    let frames = obj
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<i64>().ok())
        .unwrap_or(1);
    if frames > 1
        || obj
            .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .is_some()
    {
        return super::enhanced::frames(&obj, path);
    }
    read_slice(&obj, path).map(|s| vec![s])
}

/// The transfer syntax of a file and whether its pixel data is stored uncompressed.
pub(super) fn transfer_syntax(obj: &dicom_object::DefaultDicomObject) -> (String, bool) {
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_owned();
    let uncompressed = matches!(
        ts.as_str(),
        "1.2.840.10008.1.2"
            | "1.2.840.10008.1.2.1"
            | "1.2.840.10008.1.2.2"
            | "1.2.840.10008.1.2.1.99"
    );
    (ts, uncompressed)
}

/// Every sample of the pixel data (all frames), without rescale.
pub(super) fn samples(
    obj: &dicom_object::DefaultDicomObject,
    path: &Path,
) -> Result<Vec<f64>, VolumeError> {
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<i64>().ok());
    let (ts, uncompressed) = transfer_syntax(obj);
    if uncompressed {
        let bits = int(tags::BITS_ALLOCATED).unwrap_or(16);
        let signed = int(tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
        raw_samples(obj, path, bits, signed)
    } else {
        decoded_samples(obj, path, &ts)
    }
}

/// Rows and Columns of a greyscale image (colour images are refused).
pub(super) fn matrix(
    obj: &dicom_object::DefaultDicomObject,
    path: &Path,
) -> Result<(usize, usize), VolumeError> {
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<i64>().ok());
    let rows = int(tags::ROWS)
        .filter(|r| *r > 0)
        .ok_or_else(|| malformed(path, "no Rows"))? as usize;
    let cols = int(tags::COLUMNS)
        .filter(|c| *c > 0)
        .ok_or_else(|| malformed(path, "no Columns"))? as usize;
    if int(tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 {
        return Err(VolumeError::Unsupported {
            path: path.to_owned(),
            what: "colour images".into(),
        });
    }
    Ok((rows, cols))
}

fn read_slice(obj: &dicom_object::DefaultDicomObject, path: &Path) -> Result<Slice, VolumeError> {
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<i64>().ok());
    let (rows, cols) = matrix(obj, path)?;
    let slope = obj
        .get(tags::RESCALE_SLOPE)
        .and_then(|e| e.to_float64().ok())
        .filter(|s| *s != 0.0)
        .unwrap_or(1.0);
    let intercept = obj
        .get(tags::RESCALE_INTERCEPT)
        .and_then(|e| e.to_float64().ok())
        .unwrap_or(0.0);
    let n = rows * cols;
    let values = samples(obj, path)?;
    if values.len() < n {
        return Err(VolumeError::Truncated {
            path: path.to_owned(),
            detail: format!("{} of {n} pixels", values.len()),
        });
    }
    let orientation = floats(
        obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        6,
        path,
        "Image Orientation (Patient)",
    )?;
    let position = floats(
        obj,
        tags::IMAGE_POSITION_PATIENT,
        3,
        path,
        "Image Position (Patient)",
    )?;
    let spacing = floats(obj, tags::PIXEL_SPACING, 2, path, "Pixel Spacing")?;
    if spacing.iter().any(|s| *s <= 0.0) {
        return Err(malformed(path, "Pixel Spacing must be positive"));
    }
    Ok(Slice {
        path: path.to_owned(),
        series_uid: obj
            .get(tags::SERIES_INSTANCE_UID)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
            .unwrap_or_default(),
        orientation: array(&orientation),
        position: array(&position),
        pixel_spacing: array(&spacing),
        rows,
        cols,
        echo: int(tags::ECHO_NUMBERS).and_then(|e| i32::try_from(e).ok()),
        // Image Laterality is the image's own; Laterality is the series' (General Series).
        laterality: stated_side(obj, &[tags::IMAGE_LATERALITY, tags::LATERALITY]),
        pixels: values[..n]
            .iter()
            .map(|&v| (v * slope + intercept) as f32)
            .collect(),
    })
}

/// Sample values of uncompressed Pixel Data (no rescale).
fn raw_samples(
    obj: &dicom_object::DefaultDicomObject,
    path: &Path,
    bits: i64,
    signed: bool,
) -> Result<Vec<f64>, VolumeError> {
    let raw = obj
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().primitive())
        .ok_or_else(|| malformed(path, "no Pixel Data"))?;
    Ok(match (raw, bits, signed) {
        (PrimitiveValue::U16(v), 16, false) => v.iter().map(|&x| f64::from(x)).collect(),
        (PrimitiveValue::U16(v), 16, true) => v.iter().map(|&x| f64::from(x as i16)).collect(),
        (PrimitiveValue::I16(v), 16, _) => v.iter().map(|&x| f64::from(x)).collect(),
        (PrimitiveValue::U8(b), 16, _) => b
            .chunks_exact(2)
            .map(|c| {
                let u = u16::from_le_bytes([c[0], c[1]]);
                if signed {
                    f64::from(u as i16)
                } else {
                    f64::from(u)
                }
            })
            .collect(),
        (PrimitiveValue::U8(b), 8, _) => b
            .iter()
            .map(|&x| {
                if signed {
                    f64::from(x as i8)
                } else {
                    f64::from(x)
                }
            })
            .collect(),
        _ => {
            return Err(VolumeError::Unsupported {
                path: path.to_owned(),
                what: format!("pixel data with {bits} bits allocated"),
            })
        }
    })
}

/// Sample values of encapsulated (compressed) Pixel Data, decoded by dicom-pixeldata: JPEG
/// baseline and lossless, JPEG-LS, JPEG 2000 and RLE (no rescale).
fn decoded_samples(
    obj: &dicom_object::DefaultDicomObject,
    path: &Path,
    ts: &str,
) -> Result<Vec<f64>, VolumeError> {
    use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
    let decoded = obj
        .decode_pixel_data()
        .map_err(|e| VolumeError::Unsupported {
            path: path.to_owned(),
            what: format!("pixel data in transfer syntax {ts} that cannot be decoded: {e}"),
        })?;
    let raw = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    decoded
        .to_vec_with_options::<f64>(&raw)
        .map_err(|e| malformed(path, format!("decoding the pixel data: {e}")))
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// A key that puts slices of the same orientation and echo together (orientation to 1e-3).
fn group_key(s: &Slice) -> (Vec<i64>, Option<i32>) {
    (
        s.orientation
            .iter()
            .map(|v| (v * 1000.0).round() as i64)
            .collect(),
        s.echo,
    )
}

/// Reads every `.dcm` (or extension-less) file in `dir` as one series.
pub fn read_dicom_dir(dir: &Path) -> Result<Volume<f32>, VolumeError> {
    read_dicom_series(&dicom_files(dir)?, dir)
}

/// The files of a series folder that are read as DICOM: `.dcm` or no extension, sorted by name.
/// Where the store kept several revisions of one instance (`<sop>.dcm`, `<sop>.r2.dcm`, …: the
/// same SOP Instance UID sent again with other content), only the latest counts.
pub fn dicom_files(dir: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    let io = |error| VolumeError::Io {
        path: dir.to_owned(),
        error,
    };
    let mut latest: BTreeMap<String, (u32, PathBuf)> = BTreeMap::new();
    for path in std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e.eq_ignore_ascii_case("dcm")))
    {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stem, revision) = crate::storage::parse_instance_file_name(&name)
            .map_or_else(|| (name.clone(), 1), |(sop, r)| (sop.to_owned(), r));
        match latest.get(&stem) {
            Some((r, _)) if *r >= revision => {}
            _ => {
                latest.insert(stem, (revision, path));
            }
        }
    }
    let mut paths: Vec<PathBuf> = latest.into_values().map(|(_, p)| p).collect();
    paths.sort();
    Ok(paths)
}

/// Reads the given files as one volume; `dir` names the series in errors. The series must hold
/// one orientation and one echo.
pub fn read_dicom_series(paths: &[PathBuf], dir: &Path) -> Result<Volume<f32>, VolumeError> {
    read_dicom_selected(paths, dir, &Selection::default()).map(|(v, _)| v)
}

/// The part of a DICOM series that became a volume ([`read_dicom_part`]).
#[derive(Debug)]
pub struct DicomPart {
    /// The volume.
    pub volume: Volume<f32>,
    /// The files of its slices, in slice order (for a root sum of squares, the lowest echo's).
    pub files: Vec<PathBuf>,
    /// The knee's side as its slices state it (Frame Laterality of an enhanced frame, else
    /// Image Laterality, else Laterality); `None` when they state none or disagree.
    pub side: Option<Side>,
}

/// Reads the part of the series that `select` names: [`read_dicom_selected`], with the side the
/// slices state.
pub fn read_dicom_part(
    paths: &[PathBuf],
    dir: &Path,
    select: &Selection,
) -> Result<DicomPart, VolumeError> {
    let mut side = None;
    let (volume, files) = read_selected(paths, dir, select, &mut side)?;
    Ok(DicomPart {
        volume,
        files,
        side,
    })
}

type Groups = BTreeMap<(Vec<i64>, Option<i32>), Vec<Slice>>;

fn normal_of(s: &Slice) -> [f64; 3] {
    let o = s.orientation;
    cross([o[0], o[1], o[2]], [o[3], o[4], o[5]])
}

/// "40 sagittal slices (echo 1); 3 axial slices" for messages.
fn describe(groups: &Groups) -> String {
    groups
        .iter()
        .map(|((_, echo), v)| {
            format!(
                "{} {} slices{}",
                v.len(),
                Plane::of_normal(normal_of(&v[0])),
                echo.map(|e| format!(" (echo {e})")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads the part of the series that `select` names (a plane, an echo, or the root sum of
/// squares of the echoes). Returns the volume and the files of the slices it was made of, in
/// slice order (for a root sum of squares, the lowest echo's).
pub fn read_dicom_selected(
    paths: &[PathBuf],
    dir: &Path,
    select: &Selection,
) -> Result<(Volume<f32>, Vec<PathBuf>), VolumeError> {
    read_selected(paths, dir, select, &mut None)
}

/// [`read_dicom_selected`], setting `side` to the side the selected slices state.
fn read_selected(
    paths: &[PathBuf],
    dir: &Path,
    select: &Selection,
    side: &mut Option<Side>,
) -> Result<(Volume<f32>, Vec<PathBuf>), VolumeError> {
    if paths.is_empty() {
        return Err(series_error(dir, "no DICOM files"));
    }
    let mut slices = Vec::new();
    for p in paths {
        slices.extend(read_file(p)?);
    }
    let series: std::collections::BTreeSet<&str> =
        slices.iter().map(|s| s.series_uid.as_str()).collect();
    if series.len() > 1 {
        return Err(series_error(
            dir,
            format!("the files belong to {} different series", series.len()),
        ));
    }
    let mut groups: Groups = BTreeMap::new();
    for s in slices {
        groups.entry(group_key(&s)).or_default().push(s);
    }
    let all = describe(&groups);
    if let Some(plane) = select.plane {
        groups.retain(|_, v| Plane::of_normal(normal_of(&v[0])) == plane);
        if groups.is_empty() {
            return Err(series_error(
                dir,
                format!("no {plane} slices in the series ({all})"),
            ));
        }
    }
    match select.echo {
        Some(Echo::Number(n)) => {
            groups.retain(|(_, echo), _| *echo == Some(n));
            if groups.is_empty() {
                return Err(series_error(
                    dir,
                    format!("no echo {n} in the series ({all})"),
                ));
            }
        }
        Some(Echo::RootSumOfSquares) if groups.len() > 1 => {
            let orientations: std::collections::BTreeSet<&Vec<i64>> =
                groups.keys().map(|(o, _)| o).collect();
            if orientations.len() > 1 {
                return Err(series_error(
                    dir,
                    format!("echoes can only be combined in one orientation; pick a plane ({all})"),
                ));
            }
            *side = side_of(groups.values().flatten());
            let mut stacks = groups
                .into_values()
                .map(|g| stack(g, dir))
                .collect::<Result<Vec<_>, _>>()?;
            let (first, files) = stacks.remove(0);
            let mut sum: Vec<f32> = first.data().iter().map(|v| v * v).collect();
            for (other, _) in &stacks {
                if other.dims() != first.dims()
                    || !other.geometry().approx_eq(first.geometry(), 1e-3)
                {
                    return Err(series_error(
                        dir,
                        "the echoes do not share one grid and cannot be combined",
                    ));
                }
                for (acc, v) in sum.iter_mut().zip(other.data()) {
                    *acc += v * v;
                }
            }
            let combined = first.with_data(sum.into_iter().map(f32::sqrt).collect())?;
            return Ok((combined, files));
        }
        _ => {}
    }
    *side = side_of(groups.values().flatten());
    if groups.len() > 1 {
        return Err(series_error(
            dir,
            format!(
                "the series mixes {} orientations or echoes ({}); a routing rule must pick one \
                 (echo = N, echo = \"rss\" or plane = \"sagittal\" | \"coronal\" | \"axial\")",
                groups.len(),
                describe(&groups)
            ),
        ));
    }
    stack(groups.into_values().next().unwrap_or_default(), dir)
}

/// Stacks the slices of one orientation and echo into a volume; returns it with the slices'
/// files in slice order.
fn stack(mut slices: Vec<Slice>, dir: &Path) -> Result<(Volume<f32>, Vec<PathBuf>), VolumeError> {
    if slices.is_empty() {
        return Err(series_error(dir, "no DICOM files"));
    }
    let first = &slices[0];
    let (rows, cols, pixel_spacing) = (first.rows, first.cols, first.pixel_spacing);
    if let Some(odd) = slices.iter().find(|s| {
        s.rows != rows
            || s.cols != cols
            || (s.pixel_spacing[0] - pixel_spacing[0]).abs() > 1e-6
            || (s.pixel_spacing[1] - pixel_spacing[1]).abs() > 1e-6
    }) {
        return Err(series_error(
            dir,
            format!(
                "{} has a different matrix or pixel spacing than the other slices",
                odd.path.display()
            ),
        ));
    }
    let row_dir = [
        first.orientation[0],
        first.orientation[1],
        first.orientation[2],
    ];
    let col_dir = [
        first.orientation[3],
        first.orientation[4],
        first.orientation[5],
    ];
    let normal = cross(row_dir, col_dir);
    slices.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let d: Vec<f64> = slices.iter().map(|s| dot(s.position, normal)).collect();
    let steps: Vec<f64> = d.windows(2).map(|w| w[1] - w[0]).collect();
    if let Some(i) = steps.iter().position(|s| s.abs() < 1e-3) {
        return Err(series_error(
            dir,
            format!(
                "two slices at the same position: {} and {}",
                slices[i].path.display(),
                slices[i + 1].path.display()
            ),
        ));
    }
    let spacing_k = if steps.is_empty() {
        1.0
    } else {
        let mut sorted = steps.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        for (i, s) in steps.iter().enumerate() {
            if (s - median).abs() > SPACING_TOLERANCE * median {
                let what = if (s / median - (s / median).round()).abs() < SPACING_TOLERANCE
                    && s / median >= 1.5
                {
                    format!(
                        "{} missing slice(s) between {} and {}",
                        (s / median).round() as i64 - 1,
                        slices[i].path.display(),
                        slices[i + 1].path.display()
                    )
                } else {
                    format!("uneven slice spacing: {s:.3} mm between {} and {}, {median:.3} mm elsewhere", slices[i].path.display(), slices[i + 1].path.display())
                };
                return Err(series_error(dir, what));
            }
        }
        median
    };
    let geometry = Geometry {
        origin: slices[0].position,
        // PixelSpacing is (between rows, between columns); i runs along a row.
        spacing: [pixel_spacing[1], pixel_spacing[0], spacing_k],
        direction: [
            [row_dir[0], col_dir[0], normal[0]],
            [row_dir[1], col_dir[1], normal[1]],
            [row_dir[2], col_dir[2], normal[2]],
        ],
    };
    geometry
        .validate()
        .map_err(|e| series_error(dir, format!("invalid geometry: {e}")))?;
    let nz = slices.len();
    let mut data = Vec::with_capacity(rows * cols * nz);
    let mut files = Vec::with_capacity(nz);
    for s in slices {
        data.extend_from_slice(&s.pixels);
        // The frames of an enhanced instance share one file.
        if files.last() != Some(&s.path) && !files.contains(&s.path) {
            files.push(s.path);
        }
    }
    Ok((Volume::from_vec([cols, rows, nz], data, geometry)?, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_read_from_dicom_codes_and_from_words() {
        assert_eq!(Side::from_dicom("L"), Some(Side::Left));
        assert_eq!(Side::from_dicom("R "), Some(Side::Right));
        assert_eq!(Side::from_dicom("R\0"), Some(Side::Right));
        for none in ["", "U", "B", "left", "l"] {
            assert_eq!(Side::from_dicom(none), None, "{none:?}");
        }
        assert_eq!("Left".parse::<Side>(), Ok(Side::Left));
        assert_eq!("right".parse::<Side>(), Ok(Side::Right));
        assert!("R"
            .parse::<Side>()
            .unwrap_err()
            .contains("want left or right"));
        assert_eq!(Side::Left.to_string(), "left");
        assert_eq!(Side::Left.other(), Side::Right);
        let json: Side = serde_json::from_str("\"right\"").unwrap();
        assert_eq!(json, Side::Right);
    }
}
