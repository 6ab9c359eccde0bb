//! Running any segmentation model by its manifest ([`segment`]), including the two kinds made of
//! other models:
//!
//! - an **ensemble** (kind `ensemble`, e.g. DOMAIN.md's `staple` of the three Goyal plane models)
//!   runs each member on the image, one at a time (a model's weights are dropped before the next
//!   one loads), and fuses their labels with [`majority_vote`] or [`staple`]. Each member
//!   abstains on the labels it is not trusted for ([`member_trust`]);
//! - a **cascade** (a `patch3d` manifest with `cascade = "<low-res model>"`, nnU-Net's
//!   `3d_cascade_fullres`) runs the low-res model to labels on the image's grid, then the
//!   full-res model on the image plus the one-hot of those labels
//!   ([`cascade_channels`](super::segment::cascade_channels)).
//!
//! A model trained on knees of one side only (manifest `side`) gets every knee as one of that
//! side: a knee of the other side is mirrored across the patient's left–right axis first
//! ([`mirror`] along [`left_right_axis`]) and the labels are mirrored back. A mirrored left knee
//! *is* a right knee, medial side still medial, so no label is exchanged. When nobody says which
//! knee it is, [`segment`] tries both and keeps the more plausible result (`pick_side`).

use tch::Device;

use super::fusion::{majority_vote, plane_trust, staple, StapleOptions, Trust};
use super::models::{Fusion, Manifest, ModelError, ModelKind, ModelSpec, Registry, Side};
use super::postprocess::keep_largest_components;
use super::segment::{load_model, patch3d_scored, CascadeInput, SegmentVolumeError};
use super::slice2d::{plane_of, segment_slices};
use crate::volume::geometry::closest_axes;
use crate::volume::{Geometry, Volume, VolumeError};

/// What [`segment`] produced.
#[derive(Debug)]
pub struct Segmentation {
    /// The labels, on exactly the image's grid.
    pub labels: Volume<u8>,
    /// Every model that ran, in order, as (registry name, version): the model itself, a
    /// cascade's low-res model before it, an ensemble's members (the ensemble itself is not
    /// listed; its name and version are the caller's `spec`).
    pub models_run: Vec<(String, String)>,
    /// What the results should say about how the labels were made (members, fusion, cascade,
    /// mirroring, the knee's side when it had to be guessed).
    pub notes: Vec<String>,
    /// The knee's side the one-sided models took it for: the given side, or the one chosen when
    /// none was given. `None` when no model that ran cares about the side.
    pub side: Option<Side>,
}

/// Segments `image` with the model `spec` describes, whatever its kind: loads the weights
/// (of every model involved, one at a time) onto `device`, runs it and returns labels on
/// exactly the image's grid. `tta` asks for mirroring test-time augmentation along each
/// model's `mirror_axes`. Models that `spec` names are looked up in `registry` and checked
/// first ([`Registry::check_references`]); a model that cannot be used is
/// [`SegmentVolumeError::Model`] (MODEL_ERROR).
///
/// `side` is the knee's side when it is known (a user's option, the DICOM laterality). A model
/// whose manifest has a `side` gets a knee of the other side mirrored (see the module
/// documentation). When `side` is `None` and a model that runs is one-sided, the whole
/// segmentation runs twice, taking the knee as a left and as a right one, and the more
/// plausible result is kept (`pick_side`: the models' confidence), with a note saying so.
pub fn segment(
    registry: &Registry,
    spec: &ModelSpec,
    image: &Volume<f32>,
    device: Device,
    tta: bool,
    side: Option<Side>,
) -> Result<Segmentation, SegmentVolumeError> {
    registry.check_references(spec)?;
    if !is_one_sided(registry, spec)? {
        return Ok(segment_as(registry, spec, image, device, tta, side)?.finish(None));
    }
    if let Some(side) = side {
        return Ok(segment_as(registry, spec, image, device, tta, Some(side))?.finish(Some(side)));
    }
    let right = segment_as(registry, spec, image, device, tta, Some(Side::Right))?;
    let left = segment_as(registry, spec, image, device, tta, Some(Side::Left))?;
    let (chosen, why) = pick_side(&right, &left);
    let mut attempt = match chosen {
        Side::Left => left,
        Side::Right => right,
    };
    attempt
        .record
        .notes
        .push(format!("knee side not given; chose {chosen} by {why}"));
    Ok(attempt.finish(Some(chosen)))
}

