//! Unit tests with the analytic test decoder (tests/data/models/nsm-analytic, made by
//! tests/helpers/make_nsm_decoder.py): ellipsoids whose shape follows the latent in closed form.

use super::*;
use crate::pipeline::models::Registry;

pub(crate) fn analytic_spec() -> ModelSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models");
    let registry_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        registry_file.path(),
        format!(
            "[models.nsm-analytic]\nmanifest = {:?}\n",
            dir.join("nsm-analytic/manifest.toml")
        ),
    )
    .unwrap();
    let registry = Registry::load(registry_file.path()).unwrap();
    assert_eq!(registry.nsm_model().as_deref(), Some("nsm-analytic"));
    registry.spec(Some("nsm-analytic")).unwrap()
}

#[test]
fn decoder_loads_frozen_and_sparse_grids_match_dense_ones() {
    let spec = analytic_spec();
    let decoder = Decoder::load(&spec, Device::Cpu).unwrap();
    assert_eq!(decoder.latent_size(), 6);
    assert_eq!(decoder.column(FEMORAL_CARTILAGE), Some(1));
    assert!(decoder.parameters_frozen().unwrap());
    let latent = [0.1f32, 0.2, -0.1, 0.3, -0.2, 0.1];
    let n = 97;
    let sparse = decoder.grid(&latent, n, &[0, 1]).unwrap();
    let coord = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
    let points: Vec<[f32; 3]> = (0..n * n * n)
        .map(|o| [coord(o % n), coord((o / n) % n), coord(o / (n * n))])
        .collect();
    let dense = decoder.sdf(&latent, &points).unwrap();
    let mut exact = 0usize;
    for col in 0..2 {
        for (s, d) in sparse[col].iter().zip(&dense[col]) {
            assert_eq!(*s > 0.0, *d > 0.0, "a skipped block changed sign");
            exact += usize::from(s == d);
        }
        // Same surface either way.
        let a = decoder::grid_surface(&sparse[col], n);
        let b = decoder::grid_surface(&dense[col], n);
        assert_eq!(a.vertices.len(), b.vertices.len());
        assert!(a.is_closed_and_oriented() && a.enclosed_volume() > 0.0);
    }
    // At 97³ the near band (1.5 diagonals of a 4-cell block) is still wide: about half the
    // grid. It narrows with the resolution.
    let share = exact as f64 / (2 * n * n * n) as f64;
    assert!(share < 0.7, "{share:.2} of the grid was evaluated");
}

#[test]
fn fitting_points_of_a_known_latent_recovers_it() {
    let spec = analytic_spec();
    let decoder = Decoder::load(&spec, Device::Cpu).unwrap();
    let known = [0.1f32, 0.15, -0.1, 0.2, -0.15, 0.1];
    let meshes = decoder.surfaces(&known, 64, &[0, 1]).unwrap();
    let targets: Vec<Target> = meshes
        .iter()
        .enumerate()
        .map(|(c, m)| {
            let pts: Vec<[f32; 3]> = m.vertices.iter().map(|v| v.map(|x| x as f32)).collect();
            Target {
                column: c as i64,
                points: points_tensor(&pts, Device::Cpu).unwrap(),
            }
        })
        .collect();
    let options = FitOptions {
        points_per_step: 4000,
        ..FitOptions::default()
    };
    let fitted = fit_latent(&decoder, &targets, &options).unwrap();
    assert!(fitted.steps < options.max_steps, "patience stops it");
    assert!(fitted.final_loss < 2e-3, "{fitted:?}");
    for (got, want) in fitted.latent.iter().zip(known) {
        assert!(
            (got - want).abs() < 0.02,
            "{:?} vs {known:?}",
            fitted.latent
        );
    }
    // The same seed gives the same fit.
    let again = fit_latent(&decoder, &targets, &options).unwrap();
    assert_eq!(again, fitted);
}

#[test]
fn params_carry_the_domain_keys() {
    let r = NsmResult {
        nsm_type: NsmType::BoneOnly,
        model: ("m".into(), "1".into()),
        latent: vec![0.5, -0.5],
        bscore: Some(1.25),
        icp_transform: icp::IDENTITY,
        center: [1.0, 2.0, 3.0],
        scale: 40.0,
        assd_bone_mm: 0.4,
        assd_cartilage_mm: None,
        left: true,
        steps: 12,
        final_loss: f64::NAN,
        best_loss: 0.01,
        timings: Vec::new(),
        femur: Mesh::default(),
        cartilage: None,
    };
    let p = r.params();
    for key in [
        "latent",
        "Bscore",
        "icp_transform",
        "center",
        "scale",
        "assd_bone_mm",
        "assd_cartilage_mm",
        "nsm_type",
        "model",
        "version",
        "steps",
        "final_loss",
    ] {
        assert!(p.get(key).is_some(), "{key}");
    }
    assert_eq!(p["icp_transform"][3][3], 1.0);
    assert!(p["final_loss"].is_null() && p["assd_cartilage_mm"].is_null());
    assert_eq!(r.prefix(), "NSM_bone_only_recon_");
    let all = results_json(&[r], &["a note".into()]);
    assert_eq!(all["knee_side"], "left");
    assert_eq!(all["femur_bone_only"]["Bscore"], 1.25);
}
