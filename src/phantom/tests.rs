//! Tests of the phantom: determinism, anatomy, laterality, the joint space, the signal.

use super::*;
use crate::volume::orientation_code;

fn centroid_x(labels: &Volume<u8>, label: u8) -> f64 {
    let [nx, ny, _] = labels.dims();
    let (mut sum, mut n) = (0.0, 0.0);
    for (o, &l) in labels.data().iter().enumerate() {
        if l == label {
            let ijk = [o % nx, (o / nx) % ny, o / (nx * ny)].map(|v| v as f64);
            sum += labels.geometry().index_to_point(ijk)[0];
            n += 1.0;
        }
    }
    assert!(n > 0.0, "label {label} is missing");
    sum / n
}

/// Voxel pairs across a face with labels `a` and one of `b`.
fn touching(labels: &Volume<u8>, a: u8, b: &[u8]) -> usize {
    let [nx, ny, nz] = labels.dims();
    let mut count = 0;
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let here = labels[[i, j, k]];
                for [di, dj, dk] in [[1, 0, 0], [0, 1, 0], [0, 0, 1]] {
                    if let Some(&there) = labels.get(i + di, j + dj, k + dk) {
                        if (here == a && b.contains(&there)) || (there == a && b.contains(&here)) {
                            count += 1;
                        }
                    }
                }
            }
        }
    }
    count
}

#[test]
fn same_seed_gives_identical_voxels_on_any_thread_count() {
    let params = PhantomParams::small(7);
    let a = generate(&params);
    let b = generate_on(&params, 1);
    let c = generate_on(&params, 5);
    assert_eq!(a.image, b.image);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.image, c.image);
    assert_eq!(a.labels, c.labels);
}

#[test]
fn different_seeds_differ() {
    let a = generate(&PhantomParams::small(1));
    let b = generate(&PhantomParams::small(2));
    assert_ne!(a.image.data(), b.image.data());
    assert_ne!(a.labels.data(), b.labels.data());
}

#[test]
fn geometry_is_an_orthonormal_sagittal_grid_centred_on_the_knee() {
    let phantom = generate(&PhantomParams::small(3));
    let g = phantom.image.geometry();
    assert!(g.is_orthonormal());
    assert_eq!(orientation_code(g), "PIR");
    assert_eq!(phantom.labels.geometry(), g);
    let [nx, ny, nz] = phantom.image.dims();
    let centre = g.index_to_point([nx, ny, nz].map(|n| (n as f64 - 1.0) / 2.0));
    assert!(centre.iter().all(|c| c.abs() < 1e-9), "{centre:?}");
    // small() covers a whole knee: at least 120 mm along every axis, and stays small.
    assert!(g
        .spacing
        .iter()
        .zip([nx, ny, nz])
        .all(|(s, n)| s * n as f64 >= 120.0));
    assert!(nx * ny * nz <= 200_000);
}

#[test]
fn every_tissue_is_present_with_a_plausible_volume() {
    let phantom = generate(&PhantomParams {
        seed: 11,
        ..PhantomParams::default()
    });
    let v = tissue_volumes_mm3(&phantom.labels).map(|mm3| mm3 / 1000.0);
    // cm³: patellar, femoral, medial and lateral tibial cartilage, menisci, femur, tibia, patella.
    let ranges = [
        (1, 0.5, 5.0),
        (2, 5.0, 25.0),
        (3, 0.5, 5.0),
        (4, 0.5, 5.0),
        (5, 0.5, 5.0),
        (6, 0.5, 5.0),
        (7, 60.0, 300.0),
        (8, 50.0, 250.0),
        (9, 8.0, 30.0),
    ];
    for (label, lo, hi) in ranges {
        assert!(
            (lo..=hi).contains(&v[label]),
            "label {label}: {} cm³",
            v[label]
        );
    }
    let total: f64 = v.iter().sum();
    let [nx, ny, nz] = phantom.params.dims;
    let fov: f64 = phantom.params.spacing.iter().product::<f64>() * (nx * ny * nz) as f64;
    assert!((total - fov / 1000.0).abs() < 1e-6);
}

