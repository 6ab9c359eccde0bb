//! Where voxels sit in the patient: origin, spacing and direction in LPS coordinates.
//!
//! kneenode keeps every geometry in DICOM's patient coordinates (x to the patient's Left,
//! y to Posterior, z to Superior, millimetres) and the ITK convention for the matrix: the
//! columns of `direction` are the unit vectors of the i, j and k voxel axes. NIfTI's RAS and
//! NRRD's other spaces are converted at the file boundary, so nothing past the readers has to
//! think about it.

use super::linalg::{inverse3, mat_vec, transpose};
use super::VolumeError;

/// Tolerance for a direction matrix to count as orthonormal (and its columns as unit vectors).
pub const ORTHONORMAL_TOLERANCE: f64 = 1e-4;

/// The grid of a volume in LPS patient space (DICOM's convention, ITK's matrix layout).
///
/// The physical point of voxel index `(i, j, k)` is `origin + direction · diag(spacing) · (i, j, k)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// LPS position of the centre of voxel (0, 0, 0), mm.
    pub origin: [f64; 3],
    /// Distance between voxel centres along i, j and k, mm.
    pub spacing: [f64; 3],
    /// `direction[r][c]` is row r, column c of the matrix whose columns are the unit vectors
    /// of the i, j and k axes in LPS.
    pub direction: [[f64; 3]; 3],
}

impl Default for Geometry {
    /// Origin 0, spacing 1 mm, axes along L, P and S.
    fn default() -> Self {
        Geometry {
            origin: [0.0; 3],
            spacing: [1.0; 3],
            direction: IDENTITY,
        }
    }
}

pub(crate) const IDENTITY: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

impl Geometry {
    /// The matrix that maps an index step to a physical step: `direction · diag(spacing)`.
    pub fn index_matrix(&self) -> [[f64; 3]; 3] {
        let mut m = self.direction;
        for row in &mut m {
            for (c, v) in row.iter_mut().enumerate() {
                *v *= self.spacing[c];
            }
        }
        m
    }

    /// The LPS point (mm) of a continuous voxel index.
    pub fn index_to_point(&self, index: [f64; 3]) -> [f64; 3] {
        let m = self.index_matrix();
        let mut p = self.origin;
        for (r, pr) in p.iter_mut().enumerate() {
            *pr += m[r][0] * index[0] + m[r][1] * index[1] + m[r][2] * index[2];
        }
        p
    }

    /// The continuous voxel index of an LPS point (mm). Uses the full inverse, so it stays
    /// right for a direction that is not quite orthonormal; a singular grid gives NaN.
    pub fn point_to_index(&self, point: [f64; 3]) -> [f64; 3] {
        let inv = inverse3(&self.index_matrix());
        let d = [
            point[0] - self.origin[0],
            point[1] - self.origin[1],
            point[2] - self.origin[2],
        ];
        mat_vec(&inv, d)
    }

    /// The 4×4 matrix from voxel index to LPS millimetres (what ITK computes).
    pub fn affine_lps(&self) -> [[f64; 4]; 4] {
        let m = self.index_matrix();
        let mut a = [[0.0; 4]; 4];
        for r in 0..3 {
            a[r][..3].copy_from_slice(&m[r]);
            a[r][3] = self.origin[r];
        }
        a[3][3] = 1.0;
        a
    }

    /// The 4×4 matrix from voxel index to RAS millimetres (what NIfTI and nibabel use).
    pub fn affine_ras(&self) -> [[f64; 4]; 4] {
        let mut a = self.affine_lps();
        for row in a.iter_mut().take(2) {
            for v in row.iter_mut() {
                *v = -*v;
            }
        }
        a
    }

    /// The geometry of a 4×4 index → LPS matrix. Spacing is the length of each column and
    /// direction the normalised columns; a sheared matrix is not made orthonormal here (see
    /// [`Geometry::orthonormalized`]). The last row is ignored.
    pub fn from_affine_lps(affine: &[[f64; 4]; 4]) -> Geometry {
        let mut m = [[0.0; 3]; 3];
        let mut origin = [0.0; 3];
        for r in 0..3 {
            m[r].copy_from_slice(&affine[r][..3]);
            origin[r] = affine[r][3];
        }
        Self::from_index_matrix(origin, &m)
    }

    /// The geometry of a 4×4 index → RAS matrix (a NIfTI sform or nibabel affine).
    pub fn from_affine_ras(affine: &[[f64; 4]; 4]) -> Geometry {
        let mut a = *affine;
        for row in a.iter_mut().take(2) {
            for v in row.iter_mut() {
                *v = -*v;
            }
        }
        Self::from_affine_lps(&a)
    }

