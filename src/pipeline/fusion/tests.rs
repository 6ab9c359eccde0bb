use super::*;

/// SplitMix64: small, seeded, good enough to make noisy raters reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize
    }

    /// A uniformly random label of 0..k other than `s`.
    fn other(&mut self, s: u8, k: usize) -> u8 {
        let o = self.below(k - 1) as u8;
        if o >= s {
            o + 1
        } else {
            o
        }
    }
}

const K: usize = 6;

/// An n³ phantom with labels 1–5 of different sizes (spheres and boxes) on background 0.
fn phantom(n: usize) -> Vec<u8> {
    let f = n as f64 / 48.0;
    let sphere = |c: [f64; 3], r: f64| {
        move |p: [f64; 3]| (0..3).map(|a| (p[a] - c[a] * f).powi(2)).sum::<f64>() <= (r * f).powi(2)
    };
    let boxed = |lo: [f64; 3], hi: [f64; 3]| {
        move |p: [f64; 3]| (0..3).all(|a| p[a] >= lo[a] * f && p[a] < hi[a] * f)
    };
    let big = sphere([24.0, 24.0, 24.0], 13.0);
    let slab = boxed([4.0, 30.0, 4.0], [22.0, 44.0, 40.0]);
    let ball = sphere([34.0, 14.0, 30.0], 8.0);
    let plate = boxed([28.0, 38.0, 6.0], [46.0, 43.0, 44.0]);
    let bead = sphere([12.0, 12.0, 10.0], 6.0);
    let mut out = vec![0u8; n * n * n];
    for (idx, o) in out.iter_mut().enumerate() {
        let p = [
            (idx % n) as f64 + 0.5,
            ((idx / n) % n) as f64 + 0.5,
            (idx / (n * n)) as f64 + 0.5,
        ];
        *o = if bead(p) {
            5
        } else if plate(p) {
            4
        } else if ball(p) {
            3
        } else if slab(p) {
            2
        } else if big(p) {
            1
        } else {
            0
        };
    }
    out
}

/// The label a biased rater mistakes `s` for.
fn confusable(s: u8) -> u8 {
    if usize::from(s) + 1 < K {
        s + 1
    } else {
        1
    }
}

/// A rater that, at each voxel independently, keeps the truth with probability 1 − `flip`,
/// else says `confusable(truth)` with probability `bias` and a uniformly random wrong label
/// otherwise.
fn rater(truth: &[u8], flip: f64, bias: f64, rng: &mut Rng) -> Vec<u8> {
    truth
        .iter()
        .map(|&s| {
            if rng.unit() >= flip {
                s
            } else if rng.unit() < bias {
                confusable(s)
            } else {
                rng.other(s, K)
            }
        })
        .collect()
}

fn accuracy(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

fn dice(a: &[u8], b: &[u8], label: u8) -> f64 {
    let (mut both, mut total) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        both += usize::from(x == label && y == label);
        total += usize::from(x == label) + usize::from(y == label);
    }
    2.0 * both as f64 / total as f64
}

/// The empirical P(rater says s | truth s).
fn sensitivity(rater: &[u8], truth: &[u8], s: u8) -> f64 {
    let (mut hit, mut n) = (0usize, 0usize);
    for (&r, &t) in rater.iter().zip(truth) {
        if t == s {
            n += 1;
            hit += usize::from(r == s);
        }
    }
    hit as f64 / n as f64
}

