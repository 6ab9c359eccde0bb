//! Triangle surface meshes in patient space (LPS, mm): the type, its measures, and how a label
//! volume becomes one.
//!
//! A [`Mesh`] is an indexed triangle list with optional per-vertex scalars (the bone meshes carry
//! `thickness (mm)` and `labels`). Surfaces come from label volumes the way DOMAIN.md describes
//! (pymskt's method): binarise, zero a one-voxel border, spacing-aware Gaussian, marching cubes
//! at 0.5 ([`surface`]), with our own marching cubes ([`marching`]) whose case table is derived
//! from face rules at start-up ([`cases`]) rather than typed in, so the surfaces are closed
//! 2-manifolds with outward normals by construction. Files: legacy VTK ([`vtk`]), PLY and STL
//! ([`ply_stl`]).

pub mod cases;
pub mod decimate;
pub mod marching;
pub mod ply_stl;
pub mod smooth;
pub mod surface;
pub mod vtk;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use surface::{label_surface, BoneCrop, SurfaceOptions};

/// Values of one per-vertex scalar array.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarValues {
    /// Real values (e.g. `thickness (mm)`).
    F32(Vec<f32>),
    /// Integer values (e.g. region `labels`).
    I32(Vec<i32>),
}

impl ScalarValues {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            ScalarValues::F32(v) => v.len(),
            ScalarValues::I32(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` as f64.
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        match self {
            ScalarValues::F32(v) => v.get(i).map(|&x| f64::from(x)),
            ScalarValues::I32(v) => v.get(i).map(|&x| f64::from(x)),
        }
    }
}

/// One named per-vertex scalar array.
#[derive(Debug, Clone, PartialEq)]
pub struct PointScalars {
    /// The array's name, as users see it (may contain spaces: `thickness (mm)`).
    pub name: String,
    /// One value per vertex.
    pub values: ScalarValues,
}

/// An indexed triangle mesh in LPS patient coordinates (mm).
///
/// Triangles are wound counter-clockwise seen from outside, so `(b − a) × (c − a)` points out of
/// the enclosed region.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    /// Vertex positions, LPS mm.
    pub vertices: Vec<[f64; 3]>,
    /// Vertex indices of each triangle.
    pub triangles: Vec<[u32; 3]>,
    /// Per-vertex scalar arrays, each as long as `vertices`.
    pub point_scalars: Vec<PointScalars>,
}

pub(crate) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

impl Mesh {
    /// Whether the mesh has no triangles.
    pub fn is_empty(&self) -> bool {
        self.triangles.is_empty()
    }

    fn corners(&self, t: &[u32; 3]) -> [[f64; 3]; 3] {
        t.map(|v| self.vertices[v as usize])
    }

    /// Twice the area vector of each triangle (the un-normalised outward normal).
    fn face_cross(&self, t: &[u32; 3]) -> [f64; 3] {
        let [a, b, c] = self.corners(t);
        cross(sub(b, a), sub(c, a))
    }

    /// Surface area, mm².
    pub fn area(&self) -> f64 {
        self.triangles
            .iter()
            .map(|t| 0.5 * norm(self.face_cross(t)))
            .sum()
    }

    /// Enclosed volume, mm³, by the divergence theorem (sum of signed tetrahedra from the
    /// origin, taken about the centroid of the vertices for precision). Positive for a closed
    /// mesh with outward normals; meaningless for an open one.
    pub fn enclosed_volume(&self) -> f64 {
        let c = self.centroid();
        self.triangles
            .iter()
            .map(|t| {
                let [a, b, d] = self.corners(t).map(|p| sub(p, c));
                dot(a, cross(b, d)) / 6.0
            })
            .sum()
    }

    /// Mean of the vertex positions (origin when empty).
    pub fn centroid(&self) -> [f64; 3] {
        let n = self.vertices.len().max(1) as f64;
        let mut c = [0.0; 3];
        for v in &self.vertices {
            for a in 0..3 {
                c[a] += v[a] / n;
            }
        }
        c
    }

    /// Counts of each undirected edge's uses.
    fn edge_uses(&self) -> HashMap<(u32, u32), (u32, u32)> {
        // (uses as a→b with a < b, uses as b→a)
        let mut edges: HashMap<(u32, u32), (u32, u32)> = HashMap::new();
        for t in &self.triangles {
            for e in 0..3 {
                let (a, b) = (t[e], t[(e + 1) % 3]);
                let entry = edges.entry((a.min(b), a.max(b))).or_default();
                if a < b {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
            }
        }
        edges
    }

    /// V − E + F over the vertices that triangles use: 2 for a closed surface of genus 0.
    pub fn euler_characteristic(&self) -> i64 {
        let mut used = vec![false; self.vertices.len()];
        for t in &self.triangles {
            for &v in t {
                used[v as usize] = true;
            }
        }
        let v = used.iter().filter(|&&u| u).count() as i64;
        v - self.edge_uses().len() as i64 + self.triangles.len() as i64
    }

    /// Whether every edge is shared by exactly two triangles that traverse it in opposite
    /// directions: the mesh is closed, manifold along its edges and consistently oriented.
    pub fn is_closed_and_oriented(&self) -> bool {
        self.edge_uses().values().all(|&(f, b)| f == 1 && b == 1)
    }

    /// Number of vertices that share their exact position with an earlier vertex.
    pub fn duplicate_vertices(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        self.vertices
            .iter()
            .filter(|v| !seen.insert(v.map(f64::to_bits)))
            .count()
    }

    /// Unit vertex normals: the area-weighted mean of the adjacent triangles' normals (zero for
    /// a vertex no triangle uses).
    pub fn vertex_normals(&self) -> Vec<[f64; 3]> {
        let mut normals = vec![[0.0; 3]; self.vertices.len()];
        for t in &self.triangles {
            let n = self.face_cross(t);
            for &v in t {
                let acc = &mut normals[v as usize];
                for a in 0..3 {
                    acc[a] += n[a];
                }
            }
        }
        for n in &mut normals {
            let l = norm(*n);
            if l > 0.0 {
                *n = n.map(|x| x / l);
            }
        }
        normals
    }

    /// Axis-aligned bounds `(min, max)`; `None` without vertices.
    pub fn bounds(&self) -> Option<([f64; 3], [f64; 3])> {
        let first = *self.vertices.first()?;
        let mut lo = first;
        let mut hi = first;
        for v in &self.vertices {
            for a in 0..3 {
                lo[a] = lo[a].min(v[a]);
                hi[a] = hi[a].max(v[a]);
            }
        }
        Some((lo, hi))
    }

    /// The scalar array called `name`.
    pub fn scalars(&self, name: &str) -> Option<&ScalarValues> {
        self.point_scalars
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.values)
    }

    /// Adds or replaces the scalar array called `name`.
    pub fn set_scalars(&mut self, name: &str, values: ScalarValues) {
        match self.point_scalars.iter_mut().find(|s| s.name == name) {
            Some(s) => s.values = values,
            None => self.point_scalars.push(PointScalars {
                name: name.to_string(),
                values,
            }),
        }
    }

    /// Appends another mesh's vertices and triangles (scalars are dropped: they would not
    /// cover both parts).
    pub fn append(&mut self, other: &Mesh) {
        let base = self.vertices.len() as u32;
        self.vertices.extend_from_slice(&other.vertices);
        self.triangles
            .extend(other.triangles.iter().map(|t| t.map(|v| v + base)));
        self.point_scalars.clear();
    }
}
