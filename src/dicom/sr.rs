//! The DICOM SR kneenode sends next to its SEG: a Comprehensive 3D SR following TID 1500
//! (Measurement Report), holding the numbers of a job.
//!
//! - tissue volumes, one measurement group per SEG segment ([`volume_group`]);
//! - cartilage thickness (mean, standard deviation, median, maximum) per region
//!   ([`thickness_group`]), the region a Finding Site qualifier of each value;
//! - the NSM BScore ([`bscore_group`]), a group of its own that references no segment.
//!
//! Groups that measure a segment follow TID 1411 (Volumetric ROI Measurements): they reference
//! the segment in the SEG and the series the SEG segments. Groups that do not follow TID 1501.
//! Codes are in [`concepts`]; the few that no standard names are private ("99KNEENODE") and the
//! SR describes that scheme in its Coding Scheme Identification Sequence.
//!
//! Everything is derived from the request: the UIDs from the job id and the dates from the job's
//! fixed time, so writing the same request twice gives the same bytes, and a resent SR is the
//! same object to a PACS.

pub mod concepts;
mod content;
mod reference;
mod tree;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use dicom_object::FileMetaTableBuilder;

pub use reference::{SegReference, SourceInstance};

use super::codes::{Code, SegmentDef};
use super::uid::derived_uid;
use super::uids;

/// One numeric measurement (a NUM content item).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// What was measured, e.g. [`concepts::volume`].
    pub concept: Code,
    /// The value; it must be finite.
    pub value: f64,
    /// Its UCUM unit, e.g. [`concepts::mm3`], [`concepts::mm`], [`concepts::no_units`].
    pub unit: Code,
    /// Concept modifiers as (name, value) pairs, each a HAS CONCEPT MOD CODE child of the
    /// value: e.g. ([`concepts::derivation`], [`concepts::mean`]) or
    /// ([`concepts::finding_site`], a region code).
    pub qualifiers: Vec<(Code, Code)>,
}

/// A measurement group: what one finding (one segment, or the knee's shape) measures.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementGroup {
    /// Tracking Identifier, e.g. "Femoral cartilage".
    pub tracking_id: String,
    /// The SEG segment measured (TID 1411); `None` for measurements of no segment (TID 1501).
    pub segment_number: Option<u16>,
    /// Finding, e.g. the segment's property type (Cartilage).
    pub finding: Code,
    /// Finding Site, e.g. the bone a cartilage covers.
    pub finding_site: Option<Code>,
    /// Topographical modifier of the finding site (Medial / Lateral); ignored without a site.
    pub finding_site_modifier: Option<Code>,
    /// The values; at least one.
    pub measurements: Vec<Measurement>,
}

/// Everything an SR is made from.
#[derive(Debug, Clone)]
pub struct SrRequest<'a> {
    /// The SEG the measurements refer to (its patient, study and UIDs are read from it).
    pub seg: &'a Path,
    /// The measurement groups, in the order they are written.
    pub groups: &'a [MeasurementGroup],
    /// The job: UIDs are `derived_uid(&[job_id, "sr-series"])` and `…"sr-instance"`.
    pub job_id: &'a str,
    /// Algorithm Name (TID 4019) in every group, e.g. the segmentation model's name.
    pub algorithm_name: &'a str,
    /// Algorithm Version (TID 4019).
    pub algorithm_version: &'a str,
    /// Series Number of the SR series.
    pub series_number: i32,
    /// Content and instance creation date/time: the job's fixed time, so rewrites are identical.
    pub created: chrono::NaiveDateTime,
}

/// What [`write_sr`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrSummary {
    /// The SR file.
    pub path: PathBuf,
    /// Its SOP Instance UID.
    pub sop_instance_uid: String,
    /// Its Series Instance UID.
    pub series_instance_uid: String,
}

