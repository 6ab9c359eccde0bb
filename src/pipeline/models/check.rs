//! Manifest checks that the types cannot express: the fields each kind needs and refuses,
//! orientation codes, and NSM tables.

use super::{Manifest, ModelKind};

/// What a patch3d, slice2d or ensemble manifest must hold, on its own (the models it names are
/// checked against the registry by [`super::Registry::check_references`]).
pub(super) fn check_kind(m: &Manifest) -> Result<(), String> {
    let kind = match m.kind {
        ModelKind::Patch3d => "patch3d",
        ModelKind::Slice2d => "slice2d",
        ModelKind::Ensemble => "ensemble",
        ModelKind::Nsm => return Ok(()),
    };
    let required: Vec<(&str, bool)> = match m.kind {
        ModelKind::Patch3d => vec![
            ("file", m.file.is_none()),
            ("num_classes", m.num_classes.is_none()),
            ("spacing", m.spacing.is_none()),
            ("orientation", m.orientation.is_none()),
            ("patch_size", m.patch_size.is_none()),
            (
                "in_channels (for a cascade)",
                m.cascade.is_some() && m.in_channels.is_none(),
            ),
        ],
        ModelKind::Slice2d => vec![
            ("file", m.file.is_none()),
            ("num_classes", m.num_classes.is_none()),
            ("orientation", m.orientation.is_none()),
            ("slice_size", m.slice_size.is_none()),
            ("normalization", m.normalization.is_none()),
        ],
        _ => vec![
            ("members", m.members.is_empty()),
            ("fusion", m.fusion.is_none()),
            ("num_classes", m.num_classes.is_none()),
        ],
    };
    let missing: Vec<&str> = required
        .into_iter()
        .filter_map(|(k, m)| m.then_some(k))
        .collect();
    let article = if kind == "ensemble" { "an" } else { "a" };
    if !missing.is_empty() {
        return Err(format!(
            "{article} {kind} model needs {}",
            missing.join(", ")
        ));
    }
    if let Some(c) = m.num_classes {
        if !(1..=256).contains(&c) {
            return Err(format!("num_classes is {c}: labels are bytes, so 1 to 256"));
        }
    }
    let misplaced: Vec<&str> = [
        (
            "slice_size",
            m.slice_size.is_some() && m.kind != ModelKind::Slice2d,
        ),
        ("batch", m.batch.is_some() && m.kind != ModelKind::Slice2d),
        (
            "cascade",
            m.cascade.is_some() && m.kind != ModelKind::Patch3d,
        ),
        (
            "members",
            !m.members.is_empty() && m.kind != ModelKind::Ensemble,
        ),
        (
            "fusion",
            m.fusion.is_some() && m.kind != ModelKind::Ensemble,
        ),
        (
            "trust",
            !m.trust.is_empty() && m.kind != ModelKind::Ensemble,
        ),
        // An ensemble's members each say their own side.
        ("side", m.side.is_some() && m.kind == ModelKind::Ensemble),
    ]
    .into_iter()
    .filter_map(|(k, m)| m.then_some(k))
    .collect();
    if !misplaced.is_empty() {
        return Err(format!(
            "{} not used by {article} {kind} model",
            misplaced.join(", ")
        ));
    }
    if let Some(o) = &m.orientation {
        check_orientation(o)?;
        check_side_mirror(m, o)?;
    }
    match m.kind {
        ModelKind::Patch3d => {
            if m.cascade.is_none() && m.in_channels.is_some_and(|c| c != 1) {
                return Err(format!(
                    "in_channels is {}, but a patch3d model without `cascade` takes one image channel",
                    m.in_channels.unwrap_or(0)
                ));
            }
            if m.cascade.as_deref() == Some(m.name.as_str()) {
                return Err("a cascade cannot name itself as its low-res model".into());
            }
            if m.patch_size.is_some_and(|p| p.contains(&0))
                || m.spacing
                    .is_some_and(|s| s.iter().any(|&v| !(v.is_finite() && v > 0.0)))
            {
                return Err("patch_size and spacing must be positive".into());
            }
            if let Some(a) = m.mirror_axes.iter().find(|&&a| a > 2) {
                return Err(format!(
                    "mirror axis {a}: a patch3d model has axes 0, 1 and 2"
                ));
            }
        }
        ModelKind::Slice2d => {
            if m.in_channels.is_some_and(|c| c != 1) {
                return Err(format!(
                    "in_channels is {}, but a slice2d model takes one image channel",
                    m.in_channels.unwrap_or(0)
                ));
            }
            if m.slice_size.is_some_and(|s| s.contains(&0)) || m.batch == Some(0) {
                return Err("slice_size and batch must be positive".into());
            }
            if let Some(a) = m.mirror_axes.iter().find(|&&a| a > 1) {
                return Err(format!(
                    "mirror axis {a}: a slice2d model mirrors in-plane only (axes 0 and 1)"
                ));
            }
        }
        _ => {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(d) = m.members.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(format!("member {d:?} is listed twice"));
            }
            if m.members.iter().any(|n| n == &m.name) {
                return Err("an ensemble cannot be its own member".into());
            }
            if let Some(t) = m.trust.keys().find(|t| !m.members.contains(t)) {
                return Err(format!("[trust] names {t:?}, which is not a member"));
            }
        }
    }
    Ok(())
}

