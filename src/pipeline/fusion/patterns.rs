//! Voxels compressed to their distinct tuples of rater votes (with counts): STAPLE without a
//! spatial prior depends on a voxel only through its tuple, so EM runs on the patterns.

use std::collections::HashMap;

use super::Trust;

/// The symbol of an abstaining rater in a vote tuple.
pub(super) const ABSTAIN: u16 = u16::MAX;
/// The largest dense code table, in entries (codes must also fit in u32).
pub(super) const DENSE_LIMIT: usize = 1 << 20;
/// Voxels per block when coding tuples.
pub(super) const CHUNK: usize = 4096;

/// The distinct vote tuples of a set of raters, with their voxel counts.
pub(super) struct Patterns {
    /// One symbol per rater per pattern (label, or [`ABSTAIN`]), pattern after pattern.
    pub(super) votes: Vec<u16>,
    /// Voxels per pattern.
    pub(super) counts: Vec<u64>,
    pub(super) index: Index,
}

/// How a voxel finds its pattern.
pub(super) enum Index {
    /// Code = Σ_j symbol_j · base^j with base = num_classes + 1 (num_classes standing for
    /// abstention); `luts[j][label]` is rater j's term, `ids[code]` the pattern (or `u32::MAX`).
    Dense {
        luts: Vec<[u32; 256]>,
        ids: Vec<u32>,
    },
    /// The tuple itself as the key.
    Hashed {
        symbols: Vec<[u16; 256]>,
        ids: HashMap<Box<[u16]>, u32>,
    },
}

/// Calls `f(start, codes)` for consecutive blocks of voxels with their dense codes.
pub(super) fn for_each_code(
    raters: &[&[u8]],
    luts: &[[u32; 256]],
    mut f: impl FnMut(usize, &[u32]),
) {
    let n = raters.first().map_or(0, |r| r.len());
    let mut codes = [0u32; CHUNK];
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        let codes = &mut codes[..end - start];
        codes.fill(0);
        // Rater by rater, so each pass streams one slice.
        for (r, lut) in raters.iter().zip(luts) {
            for (c, &l) in codes.iter_mut().zip(&r[start..end]) {
                *c += lut[usize::from(l)];
            }
        }
        f(start, codes);
        start = end;
    }
}

impl Patterns {
    /// Assumes validated input. A dense table is used if it has at most `dense_limit` entries.
    pub(super) fn collect(
        raters: &[&[u8]],
        num_classes: usize,
        trust: &[Trust],
        dense_limit: usize,
    ) -> Self {
        let symbols: Vec<[u16; 256]> = trust
            .iter()
            .map(|t| {
                std::array::from_fn(|l| {
                    let l = l as u8;
                    if usize::from(l) < num_classes && t.trusts(l) {
                        u16::from(l)
                    } else {
                        ABSTAIN
                    }
                })
            })
            .collect();
        let base = num_classes + 1;
        let table = (0..raters.len()).try_fold(1usize, |acc, _| {
            acc.checked_mul(base).filter(|&s| s <= dense_limit)
        });
        match table {
            Some(size) => Self::dense(raters, num_classes, &symbols, size),
            None => Self::hashed(raters, symbols),
        }
    }

    pub(super) fn dense(
        raters: &[&[u8]],
        num_classes: usize,
        symbols: &[[u16; 256]],
        size: usize,
    ) -> Self {
        let base = num_classes + 1;
        let mut luts = Vec::with_capacity(raters.len());
        let mut stride = 1usize;
        for sym in symbols {
            // size ≤ DENSE_LIMIT, so every code fits in u32.
            luts.push(std::array::from_fn(|l| {
                let s = if sym[l] == ABSTAIN {
                    num_classes
                } else {
                    usize::from(sym[l])
                };
                (s * stride) as u32
            }));
            stride *= base;
        }
        let mut counts_by_code = vec![0u64; size];
        for_each_code(raters, &luts, |_, codes| {
            for &c in codes {
                counts_by_code[c as usize] += 1;
            }
        });
        let mut ids = vec![u32::MAX; size];
        let (mut votes, mut counts) = (Vec::new(), Vec::new());
        for (code, &count) in counts_by_code.iter().enumerate().filter(|(_, &c)| c > 0) {
            ids[code] = counts.len() as u32;
            counts.push(count);
            let mut rest = code;
            for _ in 0..raters.len() {
                let s = rest % base;
                rest /= base;
                votes.push(if s == num_classes { ABSTAIN } else { s as u16 });
            }
        }
        Self {
            votes,
            counts,
            index: Index::Dense { luts, ids },
        }
    }

    pub(super) fn hashed(raters: &[&[u8]], symbols: Vec<[u16; 256]>) -> Self {
        let n = raters.first().map_or(0, |r| r.len());
        let mut ids: HashMap<Box<[u16]>, u32> = HashMap::new();
        let (mut votes, mut counts) = (Vec::new(), Vec::new());
        let mut key = vec![0u16; raters.len()];
        for v in 0..n {
            for ((k, r), sym) in key.iter_mut().zip(raters).zip(&symbols) {
                *k = sym[usize::from(r[v])];
            }
            match ids.get(key.as_slice()) {
                Some(&id) => counts[id as usize] += 1,
                None => {
                    ids.insert(key.clone().into_boxed_slice(), counts.len() as u32);
                    counts.push(1u64);
                    votes.extend_from_slice(&key);
                }
            }
        }
        Self {
            votes,
            counts,
            index: Index::Hashed { symbols, ids },
        }
    }

    /// Each voxel's label, given each pattern's.
    pub(super) fn map_back(&self, raters: &[&[u8]], decided: &[u8]) -> Vec<u8> {
        let n = raters.first().map_or(0, |r| r.len());
        let mut out = vec![0u8; n];
        match &self.index {
            Index::Dense { luts, ids } => {
                let label_by_code: Vec<u8> = ids
                    .iter()
                    .map(|&id| decided.get(id as usize).copied().unwrap_or(0))
                    .collect();
                for_each_code(raters, luts, |start, codes| {
                    for (o, &c) in out[start..].iter_mut().zip(codes) {
                        *o = label_by_code[c as usize];
                    }
                });
            }
            Index::Hashed { symbols, ids } => {
                let mut key = vec![0u16; raters.len()];
                for (v, o) in out.iter_mut().enumerate() {
                    for ((k, r), sym) in key.iter_mut().zip(raters).zip(symbols) {
                        *k = sym[usize::from(r[v])];
                    }
                    // Every voxel's tuple was seen when the patterns were collected.
                    if let Some(&id) = ids.get(key.as_slice()) {
                        *o = decided[id as usize];
                    }
                }
            }
        }
        out
    }
}
