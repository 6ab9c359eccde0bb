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

use tch::Device;

use super::fusion::{majority_vote, plane_trust, staple, StapleOptions, Trust};
use super::models::{Fusion, Manifest, ModelError, ModelKind, ModelSpec, Registry};
use super::segment::{
    load_model, segment_patch3d, segment_volume, CascadeInput, SegmentVolumeError,
};
use super::slice2d::{plane_of, segment_slices};
use crate::volume::Volume;

/// What [`segment`] produced.
#[derive(Debug)]
pub struct Segmentation {
    /// The labels, on exactly the image's grid.
    pub labels: Volume<u8>,
    /// Every model that ran, in order, as (registry name, version): the model itself, a
    /// cascade's low-res model before it, an ensemble's members (the ensemble itself is not
    /// listed; its name and version are the caller's `spec`).
    pub models_run: Vec<(String, String)>,
    /// What the results should say about how the labels were made (members, fusion, cascade).
    pub notes: Vec<String>,
}

/// Segments `image` with the model `spec` describes, whatever its kind: loads the weights
/// (of every model involved, one at a time) onto `device`, runs it and returns labels on
/// exactly the image's grid. `tta` asks for mirroring test-time augmentation along each
/// model's `mirror_axes`. Models that `spec` names are looked up in `registry` and checked
/// first ([`Registry::check_references`]); a model that cannot be used is
/// [`SegmentVolumeError::Model`] (MODEL_ERROR).
pub fn segment(
    registry: &Registry,
    spec: &ModelSpec,
    image: &Volume<f32>,
    device: Device,
    tta: bool,
) -> Result<Segmentation, SegmentVolumeError> {
    registry.check_references(spec)?;
    let mut record = Record::default();
    let labels = match spec.manifest.kind {
        ModelKind::Ensemble => segment_ensemble(registry, spec, image, device, tta, &mut record)?,
        _ => {
            let name = &spec.manifest.name;
            segment_one(registry, name, spec, image, device, tta, &mut record)?
        }
    };
    Ok(Segmentation {
        labels,
        models_run: record.models_run,
        notes: record.notes,
    })
}

/// What ran, and the notes about it, while a segmentation is under way.
#[derive(Debug, Default)]
struct Record {
    models_run: Vec<(String, String)>,
    notes: Vec<String>,
}

/// A patch3d (possibly a cascade) or slice2d model, registered as `name`; anything else is a
/// MODEL_ERROR.
fn segment_one(
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
            segment_slices(image, spec, &model, device, tta)?
        }
        (ModelKind::Patch3d, None) => {
            let model = load_model(spec, device)?;
            segment_volume(image, spec, &model, device, tta)?
        }
        (ModelKind::Patch3d, Some(low_name)) => {
            let low_spec = registry.spec(Some(low_name))?;
            let low_labels = {
                let low_model = load_model(&low_spec, device)?;
                segment_volume(image, &low_spec, &low_model, device, tta)?
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
            segment_patch3d(image, spec, &model, device, tta, Some(cascade))?
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

/// Runs the members one after another and fuses their labels.
fn segment_ensemble(
    registry: &Registry,
    spec: &ModelSpec,
    image: &Volume<f32>,
    device: Device,
    tta: bool,
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
        let labels = segment_one(registry, member, &member_spec, image, device, tta, out)?;
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
mod tests {
    use super::*;

    fn spec(toml: &str) -> ModelSpec {
        ModelSpec {
            manifest: toml::from_str(&format!("name = \"m\"\nversion = \"1\"\n{toml}")).unwrap(),
            dir: ".".into(),
        }
    }

    #[test]
    fn members_are_trusted_by_plane_unless_the_ensemble_says_otherwise() {
        let ensemble = spec(
            "kind = \"ensemble\"\nmembers = [\"sag\", \"cor\", \"ax\", \"p\"]\nfusion = \"staple\"\n\
             num_classes = 10\n[trust]\np = [9]\n",
        )
        .manifest;
        let slice = |o: &str| spec(&format!("kind = \"slice2d\"\norientation = \"{o}\"\n"));
        let patch = spec("kind = \"patch3d\"\norientation = \"PIR\"\n");
        assert_eq!(member_trust("sag", &slice("PIR"), &ensemble), Trust::all());
        assert_eq!(
            member_trust("cor", &slice("IRA"), &ensemble),
            plane_trust("coronal")
        );
        assert_eq!(
            member_trust("ax", &slice("ARI"), &ensemble),
            plane_trust("axial")
        );
        assert!(!member_trust("ax", &slice("ARI"), &ensemble).trusts(5));
        // A patch3d model sees the whole volume, whatever its orientation.
        assert_eq!(member_trust("q", &patch, &ensemble), Trust::all());
        // The manifest's [trust] table wins, for any kind.
        assert_eq!(member_trust("p", &patch, &ensemble), Trust::dropping(&[9]));
        assert_eq!(
            member_trust("p", &slice("IRA"), &ensemble),
            Trust::dropping(&[9])
        );
    }
}
