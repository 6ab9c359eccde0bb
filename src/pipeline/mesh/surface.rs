//! A tissue's surface from a label volume, as pymskt makes it (DOMAIN.md, "Meshes and
//! thickness"): binarise, zero a one-voxel border, optionally crop a long bone, Gaussian with a
//! variance in mm² (spacing-aware), marching cubes at 0.5, then voxel indices → LPS mm through
//! the volume's geometry.
//!
//! Only the bounding box of the tissue plus a margin of 4σ + 2 voxels is smoothed and scanned.
//! The margin may reach past the volume, where voxels count as 0; the box's outer layer is
//! therefore always below 0.5, which is what makes every surface closed.

use super::marching::marching_cubes;
use super::smooth::gaussian;
use super::Mesh;
use crate::volume::Volume;

/// Which end of a long bone to keep, and how long a piece (pymskt's `crop_percent`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BoneCrop {
    /// Femur: keep the distal end, up to `fraction × medial–lateral width` above its lowest
    /// point.
    KeepInferior(f64),
    /// Tibia: keep the proximal end, down to `fraction × medial–lateral width` below its
    /// highest point.
    KeepSuperior(f64),
}

/// How to turn a binary mask into a surface.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SurfaceOptions {
    /// Gaussian variance, mm² (0.5 for bone; the `cartilage_smoothing` option for cartilage).
    pub variance_mm2: f64,
    /// Level of the smoothed mask (0–1) at which the surface lies.
    pub iso: f64,
    /// Crop a long bone along superior–inferior (LPS z) before smoothing.
    pub crop: Option<BoneCrop>,
}

impl SurfaceOptions {
    /// Bone: variance 0.5 mm², level 0.5, no crop.
    pub fn bone() -> Self {
        SurfaceOptions {
            variance_mm2: 0.5,
            iso: 0.5,
            crop: None,
        }
    }

    /// Cartilage with the given variance (mm²), level 0.5.
    pub fn cartilage(variance_mm2: f64) -> Self {
        SurfaceOptions {
            variance_mm2,
            iso: 0.5,
            crop: None,
        }
    }
}

/// The surface of the voxels for which `member` holds, in LPS mm with outward normals; `None`
/// when no voxel (inside the one-voxel border) is a member, or the crop removes them all.
pub fn label_surface<T: Copy>(
    labels: &Volume<T>,
    member: impl Fn(T) -> bool,
    options: &SurfaceOptions,
) -> Option<Mesh> {
    let dims = labels.dims();
    let geometry = *labels.geometry();
    let data = labels.data();
    let interior = |i: usize, n: usize| i > 0 && i + 1 < n;
    let mut mask: Vec<usize> = Vec::new();
    for (o, &l) in data.iter().enumerate() {
        let (i, j, k) = (
            o % dims[0],
            (o / dims[0]) % dims[1],
            o / (dims[0] * dims[1]),
        );
        if member(l) && interior(i, dims[0]) && interior(j, dims[1]) && interior(k, dims[2]) {
            mask.push(o);
        }
    }
    let index_of = |o: usize| {
        [
            (o % dims[0]) as f64,
            ((o / dims[0]) % dims[1]) as f64,
            (o / (dims[0] * dims[1])) as f64,
        ]
    };
    if let Some(crop) = options.crop {
        let points: Vec<[f64; 3]> = mask
            .iter()
            .map(|&o| geometry.index_to_point(index_of(o)))
            .collect();
        let (xmin, xmax) = min_max(points.iter().map(|p| p[0]))?;
        let (zmin, zmax) = min_max(points.iter().map(|p| p[2]))?;
        let width = xmax - xmin;
        let keep = |z: f64| match crop {
            BoneCrop::KeepInferior(f) => z <= zmin + f * width,
            BoneCrop::KeepSuperior(f) => z >= zmax - f * width,
        };
        mask = mask
            .into_iter()
            .zip(&points)
            .filter(|(_, p)| keep(p[2]))
            .map(|(o, _)| o)
            .collect();
    }
    if mask.is_empty() {
        return None;
    }

    // The box: the mask's index bounds plus the margin (signed: it may leave the volume).
    let sigma: [f64; 3] =
        std::array::from_fn(|a| options.variance_mm2.max(0.0).sqrt() / geometry.spacing[a]);
    let mut lo = [i64::MAX; 3];
    let mut hi = [i64::MIN; 3];
    for &o in &mask {
        let idx = index_of(o);
        for a in 0..3 {
            lo[a] = lo[a].min(idx[a] as i64);
            hi[a] = hi[a].max(idx[a] as i64);
        }
    }
    let margin: [i64; 3] = std::array::from_fn(|a| (4.0 * sigma[a]).ceil() as i64 + 2);
    let start: [i64; 3] = std::array::from_fn(|a| lo[a] - margin[a]);
    let sub: [usize; 3] = std::array::from_fn(|a| (hi[a] + margin[a] - start[a] + 1) as usize);
    let mut values = vec![0f32; sub[0] * sub[1] * sub[2]];
    for &o in &mask {
        let idx = index_of(o);
        let s: [usize; 3] = std::array::from_fn(|a| (idx[a] as i64 - start[a]) as usize);
        values[s[0] + sub[0] * (s[1] + sub[1] * s[2])] = 1.0;
    }
    gaussian(&mut values, sub, sigma);
    let (verts, mut triangles) = marching_cubes(&values, sub, options.iso as f32);
    if triangles.is_empty() {
        return None;
    }
    let vertices = verts
        .into_iter()
        .map(|v| geometry.index_to_point(std::array::from_fn(|a| v[a] + start[a] as f64)))
        .collect();
    // Marching cubes winds outwards in index space; a left-handed grid mirrors that.
    if determinant(&geometry.index_matrix()) < 0.0 {
        for t in &mut triangles {
            t.swap(1, 2);
        }
    }
    Some(Mesh {
        vertices,
        triangles,
        point_scalars: Vec::new(),
    })
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((a, b)) => Some((a.min(v), b.max(v))),
    })
}

fn determinant(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}
