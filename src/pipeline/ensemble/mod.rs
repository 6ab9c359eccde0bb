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
//! knee it is, [`segment`] takes it from where the knee lies in the scanner, or else for a knee
//! of the model's own side, and says so in a note ([`assumed_side`]).

use tch::Device;

use super::fusion::{majority_vote, plane_trust, staple, StapleOptions, Trust};
use super::models::{Fusion, Manifest, ModelError, ModelKind, ModelSpec, Registry, Side};
use super::segment::{load_model, patch3d, CascadeInput, SegmentVolumeError};
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
/// documentation). When `side` is `None` and a model that runs is one-sided, the side is
/// [`assumed_side`], with a note saying how.
pub fn segment(
    registry: &Registry,
    spec: &ModelSpec,
    image: &Volume<f32>,
    device: Device,
    tta: bool,
    side: Option<Side>,
) -> Result<Segmentation, SegmentVolumeError> {
    registry.check_references(spec)?;
    let Some(trained) = trained_side(registry, spec)? else {
        return Ok(segment_as(registry, spec, image, device, tta, side)?.finish(None));
    };
    if let Some(side) = side {
        return Ok(segment_as(registry, spec, image, device, tta, Some(side))?.finish(Some(side)));
    }
    let (chosen, why) = assumed_side(image.geometry(), image.dims(), trained);
    let mut attempt = segment_as(registry, spec, image, device, tta, Some(chosen))?;
    attempt
        .record
        .notes
        .push(format!("knee side not given; taken as {chosen}: {why}"));
    Ok(attempt.finish(Some(chosen)))
}

/// The side the model, or the first one-sided member of the ensemble, was trained on; `None`
/// when none is one-sided. (A cascade's low-res model has no side other than its full-res
/// model's: [`Registry::check_references`].)
fn trained_side(registry: &Registry, spec: &ModelSpec) -> Result<Option<Side>, SegmentVolumeError> {
    if let Some(side) = spec.manifest.side {
        return Ok(Some(side));
    }
    for member in &spec.manifest.members {
        if let Some(side) = registry.spec(Some(member))?.manifest.side {
            return Ok(Some(side));
        }
    }
    Ok(None)
}

/// How far (mm) from the scanner's left–right centre a knee must lie for its position to tell
/// its side.
pub const SIDE_OFFSET_MM: f64 = 40.0;

/// The side of a knee nobody named, and why, in words that follow "taken as left: …".
///
/// A knee coil lies beside the patient's midline, so in scanner coordinates a right knee lies
/// to the patient's right of the isocentre (LPS x < 0) and a left knee to the left: when the
/// image's centre is at least [`SIDE_OFFSET_MM`] off, that decides. Otherwise (an image
/// centred at the origin, as many converters and the phantom write it) nothing in the image
/// can be trusted to tell: the knee is taken for one of the model's own side (`trained`), not
/// mirrored, and the note says to give the side for a knee of the other side. (The models'
/// confidence cannot tell either: a model that never saw the other side labels a mirrored knee
/// just as surely, with medial and lateral exchanged.)
pub fn assumed_side(geometry: &Geometry, dims: [usize; 3], trained: Side) -> (Side, String) {
    let centre = geometry.index_to_point(dims.map(|d| d.saturating_sub(1) as f64 / 2.0));
    let x = centre[0];
    if x <= -SIDE_OFFSET_MM {
        let why = format!(
            "the image's centre lies {:.0} mm to the patient's right of the scanner's centre, \
             where a right knee lies in a knee coil",
            -x
        );
        (Side::Right, why)
    } else if x >= SIDE_OFFSET_MM {
        let why = format!(
            "the image's centre lies {x:.0} mm to the patient's left of the scanner's centre, \
             where a left knee lies in a knee coil"
        );
        (Side::Left, why)
    } else {
        let why = format!(
            "neither the input nor the knee's position in the scanner says which knee it is, so \
             it is segmented as a {trained} knee, the side the model was trained on; if it is a \
             {} knee, run it again with the side given (--side {}, or the job option side = \"{}\"), \
             or medial and lateral are exchanged",
            trained.other(),
            trained.other(),
            trained.other()
        );
        (trained, why)
    }
}

/// What ran, and the notes about it, while a segmentation is under way.
#[derive(Debug, Default)]
struct Record {
    models_run: Vec<(String, String)>,
    notes: Vec<String>,
}

