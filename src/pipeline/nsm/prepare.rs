//! Mesh preparation before an NSM fit, identical to what the decoder's training saw
//! (/tmp/nsm/CONTRACT.md): which knee it is, mirroring left knees to right ones, clipping the
//! femur's shaft, and normalising to the unit ball around the bone.
//!
//! All in LPS mm on `f64` meshes; nothing here touches libtorch.

use crate::pipeline::label_map::LabelMap;
use crate::pipeline::mesh::Mesh;
use crate::volume::Volume;

/// The femur is kept up to this many medial–lateral widths above its lowest point.
pub const CLIP_WIDTHS: f64 = 1.0;

/// Which knee a segmentation shows, and how that was decided.
#[derive(Debug, Clone, PartialEq)]
pub struct KneeSide {
    /// A left knee.
    pub left: bool,
    /// Set when the side was assumed rather than seen (for the user).
    pub note: Option<String>,
}

/// Decides the side from where the medial and lateral tibial cartilage lie along LPS x: a right
/// knee's medial side faces the patient's left (+x), a left knee's faces −x. With only one of
/// the two, the femur's centroid stands in for the other; with neither, a right knee is assumed
/// and said so.
pub fn knee_side<T: Copy + Into<u16>>(labels: &Volume<T>, map: &LabelMap) -> KneeSide {
    let want = [
        map.medial_tibial_cartilage,
        map.lateral_tibial_cartilage,
        map.femur,
    ];
    let mut sum = [0.0f64; 3];
    let mut count = [0usize; 3];
    let dims = labels.dims();
    let g = labels.geometry();
    for (o, &l) in labels.data().iter().enumerate() {
        let l: u16 = l.into();
        for (w, want) in want.iter().enumerate() {
            if *want == Some(l) {
                let p = g.index_to_point([
                    (o % dims[0]) as f64,
                    ((o / dims[0]) % dims[1]) as f64,
                    (o / (dims[0] * dims[1])) as f64,
                ]);
                sum[w] += p[0];
                count[w] += 1;
            }
        }
    }
    let x = |w: usize| (count[w] > 0).then(|| sum[w] / count[w] as f64);
    let seen = |left: bool| KneeSide { left, note: None };
    match (x(0), x(1), x(2)) {
        (Some(m), Some(l), _) if m != l => seen(m < l),
        (Some(m), None, Some(f)) if m != f => seen(m < f),
        (None, Some(l), Some(f)) if l != f => seen(l > f),
        _ => KneeSide {
            left: false,
            note: Some(
                "NSM: the knee's side could not be told from the tibial cartilage; a right knee was assumed"
                    .into(),
            ),
        },
    }
}

/// The mesh mirrored in x (x → −x), with the winding reversed so normals still point out.
pub fn mirror_x(mesh: &Mesh) -> Mesh {
    Mesh {
        vertices: mesh.vertices.iter().map(|v| [-v[0], v[1], v[2]]).collect(),
        triangles: mesh.triangles.iter().map(|t| [t[0], t[2], t[1]]).collect(),
        point_scalars: mesh.point_scalars.clone(),
    }
}

/// The vertices with z ≤ `z_max` and the triangles all of whose corners are kept, renumbered
/// (scalars dropped).
pub fn clip_above(mesh: &Mesh, z_max: f64) -> Mesh {
    let mut new_index = vec![u32::MAX; mesh.vertices.len()];
    let mut vertices = Vec::new();
    for (i, v) in mesh.vertices.iter().enumerate() {
        if v[2] <= z_max {
            new_index[i] = vertices.len() as u32;
            vertices.push(*v);
        }
    }
    let triangles = mesh
        .triangles
        .iter()
        .map(|t| t.map(|v| new_index[v as usize]))
        .filter(|t| t.iter().all(|&v| v != u32::MAX))
        .collect();
    Mesh {
        vertices,
        triangles,
        point_scalars: Vec::new(),
    }
}

/// The map from (mirrored, clipped) LPS mm to the decoder's normalised frame:
/// `x_norm = (x_mm − center) / scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    /// Centroid of the clipped bone's vertices, mm.
    pub center: [f64; 3],
    /// Largest distance of a clipped bone vertex from `center`, mm.
    pub scale: f64,
}

impl Normalisation {
    /// The normalisation of a bone mesh (CONTRACT.md step 3).
    pub fn of(bone: &Mesh) -> Normalisation {
        let center = bone.centroid();
        let scale = bone
            .vertices
            .iter()
            .map(|v| {
                let d: [f64; 3] = std::array::from_fn(|a| v[a] - center[a]);
                (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
            })
            .fold(0.0, f64::max);
        Normalisation { center, scale }
    }

    /// mm → normalised.
    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|a| (p[a] - self.center[a]) / self.scale)
    }

    /// Normalised → mm.
    pub fn undo(&self, p: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|a| p[a] * self.scale + self.center[a])
    }
}