#[test]
fn staple_beats_majority_vote_on_unequal_raters() {
    let truth = phantom(48);
    let mut rng = Rng(0x5EED_0001);
    // A is good; B and C are poor and, when wrong, mostly make the same mistake, so where both
    // are wrong they outvote A. Given the truth, the three err independently (STAPLE's model).
    let a = rater(&truth, 0.05, 0.0, &mut rng);
    let b = rater(&truth, 0.35, 0.8, &mut rng);
    let c = rater(&truth, 0.35, 0.8, &mut rng);
    let raters: [&[u8]; 3] = [&a, &b, &c];
    let trust = [Trust::all(); 3];

    let majority = majority_vote(&raters, K, &trust).unwrap();
    let fused = staple(&raters, K, &trust, &StapleOptions::default()).unwrap();
    let (acc_mv, acc_st) = (accuracy(&majority, &truth), accuracy(&fused.labels, &truth));
    // The fixed vote-frequency prior, for the record (module notes: it is fooled here).
    let votes_prior = StapleOptions {
        prior: Prior::Votes,
        ..StapleOptions::default()
    };
    let fixed = staple(&raters, K, &trust, &votes_prior).unwrap();
    println!(
        "accuracy: majority {acc_mv:.4}, STAPLE {acc_st:.4} ({} iterations, converged {}), \
         STAPLE with the fixed vote prior {:.4}",
        fused.iterations,
        fused.converged,
        accuracy(&fixed.labels, &truth)
    );
    assert!(
        acc_st > acc_mv + 0.05,
        "STAPLE {acc_st:.4} vs majority {acc_mv:.4}"
    );
    // EM is slow to meet 1e-5 with raters this noisy, but it gets there, to the same labels.
    let patient = StapleOptions {
        max_iterations: 1000,
        ..StapleOptions::default()
    };
    let settled = staple(&raters, K, &trust, &patient).unwrap();
    println!("converged after {} iterations", settled.iterations);
    assert!(settled.converged);
    assert!(accuracy(&settled.labels, &fused.labels) > 0.999);
    for label in 0..K as u8 {
        let share = truth.iter().filter(|&&t| t == label).count() as f64 / truth.len() as f64;
        let (d_mv, d_st) = (
            dice(&majority, &truth, label),
            dice(&fused.labels, &truth, label),
        );
        println!(
            "label {label} ({:.1} %): Dice majority {d_mv:.4}, STAPLE {d_st:.4}",
            share * 100.0
        );
        assert!(d_st > d_mv + 0.02, "label {label}: {d_st:.4} vs {d_mv:.4}");
    }

    for (j, (r, m)) in raters.iter().zip(&fused.confusion).enumerate() {
        for (s, said_s) in m.iter().enumerate() {
            let column: f64 = m.iter().map(|said| said[s]).sum();
            assert!(
                (column - 1.0).abs() < 1e-9,
                "rater {j} column {s} sums to {column}"
            );
            let (true_rate, estimate) = (sensitivity(r, &truth, s as u8), said_s[s]);
            println!("rater {j} label {s}: sensitivity {true_rate:.4}, estimated {estimate:.4}");
            assert!(
                (true_rate - estimate).abs() < 0.03,
                "rater {j} label {s}: true {true_rate:.4}, estimated {estimate:.4}"
            );
        }
    }
}

#[test]
fn perfect_agreement_is_returned_unchanged() {
    let truth = phantom(24);
    let raters: [&[u8]; 3] = [&truth, &truth, &truth];
    let trust = [Trust::all(); 3];
    let fused = staple(&raters, K, &trust, &StapleOptions::default()).unwrap();
    assert_eq!(fused.labels, truth);
    assert!(fused.converged);
    assert!(fused.iterations <= 3, "{} iterations", fused.iterations);
    for m in &fused.confusion {
        for (s, row) in m.iter().enumerate() {
            assert!(row[s] > 0.999, "sensitivity {} for label {s}", row[s]);
        }
    }
    assert_eq!(majority_vote(&raters, K, &trust).unwrap(), truth);
    // A single rater is its own consensus.
    let alone = staple(&[&truth], K, &[Trust::all()], &StapleOptions::default()).unwrap();
    assert_eq!(alone.labels, truth);
}

/// The unnormalised posterior at a voxel with these (rater, label) votes, from STAPLE's own
/// estimates.
fn posterior_of(fused: &Staple, votes: &[(usize, u8)]) -> Vec<f64> {
    (0..fused.prior.len())
        .map(|s| {
            votes.iter().fold(fused.prior[s], |p, &(j, d)| {
                p * fused.confusion[j][usize::from(d)][s]
            })
        })
        .collect()
}

