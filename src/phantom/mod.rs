//! Synthetic knee MR phantoms with ground-truth labels: for tests, the demo, and training the
//! small demo segmentation model.
//!
//! [`generate`] draws a knee from a seed — distal femur (shaft, two condyles and a trochlea),
//! proximal tibia (two slightly concave plateaus, eminence, tuberosity), patella, cartilage
//! shells, C-shaped menisci, tendons and cruciate ligaments — and images it with a
//! PD/DESS-like contrast. Labels follow the DOMAIN.md map (0 background, 1 patellar cartilage,
//! 2 femoral cartilage, 3/4 medial/lateral tibial cartilage, 5/6 medial/lateral meniscus,
//! 7 femur, 8 tibia, 9 patella). The shapes are in `anatomy`, the signal in `mr`.
//!
//! **Grid.** Like a real sagittal knee series, i runs anterior → posterior, j superior →
//! inferior and k across the knee from the patient's left to right (orientation code `PIR`,
//! DICOM ImageOrientationPatient `0\1\0\0\0\-1`). The grid's centre is LPS (0, 0, 0) and, before
//! the random pose, so is the centre of the joint space.
//!
//! **Laterality.** The medial compartment faces the other knee: for a right knee it is towards
//! the patient's left (+x in LPS), for a left knee towards the right (−x). Labels 3 and 5 are
//! always on the medial side.
//!
//! **Guarantees.** Bones never overlap. Femoral cartilage never touches tibial cartilage, even
//! through a voxel face: their surfaces stay more than the largest voxel spacing apart (the
//! joint space, filled with bright fluid, is 1.2 × the largest spacing, at least 1 mm, plus
//! about 1 mm). The cartilage is a shell of `cartilage_thickness_mm` ± 10 % (smooth random
//! variation) measured along the bone normal, tapering to nothing at the edges of the articular
//! surfaces. A seed gives the same image and labels on every platform and thread count: every
//! random number comes from a hash of the seed and a position, and only exactly-rounded
//! arithmetic (`+ − × ÷ sqrt`) is used.
//!
//! **Not modelled:** the fibula, vessels, the joint capsule and bursae, marrow oedema or any
//! pathology; cartilage has uniform signal apart from a faint texture.

mod anatomy;
mod mr;
#[cfg(test)]
mod tests;

use crate::volume::{Geometry, Volume};
use anatomy::{Knee, P3};

/// Parameters of a phantom; [`Default`] is a full-size sagittal series, [`PhantomParams::small`]
/// a fast one. Out-of-range values are clamped by [`generate`] (see each field).
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomParams {
    /// Seed of everything random: shape, pose, textures, bias, noise.
    pub seed: u64,
    /// Voxels along i (anterior → posterior), j (superior → inferior), k (left → right).
    pub dims: [usize; 3],
    /// Voxel size along i, j, k, mm (a non-positive or non-finite value becomes 1 mm).
    pub spacing: [f64; 3],
    /// Nominal cartilage thickness, mm (clamped to 0–6).
    pub cartilage_thickness_mm: f64,
    /// Rician noise σ relative to the fluid signal (clamped to 0–1).
    pub noise: f64,
    /// Amplitude of the multiplicative bias field: the gain lies in 1 ± this (clamped to 0–0.9).
    pub bias_field: f64,
    /// Rotate (±10°), shift (±5 mm per axis) and scale (0.9–1.1) the knee, from the seed.
    pub random_pose: bool,
    /// A left knee (mirror image of a right one).
    pub left: bool,
}

impl Default for PhantomParams {
    /// A right knee on a 192 × 192 × 80 grid of 0.75 × 0.75 × 1.5 mm: a 144 × 144 mm sagittal
    /// field of view and 120 mm across, about 3 million voxels.
    fn default() -> Self {
        PhantomParams {
            seed: 0,
            dims: [192, 192, 80],
            spacing: [0.75, 0.75, 1.5],
            cartilage_thickness_mm: 2.0,
            noise: 0.03,
            bias_field: 0.2,
            random_pose: true,
            left: false,
        }
    }
}

impl PhantomParams {
    /// A fast phantom for tests and demo-model training: 64 × 64 × 48 voxels of 2 × 2 × 2.5 mm
    /// (128 × 128 × 120 mm), otherwise the defaults.
    pub fn small(seed: u64) -> Self {
        PhantomParams {
            seed,
            dims: [64, 64, 48],
            spacing: [2.0, 2.0, 2.5],
            ..PhantomParams::default()
        }
    }

