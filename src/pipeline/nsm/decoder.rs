//! The NSM decoder: a TorchScript module `forward(latent[1, L], xyz[N, 3]) → sdf[N, C]`
//! (CONTRACT.md), one SDF column per surface the manifest lists, negative inside, in the
//! normalised frame.
//!
//! Its parameters are frozen when it loads, so a backward pass only reaches the latent. Grids
//! (the mean shape, reconstructions) are evaluated without autograd and, above 64³, sparsely:
//! the SDF is first taken at the corners of 4³-cell blocks, and only blocks whose corners change
//! sign or come within 1.5 block diagonals of the surface are evaluated in full; the rest are
//! filled with a constant of their corners' sign. For a distance-like SDF (1-Lipschitz, as
//! trained) no surface can hide in a skipped block. With the demo decoder, femur and cartilage
//! together, this evaluates 29 % of a 256³ grid (its values far from the surface are small
//! rather than distances, which keeps more blocks near enough).

use tch::{CModule, Device, Kind, Tensor};

use crate::pipeline::mesh::marching::marching_cubes;
use crate::pipeline::mesh::Mesh;
use crate::pipeline::models::{ModelError, ModelKind, ModelSpec};

/// Side of the blocks of the sparse grid evaluation, in cells.
const BLOCK: usize = 4;
/// A block is evaluated when a corner lies within this many block diagonals of the surface.
const BLOCK_MARGIN: f64 = 1.5;
/// Grids up to this size are evaluated densely.
const DENSE_UP_TO: usize = 64;

/// A loaded decoder.
#[derive(Debug)]
pub struct Decoder {
    module: CModule,
    device: Device,
    latent_size: i64,
    surfaces: Vec<String>,
    /// Points per forward pass when evaluating grids.
    pub chunk: usize,
}

impl Decoder {
    /// Loads the manifest's TorchScript on `device`, freezes its parameters and checks that a
    /// forward pass gives one column per listed surface.
    pub fn load(spec: &ModelSpec, device: Device) -> Result<Decoder, ModelError> {
        let m = &spec.manifest;
        let name = m.name.clone();
        if m.kind != ModelKind::Nsm {
            return Err(ModelError::Manifest {
                name,
                path: spec.dir.join("manifest.toml"),
                reason: format!("kind {:?} is not an NSM", m.kind),
            });
        }
        let path = spec.weights_path().ok_or_else(|| ModelError::Weights {
            name: name.clone(),
            path: spec.dir.clone(),
            reason: "the manifest names no file".into(),
        })?;
        let fail = |reason: String| ModelError::Weights {
            name: name.clone(),
            path: path.clone(),
            reason,
        };
        let mut module = CModule::load_on_device(&path, device).map_err(|e| fail(e.to_string()))?;
        module.set_eval();
        for (_, p) in module.named_parameters().map_err(|e| fail(e.to_string()))? {
            let _ = p.set_requires_grad(false);
        }
        let decoder = Decoder {
            module,
            device,
            latent_size: m.latent_size.unwrap_or(0) as i64,
            surfaces: m.surfaces.clone(),
            chunk: 65_536,
        };
        let probe = {
            let _guard = tch::no_grad_guard();
            let latent = Tensor::zeros([1, decoder.latent_size], (Kind::Float, device));
            let xyz = Tensor::zeros([2, 3], (Kind::Float, device));
            decoder.forward(&latent, &xyz).map(|t| t.size())
        }
        .map_err(|e| fail(format!("a test forward pass failed: {e}")))?;
        let want = vec![2, decoder.surfaces.len() as i64];
        if probe != want {
            return Err(fail(format!(
                "forward(latent[1, {}], xyz[2, 3]) gave shape {probe:?}, expected {want:?} (one column per surface in the manifest)",
                decoder.latent_size
            )));
        }
        Ok(decoder)
    }

    /// Whether no parameter of the module collects gradients (true once loaded).
    pub fn parameters_frozen(&self) -> Result<bool, tch::TchError> {
        Ok(self
            .module
            .named_parameters()?
            .iter()
            .all(|(_, p)| !p.requires_grad()))
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Length of the latent vector.
    pub fn latent_size(&self) -> i64 {
        self.latent_size
    }

    /// The SDF column of a surface (`femur`, `femoral_cartilage`).
    pub fn column(&self, surface: &str) -> Option<i64> {
        self.surfaces
            .iter()
            .position(|s| s == surface)
            .map(|c| c as i64)
    }

    /// Number of SDF columns.
    pub fn columns(&self) -> usize {
        self.surfaces.len()
    }

    /// SDF at `xyz` (`[N, 3]` float on the device) for `latent` (`[1, L]`): `[N, C]`. Tracks
    /// gradients to the latent unless called under `no_grad`.
    pub fn forward(&self, latent: &Tensor, xyz: &Tensor) -> Result<Tensor, tch::TchError> {
        self.module.forward_ts(&[latent, xyz])
    }

    /// The latent as a `[1, L]` float tensor on the device.
    pub fn latent_tensor(&self, latent: &[f32]) -> Result<Tensor, tch::TchError> {
        Tensor::f_from_slice(latent)?
            .f_view([1, -1])?
            .f_to_device(self.device)
    }

    /// SDF columns at arbitrary points (normalised frame), without autograd: one `Vec` per
    /// column.
    pub fn sdf(&self, latent: &[f32], points: &[[f32; 3]]) -> Result<Vec<Vec<f32>>, tch::TchError> {
        let _guard = tch::no_grad_guard();
        let z = self.latent_tensor(latent)?;
        let c = self.columns();
        let mut out = vec![Vec::with_capacity(points.len()); c];
        for chunk in points.chunks(self.chunk.max(1)) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let xyz = Tensor::f_from_slice(&flat)?
                .f_view([-1, 3])?
                .f_to_device(self.device)?;
            let values = self
                .forward(&z, &xyz)?
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?;
            let values = Vec::<f32>::try_from(values.f_view([-1])?)?;
            for row in values.chunks(c) {
                for (col, v) in out.iter_mut().zip(row) {
                    col.push(*v);
                }
            }
        }
        Ok(out)
    }