/// An SR that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SrError {
    /// The SEG could not be read or lacks what the SR refers to.
    #[error("SEG {path}: {reason}")]
    Seg {
        /// The SEG file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The request cannot become a valid report (no groups, a value that is not finite, …).
    #[error("measurement report: {0}")]
    Invalid(String),
    /// The file could not be written.
    #[error("{path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Thickness statistics of one region, in mm (DOMAIN.md: over vertices with thickness > 0).
#[derive(Debug, Clone, PartialEq)]
pub struct RegionThickness {
    /// The region (e.g. [`concepts::thickness_region`]`("med_wb_fem_cart")`), or `None` for the
    /// whole segment.
    pub region: Option<Code>,
    /// Mean thickness.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Median.
    pub median: f64,
    /// Maximum, where computed.
    pub max: Option<f64>,
}

fn site_and_modifier(def: &SegmentDef) -> (Option<Code>, Option<Code>) {
    // A cartilage's site is the bone it covers; a bone or meniscus is its own site.
    let site = def
        .region
        .clone()
        .unwrap_or_else(|| def.property_type.clone());
    (Some(site), def.type_modifier.clone())
}

/// A group holding the Volume (SCT 118565006) of one segment in mm3.
pub fn volume_group(def: &SegmentDef, segment_number: u16, volume_mm3: f64) -> MeasurementGroup {
    let (finding_site, finding_site_modifier) = site_and_modifier(def);
    MeasurementGroup {
        tracking_id: def.name.clone(),
        segment_number: Some(segment_number),
        finding: def.property_type.clone(),
        finding_site,
        finding_site_modifier,
        measurements: vec![Measurement {
            concept: concepts::volume(),
            value: volume_mm3,
            unit: concepts::mm3(),
            qualifiers: Vec::new(),
        }],
    }
}

/// A group holding the cartilage thickness of one segment, per region: mean, standard
/// deviation, median (and maximum) in mm, each qualified by its Derivation and, where the
/// region is given, by a Finding Site naming the region.
pub fn thickness_group(
    def: &SegmentDef,
    segment_number: u16,
    regions: &[RegionThickness],
) -> MeasurementGroup {
    let (finding_site, finding_site_modifier) = site_and_modifier(def);
    let mut measurements = Vec::with_capacity(regions.len() * 4);
    for r in regions {
        let stats = [
            (concepts::mean(), Some(r.mean)),
            (concepts::standard_deviation(), Some(r.std)),
            (concepts::median(), Some(r.median)),
            (concepts::maximum(), r.max),
        ];
        for (derivation, value) in stats {
            let Some(value) = value else { continue };
            let mut qualifiers = vec![(concepts::derivation(), derivation)];
            if let Some(region) = &r.region {
                qualifiers.push((concepts::finding_site(), region.clone()));
            }
            measurements.push(Measurement {
                concept: concepts::cartilage_thickness(),
                value,
                unit: concepts::mm(),
                qualifiers,
            });
        }
    }
    MeasurementGroup {
        tracking_id: format!("{} thickness", def.name),
        segment_number: Some(segment_number),
        finding: def.property_type.clone(),
        finding_site,
        finding_site_modifier,
        measurements,
    }
}

/// The BScore group: the femur's shape score from the NSM fit, dimensionless, measuring no
/// segment. `method`, if given (e.g. which NSM, bone-only or bone and cartilage), becomes its
/// Measurement Method qualifier.
pub fn bscore_group(bscore: f64, method: Option<Code>) -> MeasurementGroup {
    let femur = Code::sct("71341001", "Femur");
    MeasurementGroup {
        tracking_id: "Femur shape (BScore)".into(),
        segment_number: None,
        finding: femur.clone(),
        finding_site: Some(femur),
        finding_site_modifier: None,
        measurements: vec![Measurement {
            concept: concepts::bscore(),
            value: bscore,
            unit: concepts::no_units(),
            qualifiers: method
                .map(|m| vec![(concepts::measurement_method(), m)])
                .unwrap_or_default(),
        }],
    }
}

/// Writes the SR for `req` to the file `out` (Part-10, explicit VR little endian), atomically:
/// a temporary file in the same folder, fsynced, then renamed over `out`. Parent folders are
/// created.
pub fn write_sr(req: &SrRequest, out: &Path) -> Result<SrSummary, SrError> {
    let seg = SegReference::read(req.seg)?;
    let sop_instance_uid = derived_uid(&[req.job_id, "sr-instance"]);
    let series_instance_uid = derived_uid(&[req.job_id, "sr-series"]);
    let dataset = tree::document(req, &seg, &sop_instance_uid, &series_instance_uid)?;
    let fail = |reason: String| SrError::Write {
        path: out.to_owned(),
        reason,
    };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LE)
        .media_storage_sop_class_uid(uids::COMPREHENSIVE_3D_SR)
        .media_storage_sop_instance_uid(sop_instance_uid.as_str())
        .implementation_class_uid(uids::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uids::IMPLEMENTATION_VERSION);
    let file = dataset.with_meta(meta).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    write_atomically(out, &bytes).map_err(|e| fail(e.to_string()))?;
    Ok(SrSummary {
        path: out.to_owned(),
        sop_instance_uid,
        series_instance_uid,
    })
}

fn write_atomically(out: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = out
        .file_name()
        .map_or_else(|| "sr.dcm".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)?;
        // The rename is durable once the folder is synced.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;