/// One complete segmentation, taking the knee for one side.
#[derive(Debug)]
struct Attempt {
    labels: Volume<u8>,
    record: Record,
}

impl Attempt {
    fn finish(self, side: Option<Side>) -> Segmentation {
        Segmentation {
            labels: self.labels,
            models_run: self.record.models_run,
            notes: self.record.notes,
            side,
        }
    }
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
    let mut run = Run {
        registry,
        device,
        tta,
        record: Record::default(),
    };
    let labels = match spec.manifest.kind {
        ModelKind::Ensemble => run.ensemble(spec, image, knee)?,
        _ => run.one(&spec.manifest.name, spec, image, knee)?,
    };
    Ok(Attempt {
        labels,
        record: run.record,
    })
}

/// One segmentation under way: what each of its models runs with, and what ran.
struct Run<'a> {
    registry: &'a Registry,
    device: Device,
    tta: bool,
    record: Record,
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

impl Run<'_> {
    /// A patch3d (possibly a cascade) or slice2d model, registered as `name`, on a knee taken for
    /// `knee`: mirrored first (and its labels mirrored back) when the model knows only the other
    /// side. Anything but those kinds is a MODEL_ERROR.
    fn one(
        &mut self,
        name: &str,
        spec: &ModelSpec,
        image: &Volume<f32>,
        knee: Option<Side>,
    ) -> Result<Volume<u8>, SegmentVolumeError> {
        match (spec.manifest.side, knee) {
            (Some(trained), Some(knee)) if trained != knee => {
                let axis = left_right_axis(image.geometry());
                let mirrored = mirror(image, axis)?;
                let labels = self.model(name, spec, &mirrored)?;
                drop(mirrored);
                self.record.notes.push(format!(
                    "{name} knows only {trained} knees: the {knee} knee was mirrored left–right for it \
                     (along voxel axis {}) and its labels mirrored back",
                    ["i", "j", "k"][axis]
                ));
                Ok(mirror(&labels, axis)?)
            }
            _ => self.model(name, spec, image),
        }
    }

    /// Runs one patch3d (possibly a cascade) or slice2d model on `image` as it is.
    fn model(
        &mut self,
        name: &str,
        spec: &ModelSpec,
        image: &Volume<f32>,
    ) -> Result<Volume<u8>, SegmentVolumeError> {
        let (device, tta, out) = (self.device, self.tta, &mut self.record);
        let m = &spec.manifest;
        let labels = match (&m.kind, &m.cascade) {
            (ModelKind::Slice2d, _) => {
                let model = load_model(spec, device)?;
                segment_slices(image, spec, &model, device, tta)?
            }
            (ModelKind::Patch3d, None) => {
                let model = load_model(spec, device)?;
                patch3d(image, spec, &model, device, tta, None)?
            }
            (ModelKind::Patch3d, Some(low_name)) => {
                let low_spec = self.registry.spec(Some(low_name))?;
                let low_labels = {
                    let low_model = load_model(&low_spec, device)?;
                    patch3d(image, &low_spec, &low_model, device, tta, None)?
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
                patch3d(image, spec, &model, device, tta, Some(cascade))?
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

    /// Runs the members one after another, each on the knee taken for `knee`, and fuses their
    /// labels.
    fn ensemble(
        &mut self,
        spec: &ModelSpec,
        image: &Volume<f32>,
        knee: Option<Side>,
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
        let first = self.record.models_run.len();
        for member in &m.members {
            let member_spec = self.registry.spec(Some(member))?;
            if member_spec.manifest.kind == ModelKind::Ensemble {
                return Err(ModelError::Composition {
                    name: m.name.clone(),
                    reason: format!("member {member:?} is an ensemble itself"),
                }
                .into());
            }
            trust.push(member_trust(member, &member_spec, m));
            let labels = self.one(member, &member_spec, image, knee)?;
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
        let members: Vec<String> = self.record.models_run[first..]
            .iter()
            .map(|(n, v)| format!("{n} (version {v})"))
            .collect();
        self.record.notes.push(format!(
            "ensemble {}: {} fused by {how}",
            m.name,
            members.join(", ")
        ));
        Ok(Volume::from_vec(image.dims(), labels, *image.geometry())?)
    }
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

#[cfg(test)]
mod tests;