    /// The SDF of `columns` on an `n`³ grid spanning [−1, 1]³ (x fastest), one `Vec` per
    /// column; sparse above 64³ (see the module's notes).
    pub fn grid(
        &self,
        latent: &[f32],
        n: usize,
        columns: &[i64],
    ) -> Result<Vec<Vec<f32>>, tch::TchError> {
        let coord = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1).max(1) as f32;
        let pick = |all: Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            columns
                .iter()
                .map(|&c| all.get(c as usize).cloned().unwrap_or_default())
                .collect()
        };
        if n <= DENSE_UP_TO {
            let points: Vec<[f32; 3]> = (0..n * n * n)
                .map(|o| [coord(o % n), coord((o / n) % n), coord(o / (n * n))])
                .collect();
            return Ok(pick(self.sdf(latent, &points)?));
        }
        // Block corners: every BLOCK-th grid index, and the last one.
        let mut corners: Vec<usize> = (0..n).step_by(BLOCK).collect();
        if corners.last() != Some(&(n - 1)) {
            corners.push(n - 1);
        }
        let nc = corners.len();
        let coarse_points: Vec<[f32; 3]> = (0..nc * nc * nc)
            .map(|o| {
                [
                    corners[o % nc],
                    corners[(o / nc) % nc],
                    corners[o / (nc * nc)],
                ]
                .map(coord)
            })
            .collect();
        let coarse = pick(self.sdf(latent, &coarse_points)?);
        let diagonal = BLOCK as f32 * 2.0 / (n - 1) as f32 * 3f32.sqrt();
        let near = (BLOCK_MARGIN as f32) * diagonal;
        let nb = nc - 1;
        let mut values: Vec<Vec<f32>> = vec![vec![0f32; n * n * n]; columns.len()];
        let mut wanted = vec![false; n * n * n];
        for bz in 0..nb {
            for by in 0..nb {
                for bx in 0..nb {
                    let corner_ids: Vec<usize> = (0..8)
                        .map(|c| {
                            (bx + (c & 1))
                                + nc * ((by + ((c >> 1) & 1)) + nc * (bz + ((c >> 2) & 1)))
                        })
                        .collect();
                    let range = |b: usize| corners[b]..=corners[b + 1];
                    let mut candidate = false;
                    for (col, coarse_col) in coarse.iter().enumerate() {
                        let v: Vec<f32> = corner_ids.iter().map(|&i| coarse_col[i]).collect();
                        let crosses = v.iter().any(|&x| x > 0.0) != v.iter().all(|&x| x > 0.0);
                        let close = v.iter().any(|x| x.abs() < near);
                        candidate |= crosses || close;
                        // A far block takes its corners' sign; the points of near blocks
                        // (their shared faces included) are overwritten below.
                        let fill = if v[0] > 0.0 { 1.0 } else { -1.0 };
                        for k in range(bz) {
                            for j in range(by) {
                                let row = n * (j + n * k);
                                values[col][row + corners[bx]..=row + corners[bx + 1]].fill(fill);
                            }
                        }
                    }
                    if candidate {
                        for k in range(bz) {
                            for j in range(by) {
                                for i in range(bx) {
                                    wanted[i + n * (j + n * k)] = true;
                                }
                            }
                        }
                    }
                }
            }
        }
        let ids: Vec<usize> = (0..n * n * n).filter(|&o| wanted[o]).collect();
        let points: Vec<[f32; 3]> = ids
            .iter()
            .map(|&o| [coord(o % n), coord((o / n) % n), coord(o / (n * n))])
            .collect();
        let fine = pick(self.sdf(latent, &points)?);
        for (col, fine_col) in fine.iter().enumerate() {
            for (&o, &v) in ids.iter().zip(fine_col) {
                values[col][o] = v;
            }
        }
        Ok(values)
    }

    /// The zero level set of `column` on an `n`³ grid in [−1, 1]³, in the normalised frame
    /// with outward normals; empty when the SDF does not change sign there.
    pub fn surface(&self, latent: &[f32], n: usize, column: i64) -> Result<Mesh, tch::TchError> {
        let grid = self.grid(latent, n, &[column])?;
        Ok(grid
            .into_iter()
            .next()
            .map(|g| grid_surface(&g, n))
            .unwrap_or_default())
    }

    /// The zero level sets of several columns from one grid evaluation.
    pub fn surfaces(
        &self,
        latent: &[f32],
        n: usize,
        columns: &[i64],
    ) -> Result<Vec<Mesh>, tch::TchError> {
        Ok(self
            .grid(latent, n, columns)?
            .iter()
            .map(|g| grid_surface(g, n))
            .collect())
    }
}

/// Marching cubes of an SDF grid (negative inside) over [−1, 1]³.
pub fn grid_surface(sdf: &[f32], n: usize) -> Mesh {
    // marching_cubes counts values above the level as inside and winds triangles to face
    // the side below it: negating the SDF makes the inside "above" and the normals outward.
    let inside: Vec<f32> = sdf.iter().map(|v| -v).collect();
    let (vertices, triangles) = marching_cubes(&inside, [n; 3], 0.0);
    let h = 2.0 / (n - 1).max(1) as f64;
    Mesh {
        vertices: vertices
            .into_iter()
            .map(|p| p.map(|x| x * h - 1.0))
            .collect(),
        triangles,
        point_scalars: Vec::new(),
    }
}
