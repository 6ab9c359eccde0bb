//! Cartilage regions in the label volume: tibial medial/lateral and patellar as labelled, and
//! the femoral cartilage split into five subregions the way pymskt's
//! `get_knee_segmentation_with_femur_subregions` does, re-derived here in patient axes.
//!
//! The femoral cartilage is projected onto the axial plane (medial–lateral × anterior–
//! posterior, LPS x × y, bins of the volume's largest spacing), holes in that footprint are
//! filled, and then:
//! - **Trochlear notch.** Two guesses of its medial–lateral position: the row (ML bin) whose
//!   cartilage centroid is most anterior, ignoring the outer 20 % of rows at each end, and the
//!   footprint's centroid. Between them, widened by a quarter of the cartilage's ML extent,
//!   the notch is the row whose most posterior cartilage is the most anterior (the gap between
//!   the condyles); its AP position is one bin behind that.
//! - **Anterior / weight-bearing / posterior.** In front of the notch is anterior (trochlea).
//!   The weight-bearing band runs from the notch back 0.6 of the way to the most posterior
//!   cartilage; behind it is posterior. Cartilage in the band that lies high up (above a cut
//!   0.33 of the way from the mean height of the cartilage in its AP bin to the top of all
//!   femoral cartilage) is the posterior condyles wrapping round, so it is posterior too.
//! - **Medial / lateral.** The notch row splits the condyles; the medial side is the one that
//!   holds the medial tibial cartilage's centroid (or, without it, not the lateral one's;
//!   without either, +x, the medial side of a right knee).
//!
//! pymskt (since 2025) first registers the femur to a reference before this; we work in LPS
//! axes directly, which are the scanner's anatomical axes and so within a few degrees of the
//! knee's for a knee positioned in a coil.

use crate::pipeline::label_map::LabelMap;
use crate::volume::Volume;

/// Patellar cartilage region (DOMAIN.md).
pub const PATELLAR: u8 = 1;
/// Medial tibial cartilage region.
pub const MEDIAL_TIBIAL: u8 = 3;
/// Lateral tibial cartilage region.
pub const LATERAL_TIBIAL: u8 = 4;
/// Anterior femoral cartilage (trochlea).
pub const ANTERIOR_FEMORAL: u8 = 11;
/// Medial weight-bearing femoral cartilage.
pub const MEDIAL_WB_FEMORAL: u8 = 12;
/// Lateral weight-bearing femoral cartilage.
pub const LATERAL_WB_FEMORAL: u8 = 13;
/// Medial posterior femoral cartilage.
pub const MEDIAL_POSTERIOR_FEMORAL: u8 = 14;
/// Lateral posterior femoral cartilage.
pub const LATERAL_POSTERIOR_FEMORAL: u8 = 15;
/// The five femoral regions.
pub const FEMORAL: [u8; 5] = [11, 12, 13, 14, 15];

/// Share of the notch → posterior distance that is weight-bearing.
pub const WB_FRACTION: f64 = 0.6;
/// Where the "too high for weight-bearing" cut lies between the bin's mean and the top.
pub const SUPERIOR_RATIO: f64 = 0.33;