#[test]
fn femoral_cartilage_is_as_thick_as_asked_along_the_condyle_normal() {
    for (seed, thickness) in [(0, 2.0), (1, 2.0), (5, 2.0), (5, 3.0)] {
        // Fine along j (superior–inferior): the column under the medial condyle's lowest point
        // runs along its normal, since the pose is off.
        let params = PhantomParams {
            seed,
            dims: [12, 300, 16],
            spacing: [2.0, 0.1, 4.0],
            cartilage_thickness_mm: thickness,
            random_pose: false,
            ..PhantomParams::default()
        };
        let phantom = generate(&params);
        let (knee, pose) = draw(&phantom.params);
        let bottom = pose.lps(knee.medial_condyle_bottom());
        let index = phantom.labels.geometry().point_to_index(bottom);
        let (i, k) = (index[0].round() as usize, index[2].round() as usize);
        let column: Vec<u8> = (0..300).map(|j| phantom.labels[[i, j, k]]).collect();
        let start = column
            .iter()
            .rposition(|&l| l == 7)
            .expect("femur in the column")
            + 1;
        let run = column[start..].iter().take_while(|&&l| l == 2).count();
        let measured = run as f64 * 0.1;
        assert!(
            (measured - thickness).abs() <= 0.5 && (measured / thickness - 1.0).abs() <= 0.12,
            "asked {thickness} mm, measured {measured} mm"
        );
        // Below the cartilage: joint fluid (background), then tibial cartilage.
        assert_eq!(column[start + run], 0);
        assert!(column[start + run..].contains(&3));
    }
}

#[test]
fn thicker_cartilage_has_proportionally_more_volume() {
    let volume = |t: f64| {
        let phantom = generate(&PhantomParams {
            cartilage_thickness_mm: t,
            dims: [64, 64, 40],
            spacing: [1.2, 1.2, 2.0],
            ..PhantomParams::small(4)
        });
        tissue_volumes_mm3(&phantom.labels)[2]
    };
    let ratio = volume(3.0) / volume(2.0);
    assert!((1.3..1.7).contains(&ratio), "{ratio}");
}

#[test]
fn medial_compartment_follows_laterality() {
    for seed in [0, 1] {
        for left in [false, true] {
            let phantom = generate(&PhantomParams {
                left,
                ..PhantomParams::small(seed)
            });
            let l = &phantom.labels;
            // A right knee's medial side faces the patient's left: +x in LPS.
            let medial_sign = if left { -1.0 } else { 1.0 };
            for (medial, lateral) in [(3, 4), (5, 6)] {
                let (m, lat) = (centroid_x(l, medial), centroid_x(l, lateral));
                assert!(medial_sign * (m - lat) > 25.0, "left={left}: {m} vs {lat}");
                assert!(medial_sign * m > 10.0, "left={left}: medial at x = {m}");
            }
        }
    }
}

#[test]
fn femoral_and_tibial_cartilage_never_touch() {
    for seed in 0..4 {
        let phantom = generate(&PhantomParams {
            left: seed % 2 == 1,
            ..PhantomParams::small(seed)
        });
        assert_eq!(touching(&phantom.labels, 2, &[3, 4]), 0, "seed {seed}");
    }
    let phantom = generate(&PhantomParams {
        seed: 9,
        dims: [72, 72, 48],
        spacing: [1.8, 1.8, 2.5],
        cartilage_thickness_mm: 3.0,
        ..PhantomParams::default()
    });
    assert_eq!(touching(&phantom.labels, 2, &[3, 4]), 0);
    // Cartilage does sit on its bone.
    assert!(touching(&phantom.labels, 2, &[7]) > 0);
    assert!(touching(&phantom.labels, 3, &[8]) > 0);
    assert!(touching(&phantom.labels, 1, &[9]) > 0);
}

#[test]
fn bones_never_overlap() {
    for seed in 0..3 {
        let (knee, _) = draw(&PhantomParams::small(seed));
        for x in -25..25 {
            for y in -35..30 {
                for z in -30..40 {
                    let p = [2.0 * f64::from(x), 2.0 * f64::from(y), 2.0 * f64::from(z)];
                    assert!(!knee.bones_overlap(p), "seed {seed} at {p:?}");
                }
            }
        }
    }
}

#[test]
fn signal_looks_like_a_pd_weighted_knee() {
    let phantom = generate(&PhantomParams::small(2));
    let mut sums = [(0.0, 0.0); 10];
    for (&l, &v) in phantom.labels.data().iter().zip(phantom.image.data()) {
        sums[usize::from(l)].0 += f64::from(v);
        sums[usize::from(l)].1 += 1.0;
    }
    let mean = sums.map(|(s, n)| s / n);
    // Cartilage bright, marrow medium, menisci dark (partial volume pulls thin layers).
    assert!(mean[2] > mean[7] && mean[7] > mean[5], "{mean:?}");
    assert!(mean[7] > 900.0 && mean[5] < 800.0, "{mean:?}");
    // Air in the corner is near zero; nothing saturates at the u16 top.
    assert!(phantom.image[[0, 0, 0]] < 400);
    assert!(phantom.image.data().iter().all(|&v| v <= 4095));
    // Not thresholdable: bone and soft tissue intensities overlap.
    let soft = phantom
        .image
        .data()
        .iter()
        .zip(phantom.labels.data())
        .filter(|(v, l)| **l == 0 && **v > 1000);
    assert!(soft.count() > 1000);
}

