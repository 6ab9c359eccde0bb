//! The latent fit (DOMAIN.md, "Neural shape model"; CONTRACT.md "Fitting"): find the latent
//! whose SDF is zero at the mesh vertices.
//!
//! Each step draws `points_per_step` vertices, split evenly over the fitted surfaces (a random
//! subset of each surface's vertices, or all of them when it has no more than its share),
//! evaluates the decoder at them, and takes the L1 loss of the SDF of each point's own surface
//! clamped to ±`clamp` against the target 0 (also clamped). The gradient reaches only the
//! latent (the decoder's parameters are frozen), and one Adam step with the learning rate
//! `lr × (1/lr_decay)^(step // lr_every)` updates it. The fit stops after `max_steps`, or when
//! the loss has not improved for `patience` steps, and returns the latent of the lowest loss
//! (as the demo decoder's trainer does when it fits the shapes its BScore constants come from).
//!
//! Adam is written out on the one latent tensor rather than through `tch::nn::Optimizer`, which
//! wants a `VarStore`; the arithmetic is torch.optim.Adam's (bias-corrected moments,
//! `p −= lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`, torch's tensor ops in torch's order). Random numbers come from a seeded SplitMix64 in
//! Rust, not from libtorch, so the same seed draws the same initial latent and the same points
//! on the CPU and on a GPU.

use tch::{Device, Kind, Tensor};

use super::decoder::Decoder;

/// Settings of one fit.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Most Adam steps.
    pub max_steps: usize,
    /// Stop when the loss has not improved for this many steps; `None` runs all `max_steps`.
    pub patience: Option<usize>,
    /// Points per step over all fitted surfaces.
    pub points_per_step: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// The learning rate is divided by this…
    pub lr_decay: f64,
    /// …every this many steps.
    pub lr_every: usize,
    /// Predictions and targets are clamped to ±this.
    pub clamp: f64,
    /// Standard deviation of the initial latent (mean 0).
    pub init_std: f64,
    /// Seed of the initial latent and of the point draws.
    pub seed: u64,
}

impl Default for FitOptions {
    /// CONTRACT.md's schedule: 2000 steps, patience 50, 20 000 points, lr 0.005 ÷ 1.1 every
    /// 20 steps, clamp 0.1, latent from N(0, 0.01²).
    fn default() -> Self {
        FitOptions {
            max_steps: 2000,
            patience: Some(50),
            points_per_step: 20_000,
            lr: 0.005,
            lr_decay: 1.1,
            lr_every: 20,
            clamp: 0.1,
            init_std: 0.01,
            seed: 42,
        }
    }
}

impl FitOptions {
    /// The learning rate of step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr * self.lr_decay.powi(-((step / self.lr_every.max(1)) as i32))
    }
}

/// What a fit found.
#[derive(Debug, Clone, PartialEq)]
pub struct FitResult {
    /// The latent of the lowest loss (the one the loss was evaluated at, before that step's
    /// update).
    pub latent: Vec<f32>,
    /// Steps run.
    pub steps: usize,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Lowest loss seen: that of `latent`.
    pub best_loss: f64,
}

/// One surface to fit: the decoder column and its points (`[N, 3]` float on the decoder's
/// device, in the decoder's frame).
#[derive(Debug)]
pub struct Target {
    /// SDF column.
    pub column: i64,
    /// Points on the surface.
    pub points: Tensor,
}

/// SplitMix64: a small seeded generator (Steele, Lea and Flood 2014), plenty for drawing
/// points and an initial latent.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in 0..n (n > 0), by Lemire's multiply-shift (bias < n / 2⁶⁴).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Draws `k` distinct indices of `0..perm.len()` into `perm[..k]` (a partial Fisher–Yates on a
/// permutation kept between draws: every draw is uniform whatever the state it starts from).
fn draw(perm: &mut [i64], k: usize, rng: &mut Rng) {
    let n = perm.len();
    for i in 0..k.min(n) {
        let j = i + rng.below(n - i);
        perm.swap(i, j);
    }
}

/// Adam on one tensor.
#[derive(Debug)]
pub struct Adam {
    m: Tensor,
    v: Tensor,
    t: i32,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
}

