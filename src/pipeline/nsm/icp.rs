//! Similarity ICP: rotation, translation and one uniform scale that bring a point set onto a
//! surface (CONTRACT.md step 4: the normalised bone onto the mean shape's bone surface).
//!
//! Each iteration pairs every landmark with its closest point on the surface (the thickness
//! BVH's closest-point query, with that triangle's normal) and moves the landmarks by the
//! similarity that minimises the summed squared distances to the tangent planes there
//! (point-to-plane ICP, Chen and Medioni; linearised in the rotation and the scale and solved as
//! 7×7 normal equations). Point-to-plane matters here: a femur's condyles are nearly a cylinder
//! about the medial–lateral axis, and point-to-point ICP (Besl and McKay) crawls along that
//! valley for hundreds of iterations and stops short of the optimum by a tenth of a degree, which
//! the latent fit then mistakes for shape. Should a step ever increase the mean distance, ICP
//! returns to the best transform and takes one point-to-point step from there (Horn's
//! quaternion method for the rotation: the eigenvector of the largest eigenvalue of a symmetric
//! 4×4 matrix, by Jacobi rotations, so never a reflection; Umeyama's scale). It stops when a
//! step changes the transform by less than the tolerance, and returns the transform with the
//! lowest mean distance.

use crate::pipeline::thickness::bvh::{Bvh, Closest};

/// A 4×4 homogeneous transform, row-major: `p' = M · [p, 1]`.
pub type Matrix4 = [[f64; 4]; 4];

/// The identity.
pub const IDENTITY: Matrix4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// Applies `m` to a point.
pub fn apply(m: &Matrix4, p: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3])
}

/// `a · b` (apply `b` first).
pub fn compose(a: &Matrix4, b: &Matrix4) -> Matrix4 {
    std::array::from_fn(|r| std::array::from_fn(|c| (0..4).map(|k| a[r][k] * b[k][c]).sum()))
}

/// The inverse of a similarity `[sR | t]`: `[Rᵀ/s | −Rᵀt/s]`.
pub fn invert_similarity(m: &Matrix4) -> Matrix4 {
    // (sR)(sR)ᵀ = s²I, so s² is the squared norm of any row of the 3×3 part.
    let s2: f64 = (0..3).map(|c| m[0][c] * m[0][c]).sum();
    let mut inv = IDENTITY;
    for r in 0..3 {
        for c in 0..3 {
            inv[r][c] = m[c][r] / s2;
        }
    }
    for row in inv.iter_mut().take(3) {
        row[3] = -(0..3).map(|k| row[k] * m[k][3]).sum::<f64>();
    }
    inv
}

/// The uniform scale of a similarity.
pub fn scale_of(m: &Matrix4) -> f64 {
    (0..3).map(|c| m[0][c] * m[0][c]).sum::<f64>().sqrt()
}

/// ICP settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IcpOptions {
    /// Most iterations.
    pub max_iterations: usize,
    /// Most source points used (an even spread of the source when it has more).
    pub landmarks: usize,
    /// Stop when a step moves the transform by less than this (largest change of a matrix
    /// entry: radians, scale, source units).
    pub tolerance: f64,
}

impl Default for IcpOptions {
    fn default() -> Self {
        IcpOptions {
            max_iterations: 100,
            landmarks: 5000,
            tolerance: 1e-6,
        }
    }
}

/// What ICP found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IcpResult {
    /// Source → target.
    pub transform: Matrix4,
    /// Mean landmark–surface distance after the last iteration.
    pub mean_distance: f64,
    /// Iterations run.
    pub iterations: usize,
}