/// Meshes ready for a fit: mirrored if left, clipped, with their normalisation.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The femur, LPS mm (mirrored for a left knee), clipped.
    pub bone: Mesh,
    /// The femoral cartilage, the same way, if given.
    pub cartilage: Option<Mesh>,
    /// mm → normalised frame.
    pub normalisation: Normalisation,
    /// Whether the meshes were mirrored.
    pub mirrored: bool,
}

/// CONTRACT.md steps 1–3: mirror a left knee, keep everything up to [`CLIP_WIDTHS`] × the
/// femur's x extent above its lowest point, and normalise on the clipped bone. `None` when the
/// bone has no vertices left.
pub fn prepare(femur: &Mesh, cartilage: Option<&Mesh>, left: bool) -> Option<Prepared> {
    let side = |m: &Mesh| if left { mirror_x(m) } else { m.clone() };
    let bone = side(femur);
    let (lo, hi) = bone.bounds()?;
    let z_max = lo[2] + CLIP_WIDTHS * (hi[0] - lo[0]);
    let bone = clip_above(&bone, z_max);
    if bone.vertices.is_empty() || bone.triangles.is_empty() {
        return None;
    }
    let normalisation = Normalisation::of(&bone);
    if !(normalisation.scale > 0.0 && normalisation.scale.is_finite()) {
        return None;
    }
    let cartilage = cartilage
        .map(|c| clip_above(&side(c), z_max))
        .filter(|c| !c.triangles.is_empty());
    Some(Prepared {
        bone,
        cartilage,
        normalisation,
        mirrored: left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    fn tetra(offset: [f64; 3], height: f64) -> Mesh {
        let v = [
            [0.0, 0.0, 0.0],
            [10.0, 0.0, 0.0],
            [0.0, 10.0, 0.0],
            [0.0, 0.0, height],
        ];
        Mesh {
            vertices: v
                .iter()
                .map(|p| std::array::from_fn(|a| p[a] + offset[a]))
                .collect(),
            triangles: vec![[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]],
            point_scalars: Vec::new(),
        }
    }

    #[test]
    fn mirroring_keeps_the_volume_positive() {
        let m = tetra([5.0, 1.0, 2.0], 10.0);
        assert!(m.enclosed_volume() > 0.0);
        let mm = mirror_x(&m);
        assert!((mm.enclosed_volume() - m.enclosed_volume()).abs() < 1e-9);
        assert_eq!(mm.vertices[1], [-15.0, 1.0, 2.0]);
    }

    #[test]
    fn the_top_is_clipped_at_one_width_and_the_rest_normalised() {
        // Width along x is 10, so z ≤ 2 + 10 = 12 is kept: the apex at z = 32 goes with the
        // three triangles that use it.
        let bone = tetra([0.0, 0.0, 2.0], 30.0);
        let cart = tetra([0.0, 0.0, 0.0], 20.0);
        let p = prepare(&bone, Some(&cart), false).unwrap();
        assert_eq!(p.bone.vertices.len(), 3);
        assert_eq!(p.bone.triangles, vec![[0, 2, 1]]);
        // Cartilage: apex at 20 > 12 is dropped too.
        assert_eq!(p.cartilage.as_ref().unwrap().triangles.len(), 1);
        let n = p.normalisation;
        assert!((n.center[0] - 10.0 / 3.0).abs() < 1e-12);
        let far = p
            .bone
            .vertices
            .iter()
            .map(|&v| n.apply(v))
            .map(|q| (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt())
            .fold(0.0, f64::max);
        assert!((far - 1.0).abs() < 1e-12);
        let v = p.bone.vertices[1];
        let back = n.undo(n.apply(v));
        assert!((0..3).all(|a| (back[a] - v[a]).abs() < 1e-12));
        // A left knee is mirrored first.
        let l = prepare(&bone, None, true).unwrap();
        assert!(l.mirrored && l.bone.vertices.iter().all(|v| v[0] <= 0.0));
        assert!(l.cartilage.is_none());
    }

    #[test]
    fn side_follows_the_medial_tibial_cartilage() {
        let map = LabelMap::default();
        for left in [false, true] {
            let mut v = Volume::filled([20, 4, 4], 0u8, Geometry::default());
            // Right knee: medial (3) at +x, lateral (4) at −x.
            let (med, lat) = if left { (2, 17) } else { (17, 2) };
            v.set(med, 1, 1, 3);
            v.set(lat, 1, 1, 4);
            v.set(10, 1, 1, 7);
            assert_eq!(knee_side(&v, &map), KneeSide { left, note: None });
            v.set(lat, 1, 1, 0);
            assert_eq!(knee_side(&v, &map).left, left, "medial and femur only");
        }
        let empty = Volume::filled([4, 4, 4], 0u8, Geometry::default());
        let guess = knee_side(&empty, &map);
        assert!(!guess.left && guess.note.is_some());
    }
}
