//! Enhanced (multi-frame) MR: one instance holding every slice as a frame, with each frame's
//! position, orientation, pixel spacing, rescale and echo time in the per-frame functional groups
//! (or, where all frames agree, the shared ones). Each frame becomes a slice that the series
//! reader groups, sorts and stacks like a classic instance.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

use super::dicom_series::{array, floats, malformed, matrix, samples, Slice};
use super::side::stated_side;
use super::VolumeError;

/// The first item of sequence `seq` in the frame's own group, else in the shared group.
fn group<'a>(
    frame: Option<&'a InMemDicomObject>,
    shared: Option<&'a InMemDicomObject>,
    seq: dicom_core::Tag,
) -> Option<&'a InMemDicomObject> {
    let first = |g: &'a InMemDicomObject| g.get(seq)?.items()?.first();
    frame.and_then(first).or_else(|| shared.and_then(first))
}

/// The slices of an enhanced instance, one per frame.
pub(super) fn frames(obj: &DefaultDicomObject, path: &Path) -> Result<Vec<Slice>, VolumeError> {
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<i64>().ok());
    let n_frames = int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as usize;
    let (rows, cols) = matrix(obj, path)?;
    let per_frame: Vec<&InMemDicomObject> = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .map(|items| items.iter().collect())
        .unwrap_or_default();
    if per_frame.len() != n_frames {
        return Err(malformed(
            path,
            format!(
                "{} per-frame functional groups for {n_frames} frames",
                per_frame.len()
            ),
        ));
    }
    let shared = obj
        .get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|i| i.first());
    let values = samples(obj, path)?;
    let n = rows * cols;
    if values.len() < n * n_frames {
        return Err(VolumeError::Truncated {
            path: path.to_owned(),
            detail: format!("{} of {} pixels", values.len(), n * n_frames),
        });
    }
    let series_uid = obj
        .get(tags::SERIES_INSTANCE_UID)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        .unwrap_or_default();
    let float = |g: Option<&InMemDicomObject>, tag| {
        g.and_then(|g| g.get(tag)).and_then(|e| e.to_float64().ok())
    };
    // Echo times become echo numbers 1, 2, … in ascending order.
    let echo_times: Vec<Option<f64>> = per_frame
        .iter()
        .map(|f| {
            float(
                group(Some(f), shared, tags::MR_ECHO_SEQUENCE),
                tags::EFFECTIVE_ECHO_TIME,
            )
        })
        .collect();
    let mut distinct: Vec<f64> = echo_times.iter().flatten().copied().collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    // Image Laterality and Laterality of the instance, for frames whose Frame Anatomy says none.
    let instance_side = stated_side(obj, &[tags::IMAGE_LATERALITY, tags::LATERALITY]);
    let mut slices = Vec::with_capacity(n_frames);
    for (i, f) in per_frame.iter().enumerate() {
        let at = |what: &str| malformed(path, format!("frame {}: no {what}", i + 1));
        let position = group(Some(f), shared, tags::PLANE_POSITION_SEQUENCE)
            .ok_or_else(|| at("Plane Position"))
            .and_then(|g| {
                floats(
                    g,
                    tags::IMAGE_POSITION_PATIENT,
                    3,
                    path,
                    "Image Position (Patient)",
                )
            })?;
        let orientation = group(Some(f), shared, tags::PLANE_ORIENTATION_SEQUENCE)
            .ok_or_else(|| at("Plane Orientation"))
            .and_then(|g| {
                floats(
                    g,
                    tags::IMAGE_ORIENTATION_PATIENT,
                    6,
                    path,
                    "Image Orientation (Patient)",
                )
            })?;
        let spacing = group(Some(f), shared, tags::PIXEL_MEASURES_SEQUENCE)
            .ok_or_else(|| at("Pixel Measures"))
            .and_then(|g| floats(g, tags::PIXEL_SPACING, 2, path, "Pixel Spacing"))?;
        if spacing.iter().any(|s| *s <= 0.0) {
            return Err(malformed(path, "Pixel Spacing must be positive"));
        }
        let transform = group(Some(f), shared, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE);
        let slope = float(transform, tags::RESCALE_SLOPE)
            .or_else(|| {
                obj.get(tags::RESCALE_SLOPE)
                    .and_then(|e| e.to_float64().ok())
            })
            .filter(|s| *s != 0.0)
            .unwrap_or(1.0);
        let intercept = float(transform, tags::RESCALE_INTERCEPT)
            .or_else(|| {
                obj.get(tags::RESCALE_INTERCEPT)
                    .and_then(|e| e.to_float64().ok())
            })
            .unwrap_or(0.0);
        let echo = echo_times[i].and_then(|t| {
            distinct
                .iter()
                .position(|d| (d - t).abs() < 1e-6)
                .map(|p| p as i32 + 1)
        });
        slices.push(Slice {
            path: path.to_owned(),
            series_uid: series_uid.clone(),
            orientation: array(&orientation),
            position: array(&position),
            pixel_spacing: array(&spacing),
            rows,
            cols,
            echo,
            laterality: group(Some(f), shared, tags::FRAME_ANATOMY_SEQUENCE)
                .and_then(|a| stated_side(a, &[tags::FRAME_LATERALITY]))
                .or(instance_side),
            pixels: values[i * n..(i + 1) * n]
                .iter()
                .map(|&v| (v * slope + intercept) as f32)
                .collect(),
        });
    }
    Ok(slices)
}
