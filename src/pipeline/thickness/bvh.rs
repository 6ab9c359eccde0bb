//! A bounding-volume hierarchy over a mesh's triangles, for segment–surface intersections.
//!
//! Axis-aligned boxes, split at the median centroid along the longest axis of the centroids'
//! box, leaves of up to four triangles. Triangles are tested with Möller–Trumbore, with
//! inclusive edges so that a segment through a shared edge or vertex is never missed by both
//! triangles; the resulting double hit is merged (see [`Bvh::segment_hits`]).

use crate::pipeline::mesh::{cross, dot, sub, Mesh};

const LEAF: usize = 4;

#[derive(Debug, Clone)]
struct Node {
    lo: [f64; 3],
    hi: [f64; 3],
    /// A leaf holds `order[first..first + count]`; an inner node has `count == 0` and its
    /// children at `left` and `right`.
    first: usize,
    count: usize,
    left: usize,
    right: usize,
}

/// The hierarchy over one mesh (it keeps its own copy of the triangle corners).
#[derive(Debug, Clone)]
pub struct Bvh {
    tris: Vec<[[f64; 3]; 3]>,
    order: Vec<usize>,
    nodes: Vec<Node>,
}

impl Bvh {
    /// Builds the hierarchy over `mesh`'s triangles.
    pub fn new(mesh: &Mesh) -> Bvh {
        let tris: Vec<[[f64; 3]; 3]> = mesh
            .triangles
            .iter()
            .map(|t| t.map(|v| mesh.vertices[v as usize]))
            .collect();
        let centroids: Vec<[f64; 3]> = tris
            .iter()
            .map(|t| std::array::from_fn(|a| (t[0][a] + t[1][a] + t[2][a]) / 3.0))
            .collect();
        let mut bvh = Bvh {
            order: (0..tris.len()).collect(),
            tris,
            nodes: Vec::new(),
        };
        if !bvh.tris.is_empty() {
            let n = bvh.tris.len();
            bvh.build(&centroids, 0, n);
        }
        bvh
    }

    fn build(&mut self, centroids: &[[f64; 3]], first: usize, count: usize) -> usize {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        let mut clo = lo;
        let mut chi = hi;
        for &t in &self.order[first..first + count] {
            for p in &self.tris[t] {
                for a in 0..3 {
                    lo[a] = lo[a].min(p[a]);
                    hi[a] = hi[a].max(p[a]);
                }
            }
            for a in 0..3 {
                clo[a] = clo[a].min(centroids[t][a]);
                chi[a] = chi[a].max(centroids[t][a]);
            }
        }
        let id = self.nodes.len();
        self.nodes.push(Node {
            lo,
            hi,
            first,
            count,
            left: 0,
            right: 0,
        });
        if count <= LEAF {
            return id;
        }
        let axis = (0..3)
            .max_by(|&a, &b| (chi[a] - clo[a]).total_cmp(&(chi[b] - clo[b])))
            .unwrap_or(0);
        let half = count / 2;
        self.order[first..first + count].select_nth_unstable_by(half, |&x, &y| {
            centroids[x][axis].total_cmp(&centroids[y][axis])
        });
        let left = self.build(centroids, first, half);
        let right = self.build(centroids, first + half, count - half);
        let node = &mut self.nodes[id];
        node.count = 0;
        node.left = left;
        node.right = right;
        id
    }

    /// Where the segment `from → to` crosses the surface, as fractions `t ∈ [0, 1]` along it,
    /// sorted. Hits closer than 1e-9 of the segment's length (a segment through a shared edge
    /// or vertex, reported by each triangle there) count once.
    pub fn segment_hits(&self, from: [f64; 3], to: [f64; 3]) -> Vec<f64> {
        let mut hits = Vec::new();
        if self.nodes.is_empty() {
            return hits;
        }
        let d = sub(to, from);
        let inv = d.map(|x| 1.0 / x);
        let mut stack = vec![0usize];
        while let Some(n) = stack.pop() {
            let node = &self.nodes[n];
            if !slab(from, inv, node.lo, node.hi) {
                continue;
            }
            if node.count == 0 {
                stack.push(node.left);
                stack.push(node.right);
                continue;
            }
            for &t in &self.order[node.first..node.first + node.count] {
                if let Some(h) = intersect(from, d, &self.tris[t]) {
                    hits.push(h);
                }
            }
        }
        hits.sort_by(f64::total_cmp);
        hits.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
        hits
    }
}

