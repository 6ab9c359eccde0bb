//! Moving a volume onto another grid: interpolation in physical space ([`resample_linear`],
//! [`resample_nearest`]) and the exact axis permutations and flips of [`reorient_to`].
//!
//! Both resamplers follow ITK's `ResampleImageFilter` conventions, which is what the Python
//! pipeline used through SimpleITK: a target voxel whose centre lies within the source's
//! extent (up to half a voxel beyond the outer voxel centres) is interpolated, with
//! neighbours clamped to the edge; anything further out is 0 (`T::default()`).

use super::geometry::{axis_letter, closest_axes, letter_axis, Geometry};
use super::linalg::{inverse3, mat_mul, mat_vec};
use super::{voxel_count, Volume, VolumeError, MAX_VOXELS};

/// Positions this close to a voxel centre (in voxels) are taken as that centre, so identity
/// and grid-aligned resampling return the source values exactly despite rounding.
const SNAP: f64 = 1e-6;

/// Trilinear resampling of `source` onto `target` with `dims` voxels. Outside the source's
/// extent the result is 0; see the module documentation for the edge rule.
pub fn resample_linear(
    source: &Volume<f32>,
    target: &Geometry,
    dims: [usize; 3],
) -> Result<Volume<f32>, VolumeError> {
    let n = source.dims();
    let src = source.data();
    let data = walk(source.geometry(), n, target, dims, |c| {
        taps(c, n).map_or(0.0, |t| t.value(src))
    })?;
    Volume::from_vec(dims, data, *target)
}

/// For every voxel of `target`, the index of the channel whose trilinear resampling is the
/// largest (the first on a tie; 0 outside the source's extent): exactly the argmax of
/// [`resample_linear`] of each channel, without resampling each one whole. `channels` are the
/// voxels (i fastest) of volumes that share `source` and `source_dims`; at most 256.
pub fn resample_linear_argmax(
    channels: &[&[f32]],
    source: &Geometry,
    source_dims: [usize; 3],
    target: &Geometry,
    dims: [usize; 3],
) -> Result<Vec<u8>, VolumeError> {
    let m: usize = source_dims.iter().product();
    if channels.len() > 256 || channels.iter().any(|c| c.len() != m) {
        return Err(VolumeError::Invalid {
            reason: format!(
                "{} channels of {:?} voxels each wanted (at most 256)",
                channels.len(),
                source_dims
            ),
        });
    }
    walk(source, source_dims, target, dims, |c| {
        let Some(t) = taps(c, source_dims) else {
            return 0;
        };
        let (mut best, mut label) = (f32::MIN, 0u8);
        for (l, channel) in channels.iter().enumerate() {
            let v = t.value(channel);
            if v > best {
                best = v;
                label = l as u8;
            }
        }
        label
    })
}

/// The eight neighbours and the weights of one trilinear sample.
struct Taps {
    lo: [usize; 3],
    hi: [usize; 3],
    f: [f64; 3],
    stride: [usize; 2],
}

impl Taps {
    #[inline]
    fn value(&self, src: &[f32]) -> f32 {
        let (lo, hi, f) = (self.lo, self.hi, self.f);
        let [sx, sxy] = self.stride;
        let at = |i: usize, j: usize, k: usize| f64::from(src[i + sx * j + sxy * k]);
        let lerp = |a: f64, b: f64, t: f64| a + (b - a) * t;
        let c00 = lerp(at(lo[0], lo[1], lo[2]), at(hi[0], lo[1], lo[2]), f[0]);
        let c10 = lerp(at(lo[0], hi[1], lo[2]), at(hi[0], hi[1], lo[2]), f[0]);
        let c01 = lerp(at(lo[0], lo[1], hi[2]), at(hi[0], lo[1], hi[2]), f[0]);
        let c11 = lerp(at(lo[0], hi[1], hi[2]), at(hi[0], hi[1], hi[2]), f[0]);
        let c0 = lerp(c00, c10, f[1]);
        let c1 = lerp(c01, c11, f[1]);
        lerp(c0, c1, f[2]) as f32
    }
}

