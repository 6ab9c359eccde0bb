//! The phantom's anatomy: a right knee built from analytic signed distance functions.
//!
//! Everything here lives in the *anatomical frame*, in millimetres before scaling: x points to
//! the knee's **medial** side, y posterior, z superior, and the origin is the centre of the
//! joint space. For a right knee this frame is LPS itself (a right knee's medial side faces the
//! patient's left, +x); a left knee is the mirror image, which the pose in `super` applies.
//!
//! Each shape's distance is exact (capsules, rounded cylinders, round cones, spheres, and an
//! ellipsoid solved by bisection), and shapes are joined with `min`/`max`, which keeps the
//! distance exact outside the articular surfaces, so "within `t` mm of the bone" is a true
//! shell of thickness `t` along the bone normal. One polynomial smooth minimum per bone blends
//! the shaft into the epiphysis, away from the cartilage. Everything stays 1-Lipschitz, so two
//! points whose femur distances differ by `g` are at least `g` apart: tibial and patellar
//! cartilage are only drawn at least `t_max + gap` from the femur ([`Tissues::clear`]), which
//! guarantees the joint space even where the bones' placement alone would not (it rarely
//! matters: the bones are placed `gap` + 0.8 mm apart beyond the cartilage).
//!
//! Only `+ − × ÷ sqrt` are used (no `sin`, `exp`, …), which IEEE 754 rounds exactly, so a seed
//! gives the same voxels on every platform.

use super::{value_noise, SplitMix64};

/// A point or vector, millimetres.
pub(super) type P3 = [f64; 3];

fn sub(a: P3, b: P3) -> P3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: P3, b: P3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: P3) -> f64 {
    dot(a, a).sqrt()
}

/// 1 below `a`, 0 above `b`, a smoothstep between.
pub(super) fn fall(v: f64, a: f64, b: f64) -> f64 {
    let t = ((v - a) / (b - a)).clamp(0.0, 1.0);
    1.0 - t * t * (3.0 - 2.0 * t)
}

/// Polynomial smooth minimum (a convex blend of the two gradients, so still 1-Lipschitz).
fn smin(a: f64, b: f64, k: f64) -> f64 {
    let h = (k - (a - b).abs()).max(0.0) / k;
    a.min(b) - h * h * k * 0.25
}

/// Exact distance to the quadrant-shaped set {radial ≤ 0, axial ≤ 0}, given both offsets.
fn rounded(radial: f64, axial: f64) -> f64 {
    let (a, b) = (radial.max(0.0), axial.max(0.0));
    radial.max(axial).min(0.0) + (a * a + b * b).sqrt()
}

/// A cylinder along x with rounded rims: the shape of a femoral condyle seen in a sagittal
/// slice (a circle) and a coronal one (a rounded rectangle).
#[derive(Debug, Clone, Copy)]
struct Puck {
    c: P3,
    rd: f64,
    h: f64,
    r: f64,
}

impl Puck {
    /// A puck whose lowest point is at height `bottom` under (x, y); `radius` is the sagittal
    /// radius, `half_width` the half extent along x, `round` the rim radius.
    fn resting(x: f64, y: f64, bottom: f64, radius: f64, half_width: f64, round: f64) -> Puck {
        Puck {
            c: [x, y, bottom + radius],
            rd: radius - round,
            h: half_width - round,
            r: round,
        }
    }

    fn sd(&self, p: P3) -> f64 {
        let q = sub(p, self.c);
        rounded(
            (q[1] * q[1] + q[2] * q[2]).sqrt() - self.rd,
            q[0].abs() - self.h,
        ) - self.r
    }
}

/// The tibial plateau: a stadium (long along x) extruded along z, with rounded edges.
#[derive(Debug, Clone, Copy)]
struct Slab {
    c: P3,
    half_len: f64,
    radius: f64,
    half_height: f64,
    round: f64,
}

impl Slab {
    fn sd(&self, p: P3) -> f64 {
        let dx = ((p[0] - self.c[0]).abs() - self.half_len).max(0.0);
        let dy = p[1] - self.c[1];
        let radial = (dx * dx + dy * dy).sqrt() - (self.radius - self.round);
        let axial = (p[2] - self.c[2]).abs() - (self.half_height - self.round);
        rounded(radial, axial) - self.round
    }
}

