//! Volumes from classic single-frame DICOM series: slices grouped, sorted along the slice normal,
//! checked for gaps, duplicates and uneven spacing, and stacked with exact LPS geometry.
//!
//! Slice spacing comes from the positions, never from SliceThickness (which is the excitation
//! thickness and often differs). Rescale slope and intercept are applied. Compressed transfer
//! syntaxes and enhanced multi-frame objects are refused with a clear message for now.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::PrimitiveValue;
use dicom_dictionary_std::tags;

use super::{Geometry, Volume, VolumeError};

/// Relative tolerance on slice spacing before a series counts as unevenly spaced.
const SPACING_TOLERANCE: f64 = 0.01;

/// One slice's header and pixels.
struct Slice {
    path: PathBuf,
    series_uid: String,
    orientation: [f64; 6],
    position: [f64; 3],
    pixel_spacing: [f64; 2],
    rows: usize,
    cols: usize,
    echo: Option<i32>,
    pixels: Vec<f32>,
}

fn series_error(dir: &Path, reason: impl Into<String>) -> VolumeError {
    VolumeError::DicomSeries {
        dir: dir.to_owned(),
        reason: reason.into(),
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> VolumeError {
    VolumeError::Malformed {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn floats(
    obj: &dicom_object::DefaultDicomObject,
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

fn read_slice(path: &Path) -> Result<Slice, VolumeError> {
    let obj = dicom_object::open_file(path)
        .map_err(|e| malformed(path, format!("not a readable DICOM file: {e}")))?;
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
    if !uncompressed {
        return Err(VolumeError::Unsupported {
            path: path.to_owned(),
            what: format!("compressed transfer syntax {ts} (decoding is not available yet)"),
        });
    }
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<i64>().ok());
    if int(tags::NUMBER_OF_FRAMES).is_some_and(|n| n > 1) {
        return Err(VolumeError::Unsupported {
            path: path.to_owned(),
            what: "multi-frame (enhanced) images".into(),
        });
    }
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
    let bits = int(tags::BITS_ALLOCATED).unwrap_or(16);
    let signed = int(tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    let slope = obj
        .get(tags::RESCALE_SLOPE)
        .and_then(|e| e.to_float64().ok())
        .filter(|s| *s != 0.0)
        .unwrap_or(1.0);
    let intercept = obj
        .get(tags::RESCALE_INTERCEPT)
        .and_then(|e| e.to_float64().ok())
        .unwrap_or(0.0);
    let raw = obj
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().primitive())
        .ok_or_else(|| malformed(path, "no Pixel Data"))?;
    let n = rows * cols;
    let values: Vec<f64> = match (raw, bits, signed) {
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
    };
    if values.len() < n {
        return Err(VolumeError::Truncated {
            path: path.to_owned(),
            detail: format!("{} of {n} pixels", values.len()),
        });
    }
    let orientation = floats(
        &obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        6,
        path,
        "Image Orientation (Patient)",
    )?;
    let position = floats(
        &obj,
        tags::IMAGE_POSITION_PATIENT,
        3,
        path,
        "Image Position (Patient)",
    )?;
    let spacing = floats(&obj, tags::PIXEL_SPACING, 2, path, "Pixel Spacing")?;
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
        orientation: [
            orientation[0],
            orientation[1],
            orientation[2],
            orientation[3],
            orientation[4],
            orientation[5],
        ],
        position: [position[0], position[1], position[2]],
        pixel_spacing: [spacing[0], spacing[1]],
        rows,
        cols,
        echo: int(tags::ECHO_NUMBERS).and_then(|e| i32::try_from(e).ok()),
        pixels: values[..n]
            .iter()
            .map(|&v| (v * slope + intercept) as f32)
            .collect(),
    })
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
pub fn dicom_files(dir: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    let io = |error| VolumeError::Io {
        path: dir.to_owned(),
        error,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e.eq_ignore_ascii_case("dcm")))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads the given files as one volume; `dir` names the series in errors.
pub fn read_dicom_series(paths: &[PathBuf], dir: &Path) -> Result<Volume<f32>, VolumeError> {
    if paths.is_empty() {
        return Err(series_error(dir, "no DICOM files"));
    }
    let slices = paths
        .iter()
        .map(|p| read_slice(p))
        .collect::<Result<Vec<_>, _>>()?;
    let series: std::collections::BTreeSet<&str> =
        slices.iter().map(|s| s.series_uid.as_str()).collect();
    if series.len() > 1 {
        return Err(series_error(
            dir,
            format!("the files belong to {} different series", series.len()),
        ));
    }
    let mut groups: BTreeMap<(Vec<i64>, Option<i32>), Vec<Slice>> = BTreeMap::new();
    for s in slices {
        groups.entry(group_key(&s)).or_default().push(s);
    }
    if groups.len() > 1 {
        let parts: Vec<String> = groups
            .iter()
            .map(|((o, echo), v)| {
                format!(
                    "{} slices with orientation {:?}{}",
                    v.len(),
                    o,
                    echo.map(|e| format!(" echo {e}")).unwrap_or_default()
                )
            })
            .collect();
        return Err(series_error(
            dir,
            format!(
                "the series mixes {} orientations or echoes ({}); a routing rule must pick one",
                groups.len(),
                parts.join("; ")
            ),
        ));
    }
    let mut slices = groups.into_values().next().unwrap_or_default();
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
    for s in slices {
        data.extend_from_slice(&s.pixels);
    }
    Volume::from_vec([cols, rows, nz], data, geometry)
}
