//! The child side: `kneenode run-job --job-dir DIR`. Reads `job.json`, runs the pipeline,
//! writes the results folder, the DICOM SEG and SR (for DICOM input) and the zip, and reports
//! each stage as a JSON line on stdout. It touches no database and no network: the supervisor
//! does that, so a crash here can never leave a job row half-written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::info;

use super::classify::kind_of;
use super::jobfile::{JobFile, RESULTS_DIR};
use super::protocol::{emit, Event};
use crate::dicom::codes::SegmentCatalog;
use crate::dicom::seg::{write_seg, SegRequest};
use crate::dicom::sr::{
    bscore_group, concepts, thickness_group, volume_group, write_sr, RegionThickness, SrRequest,
};
use crate::jobs::{ErrorCode, FailureKind};
use crate::pipeline::models::Registry;
use crate::pipeline::nsm::{NsmError, NsmOptions};
use crate::pipeline::package::{self, InputGrid, ModelUsed, Results};
use crate::pipeline::preview::write_preview;
use crate::pipeline::run::{
    prefix_of, run, run_labels, NsmRun, Progress, RunError, RunOptions, RunOutput,
};
use crate::pipeline::segment::{SegmentError, SegmentVolumeError};
use crate::pipeline::shapes::ShapeResults;
use crate::volume::VolumeError;

/// Exit status of a child that reported its failure.
pub const EXIT_FAILED: i32 = 3;

/// The child's own stages, after the pipeline's.
const AFTER: [&str; 3] = [
    "preview and results.json",
    "DICOM SEG and SR",
    "packaging results",
];

/// Reports stages as JSON lines, numbered over the pipeline's stages and the child's own.
#[derive(Default)]
struct JsonProgress {
    /// Stages the pipeline reported it has.
    pipeline: usize,
}

impl JsonProgress {
    fn emit(&self, step: usize, name: &str) {
        let total = self.pipeline + AFTER.len();
        emit(&Event::Progress {
            step: step as i32,
            total: total as i32,
            name: name.into(),
            percent: 100.0 * (step as f64 - 1.0) / total as f64,
        });
        info!(step, total, stage = name, "stage");
    }

    /// The child's `n`-th own stage (1-based) begins.
    fn after(&mut self, n: usize) {
        let name = AFTER.get(n - 1).copied().unwrap_or("working");
        self.emit(self.pipeline + n, name);
    }
}

impl Progress for JsonProgress {
    fn step(&mut self, step: usize, total: usize, name: &str) {
        self.pipeline = total;
        self.emit(step, name);
    }
}

/// A failure with its code.
struct Failure {
    code: ErrorCode,
    message: String,
}

fn failure(code: ErrorCode, message: impl std::fmt::Display) -> Failure {
    Failure {
        code,
        message: message.to_string(),
    }
}

fn volume_code(e: &VolumeError) -> ErrorCode {
    match e {
        e if e.is_not_found() => ErrorCode::FileNotFound,
        VolumeError::DicomSeries { .. } => ErrorCode::DicomError,
        _ => ErrorCode::InvalidFormat,
    }
}

/// The user-facing code of a pipeline failure.
fn run_error_code(e: &RunError) -> ErrorCode {
    match e {
        RunError::Input(v) => volume_code(v),
        RunError::Segment(SegmentVolumeError::Model(_)) => ErrorCode::ModelError,
        RunError::Segment(SegmentVolumeError::Inference(s)) if s.is_out_of_memory() => {
            ErrorCode::GpuOom
        }
        RunError::Segment(SegmentVolumeError::Inference(SegmentError::Shape { .. })) => {
            ErrorCode::ModelError
        }
        RunError::Nsm(NsmError::Model(_)) => ErrorCode::ModelError,
        RunError::Nsm(e) if e.is_out_of_memory() => ErrorCode::GpuOom,
        _ => ErrorCode::PipelineError,
    }
}

/// Runs the job in `dir`; returns the process exit status (0, or [`EXIT_FAILED`] after a
/// `failed` event).
pub fn run_job(dir: &Path) -> i32 {
    if !tie_to_supervisor() {
        eprintln!("kneenode run-job: the supervisor is gone; not starting");
        return EXIT_FAILED;
    }
    match run_job_inner(dir) {
        Ok(done) => {
            emit(&done);
            0
        }
        Err(f) => {
            let retry = kind_of(f.code) == FailureKind::Retry;
            tracing::error!(code = f.code.as_str(), error = %f.message, "job failed");
            emit(&Event::failed(f.code, f.message, retry));
            EXIT_FAILED
        }
    }
}

/// The environment variable through which the supervisor passes its pid.
pub const SUPERVISOR_PID_ENV: &str = "KNEENODE_SUPERVISOR_PID";