/// The similarity that best brings `source` onto the surface in `target`, starting from the
/// identity.
pub fn similarity_icp(source: &[[f64; 3]], target: &Bvh, options: &IcpOptions) -> IcpResult {
    let stride = source.len().div_ceil(options.landmarks.max(1)).max(1);
    let landmarks: Vec<[f64; 3]> = source.iter().step_by(stride).copied().collect();
    let mut transform = IDENTITY;
    let mut best = IcpResult {
        transform,
        mean_distance: f64::INFINITY,
        iterations: 0,
    };
    let mut point_to_point = false;
    for iteration in 0..options.max_iterations {
        let moved: Vec<[f64; 3]> = landmarks.iter().map(|&p| apply(&transform, p)).collect();
        let found: Vec<Closest> = moved.iter().filter_map(|&p| target.closest(p)).collect();
        if found.len() != moved.len() || moved.len() < 7 {
            break;
        }
        let mean = found.iter().map(|c| c.distance).sum::<f64>() / found.len() as f64;
        if mean > best.mean_distance {
            // The linearised step overshot: back to the best, one point-to-point step from there.
            if point_to_point {
                break;
            }
            transform = best.transform;
            point_to_point = true;
            continue;
        }
        best = IcpResult {
            transform,
            mean_distance: mean,
            iterations: iteration,
        };
        let step = if point_to_point {
            let closest: Vec<[f64; 3]> = found.iter().map(|c| c.point).collect();
            best_similarity(&moved, &closest)
        } else {
            point_to_plane_step(&moved, &found)
        };
        point_to_point = false;
        let Some(step) = step else {
            break;
        };
        transform = compose(&step, &transform);
        let change = (0..3)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .map(|(r, c)| (step[r][c] - IDENTITY[r][c]).abs())
            .fold(0.0, f64::max);
        if change < options.tolerance {
            break;
        }
    }
    best
}

/// One linearised point-to-plane step: the `(1 + δ)·R(ω)·p + t` minimising
/// Σ ((p + ω × p + δ·p + t − q)·n)² over the pairs (p, closest point q with normal n), as a
/// similarity (ω turned into an exact rotation).
fn point_to_plane_step(moved: &[[f64; 3]], found: &[Closest]) -> Option<Matrix4> {
    let mut ata = [[0.0f64; 7]; 7];
    let mut atb = [0.0f64; 7];
    for (p, c) in moved.iter().zip(found) {
        let n = c.normal;
        let pxn = [
            p[1] * n[2] - p[2] * n[1],
            p[2] * n[0] - p[0] * n[2],
            p[0] * n[1] - p[1] * n[0],
        ];
        let pn = p[0] * n[0] + p[1] * n[1] + p[2] * n[2];
        let row = [pxn[0], pxn[1], pxn[2], n[0], n[1], n[2], pn];
        let d: [f64; 3] = std::array::from_fn(|k| c.point[k] - p[k]);
        let b = d[0] * n[0] + d[1] * n[1] + d[2] * n[2];
        for i in 0..7 {
            for j in 0..7 {
                ata[i][j] += row[i] * row[j];
            }
            atb[i] += row[i] * b;
        }
    }
    let x = solve7(ata, atb)?;
    let r = rodrigues([x[0], x[1], x[2]]);
    let scale = 1.0 + x[6];
    let mut m = IDENTITY;
    for i in 0..3 {
        for k in 0..3 {
            m[i][k] = scale * r[i][k];
        }
        m[i][3] = x[3 + i];
    }
    Some(m)
}

/// The rotation by the angle |ω| about ω.
fn rodrigues(w: [f64; 3]) -> [[f64; 3]; 3] {
    let theta = (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt();
    let (s, c1) = if theta < 1e-12 {
        (1.0, 0.5)
    } else {
        (theta.sin() / theta, (1.0 - theta.cos()) / (theta * theta))
    };
    // R = I + s·[ω]× + c1·[ω]×², with [ω]×² = ωωᵀ − |ω|²I.
    let k = [[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]];
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let eye = if i == j { 1.0 } else { 0.0 };
            let k2 = w[i] * w[j] - if i == j { theta * theta } else { 0.0 };
            eye + s * k[i][j] + c1 * k2
        })
    })
}

