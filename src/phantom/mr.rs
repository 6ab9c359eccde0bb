//! MR-like signal for the phantom: a proton-density/DESS-like contrast with partial volume,
//! textures, a smooth bias field and Rician noise.
//!
//! Partial volume comes from the signed distances themselves: a voxel whose centre is `d` mm
//! outside a surface is counted as `clamp(0.5 − d/w)` inside it (`w` the mean voxel size), the
//! analytic equivalent of supersampling the edge. Nested layers (marrow, cortex, cartilage)
//! mix by the differences of their coverages.

use super::anatomy::{fall, Knee, Tissues, P3};
use super::{mix64, unit32, value_noise};

/// Signal levels before the bias field, on the 0–4095 scale the image is stored in.
const MUSCLE: f64 = 700.0;
const FAT: f64 = 1450.0;
const MARROW: f64 = 1300.0;
const CORTEX: f64 = 110.0;
const CARTILAGE: f64 = 2100.0;
const FLUID: f64 = 2900.0;
const MENISCUS: f64 = 170.0;
const LIGAMENT: f64 = 180.0;

/// Cortical bone thickness, mm.
const CORTEX_MM: f64 = 1.0;

/// The scale of Rician noise for `noise = 1`: the brightest tissue, fluid.
pub(super) const NOISE_REFERENCE: f64 = FLUID;

/// Fraction of a voxel of width `w` inside a surface whose signed distance is `d`.
fn cover(d: f64, w: f64) -> f64 {
    (0.5 - d / w).clamp(0.0, 1.0)
}

fn lerp(a: f64, b: f64, t: f64) -> f64 {
    a + (b - a) * t
}

/// The noise-free, bias-free signal at anatomical point `p` for a voxel of mean width `w`.
pub(super) fn signal(knee: &Knee, t: &Tissues, p: P3, w: f64) -> f64 {
    let in_leg = cover(t.leg, w);
    if in_leg <= 0.0 {
        return 0.0;
    }
    let seeds = &knee.seeds;
    // Muscle with fat marbling, a subcutaneous fat layer, Hoffa's fat pad.
    let blobs = value_noise(seeds.soft, p, 14.0);
    let fibres = value_noise(seeds.soft ^ 1, [p[0], p[1], p[2] * 0.3], 3.0);
    let fat = fall(-t.leg, 5.0, 8.0)
        .max(((blobs - 0.15) / 0.3).clamp(0.0, 1.0))
        .max(t.fat_pad);
    let mut i = lerp(MUSCLE * (1.0 + 0.1 * fibres), FAT, fat) * in_leg;
    i = lerp(i, LIGAMENT, cover(t.ligament, w));
    // Synovial fluid in the thin space between facing cartilage surfaces.
    let tibial = t.t_tibia[0] + t.t_tibia[1];
    let femoral = t.femur - t.t_femur;
    let between = (femoral + t.tibia - tibial).min(femoral + t.patella - t.t_patella);
    i = lerp(i, FLUID, cover(between - knee.fluid_band, w));
    for m in t.meniscus {
        i = lerp(i, MENISCUS, cover(m, w));
    }
    let clear = if t.clear { 1.0 } else { 0.0 };
    for (d, thickness) in [
        (t.femur, t.t_femur),
        (t.tibia, tibial * clear),
        (t.patella, t.t_patella * clear),
    ] {
        let cartilage = cover(d - thickness, w);
        if cartilage <= 0.0 {
            continue;
        }
        let (bone, marrow) = (cover(d, w), cover(d + CORTEX_MM, w));
        let texture = |seed: u64, scale: f64| value_noise(seed, p, scale);
        let marrow_signal = if marrow > 0.0 {
            MARROW
                * (1.0 + 0.12 * texture(seeds.marrow, 2.5) + 0.08 * texture(seeds.marrow ^ 1, 9.0))
        } else {
            0.0
        };
        let cartilage_signal = if cartilage > bone {
            CARTILAGE * (1.0 + 0.05 * texture(seeds.cartilage, 2.0))
        } else {
            0.0
        };
        i = i * (1.0 - cartilage)
            + cartilage_signal * (cartilage - bone)
            + CORTEX * (bone - marrow)
            + marrow_signal * marrow;
    }
    i
}

/// The multiplicative receive-coil bias at patient point `p` (LPS mm): 1 ± `strength`.
pub(super) fn bias(seed: u64, p: P3, strength: f64) -> f64 {
    let n = 0.7 * value_noise(seed, p, 70.0) + 0.3 * value_noise(seed ^ 1, p, 35.0);
    1.0 + strength * (1.6 * n).clamp(-1.0, 1.0)
}

/// A Rician sample: the magnitude of a complex signal `s` plus Gaussian noise `sigma` on both
/// channels, from voxel `index`'s own hash (so threads never share a generator).
pub(super) fn rician(s: f64, sigma: f64, seed: u64, index: u64) -> f64 {
    if sigma <= 0.0 {
        return s;
    }
    let mut g = [0.0; 2];
    for (c, gc) in g.iter_mut().enumerate() {
        // Irwin–Hall: the sum of 4 uniforms, centred and scaled to unit variance, is Gaussian
        // enough for image noise and needs no `ln`/`cos`.
        let mut sum = 0.0;
        for h in 0..2u64 {
            let bits = mix64(seed ^ mix64(index.wrapping_mul(4) + 2 * c as u64 + h));
            sum += unit32(bits >> 32) + unit32(bits);
        }
        *gc = (sum - 2.0) * 1.732_050_807_568_877_2;
    }
    let re = s + sigma * g[0];
    let im = sigma * g[1];
    (re * re + im * im).sqrt()
}