/// Where continuous source index `c` samples a grid of `n` voxels; `None` outside its extent
/// (more than half a voxel beyond the first or last centre).
#[inline]
fn taps(c: [f64; 3], n: [usize; 3]) -> Option<Taps> {
    let mut lo = [0usize; 3];
    let mut hi = [0usize; 3];
    let mut f = [0f64; 3];
    for a in 0..3 {
        if !(c[a] >= -0.5 && c[a] <= n[a] as f64 - 0.5) {
            return None;
        }
        // floor() without a libm call (the baseline x86-64 target has no rounding instruction):
        // c ≥ −0.5 here, and truncation is the floor of a non-negative number.
        let fl = if c[a] < 0.0 { -1.0 } else { c[a] as u64 as f64 };
        let last = n[a] - 1;
        // Clamping both neighbours to the grid gives the edge value in the outer half voxel.
        lo[a] = (fl.max(0.0) as usize).min(last);
        hi[a] = ((fl + 1.0).max(0.0) as usize).min(last);
        f[a] = c[a] - fl;
        if f[a] == 0.0 {
            hi[a] = lo[a];
        }
    }
    Some(Taps {
        lo,
        hi,
        f,
        stride: [n[0], n[0] * n[1]],
    })
}

/// Nearest-neighbour resampling (for label maps: no new values appear). Outside the
/// source's extent the result is `T::default()` (background).
pub fn resample_nearest<T: Copy + Default>(
    source: &Volume<T>,
    target: &Geometry,
    dims: [usize; 3],
) -> Result<Volume<T>, VolumeError> {
    let n = source.dims();
    let src = source.data();
    let (sx, sxy) = (n[0], n[0] * n[1]);
    let data = walk(source.geometry(), n, target, dims, |c| {
        let mut idx = [0usize; 3];
        for a in 0..3 {
            // Halves round up, as ITK's nearest-neighbour interpolator does: the index is
            // floor(c + 0.5), which is its truncation once it is known not to be negative.
            let h = c[a] + 0.5;
            if !(h >= 0.0 && h < n[a] as f64) {
                return T::default();
            }
            idx[a] = h as usize;
        }
        src[idx[0] + sx * idx[1] + sxy * idx[2]]
    })?;
    Volume::from_vec(dims, data, *target)
}

/// Calls `sample` with the source's continuous index of every target voxel, i fastest.
fn walk<T>(
    source: &Geometry,
    source_dims: [usize; 3],
    target: &Geometry,
    dims: [usize; 3],
    mut sample: impl FnMut([f64; 3]) -> T,
) -> Result<Vec<T>, VolumeError> {
    source.validate()?;
    target.validate()?;
    let count = voxel_count(dims)
        .filter(|&c| c <= MAX_VOXELS)
        .ok_or_else(|| VolumeError::Invalid {
            reason: format!("target size {dims:?}: more than {MAX_VOXELS} voxels"),
        })?;
    if source_dims.contains(&0) {
        return Err(VolumeError::Invalid {
            reason: format!("cannot resample an empty {source_dims:?} volume"),
        });
    }
    // Target index → source index is one affine map, so each voxel costs a few multiply-adds.
    let inv = inverse3(&source.index_matrix());
    let m = mat_mul(&inv, &target.index_matrix());
    let t = mat_vec(
        &inv,
        [
            target.origin[0] - source.origin[0],
            target.origin[1] - source.origin[1],
            target.origin[2] - source.origin[2],
        ],
    );
    // round() without a libm call: truncate, then step away from zero from a half up (an index
    // beyond i64 is far outside any grid and is left as it is).
    let snap = |v: f64| {
        let t = v as i64 as f64;
        let r = match v - t {
            d if d >= 0.5 => t + 1.0,
            d if d <= -0.5 => t - 1.0,
            _ => t,
        };
        if (v - r).abs() < SNAP {
            r
        } else {
            v
        }
    };
    let mut out = Vec::with_capacity(count);
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            let (jf, kf) = (j as f64, k as f64);
            let base = [
                t[0] + m[0][1] * jf + m[0][2] * kf,
                t[1] + m[1][1] * jf + m[1][2] * kf,
                t[2] + m[2][1] * jf + m[2][2] * kf,
            ];
            for i in 0..dims[0] {
                let f = i as f64;
                out.push(sample([
                    snap(base[0] + m[0][0] * f),
                    snap(base[1] + m[1][0] * f),
                    snap(base[2] + m[2][0] * f),
                ]));
            }
        }
    }
    Ok(out)
}