    /// Splits `origin + m · index` into spacing (column norms) and direction (unit columns). A
    /// zero column keeps spacing 0 so that [`Geometry::validate`] rejects it.
    pub(crate) fn from_index_matrix(origin: [f64; 3], m: &[[f64; 3]; 3]) -> Geometry {
        let mut spacing = [0.0; 3];
        let mut direction = [[0.0; 3]; 3];
        for c in 0..3 {
            let norm = (m[0][c].powi(2) + m[1][c].powi(2) + m[2][c].powi(2)).sqrt();
            spacing[c] = norm;
            for r in 0..3 {
                direction[r][c] = if norm > 0.0 {
                    m[r][c] / norm
                } else {
                    IDENTITY[r][c]
                };
            }
        }
        Geometry {
            origin,
            spacing,
            direction,
        }
    }

    /// Whether the direction is orthonormal within [`ORTHONORMAL_TOLERANCE`].
    pub fn is_orthonormal(&self) -> bool {
        orthonormality_error(&self.direction) <= ORTHONORMAL_TOLERANCE
    }

    /// This geometry with the direction replaced by the nearest orthonormal matrix (the
    /// orthogonal factor of its polar decomposition, which keeps the sign of the determinant),
    /// for files whose affine carries a shear that a voxel grid cannot represent.
    pub fn orthonormalized(&self) -> Geometry {
        // Newton's iteration for the polar factor, X ← (X + X⁻ᵀ) / 2: quadratic convergence,
        // and for a matrix that is already nearly orthonormal a couple of steps suffice.
        let mut x = self.direction;
        for _ in 0..50 {
            let inv_t = transpose(&inverse3(&x));
            let mut next = [[0.0; 3]; 3];
            let mut change: f64 = 0.0;
            for r in 0..3 {
                for c in 0..3 {
                    next[r][c] = 0.5 * (x[r][c] + inv_t[r][c]);
                    change = change.max((next[r][c] - x[r][c]).abs());
                }
            }
            if next.iter().flatten().any(|v| !v.is_finite()) {
                break;
            }
            x = next;
            if change < 1e-15 {
                break;
            }
        }
        Geometry {
            direction: x,
            ..*self
        }
    }

    /// Checks what every reader and resampler relies on: finite numbers, positive spacing and
    /// an orthonormal direction (within [`ORTHONORMAL_TOLERANCE`]).
    pub fn validate(&self) -> Result<(), VolumeError> {
        let numbers = self
            .origin
            .iter()
            .chain(&self.spacing)
            .chain(self.direction.iter().flatten());
        if numbers.into_iter().any(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "geometry has a non-finite number: {self:?}"
            )));
        }
        if self.spacing.iter().any(|&s| s <= 0.0) {
            return Err(invalid(format!(
                "spacing must be positive, got {:?}",
                self.spacing
            )));
        }
        let err = orthonormality_error(&self.direction);
        if err > ORTHONORMAL_TOLERANCE {
            return Err(invalid(format!(
                "direction is not orthonormal (|DᵀD − I| = {err:.2e} > {ORTHONORMAL_TOLERANCE:e}): {:?}",
                self.direction
            )));
        }
        Ok(())
    }

    /// Whether origin, spacing and direction agree element-wise within `tolerance`.
    pub fn approx_eq(&self, other: &Geometry, tolerance: f64) -> bool {
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance);
        close(&self.origin, &other.origin)
            && close(&self.spacing, &other.spacing)
            && close(
                self.direction.as_flattened(),
                other.direction.as_flattened(),
            )
    }
}

/// The closest anatomical orientation of a grid as three letters, one per voxel axis, naming
/// the direction in which the index grows: "LPS" is the identity direction (DICOM, ITK),
/// "RAS" is nibabel's canonical one. This is the "to" convention of DICOM, SimpleITK's
/// `DICOMOrient` and nibabel's `aff2axcodes`, not the "from" convention of old ITK enums.
///
/// An oblique axis is named after the patient axis it is closest to, and the three letters
/// always name three different patient axes.
pub fn orientation_code(geometry: &Geometry) -> String {
    let (perm, signs) = closest_axes(&geometry.direction);
    (0..3).map(|c| axis_letter(perm[c], signs[c])).collect()
}

/// For each voxel axis c, the patient axis `perm[c]` (0 = x, 1 = y, 2 = z) it is closest to and
/// whether it points along (`true`) or against that axis. The permutation maximises the sum of
/// |cosines|, so it is well defined even for a 45° oblique acquisition.
pub(crate) fn closest_axes(direction: &[[f64; 3]; 3]) -> ([usize; 3], [bool; 3]) {
    const PERMS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let score = |p: &[usize; 3]| -> f64 { (0..3).map(|c| direction[p[c]][c].abs()).sum() };
    let mut best = PERMS[0];
    for p in &PERMS[1..] {
        // Strictly greater, so ties keep the earlier (less permuted) candidate.
        if score(p) > score(&best) + 1e-12 {
            best = *p;
        }
    }
    let signs = [
        direction[best[0]][0] >= 0.0,
        direction[best[1]][1] >= 0.0,
        direction[best[2]][2] >= 0.0,
    ];
    (best, signs)
}

