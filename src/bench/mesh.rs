//! `kneenode bench mesh`: our marching cubes on one mask or field of a label volume, timed, with
//! the mesh's size and checks, as one JSON line for `benches/mesh.sh` to set beside scikit-image
//! and VTK (`benches/mesh_ref.py`) on the same volume. Also writes the benchmark's volume: a
//! phantom generated at the target resolution.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

/// Options of `kneenode bench mesh`.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshBenchArgs {
    /// Label volume (NIfTI or NRRD); the mask of `--label` is meshed.
    #[arg(long, required_unless_present_any = ["field", "write_phantom"])]
    pub labels: Option<PathBuf>,
    /// Labels that make up the mask, comma-separated (default 7, the femur).
    #[arg(long, value_delimiter = ',', default_values_t = [7u16])]
    pub label: Vec<u16>,
    /// A float volume (e.g. a smoothed mask) to mesh as it is, instead of a mask of `--labels`.
    #[arg(long, conflicts_with = "labels")]
    pub field: Option<PathBuf>,
    /// Iso-level.
    #[arg(long, default_value_t = 0.5)]
    pub level: f32,
    /// Timed runs (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also write the mesh of the last run here (binary PLY, mm), for comparing with the
    /// references' meshes.
    #[arg(long)]
    pub write_mesh: Option<PathBuf>,
    /// Benchmark nothing: write the labels of phantom `--seed` on a `--dims` grid (the default
    /// phantom's field of view) to this file.
    #[arg(long, conflicts_with_all = ["labels", "field"])]
    pub write_phantom: Option<PathBuf>,
    /// Phantom seed for `--write-phantom`.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Grid of `--write-phantom`, i,j,k.
    #[arg(long, value_delimiter = ',', default_values_t = [384usize, 384, 160])]
    pub dims: Vec<usize>,
}

/// What one `kneenode bench mesh` run measured (printed as one JSON line).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshBenchReport {
    /// Always `kneenode`.
    pub implementation: &'static str,
    /// Threads the extraction used (our marching cubes is single-threaded).
    pub threads: usize,
    /// Grid, i,j,k.
    pub dims: [usize; 3],
    /// Voxel spacing, mm.
    pub spacing: [f64; 3],
    /// Iso-level.
    pub level: f32,
    /// Voxels above the level (for a mask: the mask's size).
    pub voxels_above: usize,
    /// Seconds of each timed run: marching cubes plus scaling the vertices to mm.
    pub runs_s: Vec<f64>,
    /// Fastest run, s.
    pub best_s: f64,
    /// Median run, s.
    pub median_s: f64,
    /// Median of [`Mesh::vertex_normals`] on the result, s (skimage returns normals, we do not).
    ///
    /// [`Mesh::vertex_normals`]: crate::pipeline::mesh::Mesh::vertex_normals
    pub normals_s: f64,
    /// Vertices of the mesh.
    pub vertices: usize,
    /// Triangles of the mesh.
    pub triangles: usize,
    /// Vertices at the exact position of an earlier one (0: the mesh is welded).
    pub duplicate_vertices: usize,
    /// Surface area, mm².
    pub area_mm2: f64,
    /// Every edge shared by two oppositely wound triangles.
    pub closed: bool,
    /// V − E + F.
    pub euler: i64,
}