impl Adam {
    /// Zero moments shaped like `param`; torch's defaults β = (0.9, 0.999), ε = 1e-8.
    pub fn new(param: &Tensor) -> Result<Adam, tch::TchError> {
        Ok(Adam {
            m: param.f_zeros_like()?,
            v: param.f_zeros_like()?,
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
    }

    /// One update of `param` (a leaf that requires grad) with its gradient `grad`.
    pub fn step(
        &mut self,
        param: &mut Tensor,
        grad: &Tensor,
        lr: f64,
    ) -> Result<(), tch::TchError> {
        let _guard = tch::no_grad_guard();
        self.t += 1;
        // torch.optim.Adam's single-tensor step, op for op (its `value=` scalars folded into
        // one operand, as tch's addcmul_/addcdiv_ take none).
        let _ = self.m.f_lerp_(grad, 1.0 - self.beta1)?;
        let _ = self
            .v
            .f_mul_scalar_(self.beta2)?
            .f_addcmul_(&grad.f_mul_scalar(1.0 - self.beta2)?, grad)?;
        let bias1 = 1.0 - self.beta1.powi(self.t);
        let bias2 = 1.0 - self.beta2.powi(self.t);
        let mut denom = self.v.f_sqrt()?.f_div_scalar(bias2.sqrt())?;
        let _ = denom.f_add_scalar_(self.eps)?;
        let _ = param.f_addcdiv_(&self.m.f_mul_scalar(-lr / bias1)?, &denom)?;
        Ok(())
    }
}

/// Fits a latent to `targets` with `decoder` (see the module's notes), from a latent drawn from
/// N(0, `init_std`²).
pub fn fit_latent(
    decoder: &Decoder,
    targets: &[Target],
    options: &FitOptions,
) -> Result<FitResult, tch::TchError> {
    let mut rng = Rng::new(options.seed);
    let init: Vec<f32> = (0..decoder.latent_size())
        .map(|_| (rng.normal() * options.init_std) as f32)
        .collect();
    run_fit(decoder, targets, options, init, rng)
}

/// [`fit_latent`] from a given latent (the benchmark starts both sides from the same one).
pub fn fit_latent_from(
    decoder: &Decoder,
    targets: &[Target],
    options: &FitOptions,
    init: &[f32],
) -> Result<FitResult, tch::TchError> {
    run_fit(
        decoder,
        targets,
        options,
        init.to_vec(),
        Rng::new(options.seed),
    )
}

fn run_fit(
    decoder: &Decoder,
    targets: &[Target],
    options: &FitOptions,
    init: Vec<f32>,
    mut rng: Rng,
) -> Result<FitResult, tch::TchError> {
    let device = decoder.device();
    let mut latent = decoder.latent_tensor(&init)?.f_set_requires_grad(true)?;
    let mut adam = Adam::new(&latent)?;
    let share = options.points_per_step / targets.len().max(1);
    // Per surface: how many points a step takes, and a permutation to draw them from.
    let mut plans: Vec<(usize, Vec<i64>)> = Vec::new();
    for t in targets {
        let n = t.points.size().first().copied().unwrap_or(0).max(0) as usize;
        plans.push((share.min(n), (0..n as i64).collect()));
    }
    // Which column each drawn point is scored on, in draw order: fixed for the whole fit.
    let columns: Vec<i64> = targets
        .iter()
        .zip(&plans)
        .flat_map(|(t, (k, _))| std::iter::repeat_n(t.column, *k))
        .collect();
    let columns = Tensor::f_from_slice(&columns)?
        .f_view([-1, 1])?
        .f_to_device(device)?;
    let mut best = f64::INFINITY;
    let mut best_latent = latent.f_detach_copy()?;
    let mut since_best = 0usize;
    let mut result = FitResult {
        latent: init,
        steps: 0,
        final_loss: f64::NAN,
        best_loss: f64::NAN,
    };
    for step in 0..options.max_steps {
        let mut parts = Vec::with_capacity(targets.len());
        for (t, (k, perm)) in targets.iter().zip(plans.iter_mut()) {
            if *k == perm.len() {
                parts.push(t.points.shallow_clone());
            } else {
                draw(perm, *k, &mut rng);
                let idx = Tensor::f_from_slice(&perm[..*k])?.f_to_device(device)?;
                parts.push(t.points.f_index_select(0, &idx)?);
            }
        }
        let xyz = Tensor::f_cat(&parts, 0)?;
        let sdf = decoder
            .forward(&latent, &xyz)?
            .f_gather(1, &columns, false)?;
        let loss = sdf
            .f_clamp(-options.clamp, options.clamp)?
            .f_abs()?
            .f_mean(Kind::Float)?;
        let grad = Tensor::f_run_backward(&[&loss], &[&latent], false, false)?;
        let Some(grad) = grad.first() else {
            break;
        };
        let value = loss.f_double_value(&[])?;
        result.steps = step + 1;
        result.final_loss = value;
        if value < best {
            best = value;
            since_best = 0;
            best_latent.f_copy_(&latent.f_detach()?)?;
        } else {
            since_best += 1;
        }
        adam.step(&mut latent, grad, options.lr_at(step))?;
        if options.patience.is_some_and(|p| since_best >= p) {
            break;
        }
    }
    result.best_loss = best;
    result.latent = Vec::<f32>::try_from(
        best_latent
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_view([-1])?,
    )?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_matches_torch_on_a_quadratic() {
        // Minimise |p − c|² from 0: Adam's first step moves each coordinate by lr exactly
        // (bias correction), and it converges.
        let c = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let mut p = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut adam = Adam::new(&p).unwrap();
        for step in 0..2000 {
            let loss = (&p - &c).square().sum(Kind::Float);
            let g = Tensor::run_backward(&[&loss], &[&p], false, false);
            adam.step(&mut p, &g[0], 0.05).unwrap();
            if step == 0 {
                let v = Vec::<f32>::try_from(p.detach()).unwrap();
                for (got, want) in v.iter().zip([0.05, -0.05, 0.05]) {
                    assert!((got - want).abs() < 1e-6, "{v:?}");
                }
            }
        }
        let v = Vec::<f32>::try_from(p.detach()).unwrap();
        for (got, want) in v.iter().zip([1.0, -2.0, 0.5]) {
            assert!((got - want).abs() < 1e-3, "{v:?}");
        }
    }

    #[test]
    fn schedule_and_random_draws() {
        let o = FitOptions::default();
        assert_eq!(o.lr_at(0), 0.005);
        assert_eq!(o.lr_at(19), 0.005);
        assert!((o.lr_at(40) - 0.005 / 1.21).abs() < 1e-15);
        let mut rng = Rng::new(1);
        let mut perm: Vec<i64> = (0..100).collect();
        draw(&mut perm, 10, &mut rng);
        let mut picked = perm[..10].to_vec();
        picked.sort_unstable();
        picked.dedup();
        assert_eq!(picked.len(), 10, "distinct");
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "still a permutation");
        let normals: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let mean = normals.iter().sum::<f64>() / 2e4;
        let var = normals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2e4;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        assert_eq!(Rng::new(7).next_u64(), Rng::new(7).next_u64());
    }
}