#[test]
fn an_untrusted_rater_abstains() {
    let truth = phantom(32);
    let mut rng = Rng(0x5EED_0002);
    // L is a label X is not trusted for; L2 another one, absent from the truth.
    const L: u8 = 2;
    const L2: u8 = 6;
    let k = K + 1;
    let a = rater(&truth, 0.10, 0.0, &mut rng);
    // B's mistakes are mostly L, so that X's garbage L, were it counted, would decide votes.
    let b: Vec<u8> = truth
        .iter()
        .map(|&s| {
            if rng.unit() < 0.2 {
                if s == L {
                    0
                } else {
                    L
                }
            } else {
                s
            }
        })
        .collect();
    // X says L wherever the truth is background, and the truth elsewhere.
    let garbage =
        |g: u8| -> Vec<u8> { truth.iter().map(|&s| if s == 0 { g } else { s }).collect() };
    let (x, x2) = (garbage(L), garbage(L2));
    let untrusted = Trust::dropping(&[L, L2]);
    let trust = [Trust::all(), Trust::all(), untrusted];

    // Majority vote is per voxel: where X abstains, the result is A and B's alone.
    let with_x = majority_vote(&[&a, &b, &x], k, &trust).unwrap();
    let without = majority_vote(&[&a, &b], k, &trust[..2]).unwrap();
    let abstains: Vec<bool> = x.iter().map(|&l| !untrusted.trusts(l)).collect();
    for v in (0..truth.len()).filter(|&v| abstains[v]) {
        assert_eq!(with_x[v], without[v], "voxel {v}");
    }
    // Had X been trusted, its garbage would have won wherever B erred to L.
    let counted = majority_vote(&[&a, &b, &x], k, &[Trust::all(); 3]).unwrap();
    let moved = (0..truth.len())
        .filter(|&v| counted[v] != without[v] && abstains[v])
        .count();
    assert!(moved > 1000, "only {moved} voxels moved");

    // STAPLE: X contributes nothing to its θ where it abstains ...
    let fused = staple(&[&a, &b, &x], k, &trust, &StapleOptions::default()).unwrap();
    for bad in [L, L2] {
        assert!(fused.confusion[2][usize::from(bad)]
            .iter()
            .all(|&p| p == 0.0));
    }
    // ... and a factor 1 to the likelihood: there, the label is A and B's posterior argmax.
    for v in (0..truth.len()).filter(|&v| abstains[v]) {
        let w = posterior_of(&fused, &[(0, a[v]), (1, b[v])]);
        let best = w.iter().copied().fold(0.0, f64::max);
        let got = w[usize::from(fused.labels[v])];
        assert!(got >= best * (1.0 - 1e-9), "voxel {v}: {got} < {best}");
    }
    // Which untrusted label X writes does not matter.
    let fused2 = staple(&[&a, &b, &x2], k, &trust, &StapleOptions::default()).unwrap();
    assert_eq!(fused.labels, fused2.labels);
    assert_eq!(fused.confusion[..2], fused2.confusion[..2]);
    // X's garbage does not leak: background voxels become L only where A or B says L.
    let leaked = (0..truth.len())
        .filter(|&v| truth[v] == 0 && fused.labels[v] == L && a[v] != L && b[v] != L)
        .count();
    assert_eq!(leaked, 0);
}

/// Per-voxel STAPLE without compression, written independently as the reference.
struct Naive {
    labels: Vec<u8>,
    theta: Vec<Vec<Vec<f64>>>,
    prior: Vec<f64>,
    iterations: usize,
    converged: bool,
}