/// Solves the 7×7 system `a·x = b` by Gaussian elimination with partial pivoting; `None` when
/// it is singular (e.g. all landmarks on one plane).
fn solve7(mut a: [[f64; 7]; 7], mut b: [f64; 7]) -> Option<[f64; 7]> {
    let scale = (0..7).map(|i| a[i][i].abs()).fold(0.0, f64::max);
    for col in 0..7 {
        let pivot = (col..7).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() <= 1e-14 * scale.max(f64::MIN_POSITIVE) {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..7 {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col];
            for (x, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0f64; 7];
    for row in (0..7).rev() {
        let rest: f64 = (row + 1..7).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Some(x)
}

/// The similarity `M` minimising Σ |M·aᵢ − bᵢ|² (Horn's rotation, Umeyama's scale); `None`
/// when `a` is degenerate (all points equal).
pub fn best_similarity(a: &[[f64; 3]], b: &[[f64; 3]]) -> Option<Matrix4> {
    let n = a.len().min(b.len());
    if n == 0 {
        return None;
    }
    let mean = |p: &[[f64; 3]]| -> [f64; 3] {
        std::array::from_fn(|k| p[..n].iter().map(|v| v[k]).sum::<f64>() / n as f64)
    };
    let (ca, cb) = (mean(a), mean(b));
    // S = Σ (aᵢ − ā)(bᵢ − b̄)ᵀ and Σ |aᵢ − ā|².
    let mut s = [[0.0f64; 3]; 3];
    let mut spread = 0.0;
    for i in 0..n {
        let pa: [f64; 3] = std::array::from_fn(|k| a[i][k] - ca[k]);
        let pb: [f64; 3] = std::array::from_fn(|k| b[i][k] - cb[k]);
        for r in 0..3 {
            for c in 0..3 {
                s[r][c] += pa[r] * pb[c];
            }
        }
        spread += pa.iter().map(|x| x * x).sum::<f64>();
    }
    if spread <= 0.0 {
        return None;
    }
    let [[sxx, sxy, sxz], [syx, syy, syz], [szx, szy, szz]] = s;
    let horn = [
        [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
        [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
        [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
        [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
    ];
    let q = largest_eigenvector(horn);
    let r = rotation_of(q);
    // Umeyama: s = Σ (bᵢ − b̄)·R(aᵢ − ā) / Σ |aᵢ − ā|² = tr(R S) / spread.
    let trace: f64 = (0..3)
        .map(|i| (0..3).map(|k| r[i][k] * s[k][i]).sum::<f64>())
        .sum();
    let scale = trace / spread;
    let mut m = IDENTITY;
    for i in 0..3 {
        for k in 0..3 {
            m[i][k] = scale * r[i][k];
        }
        m[i][3] = cb[i] - (0..3).map(|k| m[i][k] * ca[k]).sum::<f64>();
    }
    Some(m)
}

/// The rotation matrix of a unit quaternion `(w, x, y, z)`.
fn rotation_of(q: [f64; 4]) -> [[f64; 3]; 3] {
    let [w, x, y, z] = q;
    [
        [
            w * w + x * x - y * y - z * z,
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            w * w - x * x + y * y - z * z,
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            w * w - x * x - y * y + z * z,
        ],
    ]
}

/// The unit eigenvector of the largest eigenvalue of a symmetric 4×4 matrix (cyclic Jacobi).
fn largest_eigenvector(mut a: [[f64; 4]; 4]) -> [f64; 4] {
    let mut v = IDENTITY;
    for _sweep in 0..50 {
        let off: f64 = (0..4)
            .flat_map(|p| (p + 1..4).map(move |q| (p, q)))
            .map(|(p, q)| a[p][q] * a[p][q])
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..4 {
            for q in p + 1..4 {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                // Rust's signum(0.0) is 1, which is the rotation by π/4 wanted then.
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ A J and V ← V J: columns p and q of both, then rows p and q of A.
                for row in a.iter_mut().chain(v.iter_mut()) {
                    let (xp, xq) = (row[p], row[q]);
                    row[p] = c * xp - s * xq;
                    row[q] = s * xp + c * xq;
                }
                let (rp, rq) = (a[p], a[q]);
                a[p] = std::array::from_fn(|k| c * rp[k] - s * rq[k]);
                a[q] = std::array::from_fn(|k| s * rp[k] + c * rq[k]);
            }
        }
    }
    let best = (0..4)
        .max_by(|&i, &j| a[i][i].total_cmp(&a[j][j]))
        .unwrap_or(0);
    let q: [f64; 4] = std::array::from_fn(|k| v[k][best]);
    let n = q.iter().map(|x| x * x).sum::<f64>().sqrt();
    q.map(|x| x / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::mesh::{marching::marching_cubes, Mesh};

    /// An ellipsoid surface (radii 1, 0.7, 0.5) from marching cubes, in [-1, 1]³.
    fn ellipsoid() -> Mesh {
        let n = 48usize;
        let h = 2.0 / (n - 1) as f32;
        let mut values = vec![0f32; n * n * n];
        for (o, v) in values.iter_mut().enumerate() {
            let p = [o % n, (o / n) % n, o / (n * n)].map(|i| i as f32 * h - 1.0);
            let r = ((p[0] / 0.9).powi(2) + (p[1] / 0.6).powi(2) + (p[2] / 0.45).powi(2)).sqrt();
            *v = 1.0 - r;
        }
        let (vertices, triangles) = marching_cubes(&values, [n; 3], 0.0);
        Mesh {
            vertices: vertices
                .into_iter()
                .map(|p| p.map(|x| x * f64::from(h) - 1.0))
                .collect(),
            triangles,
            point_scalars: Vec::new(),
        }
    }

    fn similarity(angle: [f64; 3], scale: f64, t: [f64; 3]) -> Matrix4 {
        let (a, b, c) = (angle[0], angle[1], angle[2]);
        let rx = [
            [1.0, 0.0, 0.0],
            [0.0, a.cos(), -a.sin()],
            [0.0, a.sin(), a.cos()],
        ];
        let ry = [
            [b.cos(), 0.0, b.sin()],
            [0.0, 1.0, 0.0],
            [-b.sin(), 0.0, b.cos()],
        ];
        let rz = [
            [c.cos(), -c.sin(), 0.0],
            [c.sin(), c.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        let mul = |p: [[f64; 3]; 3], q: [[f64; 3]; 3]| -> [[f64; 3]; 3] {
            std::array::from_fn(|i| {
                std::array::from_fn(|j| (0..3).map(|k| p[i][k] * q[k][j]).sum())
            })
        };
        let r = mul(rz, mul(ry, rx));
        let mut m = IDENTITY;
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = scale * r[i][j];
            }
            m[i][3] = t[i];
        }
        m
    }

    #[test]
    fn closed_form_recovers_an_exact_similarity() {
        let m = similarity([0.3, -0.5, 1.2], 1.7, [0.4, -2.0, 3.0]);
        let a: Vec<[f64; 3]> = ellipsoid().vertices.into_iter().step_by(7).collect();
        let b: Vec<[f64; 3]> = a.iter().map(|&p| apply(&m, p)).collect();
        let got = best_similarity(&a, &b).unwrap();
        for r in 0..3 {
            for c in 0..4 {
                assert!((got[r][c] - m[r][c]).abs() < 1e-9, "{got:?} vs {m:?}");
            }
        }
        let round = compose(&invert_similarity(&m), &m);
        for r in 0..4 {
            for c in 0..4 {
                assert!((round[r][c] - IDENTITY[r][c]).abs() < 1e-12);
            }
        }
        assert!((scale_of(&m) - 1.7).abs() < 1e-12);
    }

    #[test]
    fn icp_undoes_a_rotated_scaled_translated_copy() {
        let target = ellipsoid();
        let bvh = Bvh::new(&target);
        let moved = similarity([0.15, -0.1, 0.2], 0.8, [0.05, -0.04, 0.03]);
        let source: Vec<[f64; 3]> = target.vertices.iter().map(|&p| apply(&moved, p)).collect();
        let found = similarity_icp(&source, &bvh, &IcpOptions::default());
        assert!(found.mean_distance < 1e-6, "{found:?}");
        // ICP's transform is the inverse of the one applied.
        let undone = compose(&found.transform, &moved);
        for r in 0..3 {
            for c in 0..4 {
                assert!(
                    (undone[r][c] - IDENTITY[r][c]).abs() < 1e-5,
                    "{undone:?} after {} iterations",
                    found.iterations
                );
            }
        }
    }
}
