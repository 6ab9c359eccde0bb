//! Small fixed-size linear algebra for geometry: 3×3 matrices and NIfTI's quaternions.

pub(crate) fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// Inverse by the adjugate; a singular matrix gives non-finite entries.
pub(crate) fn inverse3(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = det3(m);
    let inv_det = 1.0 / det;
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            // Cofactor of (c, r): the adjugate is the transposed cofactor matrix.
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            *v = (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) * inv_det;
        }
    }
    inv
}

pub(crate) fn transpose(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut t = [[0.0; 3]; 3];
    for (r, row) in m.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            t[c][r] = *v;
        }
    }
    t
}

pub(crate) fn mat_vec(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [
        m[0][0] * v[0] + m[0][1] * v[1] + m[0][2] * v[2],
        m[1][0] * v[0] + m[1][1] * v[1] + m[1][2] * v[2],
        m[2][0] * v[0] + m[2][1] * v[1] + m[2][2] * v[2],
    ]
}

pub(crate) fn mat_mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut p = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            p[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    p
}

/// The rotation of the unit quaternion (a, b, c, d), where a ≥ 0 is implied by b, c, d.
pub(crate) fn quaternion_to_rotation(b: f64, c: f64, d: f64) -> [[f64; 3]; 3] {
    let sum = b * b + c * c + d * d;
    let (a, b, c, d) = if 1.0 - sum < 1e-7 {
        // A 180° rotation, or rounding made |(b, c, d)| ≥ 1: renormalise instead of taking
        // the root of a negative number.
        let n = sum.sqrt();
        if n > 0.0 {
            (0.0, b / n, c / n, d / n)
        } else {
            (1.0, 0.0, 0.0, 0.0)
        }
    } else {
        ((1.0 - sum).sqrt(), b, c, d)
    };
    [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - b * b - c * c,
        ],
    ]
}

/// The quaternion (b, c, d) of a proper rotation, with a ≥ 0 (as NIfTI stores it). Chooses
/// the largest of a, b, c, d to divide by, so it is stable near 180°.
pub(crate) fn rotation_to_quaternion(r: &[[f64; 3]; 3]) -> [f64; 3] {
    let trace = r[0][0] + r[1][1] + r[2][2];
    let (a, b, c, d) = if trace > 0.0 {
        let a = 0.5 * (1.0 + trace).sqrt();
        let q = 0.25 / a;
        (
            a,
            (r[2][1] - r[1][2]) * q,
            (r[0][2] - r[2][0]) * q,
            (r[1][0] - r[0][1]) * q,
        )
    } else if r[0][0] >= r[1][1] && r[0][0] >= r[2][2] {
        let b = 0.5 * (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt();
        let q = 0.25 / b;
        (
            (r[2][1] - r[1][2]) * q,
            b,
            (r[0][1] + r[1][0]) * q,
            (r[0][2] + r[2][0]) * q,
        )
    } else if r[1][1] >= r[2][2] {
        let c = 0.5 * (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt();
        let q = 0.25 / c;
        (
            (r[0][2] - r[2][0]) * q,
            (r[0][1] + r[1][0]) * q,
            c,
            (r[1][2] + r[2][1]) * q,
        )
    } else {
        let d = 0.5 * (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt();
        let q = 0.25 / d;
        (
            (r[1][0] - r[0][1]) * q,
            (r[0][2] + r[2][0]) * q,
            (r[1][2] + r[2][1]) * q,
            d,
        )
    };
    if a < 0.0 {
        [-b, -c, -d]
    } else {
        [b, c, d]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::geometry::rotation;

    #[test]
    fn quaternions_round_trip_including_half_turns() {
        let cases = [
            rotation([1.0, 2.0, 3.0], 0.7),
            rotation([0.0, 0.0, 1.0], std::f64::consts::PI),
            rotation([1.0, 1.0, 0.0], std::f64::consts::PI),
            rotation([0.3, -1.0, 0.2], 3.0),
            rotation([1.0, 0.0, 0.0], 0.0),
        ];
        for r in cases {
            let [b, c, d] = rotation_to_quaternion(&r);
            let back = quaternion_to_rotation(b, c, d);
            for (x, y) in r.iter().flatten().zip(back.iter().flatten()) {
                assert!((x - y).abs() < 1e-12, "{r:?} -> {back:?}");
            }
        }
    }
}