fn naive_staple(raters: &[&[u8]], k: usize, trust: &[Trust], o: &StapleOptions) -> Naive {
    let n = raters[0].len();
    let vote = |j: usize, v: usize| -> Option<usize> {
        let l = raters[j][v];
        trust[j].trusts(l).then_some(usize::from(l))
    };
    let mut prior = vec![0.0; k];
    for j in 0..raters.len() {
        for v in 0..n {
            if let Some(l) = vote(j, v) {
                prior[l] += 1.0;
            }
        }
    }
    let total: f64 = prior.iter().sum();
    prior.iter_mut().for_each(|p| *p /= total);
    let mut theta: Vec<Vec<Vec<f64>>> = trust
        .iter()
        .map(|t| {
            let trusted: Vec<usize> = (0..k).filter(|&l| t.trusts(l as u8)).collect();
            let nt = trusted.len() as f64;
            let mut m = vec![vec![0.0; k]; k];
            for &d in &trusted {
                for (s, cell) in m[d].iter_mut().enumerate() {
                    *cell = if !trusted.contains(&s) {
                        1.0 / nt
                    } else if d == s {
                        o.initial_sensitivity
                    } else {
                        (1.0 - o.initial_sensitivity) / (nt - 1.0)
                    };
                }
            }
            m
        })
        .collect();
    let posterior = |theta: &Vec<Vec<Vec<f64>>>, prior: &Vec<f64>| -> Vec<Vec<f64>> {
        (0..n)
            .map(|v| {
                let mut w: Vec<f64> = (0..k)
                    .map(|s| {
                        (0..raters.len())
                            .filter_map(|j| vote(j, v).map(|d| theta[j][d][s]))
                            .product::<f64>()
                            * prior[s]
                    })
                    .collect();
                let sum: f64 = w.iter().sum();
                if sum > 0.0 {
                    w.iter_mut().for_each(|x| *x /= sum);
                    w
                } else {
                    prior.clone()
                }
            })
            .collect()
    };
    let (mut iterations, mut converged) = (0, false);
    while iterations < o.max_iterations {
        let w = posterior(&theta, &prior);
        let mut change: f64 = 0.0;
        if o.prior == Prior::Estimated {
            for (s, p) in prior.iter_mut().enumerate() {
                let new = w.iter().map(|w| w[s]).sum::<f64>() / n as f64;
                change = change.max((new - *p).abs());
                *p = new;
            }
        }
        let mut num = vec![vec![vec![0.0; k]; k]; raters.len()];
        let mut den = vec![vec![0.0; k]; raters.len()];
        for (v, wv) in w.iter().enumerate() {
            for j in 0..raters.len() {
                if let Some(d) = vote(j, v) {
                    for s in 0..k {
                        num[j][d][s] += wv[s];
                        den[j][s] += wv[s];
                    }
                }
            }
        }
        for (j, m) in theta.iter_mut().enumerate() {
            for (d, row) in m.iter_mut().enumerate() {
                for s in (0..k).filter(|&s| den[j][s] > 0.0) {
                    let new = num[j][d][s] / den[j][s];
                    change = change.max((new - row[s]).abs());
                    row[s] = new;
                }
            }
        }
        iterations += 1;
        if change < o.tolerance {
            converged = true;
            break;
        }
    }
    let labels = posterior(&theta, &prior)
        .iter()
        .map(|w| {
            let max = w.iter().copied().fold(0.0, f64::max);
            (0..k).find(|&s| w[s] >= max * (1.0 - 1e-12)).unwrap() as u8
        })
        .collect();
    Naive {
        labels,
        theta,
        prior,
        iterations,
        converged,
    }
}

#[test]
fn pattern_em_matches_naive_per_voxel_em() {
    let truth = phantom(16);
    let mut rng = Rng(0x5EED_0003);
    let raters: Vec<Vec<u8>> = [(0.1, 0.0), (0.3, 0.5), (0.4, 0.7)]
        .iter()
        .map(|&(flip, bias)| rater(&truth, flip, bias, &mut rng))
        .collect();
    let raters: Vec<&[u8]> = raters.iter().map(Vec::as_slice).collect();
    for trust in [
        [Trust::all(); 3],
        [
            plane_trust("sagittal"),
            plane_trust("coronal"),
            plane_trust("axial"),
        ],
    ] {
        for options in [
            StapleOptions::default(),
            StapleOptions {
                max_iterations: 3,
                ..StapleOptions::default()
            },
            StapleOptions {
                initial_sensitivity: 0.8,
                ..StapleOptions::default()
            },
            StapleOptions {
                prior: Prior::Votes,
                ..StapleOptions::default()
            },
        ] {
            let fused = staple(&raters, K, &trust, &options).unwrap();
            let naive = naive_staple(&raters, K, &trust, &options);
            assert_eq!(fused.iterations, naive.iterations);
            assert_eq!(fused.converged, naive.converged);
            assert_eq!(fused.labels, naive.labels);
            for (p, q) in fused.prior.iter().zip(&naive.prior) {
                assert!((p - q).abs() < 1e-12);
            }
            for (m, n) in fused.confusion.iter().zip(&naive.theta) {
                for (rm, rn) in m.iter().zip(n) {
                    for (x, y) in rm.iter().zip(rn) {
                        assert!((x - y).abs() < 1e-9, "{x} vs {y}");
                    }
                }
            }
        }
        // Majority vote against a direct per-voxel count.
        let majority = majority_vote(&raters, K, &trust).unwrap();
        for v in 0..truth.len() {
            let votes: Vec<u8> = (0..3)
                .filter(|&j| trust[j].trusts(raters[j][v]))
                .map(|j| raters[j][v])
                .collect();
            let tally = |l: u8| votes.iter().filter(|&&x| x == l).count();
            let best = votes.iter().map(|&l| tally(l)).max().unwrap_or(0);
            let expected = votes
                .iter()
                .copied()
                .find(|&l| tally(l) == best)
                .unwrap_or(0);
            assert_eq!(majority[v], expected, "voxel {v}");
        }
    }
}