/// A segment swept by a sphere.
#[derive(Debug, Clone, Copy)]
struct Capsule {
    a: P3,
    b: P3,
    r: f64,
}

impl Capsule {
    fn sd(&self, p: P3) -> f64 {
        let (pa, ba) = (sub(p, self.a), sub(self.b, self.a));
        let h = (dot(pa, ba) / dot(ba, ba)).clamp(0.0, 1.0);
        norm([pa[0] - ba[0] * h, pa[1] - ba[1] * h, pa[2] - ba[2] * h]) - self.r
    }
}

fn capsule(a: P3, b: P3, r: f64) -> Capsule {
    Capsule { a, b, r }
}

/// The convex hull of two spheres (radius `r1` at `a`, `r2` at `b`), exactly (Quílez's form).
#[derive(Debug, Clone, Copy)]
struct RoundCone {
    a: P3,
    b: P3,
    r1: f64,
    r2: f64,
}

fn cone(a: P3, b: P3, r1: f64, r2: f64) -> RoundCone {
    RoundCone { a, b, r1, r2 }
}

impl RoundCone {
    fn sd(&self, p: P3) -> f64 {
        let ba = sub(self.b, self.a);
        let l2 = dot(ba, ba);
        let rr = self.r1 - self.r2;
        let a2 = l2 - rr * rr;
        let il2 = 1.0 / l2;
        let pa = sub(p, self.a);
        let y = dot(pa, ba);
        let z = y - l2;
        let v = [
            pa[0] * l2 - ba[0] * y,
            pa[1] * l2 - ba[1] * y,
            pa[2] * l2 - ba[2] * y,
        ];
        let x2 = dot(v, v);
        let (y2, z2) = (y * y * l2, z * z * l2);
        let k = rr.signum() * rr * rr * x2;
        if z.signum() * a2 * z2 > k {
            (x2 + z2).sqrt() * il2 - self.r2
        } else if y.signum() * a2 * y2 < k {
            (x2 + y2).sqrt() * il2 - self.r1
        } else {
            ((x2 * a2 * il2).sqrt() + y * rr) * il2 - self.r1
        }
    }
}

/// An axis-aligned ellipsoid; outside and near it the distance is exact.
#[derive(Debug, Clone, Copy)]
struct Ellipsoid {
    c: P3,
    r: P3,
}

impl Ellipsoid {
    fn sd(&self, p: P3) -> f64 {
        let q = sub(p, self.c).map(f64::abs);
        let rmax = self.r[0].max(self.r[1]).max(self.r[2]);
        // Far away, the distance to the bounding sphere (a lower bound) is all anyone needs.
        let bound = norm(q) - rmax;
        if bound > 10.0 {
            return bound;
        }
        let k0 = norm([q[0] / self.r[0], q[1] / self.r[1], q[2] / self.r[2]]);
        let k1 = norm([
            q[0] / (self.r[0] * self.r[0]),
            q[1] / (self.r[1] * self.r[1]),
            q[2] / (self.r[2] * self.r[2]),
        ]);
        // Quílez's estimate is first-order exact at the surface: good enough inside (only the
        // sign and partial volume use it) and far outside.
        let estimate = if k1 > 0.0 {
            k0 * (k0 - 1.0) / k1
        } else {
            -self.r[0].min(self.r[1]).min(self.r[2])
        };
        if estimate <= 0.0 || estimate > 8.0 {
            return estimate;
        }
        // The closest point is x_i = r_i² q_i / (t + r_i²) for the root t > 0 of
        // Σ (r_i q_i / (t + r_i²))² = 1, which is decreasing in t: bisect it.
        let f = |t: f64| {
            (0..3)
                .map(|i| {
                    let v = self.r[i] * q[i] / (t + self.r[i] * self.r[i]);
                    v * v
                })
                .sum::<f64>()
                - 1.0
        };
        let (mut lo, mut hi) = (0.0, rmax * norm(q));
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if f(mid) > 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let t = 0.5 * (lo + hi);
        let x: P3 = std::array::from_fn(|i| {
            let r2 = self.r[i] * self.r[i];
            r2 * q[i] / (t + r2)
        });
        norm(sub(q, x))
    }
}

