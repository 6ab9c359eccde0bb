//! `kneenode bench nsm`: the NSM latent fit, timed, on a case a Python reference can repeat
//! exactly (`benches/nsm.sh` runs both and prints the ratio, `benches/nsm_ref.py` is the
//! reference).
//!
//! The case (a JSON file, written on first use) holds the decoder's manifest, the initial latent
//! and, per fitted surface, its column and a fixed set of points: the surfaces the decoder gives
//! at a known latent (BScore 1.5 along the bone-and-cartilage vector), marching cubes at 128³,
//! `--points` vertices drawn from each. Both sides then run the contract's loop for the same
//! number of steps (patience off) on all of those points every step, so they do the same
//! arithmetic: forward through the TorchScript decoder, gather each point's column, L1 of the
//! clamped SDF, backward to the latent, the loss read back to the host (and the latent kept when
//! it is the lowest so far), one Adam step with the scheduled learning rate. Untimed warm-up steps first (TorchScript's profiling executor
//! specialises the graph during its first calls), on a copy of the latent.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::pipeline::models::ModelSpec;
use crate::pipeline::nsm::decoder::Decoder;
use crate::pipeline::nsm::fit::{fit_latent_from, FitOptions, Rng, Target};
use crate::pipeline::nsm::points_tensor;

/// Options of `kneenode bench nsm`.
#[derive(Debug, Clone, clap::Args)]
pub struct NsmBenchArgs {
    /// The NSM manifest (e.g. models/demo/nsm/manifest.toml).
    #[arg(long)]
    pub manifest: PathBuf,
    /// The case file: read if it exists, else made and written.
    #[arg(long)]
    pub case: PathBuf,
    /// Points per surface in a new case.
    #[arg(long, default_value_t = 10_000)]
    pub points: usize,
    /// Timed Adam steps.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Untimed warm-up steps before them.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// One surface of a case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseSurface {
    /// Decoder column.
    pub column: i64,
    /// Points, decoder frame.
    pub points: Vec<[f32; 3]>,
}

/// A benchmark case, shared with the Python reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NsmCase {
    /// The latent the fit starts from.
    pub init_latent: Vec<f32>,
    /// Initial learning rate, decay and its period, clamp (the contract's).
    pub lr: f64,
    /// Divisor of the learning rate…
    pub lr_decay: f64,
    /// …every this many steps.
    pub lr_every: usize,
    /// SDF clamp.
    pub clamp: f64,
    /// The fitted surfaces.
    pub surfaces: Vec<CaseSurface>,
}

/// What one run measured (printed as one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct NsmBenchReport {
    /// Always `kneenode`.
    pub implementation: &'static str,
    /// Device.
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Points per step.
    pub points: usize,
    /// Timed steps.
    pub steps: usize,
    /// Seconds of the timed steps.
    pub seconds: f64,
    /// Milliseconds per step.
    pub ms_per_step: f64,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Lowest loss.
    pub best_loss: f64,
    /// The latent of the lowest loss.
    pub latent: Vec<f32>,
}

fn make_case(decoder: &Decoder, spec: &ModelSpec, points: usize) -> anyhow::Result<NsmCase> {
    let fit = FitOptions::default();
    let along = spec
        .manifest
        .bscore
        .as_ref()
        .and_then(|t| t.bone_and_cart.as_ref())
        .map(|b| (b.vector.clone(), b.mean_healthy + 1.5 * b.std_healthy));
    let known: Vec<f32> = match along {
        Some((v, t)) => v.iter().map(|x| (x * t) as f32).collect(),
        None => vec![0.0; decoder.latent_size() as usize],
    };
    let mut rng = Rng::new(fit.seed);
    let init_latent = (0..decoder.latent_size())
        .map(|_| (rng.normal() * fit.init_std) as f32)
        .collect();
    let columns: Vec<i64> = ["femur", "femoral_cartilage"]
        .iter()
        .filter_map(|s| decoder.column(s))
        .collect();
    let meshes = decoder.surfaces(&known, 128, &columns)?;
    let mut surfaces = Vec::new();
    for (column, mesh) in columns.into_iter().zip(meshes) {
        let mut order: Vec<usize> = (0..mesh.vertices.len()).collect();
        for i in 0..points.min(order.len()) {
            let j = i + rng.below(order.len() - i);
            order.swap(i, j);
        }
        order.truncate(points);
        surfaces.push(CaseSurface {
            column,
            points: order
                .iter()
                .map(|&i| mesh.vertices[i].map(|x| x as f32))
                .collect(),
        });
    }
    Ok(NsmCase {
        init_latent,
        lr: fit.lr,
        lr_decay: fit.lr_decay,
        lr_every: fit.lr_every,
        clamp: fit.clamp,
        surfaces,
    })
}

fn read_or_make_case(
    args: &NsmBenchArgs,
    decoder: &Decoder,
    spec: &ModelSpec,
) -> anyhow::Result<NsmCase> {
    if args.case.is_file() {
        let text = std::fs::read_to_string(&args.case)
            .with_context(|| format!("reading {}", args.case.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not an NSM benchmark case", args.case.display()));
    }
    let case = make_case(decoder, spec, args.points)?;
    if let Some(dir) = args.case.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.case, serde_json::to_string(&case)?)
        .with_context(|| format!("writing {}", args.case.display()))?;
    Ok(case)
}

/// Runs the benchmark and prints its JSON line.
pub fn nsm(args: &NsmBenchArgs) -> anyhow::Result<NsmBenchReport> {
    let device = crate::device::select(&args.device)?;
    let spec = ModelSpec::load("bench", &args.manifest)?;
    let decoder = Decoder::load(&spec, device)?;
    let case = read_or_make_case(args, &decoder, &spec)?;
    anyhow::ensure!(
        case.init_latent.len() == decoder.latent_size() as usize,
        "{} was made for another decoder (latent size {})",
        args.case.display(),
        case.init_latent.len()
    );
    let targets = case
        .surfaces
        .iter()
        .map(|s| {
            Ok(Target {
                column: s.column,
                points: points_tensor(&s.points, device)?,
            })
        })
        .collect::<Result<Vec<_>, tch::TchError>>()?;
    let total: usize = case.surfaces.iter().map(|s| s.points.len()).sum();
    // Every point every step (each surface's share is all of its points), from the case's
    // latent, for exactly `steps` steps.
    let options = |steps: usize| FitOptions {
        max_steps: steps,
        patience: None,
        points_per_step: total * case.surfaces.len().max(1),
        lr: case.lr,
        lr_decay: case.lr_decay,
        lr_every: case.lr_every,
        clamp: case.clamp,
        ..FitOptions::default()
    };
    if args.warmup > 0 {
        fit_latent_from(&decoder, &targets, &options(args.warmup), &case.init_latent)?;
    }
    sync(device);
    let clock = Instant::now();
    let fitted = fit_latent_from(&decoder, &targets, &options(args.steps), &case.init_latent)?;
    sync(device);
    let seconds = clock.elapsed().as_secs_f64();
    let report = NsmBenchReport {
        implementation: "kneenode",
        device: crate::device::name(device),
        threads: tch::get_num_threads(),
        points: total,
        steps: fitted.steps,
        seconds,
        ms_per_step: 1e3 * seconds / fitted.steps.max(1) as f64,
        final_loss: fitted.final_loss,
        best_loss: fitted.best_loss,
        latent: fitted.latent,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}

fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