/// Makes the kernel kill this process if its supervisor dies (a killed supervisor must not
/// leave an orphan writing into a job folder that another worker now owns). Returns false when
/// the supervisor is already gone.
fn tie_to_supervisor() -> bool {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(error = %e, "could not tie the job to its supervisor's life");
    }
    match std::env::var(SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        Some(pid) => nix::unistd::getppid().as_raw() == pid,
        None => true,
    }
}

fn run_job_inner(dir: &Path) -> Result<Event, Failure> {
    let job = JobFile::read(dir).map_err(|e| failure(ErrorCode::PipelineError, e))?;
    let registry =
        Registry::load(&job.models_registry).map_err(|e| failure(ErrorCode::ModelError, e))?;
    let device =
        crate::device::select(&job.device).map_err(|e| failure(ErrorCode::PipelineError, e))?;
    let model = job.options.segmentation_model.clone();
    if job.options.label_map.is_none() {
        // Fail before anything is written when the model cannot be had.
        registry
            .spec(model.as_deref())
            .map_err(|e| failure(ErrorCode::ModelError, e))?;
    }
    let results_dir = dir.join(RESULTS_DIR);
    // A retry starts from a clean folder: nothing of a crashed attempt is packaged.
    if results_dir.exists() {
        std::fs::remove_dir_all(&results_dir).map_err(|e| failure(ErrorCode::PipelineError, e))?;
    }
    let mut progress = JsonProgress::default();
    let options = RunOptions {
        model,
        device,
        tta: false,
        select: job.options.selection(),
        side: job.options.side,
        shapes: Some(job.options.cartilage_smoothing),
        nsm: job.options.perform_nsm.then(|| NsmRun {
            nsm_type: job.options.nsm_type,
            model: None,
            options: NsmOptions::default(),
        }),
    };
    let out = match &job.options.label_map {
        Some(map) => run_labels(
            &job.input_path,
            map,
            &results_dir,
            &registry,
            &options,
            &mut progress,
        ),
        None => run(
            &job.input_path,
            &results_dir,
            &registry,
            &options,
            &mut progress,
        ),
    }
    .map_err(|e| failure(run_error_code(&e), e))?;
    for note in &out.notes {
        eprintln!("note: {note}");
    }
    let mut timings = out.timings.clone();
    let prefix = prefix_of(&job.input_path);
    let io =
        |what: &str, e: std::io::Error| failure(ErrorCode::PipelineError, format!("{what}: {e}"));

    progress.after(1);
    let clock = Instant::now();
    // A segmentation given as input has no image: its labels are drawn on black.
    let blank;
    let image = match &out.image {
        Some(image) => image,
        None => {
            blank = out.labels.map(|_| 0.0f32);
            &blank
        }
    };
    write_preview(
        &results_dir.join(format!("{prefix}_preview.png")),
        image,
        &out.labels,
    )
    .map_err(|e| io("writing the preview", e))?;
    let volumes = package::label_volumes_mm3(&out.labels);
    let names = &out.label_names;
    let tissue_volumes_mm3 = volumes
        .iter()
        .map(|(l, v)| {
            let name = names
                .get(&l.to_string())
                .cloned()
                .unwrap_or_else(|| format!("label {l}"));
            (name, (*v * 1000.0).round() / 1000.0)
        })
        .collect();
    timings.push(("preview".into(), clock.elapsed().as_secs_f64()));

    progress.after(2);
    let clock = Instant::now();
    let mut dicom = Vec::new();
    if let (true, Some(model)) = (job.input_path.is_dir(), &out.model) {
        dicom = write_dicom(&job, &out, model, &results_dir, &prefix, &volumes)?;
    }
    drop(out.image);
    timings.push(("DICOM SEG and SR".into(), clock.elapsed().as_secs_f64()));

    progress.after(3);
    let clock = Instant::now();
    let results_json = results_dir.join(format!("{prefix}_results.json"));
    let mut results = Results {
        kneenode_version: env!("CARGO_PKG_VERSION").into(),
        job_id: Some(job.job_id.clone()),
        prefix: prefix.clone(),
        input: InputGrid::of(&out.labels),
        device: crate::device::name(device),
        models: out
            .model
            .iter()
            .map(|(name, version)| ModelUsed {
                role: "segmentation".into(),
                name: name.clone(),
                version: version.clone(),
            })
            .chain(
                out.nsm
                    .as_ref()
                    .filter(|n| !n.results.is_empty())
                    .and_then(|n| n.model.clone())
                    .map(|(name, version)| ModelUsed {
                        role: "nsm".into(),
                        name,
                        version,
                    }),
            )
            .collect(),
        tissue_volumes_mm3,
        thickness_mm: out.shapes.as_ref().map(|s| s.thickness()),
        nsm: out.nsm.as_ref().map(|n| n.results_json()),
        timings_s: timings,
        files: Vec::new(),
    };
    let mut files: Vec<String> = std::fs::read_dir(&results_dir)
        .map_err(|e| io("listing results", e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    files.push(format!("{prefix}_results.json"));
    files.sort();
    results.files = files;
    results
        .timings_s
        .push(("packaging results".into(), clock.elapsed().as_secs_f64()));
    package::write_results(&results_json, &results).map_err(|e| io("writing results.json", e))?;
    let zip = dir.join(format!("{prefix}_results.zip"));
    package::zip_dir(&results_dir, &format!("{prefix}_results"), &zip)
        .map_err(|e| io("writing the zip", e))?;
    // Stage names are unique today; should one repeat, its times add up.
    let mut stage_seconds = std::collections::BTreeMap::new();
    for (stage, seconds) in &results.timings_s {
        *stage_seconds.entry(stage.clone()).or_insert(0.0) += seconds;
    }
    Ok(Event::Done {
        zip: zip.to_string_lossy().into_owned(),
        dicom: dicom
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        peak_gpu_bytes: None,
        stage_seconds,
    })
}

/// Writes the SEG and the SR into the results folder; returns their paths.
fn write_dicom(
    job: &JobFile,
    out: &RunOutput,
    model: &(String, String),
    results_dir: &Path,
    prefix: &str,
    volumes: &std::collections::BTreeMap<u8, f64>,
) -> Result<Vec<PathBuf>, Failure> {
    let catalog = match &job.segments_catalog {
        Some(path) => {
            SegmentCatalog::load(path).map_err(|e| failure(ErrorCode::PipelineError, e))?
        }
        None => SegmentCatalog::builtin(),
    };
    let algorithm = format!("kneenode {}", model.0);
    let seg_path = results_dir.join(format!("{prefix}_seg.dcm"));
    let seg = write_seg(
        &SegRequest {
            labels: &out.labels,
            sources: &out.sources,
            catalog: &catalog,
            job_id: &job.job_id,
            algorithm_name: &algorithm,
            algorithm_version: &model.1,
            series_number: job.seg_series_number,
            created: job.created_at,
        },
        &seg_path,
    )
    .map_err(|e| failure(ErrorCode::DicomError, e))?;
    let mut groups: Vec<_> = seg
        .segments
        .iter()
        .filter_map(|s| {
            let def = catalog.segments.get(&s.label)?;
            Some(volume_group(def, s.number, volumes.get(&s.label).copied()?))
        })
        .collect();
    if let Some(shapes) = &out.shapes {
        groups.extend(thickness_groups(shapes, &seg.segments, &catalog));
    }
    for r in out.nsm.iter().flat_map(|n| &n.results) {
        if let Some(b) = r.bscore.filter(|b| b.is_finite()) {
            groups.push(bscore_group(b, concepts::nsm_method(r.type_name())));
        }
    }
    let sr_path = results_dir.join(format!("{prefix}_sr.dcm"));
    write_sr(
        &SrRequest {
            seg: &seg_path,
            groups: &groups,
            job_id: &job.job_id,
            algorithm_name: &algorithm,
            algorithm_version: &model.1,
            series_number: job.seg_series_number + 1,
            created: job.created_at,
        },
        &sr_path,
    )
    .map_err(|e| failure(ErrorCode::PipelineError, e))?;
    Ok(vec![seg_path, sr_path])
}

/// The cartilage segment (DOMAIN.md label) a thickness region belongs to.
fn region_segment(region: &str) -> Option<u8> {
    match region {
        "pat_cart" => Some(1),
        "med_tib_cart" => Some(3),
        "lat_tib_cart" => Some(4),
        r if r.ends_with("_fem_cart") => Some(2),
        _ => None,
    }
}

/// One SR measurement group per cartilage segment with measured thickness, a row per region.
fn thickness_groups(
    shapes: &ShapeResults,
    segments: &[crate::dicom::seg::SegmentInfo],
    catalog: &SegmentCatalog,
) -> Vec<crate::dicom::sr::MeasurementGroup> {
    let mut by_segment: std::collections::BTreeMap<u8, Vec<RegionThickness>> = Default::default();
    for r in &shapes.regions {
        let (Some(label), Some(mean), Some(std), Some(median)) =
            (region_segment(&r.name), r.mean, r.std, r.median)
        else {
            continue;
        };
        by_segment.entry(label).or_default().push(RegionThickness {
            region: concepts::thickness_region(&r.name),
            mean,
            std,
            median,
            max: None,
        });
    }
    by_segment
        .into_iter()
        .filter_map(|(label, regions)| {
            let segment = segments.iter().find(|s| s.label == label)?;
            let def = catalog.segments.get(&label)?;
            Some(thickness_group(def, segment.number, &regions))
        })
        .collect()
}