    /// The same field of view on a `dims` grid: each axis's voxel size is scaled by its old
    /// over its new voxel count, so `PhantomParams::default().with_matrix([384, 384, 160])` is
    /// 0.375 × 0.375 × 0.75 mm over the default's 144 × 144 × 120 mm, and the grid's centre stays
    /// on LPS (0, 0, 0). The anatomy is drawn from the seed as before, but it is sampled on the
    /// new grid (so partial volume, noise and the joint space, which is at least 1.2 × the
    /// largest spacing, follow the new voxel size). An axis asked to have 0 voxels keeps its
    /// spacing (the phantom is then empty).
    pub fn with_matrix(self, dims: [usize; 3]) -> Self {
        let spacing = std::array::from_fn(|a| {
            if dims[a] == 0 {
                self.spacing[a]
            } else {
                // The ratio first: it is exactly 1 for an unchanged axis, so the spacing is too.
                self.spacing[a] * (self.dims[a] as f64 / dims[a] as f64)
            }
        });
        PhantomParams {
            dims,
            spacing,
            ..self
        }
    }

    /// The parameters [`generate`] actually uses.
    fn sanitized(&self) -> PhantomParams {
        let finite_or = |v: f64, default: f64| if v.is_finite() { v } else { default };
        PhantomParams {
            spacing: self
                .spacing
                .map(|s| if s.is_finite() && s > 0.0 { s } else { 1.0 }),
            cartilage_thickness_mm: finite_or(self.cartilage_thickness_mm, 2.0).clamp(0.0, 6.0),
            noise: finite_or(self.noise, 0.0).clamp(0.0, 1.0),
            bias_field: finite_or(self.bias_field, 0.0).clamp(0.0, 0.9),
            ..self.clone()
        }
    }
}

/// A phantom grid written `IxJxK` was not three sizes of at least 1 voxel, at most
/// [`MAX_VOXELS`](crate::volume::MAX_VOXELS) in all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("matrix {given:?}: want IxJxK, three sizes of at least 1 voxel and at most {max} voxels in all (e.g. 384x384x160)", max = crate::volume::MAX_VOXELS)]
#[non_exhaustive]
pub struct MatrixError {
    /// The text given.
    pub given: String,
}

/// Parses a grid size `IxJxK` (voxels along i, j and k; `x` or `X`, spaces allowed around
/// the numbers), e.g. `384x384x160`.
pub fn parse_matrix(text: &str) -> Result<[usize; 3], MatrixError> {
    let error = || MatrixError {
        given: text.to_owned(),
    };
    let sizes: Vec<usize> = text
        .split(['x', 'X'])
        .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n >= 1))
        .collect::<Option<_>>()
        .ok_or_else(error)?;
    let dims: [usize; 3] = sizes.try_into().map_err(|_| error())?;
    match crate::volume::voxel_count(dims) {
        Some(n) if n <= crate::volume::MAX_VOXELS => Ok(dims),
        _ => Err(error()),
    }
}

/// A generated phantom.
#[derive(Debug, Clone)]
pub struct Phantom {
    /// The MR image, 0–4095.
    pub image: Volume<u16>,
    /// Ground truth in the DOMAIN.md label map (0–9), on the image's grid.
    pub labels: Volume<u8>,
    /// The parameters used (after clamping).
    pub params: PhantomParams,
}

/// Generates the phantom `params` describe. Deterministic: the same parameters give the same
/// voxels, bit for bit, whatever the platform or the number of cores it uses (all of them).
pub fn generate(params: &PhantomParams) -> Phantom {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    generate_on(params, threads)
}