#[test]
fn degenerate_parameters_do_not_panic() {
    let empty = generate(&PhantomParams {
        dims: [0, 4, 4],
        ..PhantomParams::small(0)
    });
    assert!(empty.image.is_empty());
    let odd = generate(&PhantomParams {
        dims: [8, 8, 8],
        spacing: [f64::NAN, -1.0, 0.0],
        cartilage_thickness_mm: f64::INFINITY,
        noise: -1.0,
        ..PhantomParams::small(0)
    });
    assert_eq!(odd.params.spacing, [1.0; 3]);
    assert_eq!(odd.params.noise, 0.0);
    assert_eq!(odd.params.cartilage_thickness_mm, 2.0);
    let bare = generate(&PhantomParams {
        cartilage_thickness_mm: 0.0,
        ..PhantomParams::small(0)
    });
    let v = tissue_volumes_mm3(&bare.labels);
    assert!(v[1..=4].iter().all(|&c| c == 0.0) && v[7] > 0.0, "{v:?}");
}

#[test]
fn a_finer_matrix_keeps_the_field_of_view_and_the_centre() {
    let default = PhantomParams::default();
    let fine = default.clone().with_matrix([384, 384, 160]);
    assert_eq!(fine.dims, [384, 384, 160]);
    assert_eq!(fine.spacing, [0.375, 0.375, 0.75]);
    let extent =
        |p: &PhantomParams| std::array::from_fn::<f64, 3, _>(|a| p.spacing[a] * p.dims[a] as f64);
    assert_eq!(extent(&fine), [144.0, 144.0, 120.0]);
    assert_eq!(extent(&fine), extent(&default));
    // The two grids cover the same box: their outer voxel corners are the same LPS points.
    let coarse = sagittal_geometry(default.dims, default.spacing);
    let g = sagittal_geometry(fine.dims, fine.spacing);
    for corner in 0..8 {
        let at = |dims: [usize; 3]| -> [f64; 3] {
            std::array::from_fn(|a| {
                if corner >> a & 1 == 1 {
                    dims[a] as f64 - 0.5
                } else {
                    -0.5
                }
            })
        };
        let (p, q) = (
            coarse.index_to_point(at(default.dims)),
            g.index_to_point(at(fine.dims)),
        );
        assert!((0..3).all(|r| (p[r] - q[r]).abs() < 1e-9), "{p:?} vs {q:?}");
    }
    // Everything else is kept; a 0 keeps that axis's spacing.
    assert_eq!(
        PhantomParams {
            dims: default.dims,
            spacing: default.spacing,
            ..fine.clone()
        },
        default
    );
    assert_eq!(
        default.clone().with_matrix([0, 96, 80]).spacing,
        [0.75, 1.5, 1.5]
    );
}

#[test]
fn the_generated_grid_follows_the_matrix() {
    let small = PhantomParams::small(3);
    let phantom = generate(&small.clone().with_matrix([96, 80, 60]));
    let g = phantom.image.geometry();
    assert_eq!(phantom.image.dims(), [96, 80, 60]);
    assert_eq!(orientation_code(g), "PIR");
    let want = [128.0 / 96.0, 128.0 / 80.0, 120.0 / 60.0];
    assert!(
        (0..3).all(|a| (g.spacing[a] - want[a]).abs() < 1e-12),
        "{:?}",
        g.spacing
    );
    let centre = g.index_to_point([95.0 / 2.0, 79.0 / 2.0, 59.0 / 2.0]);
    assert!(centre.iter().all(|c| c.abs() < 1e-9), "{centre:?}");
    // Same knee, sampled differently: the femur's volume barely moves.
    let femur = |p: &Phantom| tissue_volumes_mm3(&p.labels)[7];
    let (a, b) = (femur(&generate(&small)), femur(&phantom));
    assert!((a / b - 1.0).abs() < 0.05, "{a} vs {b} mm³");
}

#[test]
fn the_default_matrix_changes_nothing() {
    let default = PhantomParams::default();
    assert_eq!(default.clone().with_matrix([192, 192, 80]), default);
    let small = PhantomParams::small(5);
    assert_eq!(small.clone().with_matrix([64, 64, 48]), small);
    let a = generate(&small);
    let b = generate(&small.clone().with_matrix(small.dims));
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.image, b.image);
}

#[test]
fn matrix_parses_three_positive_sizes() {
    assert_eq!(parse_matrix("384x384x160"), Ok([384, 384, 160]));
    assert_eq!(parse_matrix(" 64 X 64 x 48 "), Ok([64, 64, 48]));
    for bad in [
        "",
        "384x384",
        "384x384x160x2",
        "0x10x10",
        "-1x10x10",
        "axbxc",
        "384,384,160",
        "2000x2000x2000",
    ] {
        let error = parse_matrix(bad).expect_err(bad);
        assert_eq!(error.given, bad);
        assert!(error.to_string().contains("IxJxK"), "{error}");
    }
}