/// A one-sided model cannot mirror along its left–right axis for test-time augmentation: the
/// mirrored copy would be a knee of the side it was not trained on.
fn check_side_mirror(m: &Manifest, orientation: &str) -> Result<(), String> {
    let Some(side) = m.side else { return Ok(()) };
    let lr = orientation
        .chars()
        .position(|c| matches!(c.to_ascii_uppercase(), 'L' | 'R'));
    match lr {
        Some(axis) if m.mirror_axes.contains(&axis) => Err(format!(
            "mirror axis {axis} is the left–right axis of {orientation}, but the model knows only \
             {side} knees (side = \"{side}\")"
        )),
        _ => Ok(()),
    }
}

/// An orientation code names each patient axis once: one of L/R, one of P/A, one of S/I.
fn check_orientation(code: &str) -> Result<(), String> {
    let axes: Vec<Option<usize>> = code
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            'L' | 'R' => Some(0),
            'P' | 'A' => Some(1),
            'S' | 'I' => Some(2),
            _ => None,
        })
        .collect();
    let mut seen = [false; 3];
    let ok = axes.len() == 3
        && axes
            .iter()
            .all(|a| a.is_some_and(|a| !std::mem::replace(&mut seen[a], true)));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "orientation {code:?}: want three letters, one each of L/R, P/A and S/I"
        ))
    }
}

/// What an NSM manifest must hold (CONTRACT.md): a file, `latent_size`, `surfaces` naming the
/// femur, and BScore vectors of the latent's length, of unit norm, with a positive spread.
pub(super) fn check_nsm(m: &Manifest) -> Result<(), String> {
    let mut missing = Vec::new();
    if m.file.is_none() {
        missing.push("file");
    }
    if m.latent_size.is_none_or(|l| l == 0) {
        missing.push("latent_size");
    }
    if !m.surfaces.iter().any(|s| s == "femur") {
        missing.push("surfaces with \"femur\"");
    }
    if !missing.is_empty() {
        return Err(format!("an nsm model needs {}", missing.join(", ")));
    }
    let latent = m.latent_size.unwrap_or(0);
    let table = m.bscore.clone().unwrap_or_default();
    for (name, spec) in [
        ("bone_and_cart", &table.bone_and_cart),
        ("bone_only", &table.bone_only),
    ] {
        let Some(b) = spec else { continue };
        if b.vector.len() != latent {
            return Err(format!(
                "bscore.{name}.vector has {} values, latent_size is {latent}",
                b.vector.len()
            ));
        }
        let norm = b.vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        if (norm - 1.0).abs() > 1e-3 {
            return Err(format!(
                "bscore.{name}.vector must be a unit vector (norm {norm})"
            ));
        }
        if !(b.std_healthy.is_finite() && b.std_healthy > 0.0 && b.mean_healthy.is_finite()) {
            return Err(format!(
                "bscore.{name}: mean_healthy must be finite and std_healthy positive"
            ));
        }
    }
    Ok(())
}