/// What one point of the knee is made of. Distances are signed (negative inside) and in
/// physical millimetres; thicknesses are the local cartilage thickness (0 off the articular
/// surfaces), also in millimetres.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tissues {
    pub femur: f64,
    pub tibia: f64,
    pub patella: f64,
    pub t_femur: f64,
    /// Medial, lateral.
    pub t_tibia: [f64; 2],
    pub t_patella: f64,
    /// Whether tibial and patellar cartilage may be here: at least `t_max + gap` from the
    /// femur, so they can never touch femoral cartilage (see the module doc).
    pub clear: bool,
    /// Medial, lateral; negative inside.
    pub meniscus: [f64; 2],
    /// Tendons and cruciate ligaments (unlabelled, dark).
    pub ligament: f64,
    /// The leg's skin.
    pub leg: f64,
    /// Infrapatellar (Hoffa's) fat pad, a 0–1 weight.
    pub fat_pad: f64,
}

/// Noise seeds, one per random field.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seeds {
    pub thickness: u64,
    pub soft: u64,
    pub marrow: u64,
    pub cartilage: u64,
    pub bias: u64,
    pub noise: u64,
}

/// One knee's shapes, drawn from a seed, scaled by `scale` into patient millimetres.
#[derive(Debug, Clone)]
pub(super) struct Knee {
    scale: f64,
    thickness: f64,
    /// Largest local cartilage thickness, mm.
    t_max: f64,
    /// Femoral distance a tibial or patellar cartilage voxel must keep: `t_max + gap`.
    clearance: f64,
    /// Thickness of the fluid film drawn between articular surfaces, mm.
    pub fluid_band: f64,
    /// Femoral condyle bottoms (zb) and tibial plateau rim (zt), anatomical mm.
    zb: f64,
    zt: f64,
    /// Medial then lateral: posterior and distal-anterior parts of each condyle.
    condyles: [[Puck; 2]; 2],
    trochlea: Puck,
    /// Two cones per metaphysis (medial, lateral) give it its medial–lateral flare.
    metaphysis: [RoundCone; 2],
    metaphysis_cut: f64,
    shaft: Capsule,
    plateau: Slab,
    dishes: [(P3, f64); 2],
    /// (x, y) centres of the medial and lateral plateaus.
    plateau_xy: [[f64; 2]; 2],
    tibial_metaphysis: [RoundCone; 2],
    tibial_shaft: Capsule,
    eminence: Capsule,
    tuberosity: Capsule,
    patella: Ellipsoid,
    ligaments: [Capsule; 4],
    /// Leg cross-section: centre (x, y) and semi-axes (x, y).
    leg: [f64; 4],
    fat_pad: Ellipsoid,
    pub seeds: Seeds,
}

