//! The EM iterations of multi-label STAPLE over vote patterns.

use super::patterns::{Patterns, ABSTAIN};
use super::*;

/// STAPLE's expectation–maximisation over the patterns.
pub(super) struct Em<'a> {
    pub(super) patterns: &'a Patterns,
    pub(super) raters: usize,
    pub(super) k: usize,
    pub(super) prior: Vec<f64>,
    /// Whether the M-step re-estimates `prior`.
    pub(super) estimate_prior: bool,
    /// θ_j\[said\]\[truth\] at `(j * k + said) * k + truth`.
    pub(super) theta: Vec<f64>,
    /// Posterior per pattern, `k` per pattern.
    pub(super) w: Vec<f64>,
}

impl<'a> Em<'a> {
    pub(super) fn new(
        patterns: &'a Patterns,
        k: usize,
        trust: &[Trust],
        options: &StapleOptions,
    ) -> Self {
        let sensitivity = options.initial_sensitivity;
        let raters = trust.len();
        let mut votes_for = vec![0f64; k];
        for (votes, &count) in patterns.votes.chunks_exact(raters).zip(&patterns.counts) {
            for &v in votes.iter().filter(|&&v| v != ABSTAIN) {
                votes_for[usize::from(v)] += count as f64;
            }
        }
        let total: f64 = votes_for.iter().sum();
        let prior = if total > 0.0 {
            votes_for.iter().map(|v| v / total).collect()
        } else {
            vec![1.0 / k as f64; k]
        };
        let mut theta = vec![0f64; raters * k * k];
        for (t, m) in trust.iter().zip(theta.chunks_exact_mut(k * k)) {
            let trusted: Vec<usize> = (0..k).filter(|&l| t.trusts(l as u8)).collect();
            let nt = trusted.len() as f64;
            for s in 0..k {
                let column_trusted = trusted.contains(&s);
                for &said in &trusted {
                    m[said * k + s] = match (column_trusted, said == s) {
                        (false, _) => 1.0 / nt,
                        (true, true) if trusted.len() == 1 => 1.0,
                        (true, true) => sensitivity,
                        (true, false) => (1.0 - sensitivity) / (nt - 1.0),
                    };
                }
            }
        }
        Self {
            patterns,
            raters,
            k,
            prior,
            estimate_prior: options.prior == Prior::Estimated,
            theta,
            w: vec![0.0; patterns.counts.len() * k],
        }
    }

    /// Posterior of every pattern from the current θ.
    pub(super) fn expect(&mut self) {
        let k = self.k;
        let log_theta: Vec<f64> = self.theta.iter().map(|t| t.ln()).collect();
        let log_prior: Vec<f64> = self.prior.iter().map(|p| p.ln()).collect();
        for (votes, w) in self
            .patterns
            .votes
            .chunks_exact(self.raters)
            .zip(self.w.chunks_exact_mut(k))
        {
            w.copy_from_slice(&log_prior);
            for (j, &v) in votes.iter().enumerate().filter(|(_, &v)| v != ABSTAIN) {
                let row = &log_theta[(j * k + usize::from(v)) * k..][..k];
                for (ws, r) in w.iter_mut().zip(row) {
                    *ws += r;
                }
            }
            let max = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                w.copy_from_slice(&self.prior);
                continue;
            }
            let mut sum = 0.0;
            for ws in w.iter_mut() {
                *ws = (*ws - max).exp();
                sum += *ws;
            }
            for ws in w.iter_mut() {
                *ws /= sum;
            }
        }
    }

    /// New θ (and prior, if estimated) from the current posterior; returns the largest change
    /// of an entry.
    pub(super) fn maximise(&mut self) -> f64 {
        let (k, r) = (self.k, self.raters);
        let mut num = vec![0f64; r * k * k];
        let mut den = vec![0f64; r * k];
        for ((votes, w), &count) in self
            .patterns
            .votes
            .chunks_exact(r)
            .zip(self.w.chunks_exact(k))
            .zip(&self.patterns.counts)
        {
            let c = count as f64;
            for (j, &v) in votes.iter().enumerate().filter(|(_, &v)| v != ABSTAIN) {
                let row = &mut num[(j * k + usize::from(v)) * k..][..k];
                let d = &mut den[j * k..][..k];
                for ((n, d), ws) in row.iter_mut().zip(d.iter_mut()).zip(w) {
                    *n += c * ws;
                    *d += c * ws;
                }
            }
        }
        let mut change = 0f64;
        if self.estimate_prior {
            let mut mass = vec![0f64; k];
            for (w, &count) in self.w.chunks_exact(k).zip(&self.patterns.counts) {
                for (m, ws) in mass.iter_mut().zip(w) {
                    *m += count as f64 * ws;
                }
            }
            let total: f64 = mass.iter().sum();
            if total > 0.0 {
                for (p, m) in self.prior.iter_mut().zip(&mass) {
                    let new = m / total;
                    change = change.max((new - *p).abs());
                    *p = new;
                }
            }
        }
        for (i, (t, n)) in self.theta.iter_mut().zip(&num).enumerate() {
            let (j, s) = (i / (k * k), i % k);
            let d = den[j * k + s];
            if d > 0.0 {
                let new = n / d;
                change = change.max((new - *t).abs());
                *t = new;
            }
        }
        change
    }

    /// Runs EM; returns self, the iterations run and whether it converged.
    pub(super) fn run(mut self, max_iterations: usize, tolerance: f64) -> (Self, usize, bool) {
        let mut iterations = 0;
        let mut converged = false;
        while iterations < max_iterations {
            self.expect();
            let change = self.maximise();
            iterations += 1;
            if change < tolerance {
                converged = true;
                break;
            }
        }
        self.expect();
        (self, iterations, converged)
    }

    /// Each pattern's most probable label (ties: the lowest).
    pub(super) fn decide(&self) -> Vec<u8> {
        self.w.chunks_exact(self.k).map(argmax_lowest).collect()
    }
}

/// Relative difference below which two posteriors count as tied: a tie in exact arithmetic
/// (symmetric raters) may come out a few ulps apart depending on the order of the sums.
pub(super) const TIE: f64 = 1e-12;

/// The lowest label whose posterior is within [`TIE`] of the largest.
pub(super) fn argmax_lowest(w: &[f64]) -> u8 {
    let max = w.iter().copied().fold(0.0, f64::max);
    w.iter().position(|&p| p >= max * (1.0 - TIE)).unwrap_or(0) as u8
}
