//! One pipeline run, from an input file or DICOM folder to the output folder, reporting progress
//! per stage. Used by `kneenode run` and by the worker's child process.
//!
//! Stages: loading, segmentation, post-processing, writing label files, then (unless stopped
//! after the labels) meshes and thickness, then (when asked) NSM. The NSM stage
//! ([`nsm_stage`]) uses the registry's NSM model ([`Registry::nsm_model`]); without one, or
//! without a femur, it is skipped with a note rather than failing the run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::Device;

use super::label_map::LabelMap;
use super::models::{Registry, Side};
use super::nsm::{self, NsmError, NsmOptions, NsmResult};
use super::postprocess::{fill_bone_holes, keep_largest_components};
use super::segment::{segment, SegmentVolumeError};
use super::shapes::{analyse_shapes, ShapeError, ShapeResults};
use super::NsmType;
use crate::volume::dicom_series::read_dicom_part;
use crate::volume::{self, Selection, Volume, VolumeError};

/// Receives progress: stage `step` of `total`, named.
pub trait Progress {
    /// A stage begins.
    fn step(&mut self, step: usize, total: usize, name: &str);
}

/// Progress that goes nowhere.
impl Progress for () {
    fn step(&mut self, _: usize, _: usize, _: &str) {}
}

/// What a run needs besides its input.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Registry model name; `None` = the registry default.
    pub model: Option<String>,
    /// Device to run on.
    pub device: Device,
    /// Mirroring test-time augmentation.
    pub tta: bool,
    /// For DICOM series of several echoes or orientations: the part to analyse.
    pub select: Selection,
    /// The knee's side, overriding what a DICOM series states (Laterality). A model trained on
    /// one side only needs it; `None` with no laterality in the input (a NIfTI file) makes such
    /// a model try both sides (see [`segment`]).
    pub side: Option<Side>,
    /// Build meshes and measure cartilage thickness, with this cartilage smoothing (Gaussian
    /// variance, mm²); `None` stops after the label files.
    pub shapes: Option<f64>,
    /// Fit the neural shape model(s) after the meshes; `None` skips NSM.
    pub nsm: Option<NsmRun>,
}

/// What the NSM stage should do.
#[derive(Debug, Clone, PartialEq)]
pub struct NsmRun {
    /// Which NSM(s).
    pub nsm_type: NsmType,
    /// Registry name; `None` = the registry's NSM model.
    pub model: Option<String>,
    /// Fit and reconstruction settings.
    pub options: NsmOptions,
}

/// What the NSM stage produced.
#[derive(Debug, Clone, Default)]
pub struct NsmOutput {
    /// One result per fitted NSM type.
    pub results: Vec<NsmResult>,
    /// Why something was skipped or assumed.
    pub notes: Vec<String>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Name and version of the model used, when one was.
    pub model: Option<(String, String)>,
}