impl Knee {
    /// Draws a knee. `thickness` and `gap` (the joint space between the cartilages) are in
    /// physical millimetres and do not scale with the bones.
    pub(super) fn new(rng: &mut SplitMix64, scale: f64, thickness: f64, gap: f64) -> Knee {
        let mut vary = |amp: f64| 1.0 + rng.uniform(-amp, amp);
        let t_max = 1.1 * thickness;
        // Bones sit `half` (anatomical mm) above and below the joint centre, so the cartilage
        // surfaces are at least `gap` apart; 0.4 mm covers the plateau's concavity.
        let half = (0.5 * gap + t_max + 0.4) / scale;
        let (zb, dish_bottom) = (half, -half);
        let zt = dish_bottom + 1.5;
        let (r_post, r_ant) = ([22.0 * vary(0.06), 20.0 * vary(0.06)], 26.0 * vary(0.05));
        let cx = 21.0 * vary(0.05);
        let condyles = [0, 1].map(|m| {
            let x = if m == 0 { cx } else { -cx };
            [
                Puck::resting(x, 8.0, zb, r_post[m], 14.0, 9.0),
                Puck::resting(x, 0.0, zb, r_ant, 14.0, 9.0),
            ]
        });
        let half_len = 14.0 * vary(0.05);
        let dish_r = 90.0;
        let leg = [0.0, -2.0, 56.0 * vary(0.05), 58.0 * vary(0.05)];
        let patella_r = [21.0 * vary(0.06), 10.0 * vary(0.08), 19.0 * vary(0.06)];
        let seeds = Seeds {
            thickness: rng.next_u64(),
            soft: rng.next_u64(),
            marrow: rng.next_u64(),
            cartilage: rng.next_u64(),
            bias: rng.next_u64(),
            noise: rng.next_u64(),
        };
        let mut knee = Knee {
            scale,
            thickness,
            t_max,
            clearance: t_max + gap,
            // The cartilage surfaces are `gap` + 0.8 mm + the thickness slack apart at the
            // contact; the film reaches a little further, where they diverge.
            fluid_band: gap + 0.4 * thickness + 2.0,
            zb,
            zt,
            condyles,
            trochlea: Puck::resting(0.0, 1.0, zb + 6.0, 24.0, 22.0, 8.0),
            metaphysis: [15.0, -15.0]
                .map(|x| cone([x, -1.0, zb + 34.0], [0.0, -2.0, zb + 110.0], 20.0, 15.0)),
            metaphysis_cut: zb + 26.0,
            shaft: capsule([0.0, -2.0, zb + 110.0], [0.0, -2.0, zb + 600.0], 15.0),
            plateau: Slab {
                c: [0.0, 3.0, zt - 8.0],
                half_len,
                radius: 24.0,
                half_height: 8.0,
                round: 3.0,
            },
            dishes: [21.0, -21.0].map(|x| ([x, 3.0, dish_bottom + dish_r], dish_r)),
            plateau_xy: [[21.0, 3.0], [-21.0, 3.0]],
            tibial_metaphysis: [12.0, -12.0]
                .map(|x| cone([x, 3.0, zt - 12.0], [0.0, 1.0, zt - 50.0], 20.0, 14.0)),
            tibial_shaft: capsule([0.0, 1.0, zt - 50.0], [0.0, 1.0, zt - 600.0], 14.0),
            eminence: capsule([0.0, -4.0, zt + 0.5], [0.0, 12.0, zt + 0.5], 3.0),
            tuberosity: capsule([0.0, -14.0, zt - 22.0], [0.0, -12.0, zt - 40.0], 7.0),
            patella: Ellipsoid {
                c: [-2.0, -30.0, zb + 34.0],
                r: patella_r,
            },
            ligaments: [capsule([0.0; 3], [0.0, 0.0, 1.0], 0.0); 4],
            leg,
            fat_pad: Ellipsoid {
                c: [0.0, -24.0, zt + 9.0],
                r: [20.0, 9.0, 13.0],
            },
            seeds,
        };
        knee.place_patella(gap);
        let (pc, pr) = (knee.patella.c, knee.patella.r);
        knee.ligaments = [
            // Patellar tendon, quadriceps tendon, ACL, PCL.
            capsule(
                [pc[0], pc[1] + 3.0, pc[2] - pr[2] + 3.0],
                [0.0, -17.0, zt - 30.0],
                3.5,
            ),
            capsule(
                [pc[0], pc[1] + 2.0, pc[2] + pr[2] - 3.0],
                [0.0, pc[1] + 12.0, pc[2] + 90.0],
                4.5,
            ),
            capsule([-9.0, 20.0, zb + 16.0], [-2.0, -6.0, zt + 1.0], 4.0),
            capsule([8.0, 2.0, zb + 10.0], [1.0, 26.0, zt - 8.0], 4.5),
        ];
        knee
    }

