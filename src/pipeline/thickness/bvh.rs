//! A bounding-volume hierarchy over a mesh's triangles, for segment–surface intersections
//! (thickness rays) and closest-point queries (NSM's ICP and surface distances).
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

impl Bvh {
    /// The point of the surface closest to `p`, with its distance; `None` for an empty mesh.
    ///
    /// Depth first, nearer child first, skipping boxes farther than the best point so far: a
    /// query costs about the logarithm of the triangle count for points near the surface.
    pub fn closest_point(&self, p: [f64; 3]) -> Option<([f64; 3], f64)> {
        self.closest(p).map(|c| (c.point, c.distance))
    }

    /// As [`Bvh::closest_point`], with the unit normal of the triangle the point lies on (for
    /// point-to-plane ICP).
    pub fn closest(&self, p: [f64; 3]) -> Option<Closest> {
        if self.nodes.is_empty() {
            return None;
        }
        let mut best_d2 = f64::INFINITY;
        let mut best: Option<([f64; 3], usize)> = None;
        let mut stack = vec![0usize];
        while let Some(n) = stack.pop() {
            let node = &self.nodes[n];
            if box_distance2(p, node.lo, node.hi) >= best_d2 {
                continue;
            }
            if node.count == 0 {
                let (l, r) = (&self.nodes[node.left], &self.nodes[node.right]);
                let (dl, dr) = (box_distance2(p, l.lo, l.hi), box_distance2(p, r.lo, r.hi));
                // The nearer child goes on top of the stack, so it is searched first.
                if dl < dr {
                    stack.push(node.right);
                    stack.push(node.left);
                } else {
                    stack.push(node.left);
                    stack.push(node.right);
                }
                continue;
            }
            for &t in &self.order[node.first..node.first + node.count] {
                let q = closest_on_triangle(p, &self.tris[t]);
                let d = sub(q, p);
                let d2 = dot(d, d);
                if d2 < best_d2 {
                    best_d2 = d2;
                    best = Some((q, t));
                }
            }
        }
        best.map(|(point, t)| {
            let [a, b, c] = self.tris[t];
            let n = cross(sub(b, a), sub(c, a));
            let len = dot(n, n).sqrt();
            Closest {
                point,
                distance: best_d2.sqrt(),
                normal: if len > 0.0 {
                    n.map(|x| x / len)
                } else {
                    [0.0; 3]
                },
            }
        })
    }
}

/// The answer of [`Bvh::closest`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closest {
    /// The closest point of the surface.
    pub point: [f64; 3],
    /// Its distance from the query point.
    pub distance: f64,
    /// Unit normal of its triangle (zero for a degenerate one).
    pub normal: [f64; 3],
}

/// Squared distance from `p` to the box (0 inside).
fn box_distance2(p: [f64; 3], lo: [f64; 3], hi: [f64; 3]) -> f64 {
    (0..3)
        .map(|a| {
            let d = (lo[a] - p[a]).max(p[a] - hi[a]).max(0.0);
            d * d
        })
        .sum()
}

/// The point of triangle `t` closest to `p`, by the Voronoi regions of its corners, edges and
/// face (Ericson, *Real-Time Collision Detection*, 5.1.5).
fn closest_on_triangle(p: [f64; 3], t: &[[f64; 3]; 3]) -> [f64; 3] {
    let [a, b, c] = *t;
    let along =
        |o: [f64; 3], d: [f64; 3], s: f64| -> [f64; 3] { std::array::from_fn(|i| o[i] + s * d[i]) };
    let (ab, ac, ap) = (sub(b, a), sub(c, a), sub(p, a));
    let (d1, d2) = (dot(ab, ap), dot(ac, ap));
    if d1 <= 0.0 && d2 <= 0.0 {
        return a;
    }
    let bp = sub(p, b);
    let (d3, d4) = (dot(ab, bp), dot(ac, bp));
    if d3 >= 0.0 && d4 <= d3 {
        return b;
    }
    let vc = d1 * d4 - d3 * d2;
    if vc <= 0.0 && d1 >= 0.0 && d3 <= 0.0 {
        return along(a, ab, d1 / (d1 - d3));
    }
    let cp = sub(p, c);
    let (d5, d6) = (dot(ab, cp), dot(ac, cp));
    if d6 >= 0.0 && d5 <= d6 {
        return c;
    }
    let vb = d5 * d2 - d1 * d6;
    if vb <= 0.0 && d2 >= 0.0 && d6 <= 0.0 {
        return along(a, ac, d2 / (d2 - d6));
    }
    let va = d3 * d6 - d5 * d4;
    if va <= 0.0 && (d4 - d3) >= 0.0 && (d5 - d6) >= 0.0 {
        return along(b, sub(c, b), (d4 - d3) / ((d4 - d3) + (d5 - d6)));
    }
    let denom = va + vb + vc;
    if denom.abs() < 1e-300 {
        // A degenerate (zero-area) triangle: its corners are as good as anything.
        return [a, b, c]
            .into_iter()
            .min_by(|x, y| dot(sub(*x, p), sub(*x, p)).total_cmp(&dot(sub(*y, p), sub(*y, p))))
            .unwrap_or(a);
    }
    let (v, w) = (vb / denom, vc / denom);
    std::array::from_fn(|i| a[i] + ab[i] * v + ac[i] * w)
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
    use crate::pipeline::mesh::norm;

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

    #[test]
    fn closest_points_agree_with_brute_force() {
        // A closed surface with many triangles: a marching-cubes ball.
        let n = 24usize;
        let mut values = vec![0f32; n * n * n];
        for (o, v) in values.iter_mut().enumerate() {
            let p = [o % n, (o / n) % n, o / (n * n)].map(|i| i as f32 - 11.5);
            *v = 9.0 - (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
        }
        let (vertices, triangles) =
            crate::pipeline::mesh::marching::marching_cubes(&values, [n; 3], 0.0);
        let mesh = Mesh {
            vertices,
            triangles,
            point_scalars: Vec::new(),
        };
        let bvh = Bvh::new(&mesh);
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 * 30.0 - 3.0
        };
        for _ in 0..200 {
            let p = [next(), next(), next()];
            let (q, d) = bvh.closest_point(p).unwrap();
            let brute = bvh
                .tris
                .iter()
                .map(|t| norm(sub(closest_on_triangle(p, t), p)))
                .fold(f64::INFINITY, f64::min);
            assert!((d - brute).abs() < 1e-9, "{d} vs {brute}");
            assert!((norm(sub(q, p)) - d).abs() < 1e-9);
        }
        // Inside a triangle's face region, on an edge's, at a corner.
        let t = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        let near = |p: [f64; 3], q: [f64; 3]| norm(sub(closest_on_triangle(p, &t), q)) < 1e-12;
        assert!(near([0.2, 0.2, 3.0], [0.2, 0.2, 0.0]));
        assert!(near([0.5, -2.0, 1.0], [0.5, 0.0, 0.0]));
        assert!(near([-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]));
        assert!(near([2.0, 2.0, 0.0], [0.5, 0.5, 0.0]));
    }
}
