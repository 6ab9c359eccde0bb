//! Separable Gaussian smoothing of a grid, with a σ per axis in voxels and zeros outside.
//!
//! pymskt smooths the binary mask with a Gaussian whose variance is given in mm² and scaled by
//! the spacing; here that is σ_axis = √variance / spacing_axis. The kernel is the sampled
//! Gaussian, cut at 4σ and normalised to sum 1, so a constant region stays constant.

/// Kernel weights for `sigma` voxels, centre at index `radius`. `None` when σ is so small that
/// smoothing would not change anything.
fn kernel(sigma: f64) -> Option<Vec<f32>> {
    if sigma.is_nan() || sigma <= 1e-3 {
        return None;
    }
    let radius = (4.0 * sigma).ceil().max(1.0) as usize;
    let w: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let x = i as f64 - radius as f64;
            (-0.5 * x * x / (sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = w.iter().sum();
    Some(w.iter().map(|&x| (x / sum) as f32).collect())
}

/// Smooths `values` (`values[i + nx·(j + ny·k)]`) in place with standard deviation `sigma[a]`
/// voxels along axis a, treating everything outside the grid as 0.
pub fn gaussian(values: &mut [f32], dims: [usize; 3], sigma: [f64; 3]) {
    let [nx, ny, nz] = dims;
    if values.len() != nx * ny * nz {
        return;
    }
    let strides = [1, nx, nx * ny];
    for axis in 0..3 {
        let Some(k) = kernel(sigma[axis]) else {
            continue;
        };
        let r = k.len() / 2;
        let n = dims[axis];
        let stride = strides[axis];
        let mut line = vec![0f32; n];
        let mut out = vec![0f32; n];
        // Every line along `axis` starts at a point whose `axis` coordinate is 0.
        for start in 0..values.len() {
            let coord = (start / stride) % n;
            if coord != 0 {
                continue;
            }
            for (t, l) in line.iter_mut().enumerate() {
                *l = values[start + t * stride];
            }
            if line.iter().all(|&v| v == 0.0) {
                continue;
            }
            for (t, o) in out.iter_mut().enumerate() {
                let lo = t.saturating_sub(r);
                let hi = (t + r).min(n - 1);
                let mut acc = 0f32;
                for s in lo..=hi {
                    acc += k[s + r - t] * line[s];
                }
                *o = acc;
            }
            for (t, o) in out.iter().enumerate() {
                values[start + t * stride] = *o;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_mass_and_constant_interiors() {
        let dims = [21, 5, 5];
        let mut v = vec![0f32; 21 * 25];
        v[10 + 21 * (2 + 5 * 2)] = 1.0;
        gaussian(&mut v, dims, [1.5, 0.0, 0.0]);
        let sum: f32 = v.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert!(v[10 + 21 * 12] > v[11 + 21 * 12] && v[11 + 21 * 12] > v[12 + 21 * 12]);
        assert!((v[9 + 21 * 12] - v[11 + 21 * 12]).abs() < 1e-7);
    }
}