/// Permutes and flips the axes of `volume` so that its orientation code (see
/// [`orientation_code`](super::orientation_code)) becomes `code`, e.g. "RAS", "LPS" or
/// "PIL". No voxel is interpolated: the result holds the same values at the same physical
/// points, only stored in another order. An oblique grid stays oblique; its axes become the
/// ones closest to the requested letters.
pub fn reorient_to<T: Copy>(volume: &Volume<T>, code: &str) -> Result<Volume<T>, VolumeError> {
    let wanted = parse_code(code)?;
    let g = volume.geometry();
    let (perm, signs) = closest_axes(&g.direction);
    // For each output axis a: the input axis that lies along the same patient axis, and
    // whether it must run the other way.
    let mut from = [0usize; 3];
    let mut flip = [false; 3];
    for (a, &(axis, positive)) in wanted.iter().enumerate() {
        for c in 0..3 {
            if perm[c] == axis {
                from[a] = c;
                flip[a] = signs[c] != positive;
            }
        }
    }

    let n = volume.dims();
    let out_dims = from.map(|c| n[c]);
    let mut corner = [0.0; 3];
    let mut geometry = *g;
    for a in 0..3 {
        let c = from[a];
        let sign = if flip[a] { -1.0 } else { 1.0 };
        geometry.spacing[a] = g.spacing[c];
        for r in 0..3 {
            geometry.direction[r][a] = sign * g.direction[r][c];
        }
        if flip[a] {
            corner[c] = n[c].saturating_sub(1) as f64;
        }
    }
    geometry.origin = g.index_to_point(corner);

    // Walk the output in storage order, stepping through the input with signed strides.
    let stride = [1isize, n[0] as isize, (n[0] * n[1]) as isize];
    let mut step = [0isize; 3];
    let mut base = 0isize;
    for a in 0..3 {
        let c = from[a];
        if flip[a] {
            step[a] = -stride[c];
            base += (n[c] as isize - 1).max(0) * stride[c];
        } else {
            step[a] = stride[c];
        }
    }
    let src = volume.data();
    let mut data = Vec::with_capacity(src.len());
    for k in 0..out_dims[2] as isize {
        for j in 0..out_dims[1] as isize {
            let row = base + j * step[1] + k * step[2];
            for i in 0..out_dims[0] as isize {
                data.push(src[(row + i * step[0]) as usize]);
            }
        }
    }
    Volume::from_vec(out_dims, data, geometry)
}

/// `"RAS"` → the patient axis and direction of each letter; every axis exactly once.
fn parse_code(code: &str) -> Result<[(usize, bool); 3], VolumeError> {
    let bad = || VolumeError::Invalid {
        reason: format!(
            "orientation code {code:?}: want three letters, one each of L/R, P/A and S/I"
        ),
    };
    let letters: Vec<(usize, bool)> = code
        .chars()
        .map(letter_axis)
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let parsed: [(usize, bool); 3] = letters.try_into().map_err(|_| bad())?;
    let mut seen = [false; 3];
    for &(axis, _) in &parsed {
        if std::mem::replace(&mut seen[axis], true) {
            return Err(bad());
        }
    }
    debug_assert_eq!(
        parsed
            .map(|(a, p)| axis_letter(a, p))
            .iter()
            .collect::<String>(),
        code.to_ascii_uppercase()
    );
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse() {
        assert_eq!(
            parse_code("ras").unwrap(),
            [(0, false), (1, false), (2, true)]
        );
        assert!(parse_code("RAR").is_err());
        assert!(parse_code("RA").is_err());
        assert!(parse_code("RASL").is_err());
        assert!(parse_code("RAX").is_err());
    }
}