/// [`generate`] on `threads` threads.
fn generate_on(params: &PhantomParams, threads: usize) -> Phantom {
    let params = params.sanitized();
    let geometry = sagittal_geometry(params.dims, params.spacing);
    let (knee, pose) = draw(&params);
    let m = geometry.index_matrix();
    let column = |c: usize| [m[0][c], m[1][c], m[2][c]];
    let grid = Grid {
        dims: params.dims,
        origin: geometry.origin,
        steps: std::array::from_fn(column),
        anat_origin: pose.anatomical(geometry.origin),
        anat_steps: std::array::from_fn(|c| pose.linear(column(c))),
        width: params.spacing.iter().sum::<f64>() / 3.0,
        sigma: params.noise * mr::NOISE_REFERENCE,
        bias: params.bias_field,
    };

    let mut labels = Volume::filled(params.dims, 0u8, geometry);
    let mut image = Volume::filled(params.dims, 0u16, geometry);
    let [nx, ny, nz] = params.dims;
    let slice = nx * ny;
    if slice > 0 && nz > 0 {
        let per = nz.div_ceil(threads.clamp(1, nz));
        std::thread::scope(|scope| {
            let chunks = labels.data_mut().chunks_mut(slice * per);
            for (n, (lab, img)) in chunks
                .zip(image.data_mut().chunks_mut(slice * per))
                .enumerate()
            {
                let (grid, knee) = (&grid, &knee);
                scope.spawn(move || grid.fill(knee, n * slice * per, lab, img));
            }
        });
    }
    Phantom {
        image,
        labels,
        params,
    }
}

/// Volume of each label 0–9 in mm³ (labels above 9 are not counted).
pub fn tissue_volumes_mm3(labels: &Volume<u8>) -> [f64; 10] {
    let m = labels.geometry().index_matrix();
    let voxel = (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
        .abs();
    let mut counts = [0u64; 10];
    for &l in labels.data() {
        if let Some(c) = counts.get_mut(usize::from(l)) {
            *c += 1;
        }
    }
    counts.map(|c| c as f64 * voxel)
}

/// Draws the knee and its pose from the seed.
fn draw(params: &PhantomParams) -> (Knee, Pose) {
    let mut rng = SplitMix64(params.seed);
    // The pose is drawn even when unused, so `random_pose` does not change the anatomy.
    let quat: P3 = std::array::from_fn(|_| rng.uniform(-0.05, 0.05));
    let scale = rng.uniform(0.9, 1.1);
    let shift: P3 = std::array::from_fn(|_| rng.uniform(-5.0, 5.0));
    let (quat, scale, shift) = if params.random_pose {
        (quat, scale, shift)
    } else {
        ([0.0; 3], 1.0, [0.0; 3])
    };
    let max_spacing = params.spacing.iter().copied().fold(0.0, f64::max);
    let knee = Knee::new(
        &mut rng,
        scale,
        params.cartilage_thickness_mm,
        (1.2 * max_spacing).max(1.0),
    );
    let pose = Pose {
        rotation: quaternion_rotation(quat),
        scale,
        shift,
        mirror: if params.left { -1.0 } else { 1.0 },
    };
    (knee, pose)
}

/// Where the knee lies: LPS = shift + R · scale · mirror · anatomical.
#[derive(Debug, Clone, Copy)]
struct Pose {
    rotation: [[f64; 3]; 3],
    scale: f64,
    shift: P3,
    /// −1 mirrors x (a left knee), 1 does not.
    mirror: f64,
}

impl Pose {
    /// An LPS vector in the anatomical frame: mirror · Rᵀ · v / scale.
    fn linear(&self, v: P3) -> P3 {
        let r: P3 = std::array::from_fn(|c| (0..3).map(|k| self.rotation[k][c] * v[k]).sum());
        [
            self.mirror * r[0] / self.scale,
            r[1] / self.scale,
            r[2] / self.scale,
        ]
    }

    /// An LPS point in the anatomical frame.
    fn anatomical(&self, p: P3) -> P3 {
        self.linear([
            p[0] - self.shift[0],
            p[1] - self.shift[1],
            p[2] - self.shift[2],
        ])
    }

    /// An anatomical point in LPS.
    #[cfg(test)]
    fn lps(&self, a: P3) -> P3 {
        let m = [
            self.mirror * a[0] * self.scale,
            a[1] * self.scale,
            a[2] * self.scale,
        ];
        std::array::from_fn(|r| {
            self.shift[r] + (0..3).map(|c| self.rotation[r][c] * m[c]).sum::<f64>()
        })
    }
}

/// The sagittal grid: i → P, j → I, k → R, centred on LPS (0, 0, 0).
fn sagittal_geometry(dims: [usize; 3], spacing: [f64; 3]) -> Geometry {
    let direction = [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]];
    let origin = std::array::from_fn(|r| {
        -(0..3)
            .map(|c| direction[r][c] * spacing[c] * (dims[c].max(1) - 1) as f64 / 2.0)
            .sum::<f64>()
    });
    Geometry {
        origin,
        spacing,
        direction,
    }
}

