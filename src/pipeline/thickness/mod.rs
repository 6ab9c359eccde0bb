//! Cartilage thickness on a bone surface, and its statistics by region (DOMAIN.md, "Meshes and
//! thickness", pymskt's method).
//!
//! At each bone vertex p with outward normal n, the segment from p − 0.25·L·n to p + L·n
//! (L = 10 mm) is cast against each cartilage surface. If it crosses one surface exactly twice,
//! the thickness there is the distance between the two crossings; otherwise 0. The start inside
//! the bone catches cartilage whose deep surface lies at or just under the bone surface. Like
//! pymskt, the thicknesses from several cartilage surfaces (medial and lateral tibial) are
//! added; in practice one of them is 0. The vertex's region label is the most common cartilage
//! region label sampled between the two crossings ([`assign_regions`]); regions are statistics
//! over the vertices with thickness > 0.

pub mod bvh;
pub mod regions;

#[cfg(test)]
mod tests;

use crate::pipeline::mesh::{norm, sub, Mesh};
use crate::volume::Volume;
use bvh::Bvh;

/// Length L of the ray outwards from the bone, mm.
pub const RAY_LENGTH_MM: f64 = 10.0;
/// The ray starts this fraction of L inside the bone.
pub const INWARD_FRACTION: f64 = 0.25;

/// The two points where a ray crossed a cartilage surface, LPS mm.
pub type Segment = ([f64; 3], [f64; 3]);

/// Thickness at each bone vertex, and where it was measured.
#[derive(Debug, Clone, Default)]
pub struct VertexThickness {
    /// Thickness, mm (0 where the ray did not cross a cartilage surface exactly twice).
    pub thickness: Vec<f32>,
    /// The two crossings that gave the thickness (from the thickest cartilage surface where
    /// several did).
    pub segments: Vec<Option<Segment>>,
}

/// Casts the thickness ray from every vertex of `bone` against each of `cartilages`.
pub fn cartilage_thickness(bone: &Mesh, cartilages: &[&Mesh]) -> VertexThickness {
    let normals = bone.vertex_normals();
    let trees: Vec<Bvh> = cartilages.iter().map(|m| Bvh::new(m)).collect();
    let n = bone.vertices.len();
    let mut out = VertexThickness {
        thickness: vec![0.0; n],
        segments: vec![None; n],
    };
    let along = |p: [f64; 3], d: [f64; 3], s: f64| std::array::from_fn(|a| p[a] + s * d[a]);
    for (v, (&p, &nrm)) in bone.vertices.iter().zip(&normals).enumerate() {
        if norm(nrm) == 0.0 {
            continue;
        }
        let from = along(p, nrm, -INWARD_FRACTION * RAY_LENGTH_MM);
        let to = along(p, nrm, RAY_LENGTH_MM);
        let d = sub(to, from);
        let mut total = 0.0;
        let mut best: Option<(f64, Segment)> = None;
        for tree in &trees {
            let hits = tree.segment_hits(from, to);
            if let [a, b] = hits[..] {
                let (pa, pb) = (along(from, d, a), along(from, d, b));
                let t = norm(sub(pb, pa));
                total += t;
                if best.is_none_or(|(bt, _)| t > bt) {
                    best = Some((t, (pa, pb)));
                }
            }
        }
        out.thickness[v] = total as f32;
        out.segments[v] = best.map(|(_, s)| s);
    }
    out
}

/// Samples taken between the two crossings to find a vertex's region.
const REGION_SAMPLES: usize = 20;

/// The region of each bone vertex: the most common label among `allowed` in `regions`
/// (nearest voxel) at evenly spaced points between the vertex's two crossings; 0 where there
/// were none or no sample fell in an allowed label. Ties go to the smaller label.
pub fn assign_regions(
    thickness: &VertexThickness,
    regions: &Volume<u8>,
    allowed: &[u8],
) -> Vec<i32> {
    let g = regions.geometry();
    let dims = regions.dims();
    thickness
        .segments
        .iter()
        .map(|seg| {
            let Some((a, b)) = seg else {
                return 0;
            };
            let mut counts = vec![0usize; allowed.len()];
            for s in 0..REGION_SAMPLES {
                let f = (s as f64 + 0.5) / REGION_SAMPLES as f64;
                let p: [f64; 3] = std::array::from_fn(|x| a[x] + f * (b[x] - a[x]));
                let idx = g.point_to_index(p).map(f64::round);
                if idx
                    .iter()
                    .zip(dims)
                    .any(|(&i, n)| !(i >= 0.0 && i < n as f64))
                {
                    continue;
                }
                let l = regions[[idx[0] as usize, idx[1] as usize, idx[2] as usize]];
                if let Some(k) = allowed.iter().position(|&r| r == l) {
                    counts[k] += 1;
                }
            }
            let mut best = (0usize, 0i32);
            for (k, &c) in counts.iter().enumerate() {
                let label = i32::from(allowed[k]);
                if c > best.0 || (c == best.0 && c > 0 && label < best.1) {
                    best = (c, label);
                }
            }
            best.1
        })
        .collect()
}

/// Thickness statistics of one region, over its vertices with thickness > 0.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionStats {
    /// pymskt's region name (`med_wb_fem_cart`, …).
    pub name: String,
    /// The region's label (DOMAIN.md: 1, 3, 4, 11–15).
    pub label: u8,
    /// Vertices counted.
    pub vertices: usize,
    /// Mean thickness, mm; `None` without vertices.
    pub mean: Option<f64>,
    /// Population standard deviation (numpy's `std`), mm.
    pub std: Option<f64>,
    /// Median, mm (mean of the two middle values for an even count).
    pub median: Option<f64>,
}

/// Statistics of region `label` over the vertices whose `labels` value is `label` and whose
/// thickness is > 0.
pub fn region_stats(name: &str, label: u8, thickness: &[f32], labels: &[i32]) -> RegionStats {
    let mut v: Vec<f64> = thickness
        .iter()
        .zip(labels)
        .filter(|(&t, &l)| t > 0.0 && l == i32::from(label))
        .map(|(&t, _)| f64::from(t))
        .collect();
    let n = v.len();
    let (mean, std, median) = if n == 0 {
        (None, None, None)
    } else {
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        v.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        (Some(mean), Some(var.sqrt()), Some(median))
    };
    RegionStats {
        name: name.to_string(),
        label,
        vertices: n,
        mean,
        std,
        median,
    }
}