#[test]
fn majority_vote_breaks_ties_by_rater_order() {
    let r0: &[u8] = &[1, 1, 2, 3, 0, 3];
    let r1: &[u8] = &[2, 2, 2, 1, 0, 3];
    let r2: &[u8] = &[3, 2, 1, 2, 0, 3];
    let trust = [Trust::all(), Trust::all(), Trust::dropping(&[3])];
    let got = majority_vote(&[r0, r1, r2], 4, &trust).unwrap();
    // voxel 0: 1, 2 and an abstention → tie, r0 first; 1: 2 wins 2:1; 2: 2 wins;
    // 3: 3, 1, 2 → tie, r0 first; 4: unanimous 0; 5: 3 wins 2:0 (r2 abstains).
    assert_eq!(got, [1, 2, 2, 3, 0, 3]);
    let none = Trust::dropping(&[0, 1, 2, 3]);
    let got = majority_vote(&[r0, r1], 4, &[none, Trust::dropping(&[0, 1, 2])]).unwrap();
    // Only r1's 3 counts; everything else abstains → 0.
    assert_eq!(got, [0, 0, 0, 0, 0, 3]);
}

#[test]
fn staple_breaks_ties_towards_the_lowest_label() {
    // Two raters that disagree symmetrically: 1 and 2 are equally likely at the first two voxels.
    let r0: &[u8] = &[1, 2, 0, 0];
    let r1: &[u8] = &[2, 1, 0, 0];
    for prior in [Prior::Estimated, Prior::Votes] {
        let o = StapleOptions {
            prior,
            ..StapleOptions::default()
        };
        let fused = staple(&[r0, r1], 3, &[Trust::all(); 2], &o).unwrap();
        assert_eq!(fused.labels, [1, 1, 0, 0], "{prior:?}");
        let fused = staple(&[r1, r0], 3, &[Trust::all(); 2], &o).unwrap();
        assert_eq!(fused.labels, [1, 1, 0, 0], "{prior:?}");
    }
    // Every rater abstains at voxel 0: the prior decides, here background.
    let t = [Trust::dropping(&[2]); 2];
    let fused = staple(
        &[&[2, 0, 0, 1], &[2, 0, 0, 1]],
        3,
        &t,
        &StapleOptions::default(),
    )
    .unwrap();
    assert_eq!(fused.labels, [0, 0, 0, 1]);
}

#[test]
fn plane_trust_follows_the_domain() {
    assert_eq!(plane_trust("sagittal"), Trust::all());
    assert_eq!(plane_trust("coronal"), Trust::dropping(&[1]));
    assert_eq!(plane_trust("Axial"), Trust::dropping(&[3, 4, 5, 6]));
    let axial = plane_trust("axial");
    assert!((0..=255u8).all(|l| axial.trusts(l) != (3..=6).contains(&l)));
    let high = Trust::dropping(&[200, 255]);
    assert!(!high.trusts(200) && !high.trusts(255) && high.trusts(199));
}

#[test]
fn bad_inputs_are_rejected() {
    let ok: &[u8] = &[0, 1, 2];
    let t = [Trust::all(); 2];
    let o = StapleOptions::default();
    assert_eq!(majority_vote(&[], 3, &[]), Err(FusionError::NoRaters));
    assert_eq!(staple(&[], 3, &[], &o), Err(FusionError::NoRaters));
    assert_eq!(
        staple(&[ok, &[0, 1]], 3, &t, &o),
        Err(FusionError::LengthMismatch {
            rater: 1,
            len: 2,
            expected: 3
        })
    );
    assert_eq!(
        majority_vote(&[ok, &[0, 1, 3]], 3, &t),
        Err(FusionError::LabelOutOfRange {
            rater: 1,
            voxel: 2,
            label: 3,
            num_classes: 3
        })
    );
    let long: Vec<u8> = (0..10_000).map(|v| u8::from(v == 9_000) * 7).collect();
    assert_eq!(
        staple(&[&long], 7, &[Trust::all()], &o),
        Err(FusionError::LabelOutOfRange {
            rater: 0,
            voxel: 9_000,
            label: 7,
            num_classes: 7
        })
    );
    assert_eq!(
        staple(&[ok, ok], 3, &t[..1], &o),
        Err(FusionError::TrustCount {
            trusts: 1,
            raters: 2
        })
    );
    for num_classes in [0, 257] {
        assert_eq!(
            majority_vote(&[ok, ok], num_classes, &t),
            Err(FusionError::ClassCount { num_classes })
        );
    }
    for bad in [
        StapleOptions {
            tolerance: -1.0,
            ..o
        },
        StapleOptions {
            tolerance: f64::NAN,
            ..o
        },
        StapleOptions {
            initial_sensitivity: 0.0,
            ..o
        },
        StapleOptions {
            initial_sensitivity: 1.5,
            ..o
        },
    ] {
        let err = staple(&[ok, ok], 3, &t, &bad).unwrap_err();
        assert!(matches!(err, FusionError::Option { .. }), "{err}");
    }
    // The error names what is wrong.
    let msg = majority_vote(&[ok, &[0, 1, 3]], 3, &t)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("rater 1") && msg.contains("label 3") && msg.contains("voxel 2"),
        "{msg}"
    );
}