/// Whether the model, or a member of the ensemble, was trained on one side only. (A cascade's
/// low-res model has no side other than its full-res model's: [`Registry::check_references`].)
fn is_one_sided(registry: &Registry, spec: &ModelSpec) -> Result<bool, SegmentVolumeError> {
    if spec.manifest.side.is_some() {
        return Ok(true);
    }
    for member in &spec.manifest.members {
        if registry.spec(Some(member))?.manifest.side.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What ran, and the notes about it, while a segmentation is under way.
#[derive(Debug, Default)]
struct Record {
    models_run: Vec<(String, String)>,
    notes: Vec<String>,
    /// Per model that ran: its confidence (see `patch3d_scored`), `None` where the kind has
    /// none (slice2d).
    confidence: Vec<Option<f64>>,
}

/// One complete segmentation, taking the knee for one side.
#[derive(Debug)]
struct Attempt {
    labels: Volume<u8>,
    record: Record,
}

impl Attempt {
    /// The models' mean confidence, when every model that ran has one.
    fn confidence(&self) -> Option<f64> {
        let c = &self.record.confidence;
        let all: Option<Vec<f64>> = c.iter().copied().collect();
        all.filter(|v| !v.is_empty())
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// Voxels of labels 3–6 (tibial cartilage and menisci in DOMAIN.md's map) once each label
    /// is cut down to its largest connected component, as post-processing will.
    fn compartment_voxels(&self) -> usize {
        let mut labels = self.labels.clone();
        keep_largest_components(&mut labels);
        labels
            .data()
            .iter()
            .filter(|&&l| (3..=6).contains(&l))
            .count()
    }

    fn finish(self, side: Option<Side>) -> Segmentation {
        Segmentation {
            labels: self.labels,
            models_run: self.record.models_run,
            notes: self.record.notes,
            side,
        }
    }
}

/// Which of two segmentations of a knee of unknown side to keep, `right` made taking it for a
/// right knee and `left` for a left one, and why, in words that finish "chose left by …".
///
/// A one-sided model shown a knee of the side it never saw still labels it, but less surely:
/// so the one where the models are more confident wins (the mean highest class probability over
/// the voxels they call foreground, averaged over the models). Where a model gives no
/// probabilities (slice2d), the one with more tibial cartilage and meniscus (labels 3–6) after
/// keeping each label's largest component wins: a model that mistakes the lateral plateau for
/// the medial one tends to call both plateaus the same, and post-processing then drops one.
/// A tie keeps `right`.
fn pick_side(right: &Attempt, left: &Attempt) -> (Side, String) {
    if let (Some(r), Some(l)) = (right.confidence(), left.confidence()) {
        let side = if l > r { Side::Left } else { Side::Right };
        let why = format!(
            "model confidence (mean highest class probability over the voxels called foreground: \
             {l:.4} as a left knee, {r:.4} as a right one)"
        );
        return (side, why);
    }
    let (r, l) = (right.compartment_voxels(), left.compartment_voxels());
    let side = if l > r { Side::Left } else { Side::Right };
    let why = format!(
        "the volume of tibial cartilage and menisci (labels 3–6, largest components: {l} voxels \
         as a left knee, {r} as a right one)"
    );
    (side, why)
}

/// The whole segmentation with the knee taken for `knee` (`None`: unknown, which only models
/// without a side may meet).
fn segment_as(
    registry: &Registry,
    spec: &ModelSpec,
    image: &Volume<f32>,
    device: Device,
    tta: bool,
    knee: Option<Side>,
) -> Result<Attempt, SegmentVolumeError> {
    let mut record = Record::default();
    let labels = match spec.manifest.kind {
        ModelKind::Ensemble => {
            segment_ensemble(registry, spec, image, device, tta, knee, &mut record)?
        }
        _ => {
            let name = &spec.manifest.name;
            segment_one(registry, name, spec, image, device, tta, knee, &mut record)?
        }
    };
    Ok(Attempt { labels, record })
}

/// The voxel axis (0 = i, 1 = j, 2 = k) that runs closest to the patient's left–right axis
/// (LPS x), as [`reorient_to`](crate::volume::reorient_to) assigns axes: mirroring along it
/// and then reorienting gives the mirror of the reoriented image along its L/R axis.
pub fn left_right_axis(geometry: &Geometry) -> usize {
    let (perm, _) = closest_axes(&geometry.direction);
    perm.iter().position(|&p| p == 0).unwrap_or(0)
}

/// `volume` with its voxels in reverse order along `axis`, on the same grid (geometry
/// unchanged): in patient space, its mirror image across the plane through the grid's centre
/// normal to that axis. Its own inverse.
pub fn mirror<T: Copy>(volume: &Volume<T>, axis: usize) -> Result<Volume<T>, VolumeError> {
    let [nx, ny, nz] = volume.dims();
    let src = volume.data();
    let mut data = Vec::with_capacity(src.len());
    for k in 0..nz {
        for j in 0..ny {
            match axis {
                0 => {
                    let row = nx * (j + ny * k);
                    data.extend(src[row..row + nx].iter().rev());
                }
                1 => {
                    let row = nx * ((ny - 1 - j) + ny * k);
                    data.extend_from_slice(&src[row..row + nx]);
                }
                _ => {
                    let row = nx * (j + ny * (nz - 1 - k));
                    data.extend_from_slice(&src[row..row + nx]);
                }
            }
        }
    }
    volume.with_data(data)
}

/// A patch3d (possibly a cascade) or slice2d model, registered as `name`, on a knee taken for
/// `knee`: mirrored first (and its labels mirrored back) when the model knows only the other
/// side. Anything but those kinds is a MODEL_ERROR.
#[expect(
    clippy::too_many_arguments,
    reason = "the run's context, passed down unchanged to each model"
)]
fn segment_one(
    registry: &Registry,
    name: &str,
    spec: &ModelSpec,
    image: &Volume<f32>,
    device: Device,
    tta: bool,
    knee: Option<Side>,
    out: &mut Record,
) -> Result<Volume<u8>, SegmentVolumeError> {
    match (spec.manifest.side, knee) {
        (Some(trained), Some(knee)) if trained != knee => {
            let axis = left_right_axis(image.geometry());
            let mirrored = mirror(image, axis)?;
            let labels = run_model(registry, name, spec, &mirrored, device, tta, out)?;
            drop(mirrored);
            out.notes.push(format!(
                "{name} knows only {trained} knees: the {knee} knee was mirrored left–right for it \
                 (along voxel axis {}) and its labels mirrored back",
                ["i", "j", "k"][axis]
            ));
            Ok(mirror(&labels, axis)?)
        }
        _ => run_model(registry, name, spec, image, device, tta, out),
    }
}

/// Runs one patch3d (possibly a cascade) or slice2d model on `image` as it is.
fn run_model(
    registry: &Registry,
    name: &str,
    spec: &ModelSpec,
    image: &Volume<f32>,
    device: Device,
    tta: bool,
    out: &mut Record,
) -> Result<Volume<u8>, SegmentVolumeError> {
    let m = &spec.manifest;
    let labels = match (&m.kind, &m.cascade) {
        (ModelKind::Slice2d, _) => {
            let model = load_model(spec, device)?;
            out.confidence.push(None);
            segment_slices(image, spec, &model, device, tta)?
        }
        (ModelKind::Patch3d, None) => {
            let model = load_model(spec, device)?;
            let (labels, confidence) = patch3d_scored(image, spec, &model, device, tta, None)?;
            out.confidence.push(Some(confidence));
            labels
        }
        (ModelKind::Patch3d, Some(low_name)) => {
            let low_spec = registry.spec(Some(low_name))?;
            let low_labels = {
                let low_model = load_model(&low_spec, device)?;
                let (labels, confidence) =
                    patch3d_scored(image, &low_spec, &low_model, device, tta, None)?;
                out.confidence.push(Some(confidence));
                labels
            };
            out.models_run
                .push((low_name.clone(), low_spec.manifest.version.clone()));
            out.notes.push(format!(
                "cascade: the low-res model {low_name} (version {}) segmented first; {name} took its \
                 labels as one-hot input",
                low_spec.manifest.version
            ));
            let cascade = CascadeInput {
                labels: &low_labels,
                num_classes: low_spec.manifest.num_classes.unwrap_or(1),
            };
            let model = load_model(spec, device)?;
            let (labels, confidence) =
                patch3d_scored(image, spec, &model, device, tta, Some(cascade))?;
            out.confidence.push(Some(confidence));
            labels
        }
        (kind, _) => {
            return Err(ModelError::NotSegmentation {
                name: m.name.clone(),
                kind: kind.clone(),
            }
            .into())
        }
    };
    out.models_run.push((name.to_owned(), m.version.clone()));
    Ok(labels)
}

/// Which labels a member of `ensemble` is trusted for (it abstains on the others): all but the
/// ensemble's `[trust]` entry for it when there is one, else for a slice2d member its plane's
/// trust ([`plane_trust`] of the plane its orientation slices in), else every label.
pub fn member_trust(member: &str, member_spec: &ModelSpec, ensemble: &Manifest) -> Trust {
    if let Some(dropped) = ensemble.trust.get(member) {
        return Trust::dropping(dropped);
    }
    let m = &member_spec.manifest;
    match (&m.kind, m.orientation.as_deref().and_then(plane_of)) {
        (ModelKind::Slice2d, Some(plane)) => plane_trust(plane),
        _ => Trust::all(),
    }
}

/// Runs the members one after another, each on the knee taken for `knee`, and fuses their
/// labels.
fn segment_ensemble(
    registry: &Registry,
    spec: &ModelSpec,
    image: &Volume<f32>,
    device: Device,
    tta: bool,
    knee: Option<Side>,
    out: &mut Record,
) -> Result<Volume<u8>, SegmentVolumeError> {
    let m = &spec.manifest;
    let (Some(classes), Some(fusion)) = (m.num_classes, m.fusion) else {
        return Err(ModelError::KindNotAvailable {
            name: m.name.clone(),
            kind: m.kind.clone(),
        }
        .into());
    };
    let mut raters = Vec::with_capacity(m.members.len());
    let mut trust = Vec::with_capacity(m.members.len());
    let first = out.models_run.len();
    for member in &m.members {
        let member_spec = registry.spec(Some(member))?;
        if member_spec.manifest.kind == ModelKind::Ensemble {
            return Err(ModelError::Composition {
                name: m.name.clone(),
                reason: format!("member {member:?} is an ensemble itself"),
            }
            .into());
        }
        trust.push(member_trust(member, &member_spec, m));
        let labels = segment_one(
            registry,
            member,
            &member_spec,
            image,
            device,
            tta,
            knee,
            out,
        )?;
        raters.push(labels.into_data());
    }
    let views: Vec<&[u8]> = raters.iter().map(Vec::as_slice).collect();
    let (labels, how) = match fusion {
        Fusion::Majority => (
            majority_vote(&views, classes, &trust)?,
            "majority vote".to_owned(),
        ),
        Fusion::Staple => {
            let s = staple(&views, classes, &trust, &StapleOptions::default())?;
            let how = if s.converged {
                format!("STAPLE (converged after {} iterations)", s.iterations)
            } else {
                format!(
                    "STAPLE (stopped after {} iterations without converging)",
                    s.iterations
                )
            };
            (s.labels, how)
        }
    };
    drop(views);
    drop(raters);
    let members: Vec<String> = out.models_run[first..]
        .iter()
        .map(|(n, v)| format!("{n} (version {v})"))
        .collect();
    out.notes.push(format!(
        "ensemble {}: {} fused by {how}",
        m.name,
        members.join(", ")
    ));
    Ok(Volume::from_vec(image.dims(), labels, *image.geometry())?)
}

#[cfg(test)]
mod tests;