    /// Moves the patella anteriorly until its surface is clear of the femur by two
    /// cartilage layers and the joint space (checked on ~500 surface points, plus a margin).
    fn place_patella(&mut self, gap: f64) {
        let need = (2.0 * self.t_max + gap + 0.6) / self.scale;
        let mut dirs = Vec::with_capacity(6 * 81);
        for axis in 0..3 {
            for sign in [-1.0, 1.0] {
                for a in 0..9 {
                    for b in 0..9 {
                        let mut d = [0.0; 3];
                        d[axis] = sign;
                        d[(axis + 1) % 3] = f64::from(a) / 4.0 - 1.0;
                        d[(axis + 2) % 3] = f64::from(b) / 4.0 - 1.0;
                        let n = norm(d);
                        dirs.push(d.map(|v| v / n));
                    }
                }
            }
        }
        for _ in 0..30 {
            let (c, r) = (self.patella.c, self.patella.r);
            let deficit = dirs
                .iter()
                .map(|d| {
                    need - self.femur_sd([
                        c[0] + r[0] * d[0],
                        c[1] + r[1] * d[1],
                        c[2] + r[2] * d[2],
                    ])
                })
                .fold(f64::NEG_INFINITY, f64::max);
            if deficit <= 0.0 {
                break;
            }
            self.patella.c[1] -= deficit + 0.05;
        }
    }

    /// Anatomical-mm signed distance to the femur.
    fn femur_sd(&self, p: P3) -> f64 {
        let mut distal = self.trochlea.sd(p);
        for pucks in &self.condyles {
            distal = distal.min(pucks[0].sd(p)).min(pucks[1].sd(p));
        }
        let [m0, m1] = &self.metaphysis;
        let upper = m0
            .sd(p)
            .min(m1.sd(p))
            .max(self.metaphysis_cut - p[2])
            .min(self.shaft.sd(p));
        smin(distal, upper, 10.0)
    }

    /// Anatomical-mm signed distance to the tibia.
    fn tibia_sd(&self, p: P3) -> f64 {
        let mut top = self.plateau.sd(p);
        for (c, r) in &self.dishes {
            top = top.max(r - norm(sub(p, *c)));
        }
        let top = top.min(self.eminence.sd(p));
        let [m0, m1] = &self.tibial_metaphysis;
        let lower = m0
            .sd(p)
            .min(m1.sd(p))
            .max(p[2] - (self.zt - 10.0))
            .min(self.tibial_shaft.sd(p))
            .min(self.tuberosity.sd(p));
        smin(top, lower, 14.0)
    }

    /// Local cartilage thickness: the nominal one, ±10 % of smooth noise, times a weight
    /// that tapers it to 0 at the edge of the articular surface.
    fn thickness_at(&self, p: P3, weight: f64) -> f64 {
        if weight <= 0.0 {
            return 0.0;
        }
        let n = (1.5 * value_noise(self.seeds.thickness, p, 15.0)).clamp(-1.0, 1.0);
        self.thickness * (1.0 + 0.1 * n) * weight
    }

    /// The skin's signed distance, approximately (an ellipse's, scaled), anatomical mm.
    fn leg_sd(&self, p: P3) -> f64 {
        let [cx, cy, ax, ay] = self.leg;
        let (u, v) = ((p[0] - cx) / ax, (p[1] - cy) / ay);
        ((u * u + v * v).sqrt() - 1.0) * ax.min(ay)
    }