/// The letter for the direction `+axis` (positive) or `-axis` in LPS.
pub(crate) fn axis_letter(axis: usize, positive: bool) -> char {
    match (axis, positive) {
        (0, true) => 'L',
        (0, false) => 'R',
        (1, true) => 'P',
        (1, false) => 'A',
        (_, true) => 'S',
        (_, false) => 'I',
    }
}

/// Inverse of [`axis_letter`] (case-insensitive).
pub(crate) fn letter_axis(letter: char) -> Option<(usize, bool)> {
    match letter.to_ascii_uppercase() {
        'L' => Some((0, true)),
        'R' => Some((0, false)),
        'P' => Some((1, true)),
        'A' => Some((1, false)),
        'S' => Some((2, true)),
        'I' => Some((2, false)),
        _ => None,
    }
}

fn invalid(reason: String) -> VolumeError {
    VolumeError::Invalid { reason }
}

/// max |(DᵀD − I)ᵢⱼ|: 0 for an exactly orthonormal matrix.
pub(crate) fn orthonormality_error(d: &[[f64; 3]; 3]) -> f64 {
    let mut worst: f64 = 0.0;
    for a in 0..3 {
        for b in 0..3 {
            let dot: f64 = (0..3).map(|r| d[r][a] * d[r][b]).sum();
            let want = if a == b { 1.0 } else { 0.0 };
            let e = (dot - want).abs();
            // NaN must count as the worst error, which `max` alone would drop.
            worst = if e.is_nan() {
                f64::INFINITY
            } else {
                worst.max(e)
            };
        }
    }
    worst
}

/// Rotation by `angle` radians about `axis` (Rodrigues), for tests and phantoms.
pub fn rotation(axis: [f64; 3], angle: f64) -> [[f64; 3]; 3] {
    let n = (axis[0].powi(2) + axis[1].powi(2) + axis[2].powi(2)).sqrt();
    let [x, y, z] = if n > 0.0 {
        [axis[0] / n, axis[1] / n, axis[2] / n]
    } else {
        [0.0, 0.0, 1.0]
    };
    let (s, c) = angle.sin_cos();
    let t = 1.0 - c;
    [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::linalg::det3;

    fn oblique() -> Geometry {
        Geometry {
            origin: [-80.5, 40.25, 12.75],
            spacing: [0.3125, 0.4, 3.0],
            direction: rotation([1.0, 2.0, 3.0], 0.5),
        }
    }

    #[test]
    fn index_and_point_are_inverse() {
        let g = oblique();
        g.validate().unwrap();
        let idx = [3.0, 7.5, -2.25];
        let back = g.point_to_index(g.index_to_point(idx));
        for a in 0..3 {
            assert!((back[a] - idx[a]).abs() < 1e-12);
        }
    }

    #[test]
    fn affines_round_trip() {
        let g = oblique();
        let lps = Geometry::from_affine_lps(&g.affine_lps());
        let ras = Geometry::from_affine_ras(&g.affine_ras());
        assert!(lps.approx_eq(&g, 1e-12));
        assert!(ras.approx_eq(&g, 1e-12));
        let a = g.affine_ras();
        let b = g.affine_lps();
        assert_eq!(a[0][3], -b[0][3]);
        assert_eq!(a[2][2], b[2][2]);
    }

    #[test]
    fn validation_rejects_bad_grids() {
        let mut g = oblique();
        g.spacing[1] = 0.0;
        assert!(g.validate().is_err());
        let mut g = oblique();
        g.direction[0][0] += 0.01;
        assert!(g.validate().is_err());
        let fixed = g.orthonormalized();
        fixed.validate().unwrap();
        assert!(orthonormality_error(&fixed.direction) < 1e-12);
        let mut g = oblique();
        g.origin[2] = f64::NAN;
        assert!(g.validate().is_err());
    }

    #[test]
    fn orthonormalizing_keeps_a_reflection() {
        let mut d = rotation([0.0, 1.0, 1.0], 0.3);
        for row in &mut d {
            row[2] = -row[2];
        }
        d[1][0] += 0.02;
        let g = Geometry {
            direction: d,
            ..Geometry::default()
        }
        .orthonormalized();
        assert!(orthonormality_error(&g.direction) < 1e-12);
        assert!(det3(&g.direction) < 0.0);
    }

    #[test]
    fn orientation_codes() {
        assert_eq!(orientation_code(&Geometry::default()), "LPS");
        let ras = Geometry {
            direction: [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
            ..Geometry::default()
        };
        assert_eq!(orientation_code(&ras), "RAS");
        // A sagittal acquisition: i runs anterior→posterior, j superior→inferior, k right→left.
        let sag = Geometry {
            direction: [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
            ..Geometry::default()
        };
        assert_eq!(orientation_code(&sag), "PIL");
        let tilted = Geometry {
            direction: rotation([0.0, 0.0, 1.0], 0.3),
            ..Geometry::default()
        };
        assert_eq!(orientation_code(&tilted), "LPS");
    }
}