impl NsmOutput {
    /// The `nsm` object of results.json.
    pub fn results_json(&self) -> serde_json::Value {
        nsm::results_json(&self.results, &self.notes)
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The input image; `None` when the input was a segmentation.
    pub image: Option<Volume<f32>>,
    /// The labels, on the input's grid.
    pub labels: Volume<u8>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Seconds per stage.
    pub timings: Vec<(String, f64)>,
    /// Segmentation model name and version; `None` when the input was a segmentation.
    pub model: Option<(String, String)>,
    /// Label value → tissue name (the model's manifest, or DOMAIN.md's map).
    pub label_names: std::collections::BTreeMap<String, String>,
    /// For DICOM input: the files of the slices the image was made of, in slice order.
    pub sources: Vec<PathBuf>,
    /// Meshes and thickness, when asked for.
    pub shapes: Option<ShapeResults>,
    /// NSM results, when asked for.
    pub nsm: Option<NsmOutput>,
    /// What the run assumed or left out, in words.
    pub notes: Vec<String>,
}

/// Run failures, each mapping to one user-facing error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The input is missing (FILE_NOT_FOUND), unreadable (INVALID_FORMAT) or an inconsistent
    /// DICOM series (DICOM_ERROR).
    #[error(transparent)]
    Input(VolumeError),
    /// The model or inference failed (MODEL_ERROR, GPU_OOM, PIPELINE_ERROR).
    #[error(transparent)]
    Segment(#[from] SegmentVolumeError),
    /// Outputs could not be written.
    #[error("writing results: {0}")]
    Output(VolumeError),
    /// Meshes or thickness failed (PIPELINE_ERROR).
    #[error("shape analysis: {0}")]
    Shapes(#[from] ShapeError),
    /// The NSM model is unusable (MODEL_ERROR) or the fit failed (PIPELINE_ERROR, GPU_OOM).
    #[error(transparent)]
    Nsm(#[from] NsmError),
}

/// The name outputs are prefixed with: the input's file name without `.nii.gz`, `.nii`,
/// `.nrrd` or `.dcm`.
pub fn prefix_of(input: &Path) -> String {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    for ext in [".nii.gz", ".nii", ".nrrd", ".dcm"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_owned();
        }
    }
    name
}

/// An input image as [`load_input`] read it.
#[derive(Debug)]
pub struct Input {
    /// The image.
    pub image: Volume<f32>,
    /// For DICOM input: the files of its slices, in slice order; empty for a file.
    pub sources: Vec<PathBuf>,
    /// The knee's side as a DICOM series states it (Frame Laterality, Image Laterality or
    /// Laterality); `None` for NIfTI and NRRD, which do not record it.
    pub side: Option<Side>,
}

/// Reads an image: the part `select` names of a DICOM folder (with the files it was made of
/// and the side they state), or a NIfTI / NRRD file (with neither).
pub fn load_input(input: &Path, select: &Selection) -> Result<Input, VolumeError> {
    if input.is_dir() {
        let part = read_dicom_part(&volume::dicom_files(input)?, input, select)?;
        Ok(Input {
            image: part.volume,
            sources: part.files,
            side: part.side,
        })
    } else {
        Ok(Input {
            image: volume::read_image(input)?,
            sources: Vec::new(),
            side: None,
        })
    }
}

/// The knee's side for segmentation and where it came from: the option wins over the DICOM
/// laterality, with a note when the two disagree.
fn knee_side(option: Option<Side>, dicom: Option<Side>) -> (Option<Side>, Option<String>) {
    match (option, dicom) {
        (Some(o), Some(d)) if o != d => (
            Some(o),
            Some(format!(
                "knee side {o}, as the side option says, although the DICOM series states {d}"
            )),
        ),
        (Some(o), _) => (
            Some(o),
            Some(format!("knee side {o}, from the side option")),
        ),
        (None, Some(d)) => (
            Some(d),
            Some(format!("knee side {d}, from the DICOM series' laterality")),
        ),
        (None, None) => (None, None),
    }
}

/// Segments `input` and writes `{prefix}_all-labels.nii.gz` and `.nrrd` into `out`; with
/// `options.shapes`, also the bone and cartilage meshes and the thickness results.
pub fn run(
    input: &Path,
    out: &Path,
    registry: &Registry,
    options: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<RunOutput, RunError> {
    let mut stages = Stages::new(3, options, progress);
    stages.begin("loading");
    let Input {
        image,
        sources,
        side: stated,
    } = load_input(input, &options.select).map_err(RunError::Input)?;
    let spec = registry
        .spec(options.model.as_deref())
        .map_err(SegmentVolumeError::from)?;
    let (side, side_note) = knee_side(options.side, stated);

    stages.begin("segmentation");
    let segmentation = segment(registry, &spec, &image, options.device, options.tta, side)?;
    let mut labels = segmentation.labels;

    stages.begin("post-processing");
    keep_largest_components(&mut labels);
    fill_bone_holes(&mut labels);

    let map = LabelMap::from_manifest(
        spec.manifest
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let mut output = analyse(input, out, labels, &map, registry, options, stages)?;
    output.image = Some(image);
    output.sources = sources;
    output.model = Some((spec.manifest.name.clone(), spec.manifest.version.clone()));
    output.label_names = spec.manifest.labels.clone();
    // Where the side came from matters only where a model used it.
    if segmentation.side.is_some() {
        output.notes.extend(side_note);
    }
    output.notes.extend(segmentation.notes);
    Ok(output)
}

/// Analyses an existing segmentation: reads the label volume `input` (NIfTI or NRRD),
/// numbered as `map` says, renumbers it to DOMAIN.md's map (values the map does not name
/// become background, with a note), writes it as `{prefix}_all-labels.nii.gz` and `.nrrd`, and
/// runs meshes, thickness and NSM as `options` ask. No model is loaded unless NSM is asked for.
pub fn run_labels(
    input: &Path,
    map: &LabelMap,
    out: &Path,
    registry: &Registry,
    options: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<RunOutput, RunError> {
    let mut stages = Stages::new(1, options, progress);
    stages.begin("loading");
    let given = volume::read_labels(input).map_err(RunError::Input)?;
    let (labels, dropped) = map.to_domain(&given);
    drop(given);
    let mut output = analyse(
        input,
        out,
        labels,
        &LabelMap::default(),
        registry,
        options,
        stages,
    )?;
    if dropped > 0 {
        output.notes.push(format!(
            "{dropped} voxels carry values the label map does not name; they were taken as background"
        ));
    }
    Ok(output)
}

/// Stage bookkeeping: numbering for `progress` and the seconds each stage took.
struct Stages<'a> {
    progress: &'a mut dyn Progress,
    total: usize,
    done: usize,
    current: Option<(String, Instant)>,
    timings: Vec<(String, f64)>,
}

impl<'a> Stages<'a> {
    /// `before` stages come before the label files; the rest follow from `options`.
    fn new(before: usize, options: &RunOptions, progress: &'a mut dyn Progress) -> Self {
        let after = match (options.shapes, &options.nsm) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(_), Some(_)) => 2,
        };
        Stages {
            progress,
            total: before + 1 + after,
            done: 0,
            current: None,
            timings: Vec::new(),
        }
    }

    fn begin(&mut self, name: &str) {
        self.end();
        self.done += 1;
        self.progress.step(self.done, self.total, name);
        self.current = Some((name.to_owned(), Instant::now()));
    }

    fn end(&mut self) {
        if let Some((name, started)) = self.current.take() {
            self.timings.push((name, started.elapsed().as_secs_f64()));
        }
    }
}

/// What every run does once it has labels (DOMAIN.md numbering as `map` says): the label
/// files, then meshes and thickness, then NSM, as `options` ask.
fn analyse(
    input: &Path,
    out: &Path,
    labels: Volume<u8>,
    map: &LabelMap,
    registry: &Registry,
    options: &RunOptions,
    mut stages: Stages<'_>,
) -> Result<RunOutput, RunError> {
    stages.begin("writing label files");
    std::fs::create_dir_all(out).map_err(|error| {
        RunError::Output(VolumeError::Io {
            path: out.to_owned(),
            error,
        })
    })?;
    let prefix = prefix_of(input);
    let nii = out.join(format!("{prefix}_all-labels.nii.gz"));
    let nrrd = out.join(format!("{prefix}_all-labels.nrrd"));
    volume::write_nifti(&nii, &labels).map_err(RunError::Output)?;
    volume::write_nrrd(&nrrd, &labels).map_err(RunError::Output)?;
    let mut files = vec![nii, nrrd];
    let shapes = match options.shapes {
        Some(smoothing) => {
            stages.begin("meshes and thickness");
            let shapes = analyse_shapes(&labels, map, smoothing, out, &prefix)?;
            files.extend(shapes.files.iter().cloned());
            Some(shapes)
        }
        None => None,
    };
    let nsm = match (&options.nsm, &shapes) {
        (Some(nsm_run), Some(shapes)) => {
            stages.begin("NSM");
            let output = nsm_stage(&labels, map, shapes, registry, nsm_run, options.device, out)?;
            files.extend(output.files.iter().cloned());
            Some(output)
        }
        _ => None,
    };
    stages.end();
    Ok(RunOutput {
        image: None,
        labels,
        files,
        timings: stages.timings,
        model: None,
        label_names: domain_label_names(),
        sources: Vec::new(),
        shapes,
        nsm,
        notes: Vec::new(),
    })
}

/// DOMAIN.md's label map as index → tissue name, the names a model manifest uses.
pub fn domain_label_names() -> std::collections::BTreeMap<String, String> {
    [
        "background",
        "patellar cartilage",
        "femoral cartilage",
        "medial tibial cartilage",
        "lateral tibial cartilage",
        "medial meniscus",
        "lateral meniscus",
        "femur",
        "tibia",
        "patella",
    ]
    .iter()
    .enumerate()
    .map(|(i, n)| (i.to_string(), (*n).to_owned()))
    .collect()
}

/// The NSM stage: fits `nsm_run.nsm_type` to the femur (and femoral cartilage) meshes of
/// `shapes`, with the knee's side read from `labels`, and writes the `NSM_*` files into `out`.
/// A registry without an NSM model, a missing femur or a missing cartilage (for the
/// bone-and-cartilage model) are notes, not errors; a named or registered NSM model that does
/// not load is an error (MODEL_ERROR).
pub fn nsm_stage<T: Copy + Into<u16>>(
    labels: &Volume<T>,
    map: &LabelMap,
    shapes: &ShapeResults,
    registry: &Registry,
    nsm_run: &NsmRun,
    device: Device,
    out: &Path,
) -> Result<NsmOutput, NsmError> {
    let mut output = NsmOutput::default();
    let Some(name) = nsm_run.model.clone().or_else(|| registry.nsm_model()) else {
        output
            .notes
            .push("NSM skipped: the model registry has no NSM model".into());
        return Ok(output);
    };
    let spec = registry.spec(Some(&name))?;
    output.model = Some((spec.manifest.name.clone(), spec.manifest.version.clone()));
    let Some(femur) = &shapes.femur else {
        output
            .notes
            .push("NSM skipped: there is no femur in the labels".into());
        return Ok(output);
    };
    let cartilage = shapes.femoral_cartilage.as_ref();
    let kind = match (nsm_run.nsm_type, cartilage) {
        (NsmType::BoneAndCart, None) => {
            output.notes.push(
                "NSM skipped: the bone-and-cartilage model needs femoral cartilage, and there is none"
                    .into(),
            );
            return Ok(output);
        }
        (NsmType::Both, None) => {
            output
                .notes
                .push("NSM: no femoral cartilage, so only the bone-only model was fitted".into());
            NsmType::BoneOnly
        }
        (k, _) => k,
    };
    let side = nsm::prepare::knee_side(labels, map);
    output.notes.extend(side.note.clone());
    output.results = nsm::fit_knee(
        femur,
        cartilage,
        side.left,
        &spec,
        kind,
        &nsm_run.options,
        device,
    )?;
    output.files = nsm::write_outputs(&output.results, out)?;
    Ok(output)
}