#[test]
fn the_hashed_index_agrees_with_the_dense_one() {
    let truth = phantom(16);
    let mut rng = Rng(0x5EED_0004);
    let raters: Vec<Vec<u8>> = (0..3).map(|_| rater(&truth, 0.3, 0.5, &mut rng)).collect();
    let refs: Vec<&[u8]> = raters.iter().map(Vec::as_slice).collect();
    let trust = [
        plane_trust("sagittal"),
        plane_trust("coronal"),
        plane_trust("axial"),
    ];
    let o = StapleOptions::default();
    let dense = staple(&refs, K, &trust, &o).unwrap();
    let hashed = staple_with(&refs, K, &trust, &o, 0).unwrap();
    assert_eq!(dense.labels, hashed.labels);
    assert_eq!(dense.iterations, hashed.iterations);
    for (m, n) in dense
        .confusion
        .iter()
        .flatten()
        .zip(hashed.confusion.iter().flatten())
    {
        for (x, y) in m.iter().zip(n) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
    }
    assert_eq!(
        majority_vote(&refs, K, &trust).unwrap(),
        majority_vote_with(&refs, K, &trust, 0).unwrap()
    );
    // Seven raters with ten classes need 11^7 codes, more than the dense table: hashed for real.
    let raters: Vec<Vec<u8>> = (0..7).map(|_| rater(&truth, 0.3, 0.0, &mut rng)).collect();
    let refs: Vec<&[u8]> = raters.iter().map(Vec::as_slice).collect();
    let trust = vec![Trust::all(); 7];
    let fused = staple(&refs, 10, &trust, &o).unwrap();
    let majority = majority_vote(&refs, 10, &trust).unwrap();
    let (acc_st, acc_mv) = (accuracy(&fused.labels, &truth), accuracy(&majority, &truth));
    assert!(
        acc_st >= acc_mv && acc_mv > 0.95,
        "STAPLE {acc_st}, majority {acc_mv}"
    );
}

/// By hand: `cargo test --release --lib fusion -- --ignored --nocapture`.
#[test]
#[ignore = "timing, run by hand in release"]
fn time_a_full_size_volume() {
    let n = 384 * 384 * 160;
    let mut rng = Rng(0x5EED_0005);
    let truth: Vec<u8> = (0..n).map(|v| ((v / 384 % 384) * 10 / 384) as u8).collect();
    let raters: Vec<Vec<u8>> = [0.05, 0.2, 0.3]
        .iter()
        .map(|&flip| {
            truth
                .iter()
                .map(|&s| {
                    if rng.unit() < flip {
                        rng.other(s, 10)
                    } else {
                        s
                    }
                })
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = raters.iter().map(Vec::as_slice).collect();
    // Uniform errors, also into the untrusted labels: abstaining then hints at the truth, which
    // STAPLE ignores, so it is not expected to beat majority vote here (module notes).
    let trust = [
        plane_trust("sagittal"),
        plane_trust("coronal"),
        plane_trust("axial"),
    ];
    let t = std::time::Instant::now();
    let fused = staple(&refs, 10, &trust, &StapleOptions::default()).unwrap();
    let staple_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let majority = majority_vote(&refs, 10, &trust).unwrap();
    let majority_s = t.elapsed().as_secs_f64();
    println!(
        "{n} voxels × 3 raters: STAPLE {staple_s:.3} s ({} iterations), majority {majority_s:.3} s; \
         accuracy {:.4} / {:.4}",
        fused.iterations,
        accuracy(&fused.labels, &truth),
        accuracy(&majority, &truth)
    );
}
