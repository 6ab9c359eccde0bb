//! Marching cubes over a scalar grid, in index coordinates.
//!
//! A grid point is inside when its value is above the iso-level. Each grid edge that changes
//! sides gets one vertex, linearly interpolated, and is looked up in a cache of two planes of
//! x/y edges plus one layer of z edges, so a vertex shared by up to four cubes is made once: no
//! duplicate vertices, and a memory footprint of a few planes rather than of the volume.

use super::cases::{table, EDGES};

/// Vertices (continuous voxel indices) and triangles of the `iso` surface of `values`
/// (`values[i + nx·(j + ny·k)]`), wound counter-clockwise seen from the side below `iso` in
/// index space. Returns empty lists for a grid under 2 voxels along any axis.
pub fn marching_cubes(
    values: &[f32],
    dims: [usize; 3],
    iso: f32,
) -> (Vec<[f64; 3]>, Vec<[u32; 3]>) {
    let [nx, ny, nz] = dims;
    let mut vertices = Vec::new();
    let mut triangles = Vec::new();
    if nx < 2 || ny < 2 || nz < 2 || values.len() != nx * ny * nz {
        return (vertices, triangles);
    }
    let table = table();
    let plane = nx * ny;
    const NONE: u32 = u32::MAX;
    // [lower plane x-edges, lower y-edges, upper x-edges, upper y-edges], then z-edges.
    let mut xy = [
        vec![NONE; plane],
        vec![NONE; plane],
        vec![NONE; plane],
        vec![NONE; plane],
    ];
    let mut zs = vec![NONE; plane];
    let inside = |v: f32| v > iso;
    // Each grid row (fixed j, k) is all outside, all inside or mixed; a row of cells whose
    // four corner rows are all outside (or all inside) holds no surface and is skipped whole.
    // Most of a knee volume is such rows.
    const OUT: u8 = 0;
    const IN: u8 = 1;
    const MIXED: u8 = 2;
    let row_state: Vec<u8> = values
        .chunks_exact(nx)
        .map(|row| {
            let first = inside(row[0]);
            if row.iter().all(|&v| inside(v) == first) {
                if first {
                    IN
                } else {
                    OUT
                }
            } else {
                MIXED
            }
        })
        .collect();

    for k in 0..nz - 1 {
        if k > 0 {
            // The old upper plane is the new lower one.
            xy.swap(0, 2);
            xy.swap(1, 3);
            xy[2].fill(NONE);
            xy[3].fill(NONE);
            zs.fill(NONE);
        }
        for j in 0..ny - 1 {
            // Corner rows by corner index >> 1: (j, k), (j+1, k), (j, k+1), (j+1, k+1).
            let rows = [
                j + ny * k,
                j + 1 + ny * k,
                j + ny * (k + 1),
                j + 1 + ny * (k + 1),
            ];
            let states = rows.map(|r| row_state[r]);
            if states[0] != MIXED && states.iter().all(|&s| s == states[0]) {
                continue;
            }
            let starts = rows.map(|r| r * nx);
            // Corner values slide along i: the x+1 side of one cell is the x side of the next.
            let mut left = starts.map(|s| values[s]);
            for i in 0..nx - 1 {
                let right = starts.map(|s| values[s + i + 1]);
                let val = [
                    left[0], right[0], left[1], right[1], left[2], right[2], left[3], right[3],
                ];
                left = right;
                let mut case = 0usize;
                for (c, &v) in val.iter().enumerate() {
                    if inside(v) {
                        case |= 1 << c;
                    }
                }
                let tris = &table.triangles[case];
                if tris.is_empty() {
                    continue;
                }
                let mut ids = [NONE; 12];
                for tri in tris {
                    let mut out = [0u32; 3];
                    for (slot, &e) in out.iter_mut().zip(tri) {
                        let e = e as usize;
                        if ids[e] == NONE {
                            let (c0, axis) = EDGES[e];
                            let (pi, pj, pk) = (i + (c0 & 1), j + ((c0 >> 1) & 1), (c0 >> 2) & 1);
                            let cell = pi + nx * pj;
                            let cache = match axis {
                                0 => &mut xy[2 * pk][cell],
                                1 => &mut xy[2 * pk + 1][cell],
                                _ => &mut zs[cell],
                            };
                            if *cache == NONE {
                                let (a, b) = (val[c0], val[c0 | (1 << axis)]);
                                // Kept off the grid points, so that two edges meeting at a
                                // point exactly at `iso` cannot give two equal vertices.
                                let t = f64::from((iso - a) / (b - a)).clamp(1e-6, 1.0 - 1e-6);
                                let mut p = [pi as f64, pj as f64, (k + pk) as f64];
                                p[axis] += t;
                                *cache = vertices.len() as u32;
                                vertices.push(p);
                            }
                            ids[e] = *cache;
                        }
                        *slot = ids[e];
                    }
                    triangles.push(out);
                }
            }
        }
    }
    (vertices, triangles)
}
