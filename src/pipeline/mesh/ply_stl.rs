//! PLY (binary little endian) and STL (binary) writers, for tools that do not read VTK.
//!
//! PLY keeps the point scalars as `float` vertex properties; PLY property names are single
//! tokens, so a name keeps its letters, digits and `_` and every other run of characters
//! becomes one `_` (`thickness (mm)` → `thickness_mm`). STL has no per-vertex data and stores
//! each triangle with its unit normal.

use std::path::Path;

use super::vtk::MeshIoError;
use super::{cross, norm, sub, Mesh};

/// A PLY property name for a scalar array name.
pub fn ply_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches('_').to_string();
    if out.is_empty() {
        "scalar".into()
    } else {
        out
    }
}

/// The bytes of a binary little-endian PLY file: vertices as float x, y, z plus one float
/// property per point-scalar array, faces as `uchar`-counted `int` lists.
pub fn ply_bytes(mesh: &Mesh) -> Vec<u8> {
    let n = mesh.vertices.len();
    let arrays: Vec<_> = mesh
        .point_scalars
        .iter()
        .filter(|s| s.values.len() == n)
        .collect();
    let mut out = Vec::new();
    let mut header = format!(
        "ply\nformat binary_little_endian 1.0\ncomment kneenode mesh, LPS mm\nelement vertex {n}\n\
         property float x\nproperty float y\nproperty float z\n"
    );
    for a in &arrays {
        header.push_str(&format!("property float {}\n", ply_name(&a.name)));
    }
    header.push_str(&format!(
        "element face {}\nproperty list uchar int vertex_indices\nend_header\n",
        mesh.triangles.len()
    ));
    out.extend_from_slice(header.as_bytes());
    for (i, v) in mesh.vertices.iter().enumerate() {
        for x in v {
            out.extend_from_slice(&(*x as f32).to_le_bytes());
        }
        for a in &arrays {
            let x = a.values.get_f64(i).unwrap_or(0.0) as f32;
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    for t in &mesh.triangles {
        out.push(3);
        for &v in t {
            out.extend_from_slice(&(v as i32).to_le_bytes());
        }
    }
    out
}

/// The bytes of a binary STL file.
pub fn stl_bytes(mesh: &Mesh) -> Vec<u8> {
    let mut out = Vec::with_capacity(84 + 50 * mesh.triangles.len());
    let mut header = [0u8; 80];
    let text = b"kneenode mesh, LPS mm";
    header[..text.len()].copy_from_slice(text);
    out.extend_from_slice(&header);
    out.extend_from_slice(&(mesh.triangles.len() as u32).to_le_bytes());
    for t in &mesh.triangles {
        let [a, b, c] = t.map(|v| mesh.vertices[v as usize]);
        let n = cross(sub(b, a), sub(c, a));
        let l = norm(n);
        let n = if l > 0.0 { n.map(|x| x / l) } else { n };
        for p in [n, a, b, c] {
            for x in p {
                out.extend_from_slice(&(x as f32).to_le_bytes());
            }
        }
        out.extend_from_slice(&0u16.to_le_bytes());
    }
    out
}

fn write_file(path: &Path, bytes: Vec<u8>) -> Result<(), MeshIoError> {
    std::fs::write(path, bytes).map_err(|source| MeshIoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `mesh` as binary little-endian PLY.
pub fn write_ply(path: &Path, mesh: &Mesh) -> Result<(), MeshIoError> {
    write_file(path, ply_bytes(mesh))
}

/// Writes `mesh` as binary STL.
pub fn write_stl(path: &Path, mesh: &Mesh) -> Result<(), MeshIoError> {
    write_file(path, stl_bytes(mesh))
}