    /// Everything at one anatomical-frame point.
    pub(super) fn tissues(&self, p: P3, margin: f64) -> Tissues {
        let s = self.scale;
        let leg = self.leg_sd(p) * s;
        let mut t = Tissues {
            leg,
            femur: f64::INFINITY,
            tibia: f64::INFINITY,
            patella: f64::INFINITY,
            ligament: f64::INFINITY,
            meniscus: [f64::INFINITY; 2],
            ..Tissues::default()
        };
        if leg > margin {
            return t;
        }
        t.femur = self.femur_sd(p) * s;
        t.tibia = self.tibia_sd(p) * s;
        t.patella = self.patella.sd(p) * s;
        t.ligament = self
            .ligaments
            .iter()
            .map(|l| l.sd(p))
            .fold(f64::INFINITY, f64::min)
            * s;
        let pad = self.fat_pad.sd(p) * s;
        t.fat_pad = fall(pad, -2.0, 3.0);
        let [x, y, z] = p;
        // Thicknesses are needed a little beyond the cartilage, for the fluid film on it.
        let near = self.t_max + self.fluid_band + margin;
        if t.femur < near {
            let condyle = |cx: f64| fall((x - cx).abs(), 9.0, 13.5);
            let posterior = fall(z - self.zb, 28.0, 34.0);
            let trochlea = fall(x.abs(), 28.0, 33.0)
                * fall(y, -6.0, 0.0)
                * fall(z - self.zb, 40.0, 46.0)
                * (1.0 - fall(z - self.zb, 8.0, 14.0));
            let cx = self.condyles[0][0].c[0];
            let w = (condyle(cx).max(condyle(-cx)) * posterior).max(trochlea);
            t.t_femur = self.thickness_at(p, w);
        }
        t.clear = t.femur >= self.clearance;
        if t.tibia < near {
            let top = fall(self.zt - z, 4.0, 6.0);
            for (m, [px, py]) in self.plateau_xy.iter().enumerate() {
                let (u, v) = ((x - px) / 14.0, (y - py) / 19.0);
                let w = fall((u * u + v * v).sqrt(), 0.8, 1.0) * top;
                t.t_tibia[m] = self.thickness_at(p, w);
            }
        }
        if t.patella < near {
            let [px, py, pz] = self.patella.c;
            let [ax, _, az] = self.patella.r;
            let (u, v) = ((x - px) / ax, (z - pz) / az);
            let w = fall((u * u + v * v).sqrt(), 0.65, 0.9) * fall(py - y, -2.0, 1.0);
            t.t_patella = self.thickness_at(p, w);
        }
        if t.tibia < 8.0 * s {
            for (m, [px, py]) in self.plateau_xy.iter().enumerate() {
                t.meniscus[m] = self.meniscus_sd(p, m, *px, *py, t.femur, t.tibia);
            }
        }
        t
    }

    /// A C-shaped wedge on the rim of plateau `m` (0 medial, 1 lateral), open towards the
    /// intercondylar notch; its top follows the femur, so it thins towards its inner edge.
    fn meniscus_sd(&self, p: P3, m: usize, px: f64, py: f64, femur: f64, tibia: f64) -> f64 {
        let s = self.scale;
        let (mx, my) = (16.0, 21.0);
        let (u, v) = ((p[0] - px) / mx, (p[1] - py) / my);
        let rho = (u * u + v * v).sqrt();
        let (inner, cos_open) = if m == 0 { (0.55, 0.64) } else { (0.6, 0.93) };
        // Cosine between this point's direction from the plateau centre and the notch's.
        let towards_notch = if rho > 0.0 {
            -px.signum() * u / rho
        } else {
            0.0
        };
        let ring = ((inner - rho) * mx)
            .max((rho - 1.0) * mx)
            .max((towards_notch - cos_open) * rho * mx);
        // The wedge rises from nothing at the inner edge to 7 mm at the rim.
        let height = 7.0 * s * ((rho - inner) / (1.0 - inner)).clamp(0.0, 1.0);
        (ring * s)
            .max((self.zt - 1.0 - p[2]) * s)
            .max(-tibia)
            .max(tibia - height)
            .max(self.t_max + 0.5 - femur)
    }

    /// The label of a point (the DOMAIN.md map).
    pub(super) fn label(t: &Tissues) -> u8 {
        if t.femur < 0.0 {
            7
        } else if t.tibia < 0.0 {
            8
        } else if t.patella < 0.0 {
            9
        } else if t.femur < t.t_femur {
            2
        } else if t.clear && t.tibia < t.t_tibia[0] {
            3
        } else if t.clear && t.tibia < t.t_tibia[1] {
            4
        } else if t.clear && t.patella < t.t_patella {
            1
        } else if t.meniscus[0] < 0.0 {
            5
        } else if t.meniscus[1] < 0.0 {
            6
        } else {
            0
        }
    }

    /// Where the medial condyle is lowest (anatomical mm): its outward normal there is −z.
    #[cfg(test)]
    pub(super) fn medial_condyle_bottom(&self) -> P3 {
        let c = self.condyles[0][0].c;
        [c[0], c[1], self.zb]
    }

    /// Whether the bones overlap at `p`.
    #[cfg(test)]
    pub(super) fn bones_overlap(&self, p: P3) -> bool {
        let inside = [self.femur_sd(p), self.tibia_sd(p), self.patella.sd(p)]
            .iter()
            .filter(|d| **d < 0.0)
            .count();
        inside > 1
    }
}