/// The region volume: DOMAIN.md region labels on the cartilage voxels, 0 elsewhere, plus notes
/// for the report (e.g. how medial was decided).
pub fn region_volume<T: Copy + Into<u16>>(
    labels: &Volume<T>,
    map: &LabelMap,
) -> (Volume<u8>, Vec<String>) {
    let mut notes = Vec::new();
    let is = |l: T, want: Option<u16>| want.is_some_and(|w| l.into() == w);
    let mut out = labels.map(|&l| {
        if is(l, map.patellar_cartilage) {
            PATELLAR
        } else if is(l, map.medial_tibial_cartilage) {
            MEDIAL_TIBIAL
        } else if is(l, map.lateral_tibial_cartilage) {
            LATERAL_TIBIAL
        } else {
            0
        }
    });
    let g = *labels.geometry();
    let dims = labels.dims();
    let point = |o: usize| {
        g.index_to_point([
            (o % dims[0]) as f64,
            ((o / dims[0]) % dims[1]) as f64,
            (o / (dims[0] * dims[1])) as f64,
        ])
    };
    let fem: Vec<usize> = (0..labels.len())
        .filter(|&o| is(labels.data()[o], map.femoral_cartilage))
        .collect();
    if fem.is_empty() {
        return (out, notes);
    }
    let pts: Vec<[f64; 3]> = fem.iter().map(|&o| point(o)).collect();
    let centroid_x = |want: Option<u16>| {
        let xs: Vec<f64> = (0..labels.len())
            .filter(|&o| is(labels.data()[o], want))
            .map(|o| point(o)[0])
            .collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let split = FemoralSplit::find(&pts, g.spacing.iter().copied().fold(0.0, f64::max));
    let medial_positive = match (
        centroid_x(map.medial_tibial_cartilage),
        centroid_x(map.lateral_tibial_cartilage),
    ) {
        (Some(m), _) => m > split.notch_x,
        (None, Some(l)) => l <= split.notch_x,
        (None, None) => {
            notes.push(
                "no tibial cartilage: femoral medial side assumed at +x (a right knee)".into(),
            );
            true
        }
    };
    for (&o, p) in fem.iter().zip(&pts) {
        out.data_mut()[o] = split.region(*p, medial_positive);
    }
    (out, notes)
}

/// Where the femoral cartilage is cut, in LPS mm.
#[derive(Debug, Clone)]
pub struct FemoralSplit {
    /// Medial–lateral (x) position of the trochlear notch.
    pub notch_x: f64,
    /// Anterior boundary of the weight-bearing band (y; smaller y is anterior).
    pub notch_y: f64,
    /// Posterior boundary of the weight-bearing band (y).
    pub posterior_wb_y: f64,
    bin: f64,
    y0: f64,
    /// Per AP bin, the height (z) above which cartilage counts as posterior.
    superior_cut: Vec<f64>,
}

impl FemoralSplit {
    /// Finds the cuts from the femoral cartilage voxel centres `pts` (non-empty).
    pub fn find(pts: &[[f64; 3]], bin: f64) -> FemoralSplit {
        let bin = if bin > 0.0 { bin } else { 1.0 };
        let min = |a: usize| pts.iter().map(|p| p[a]).fold(f64::INFINITY, f64::min);
        let (x0, y0) = (min(0), min(1));
        let cell = |p: &[f64; 3]| {
            (
                ((p[0] - x0) / bin).floor() as usize,
                ((p[1] - y0) / bin).floor() as usize,
            )
        };
        let rows = pts.iter().map(|p| cell(p).0).max().unwrap_or(0) + 1;
        let cols = pts.iter().map(|p| cell(p).1).max().unwrap_or(0) + 1;
        let mut foot = vec![false; rows * cols];
        for p in pts {
            let (r, c) = cell(p);
            foot[r * cols + c] = true;
        }
        fill_holes(&mut foot, rows, cols);
        let foot = &foot;
        let row_cols = move |r: usize| (0..cols).filter(move |&c| foot[r * cols + c]);

        // First guess: the most anterior row centroid, outer 20 % of rows ignored.
        let filled: Vec<usize> = (0..rows)
            .filter(|&r| row_cols(r).next().is_some())
            .collect();
        let (rmin, rmax) = (filled[0], filled[filled.len() - 1]);
        let trim = (0.2 * (rmax - rmin) as f64) as usize;
        let (lo, hi) = if rmin + trim < rmax - trim {
            (rmin + trim, rmax - trim)
        } else {
            (rmin, rmax + 1)
        };
        let first_guess = (lo..hi)
            .filter_map(|r| {
                let cs: Vec<usize> = row_cols(r).collect();
                (!cs.is_empty()).then(|| (r, cs.iter().sum::<usize>() as f64 / cs.len() as f64))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(rmin, |(r, _)| r);
        let (mut sum, mut count) = (0.0, 0usize);
        for r in 0..rows {
            for _ in row_cols(r) {
                sum += r as f64;
                count += 1;
            }
        }
        let second_guess = (sum / count.max(1) as f64) as usize;
        let widen = ((rmax - rmin + 1) as f64 * 0.25) as usize;
        let from = first_guess
            .min(second_guess)
            .saturating_sub(widen)
            .max(rmin);
        let to = (first_guess.max(second_guess) + widen).min(rmax);
        let mut notch = (first_guess, cols);
        for r in from..=to {
            let back = row_cols(r).max().unwrap_or(cols);
            if back < notch.1 {
                notch = (r, back);
            }
        }
        let notch_col = (notch.1 + 1).min(cols) as f64;
        let back = pts.iter().map(|p| cell(p).1).max().unwrap_or(0) as f64;
        let wb_col = ((back - notch_col) * WB_FRACTION + notch_col).round();

        // Superior cut per AP bin, carried into bins without cartilage.
        let top = pts.iter().map(|p| p[2]).fold(f64::NEG_INFINITY, f64::max);
        let mut zsum = vec![(0.0, 0usize); cols];
        for p in pts {
            let c = cell(p).1;
            zsum[c].0 += p[2];
            zsum[c].1 += 1;
        }
        let mut superior_cut = vec![f64::NAN; cols];
        let mut last = f64::NAN;
        for (c, &(s, n)) in zsum.iter().enumerate() {
            if n > 0 {
                last = (s / n as f64) * (1.0 - SUPERIOR_RATIO) + top * SUPERIOR_RATIO;
            }
            superior_cut[c] = last;
        }
        let first = superior_cut
            .iter()
            .copied()
            .find(|v| v.is_finite())
            .unwrap_or(top);
        for v in &mut superior_cut {
            if !v.is_finite() {
                *v = first;
            }
        }
        FemoralSplit {
            notch_x: x0 + (notch.0 as f64 + 0.5) * bin,
            notch_y: y0 + notch_col * bin,
            posterior_wb_y: y0 + wb_col * bin,
            bin,
            y0,
            superior_cut,
        }
    }

    /// The region of a femoral cartilage point (LPS mm).
    pub fn region(&self, p: [f64; 3], medial_positive: bool) -> u8 {
        if p[1] < self.notch_y {
            return ANTERIOR_FEMORAL;
        }
        let medial = (p[0] >= self.notch_x) == medial_positive;
        let c = (((p[1] - self.y0) / self.bin).floor().max(0.0) as usize)
            .min(self.superior_cut.len().saturating_sub(1));
        let high = self.superior_cut.get(c).is_some_and(|&cut| p[2] > cut);
        let weight_bearing = p[1] < self.posterior_wb_y && !high;
        match (weight_bearing, medial) {
            (true, true) => MEDIAL_WB_FEMORAL,
            (true, false) => LATERAL_WB_FEMORAL,
            (false, true) => MEDIAL_POSTERIOR_FEMORAL,
            (false, false) => LATERAL_POSTERIOR_FEMORAL,
        }
    }
}

/// Sets every false cell not connected (4-neighbourhood) to the grid's border.
fn fill_holes(grid: &mut [bool], rows: usize, cols: usize) {
    let mut outside = vec![false; rows * cols];
    let mut stack: Vec<usize> = (0..rows * cols)
        .filter(|&i| {
            let (r, c) = (i / cols, i % cols);
            (r == 0 || c == 0 || r + 1 == rows || c + 1 == cols) && !grid[i]
        })
        .collect();
    for &i in &stack {
        outside[i] = true;
    }
    while let Some(i) = stack.pop() {
        let (r, c) = (i / cols, i % cols);
        let near = [
            (r > 0).then(|| i - cols),
            (r + 1 < rows).then(|| i + cols),
            (c > 0).then(|| i - 1),
            (c + 1 < cols).then(|| i + 1),
        ];
        for j in near.into_iter().flatten() {
            if !grid[j] && !outside[j] {
                outside[j] = true;
                stack.push(j);
            }
        }
    }
    for (g, o) in grid.iter_mut().zip(outside) {
        *g = !o;
    }
}