/// The rotation of the quaternion (1, v) normalised: at most 2·atan(|v|), ≈ 9.9° for
/// |vᵢ| ≤ 0.05, built without trigonometry.
fn quaternion_rotation(v: P3) -> [[f64; 3]; 3] {
    let n = (1.0 + v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let (w, x, y, z) = (1.0 / n, v[0] / n, v[1] / n, v[2] / n);
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// Per-voxel work shared by the threads.
struct Grid {
    dims: [usize; 3],
    origin: P3,
    steps: [P3; 3],
    anat_origin: P3,
    anat_steps: [P3; 3],
    /// Mean voxel size, for partial volume.
    width: f64,
    sigma: f64,
    bias: f64,
}

impl Grid {
    fn at(origin: P3, steps: &[P3; 3], ijk: [f64; 3]) -> P3 {
        std::array::from_fn(|r| {
            origin[r] + steps[0][r] * ijk[0] + steps[1][r] * ijk[1] + steps[2][r] * ijk[2]
        })
    }

    /// Fills the voxels from flat index `start` on.
    fn fill(&self, knee: &Knee, start: usize, labels: &mut [u8], image: &mut [u16]) {
        let [nx, ny, _] = self.dims;
        for (n, (label, value)) in labels.iter_mut().zip(image.iter_mut()).enumerate() {
            let index = start + n;
            let ijk = [index % nx, (index / nx) % ny, index / (nx * ny)].map(|v| v as f64);
            let p = Self::at(self.anat_origin, &self.anat_steps, ijk);
            let t = knee.tissues(p, self.width);
            *label = Knee::label(&t);
            let mut s = mr::signal(knee, &t, p, self.width);
            if s > 0.0 {
                let lps = Self::at(self.origin, &self.steps, ijk);
                s *= mr::bias(knee.seeds.bias, lps, self.bias);
            }
            let s = mr::rician(s, self.sigma, knee.seeds.noise, index as u64);
            *value = s.round().clamp(0.0, 4095.0) as u16;
        }
    }
}

/// SplitMix64 (Steele et al. 2014): a tiny seeded generator, the same on every platform.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// SplitMix64's finaliser: a well-mixed hash of a 64-bit value.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The low 32 bits as a uniform number in [0, 1).
fn unit32(bits: u64) -> f64 {
    (bits & 0xFFFF_FFFF) as f64 / 4_294_967_296.0
}

/// Smooth value noise in [−1, 1] with features about `scale` mm apart: random values on a
/// lattice, interpolated with a smoothstep. The lattice is turned by an exact rational rotation
/// so its axes do not line up with the anatomy's or the grid's.
fn value_noise(seed: u64, p: P3, scale: f64) -> f64 {
    const TURN: [[f64; 3]; 3] = [[-1.0, 4.0, 8.0], [8.0, 4.0, -1.0], [4.0, -7.0, 4.0]];
    let q: P3 = std::array::from_fn(|r| {
        (TURN[r][0] * p[0] + TURN[r][1] * p[1] + TURN[r][2] * p[2]) / (9.0 * scale)
    });
    let cell = q.map(f64::floor);
    let f: P3 = std::array::from_fn(|a| {
        let t = q[a] - cell[a];
        t * t * (3.0 - 2.0 * t)
    });
    // Each lattice coordinate is hashed once per axis; a corner mixes its three hashes.
    let axis_hash: [[u64; 2]; 3] = std::array::from_fn(|a| {
        let c = cell[a] as i64 as u64;
        let salt = seed ^ (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        [mix64(salt ^ c), mix64(salt ^ c.wrapping_add(1))]
    });
    let mut sum = 0.0;
    for corner in 0..8 {
        let up = [corner & 1, (corner >> 1) & 1, (corner >> 2) & 1];
        let mut weight = 1.0;
        for a in 0..3 {
            weight *= if up[a] == 1 { f[a] } else { 1.0 - f[a] };
        }
        let h = axis_hash[0][up[0]]
            ^ axis_hash[1][up[1]].rotate_left(21)
            ^ axis_hash[2][up[2]].rotate_left(42);
        sum += weight * (2.0 * unit32(mix64(h)) - 1.0);
    }
    sum
}