/// Runs `kneenode bench mesh`: reads the volume, builds the float grid (untimed), then times
/// [`marching_cubes`](crate::pipeline::mesh::marching::marching_cubes) on the whole grid and
/// prints a [`MeshBenchReport`] as one JSON line on stdout.
///
/// The mask is what [`label_surface`](crate::pipeline::mesh::label_surface) builds (1 inside,
/// 0 outside and on the one-voxel border, so surfaces are closed) but over the whole volume, not
/// the tissue's bounding box, so that the references scan the same cells. No welding step is
/// timed because there is none: the edge cache makes each vertex once, as in scikit-image's
/// Lewiner implementation and VTK's flying edges.
pub fn mesh(args: &MeshBenchArgs) -> anyhow::Result<Option<MeshBenchReport>> {
    use crate::pipeline::mesh::{marching::marching_cubes, Mesh};

    if let Some(out) = &args.write_phantom {
        write_bench_phantom(out, args.seed, &args.dims)?;
        return Ok(None);
    }
    let (values, dims, spacing) = if let Some(path) = &args.field {
        let v = crate::volume::read_image(path)
            .with_context(|| format!("reading {}", path.display()))?;
        (v.data().to_vec(), v.dims(), v.geometry().spacing)
    } else {
        let path = args
            .labels
            .as_ref()
            .context("--labels or --field is needed")?;
        let v = crate::volume::read_labels(path)
            .with_context(|| format!("reading {}", path.display()))?;
        let dims = v.dims();
        let mut values = vec![0f32; v.len()];
        for k in 1..dims[2].saturating_sub(1) {
            for j in 1..dims[1].saturating_sub(1) {
                for i in 1..dims[0].saturating_sub(1) {
                    let o = i + dims[0] * (j + dims[1] * k);
                    if args.label.contains(&v.data()[o]) {
                        values[o] = 1.0;
                    }
                }
            }
        }
        (values, dims, v.geometry().spacing)
    };
    let voxels_above = values.iter().filter(|&&x| x > args.level).count();
    anyhow::ensure!(voxels_above > 0, "nothing is above level {}", args.level);

    let extract = || {
        let (mut vertices, triangles) = marching_cubes(&values, dims, args.level);
        // Index → mm, as skimage's `spacing` does (our pipeline maps through the full affine).
        for v in &mut vertices {
            for a in 0..3 {
                v[a] *= spacing[a];
            }
        }
        Mesh {
            vertices,
            triangles,
            point_scalars: Vec::new(),
        }
    };
    drop(std::hint::black_box(extract())); // warm-up: page faults, the case table
    let mut runs_s = Vec::with_capacity(args.runs.max(1));
    let mut last = Mesh::default();
    for _ in 0..args.runs.max(1) {
        drop(std::mem::take(&mut last)); // free the previous mesh outside the timing
        let start = Instant::now();
        last = std::hint::black_box(extract());
        runs_s.push(start.elapsed().as_secs_f64());
    }
    let mut normals = Vec::with_capacity(runs_s.len());
    for _ in 0..runs_s.len() {
        let start = Instant::now();
        std::hint::black_box(last.vertex_normals());
        normals.push(start.elapsed().as_secs_f64());
    }
    let report = MeshBenchReport {
        implementation: "kneenode",
        threads: 1,
        dims,
        spacing,
        level: args.level,
        voxels_above,
        best_s: runs_s.iter().copied().fold(f64::INFINITY, f64::min),
        median_s: median(&runs_s),
        runs_s,
        normals_s: median(&normals),
        vertices: last.vertices.len(),
        triangles: last.triangles.len(),
        duplicate_vertices: last.duplicate_vertices(),
        area_mm2: last.area(),
        closed: last.is_closed_and_oriented(),
        euler: last.euler_characteristic(),
    };
    if let Some(path) = &args.write_mesh {
        crate::pipeline::mesh::ply_stl::write_ply(path, &last)?;
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(Some(report))
}

/// Writes the labels of phantom `seed` on a `dims` grid covering the default phantom's field of
/// view. Generated at the target resolution rather than resampled from the default grid, so the
/// boundaries are as smooth as a segmentation at that resolution, not 2×2×2 blocks.
fn write_bench_phantom(out: &std::path::Path, seed: u64, dims: &[usize]) -> anyhow::Result<()> {
    use crate::phantom::{generate, PhantomParams};
    let dims: [usize; 3] = dims
        .try_into()
        .ok()
        .filter(|d: &[usize; 3]| d.iter().all(|&n| n >= 2))
        .context("--dims needs three sizes of at least 2")?;
    let params = PhantomParams {
        seed,
        ..PhantomParams::default()
    }
    .with_matrix(dims);
    let phantom = generate(&params);
    crate::volume::write_volume(out, &phantom.labels)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}