/// Whether the segment `from + t·d`, t ∈ [0, 1], meets the box (`inv` = 1/d per axis).
fn slab(from: [f64; 3], inv: [f64; 3], lo: [f64; 3], hi: [f64; 3]) -> bool {
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for a in 0..3 {
        let (mut near, mut far) = ((lo[a] - from[a]) * inv[a], (hi[a] - from[a]) * inv[a]);
        if near > far {
            std::mem::swap(&mut near, &mut far);
        }
        // NaN (0 · ∞, a segment in the box's plane) must not reject the box.
        if near.is_nan() || far.is_nan() {
            if from[a] < lo[a] || from[a] > hi[a] {
                return false;
            }
            continue;
        }
        t0 = t0.max(near);
        t1 = t1.min(far);
        if t0 > t1 * (1.0 + 1e-12) + 1e-12 {
            return false;
        }
    }
    true
}

/// Möller–Trumbore: the fraction t ∈ [0, 1] along `from + t·d` where it crosses the triangle,
/// edges included; `None` when parallel or outside.
fn intersect(from: [f64; 3], d: [f64; 3], tri: &[[f64; 3]; 3]) -> Option<f64> {
    let e1 = sub(tri[1], tri[0]);
    let e2 = sub(tri[2], tri[0]);
    let p = cross(d, e2);
    let det = dot(e1, p);
    if det.abs() < 1e-300 {
        return None;
    }
    let inv = 1.0 / det;
    let s = sub(from, tri[0]);
    let u = dot(s, p) * inv;
    const EPS: f64 = 1e-12;
    if !(-EPS..=1.0 + EPS).contains(&u) {
        return None;
    }
    let q = cross(s, e1);
    let v = dot(d, q) * inv;
    if v < -EPS || u + v > 1.0 + EPS {
        return None;
    }
    let t = dot(e2, q) * inv;
    (0.0..=1.0).contains(&t).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_walls_of_a_box_and_merges_edge_hits() {
        // A unit cube as 12 triangles.
        let v: Vec<[f64; 3]> = (0..8)
            .map(|c| [(c & 1) as f64, ((c >> 1) & 1) as f64, ((c >> 2) & 1) as f64])
            .collect();
        let quads = [
            [0, 2, 3, 1],
            [4, 5, 7, 6],
            [0, 1, 5, 4],
            [2, 6, 7, 3],
            [0, 4, 6, 2],
            [1, 3, 7, 5],
        ];
        let mut triangles = Vec::new();
        for q in quads {
            triangles.push([q[0], q[1], q[2]]);
            triangles.push([q[0], q[2], q[3]]);
        }
        let mesh = Mesh {
            vertices: v,
            triangles,
            point_scalars: Vec::new(),
        };
        let bvh = Bvh::new(&mesh);
        let hits = bvh.segment_hits([0.3, 0.4, -1.0], [0.3, 0.4, 2.0]);
        assert_eq!(hits.len(), 2);
        assert!((hits[0] - 1.0 / 3.0).abs() < 1e-12 && (hits[1] - 2.0 / 3.0).abs() < 1e-12);
        // Through the diagonal of the bottom and top faces (the shared triangle edge).
        assert_eq!(bvh.segment_hits([0.5, 0.5, -1.0], [0.5, 0.5, 2.0]).len(), 2);
        // Stopping inside: one hit. Missing: none.
        assert_eq!(bvh.segment_hits([0.5, 0.2, -1.0], [0.5, 0.2, 0.5]).len(), 1);
        assert!(bvh
            .segment_hits([2.0, 2.0, -1.0], [2.0, 2.0, 2.0])
            .is_empty());
    }
}
