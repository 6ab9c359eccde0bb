//! The marching-cubes case table, derived from face rules instead of typed in.
//!
//! For each of the 256 inside/outside patterns of a cube's corners we build the surface
//! polygons by walking its faces. On a face, looking at it from outside the cube, the corners
//! that are inside form arcs; each arc is cut off by a segment from the edge where the walk
//! leaves the inside to the edge where it entered. Because that rule depends only on the four
//! corners of the face, the two cubes sharing a face always cut it the same way (diagonal inside
//! corners stay separate), so the surface has no cracks; and because a cube edge is walked in
//! opposite directions by its two faces, each crossing edge starts exactly one segment and ends
//! exactly one, so the segments chain into closed loops with a consistent orientation. The loops
//! are then reversed so that polygons face away from the inside, and fanned into triangles from
//! an apex that creates no diagonal along a cube face (such a diagonal could be met again by the
//! neighbouring cube).

use std::sync::OnceLock;

/// Corner `c` of the unit cube sits at `(c & 1, c >> 1 & 1, c >> 2 & 1)`.
pub const fn corner(c: usize) -> [usize; 3] {
    [c & 1, (c >> 1) & 1, (c >> 2) & 1]
}

/// The 12 cube edges as (base corner, axis): the edge runs from the base corner one step along
/// the axis.
pub const EDGES: [(usize, usize); 12] = [
    (0, 0),
    (2, 0),
    (4, 0),
    (6, 0),
    (0, 1),
    (1, 1),
    (4, 1),
    (5, 1),
    (0, 2),
    (1, 2),
    (2, 2),
    (3, 2),
];

/// The edge joining corners `a` and `b` (which differ in one bit).
fn edge_between(a: usize, b: usize) -> usize {
    let base = a.min(b);
    let axis = (a ^ b).trailing_zeros() as usize;
    EDGES
        .iter()
        .position(|&e| e == (base, axis))
        .unwrap_or(usize::MAX)
}

/// The triangles (as cube-edge triples) of every case.
pub struct CaseTable {
    /// `triangles[case]`: the triangles of the corner pattern `case` (bit c = corner c inside).
    pub triangles: Vec<Vec<[u8; 3]>>,
}

/// The table, built once.
pub fn table() -> &'static CaseTable {
    static TABLE: OnceLock<CaseTable> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// The six faces, each as its corners in counter-clockwise order seen from outside the cube.
fn faces() -> Vec<[usize; 4]> {
    let mut faces = Vec::new();
    for axis in 0..3 {
        let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
        for side in 0..2 {
            let at = |a: usize, b: usize| (side << axis) | (a << u) | (b << v);
            let mut f = [at(0, 0), at(1, 0), at(1, 1), at(0, 1)];
            // (p1 − p0) × (p2 − p1) must point outwards: along +axis for side 1, − for side 0.
            let p = f.map(|c| corner(c).map(|x| x as f64));
            let d0 = super::sub(p[1], p[0]);
            let d1 = super::sub(p[2], p[1]);
            let n = super::cross(d0, d1)[axis];
            if (n > 0.0) != (side == 1) {
                f.reverse();
            }
            faces.push(f);
        }
    }
    faces
}

/// Whether two cube edges lie on a common face.
fn share_face(faces: &[[usize; 4]], e1: usize, e2: usize) -> bool {
    let corners = |e: usize| {
        let (base, axis) = EDGES[e];
        [base, base | (1 << axis)]
    };
    faces.iter().any(|f| {
        let on = |e: usize| corners(e).iter().all(|c| f.contains(c));
        on(e1) && on(e2)
    })
}

fn build() -> CaseTable {
    let faces = faces();
    let mut triangles = Vec::with_capacity(256);
    for case in 0..256usize {
        let inside = |c: usize| case >> c & 1 == 1;
        // succ[e] = the edge the surface loop goes to after crossing edge e.
        let mut succ = [usize::MAX; 12];
        for f in &faces {
            for i in 0..4 {
                let (a, b) = (f[i], f[(i + 1) % 4]);
                if !inside(a) || inside(b) {
                    continue;
                }
                // The arc of inside corners ending at `a`: walk back to its start.
                let mut s = i;
                while inside(f[(s + 3) % 4]) {
                    s = (s + 3) % 4;
                }
                let before = f[(s + 3) % 4];
                succ[edge_between(a, b)] = edge_between(before, f[s]);
            }
        }
        let mut seen = [false; 12];
        let mut tris = Vec::new();
        for start in 0..12 {
            if succ[start] == usize::MAX || seen[start] {
                continue;
            }
            let mut lp = Vec::new();
            let mut e = start;
            while !seen[e] && e != usize::MAX {
                seen[e] = true;
                lp.push(e);
                e = succ[e];
            }
            // The walk winds the loop around the inside; face the polygon outwards.
            lp.reverse();
            let n = lp.len();
            let apex = (0..n)
                .find(|&a| (2..n - 1).all(|k| !share_face(&faces, lp[a], lp[(a + k) % n])))
                .unwrap_or(0);
            for k in 1..n - 1 {
                tris.push([lp[apex], lp[(apex + k) % n], lp[(apex + k + 1) % n]].map(|x| x as u8));
            }
        }
        triangles.push(tris);
    }
    CaseTable { triangles }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_closes_and_single_corner_faces_out() {
        let t = table();
        assert!(t.triangles[0].is_empty() && t.triangles[255].is_empty());
        // Corner 0 alone: one triangle whose normal points away from corner 0.
        assert_eq!(t.triangles[1].len(), 1);
        let mid = |e: u8| {
            let (base, axis) = EDGES[e as usize];
            let mut p = corner(base).map(|x| x as f64);
            p[axis] += 0.5;
            p
        };
        let [a, b, c] = t.triangles[1][0].map(mid);
        let n = crate::pipeline::mesh::cross(
            crate::pipeline::mesh::sub(b, a),
            crate::pipeline::mesh::sub(c, a),
        );
        assert!(n.iter().all(|&x| x > 0.0), "{n:?}");
        // Complementary cases have the same edges; each case uses each crossing edge.
        for case in 0..256usize {
            let crossing = (0..12)
                .filter(|&e| {
                    let (base, axis) = EDGES[e];
                    (case >> base & 1) != (case >> (base | 1 << axis) & 1)
                })
                .count();
            let used: std::collections::BTreeSet<u8> =
                t.triangles[case].iter().flatten().copied().collect();
            assert_eq!(used.len(), crossing, "case {case}");
            // Fan diagonals (edges two triangles of the case share) never run along a cube
            // face, where the neighbouring cube could draw the same edge.
            let mut count = std::collections::HashMap::new();
            for t in &t.triangles[case] {
                for k in 0..3 {
                    let (a, b) = (t[k].min(t[(k + 1) % 3]), t[k].max(t[(k + 1) % 3]));
                    *count.entry((a, b)).or_insert(0) += 1;
                }
            }
            let faces = faces();
            for (&(a, b), &n) in &count {
                assert!(n <= 2, "case {case}");
                if n == 2 {
                    assert!(!share_face(&faces, a as usize, b as usize), "case {case}");
                }
            }
        }
    }
}
