//! Clean-up of a label volume after inference: keep the largest connected component of each
//! label (stray islands are false positives in a knee), and fill holes inside the bones
//! (labels 7–9), whose marrow the network may leave speckled.

use std::collections::VecDeque;

use crate::volume::Volume;

/// Bones, whose interiors are filled.
pub const BONES: [u8; 3] = [7, 8, 9];

fn neighbours(dims: [usize; 3], idx: usize) -> impl Iterator<Item = usize> {
    let [nx, ny, nz] = dims;
    let (i, j, k) = (idx % nx, (idx / nx) % ny, idx / (nx * ny));
    let plane = nx * ny;
    [
        (i > 0).then(|| idx - 1),
        (i + 1 < nx).then(|| idx + 1),
        (j > 0).then(|| idx - nx),
        (j + 1 < ny).then(|| idx + nx),
        (k > 0).then(|| idx - plane),
        (k + 1 < nz).then(|| idx + plane),
    ]
    .into_iter()
    .flatten()
}

/// 6-connected components of the voxels where `inside` holds; returns a component id per voxel
/// (0 = outside) and each component's size (index 0 unused).
fn components(dims: [usize; 3], inside: impl Fn(usize) -> bool) -> (Vec<u32>, Vec<usize>) {
    let n = dims.iter().product();
    let mut id = vec![0u32; n];
    let mut sizes = vec![0usize];
    let mut queue = VecDeque::new();
    for start in 0..n {
        if id[start] != 0 || !inside(start) {
            continue;
        }
        let c = sizes.len() as u32;
        sizes.push(0);
        id[start] = c;
        queue.push_back(start);
        while let Some(v) = queue.pop_front() {
            sizes[c as usize] += 1;
            for w in neighbours(dims, v) {
                if id[w] == 0 && inside(w) {
                    id[w] = c;
                    queue.push_back(w);
                }
            }
        }
    }
    (id, sizes)
}

/// Keeps only the largest 6-connected component of each label; the rest becomes background.
pub fn keep_largest_components(labels: &mut Volume<u8>) {
    let dims = labels.dims();
    let present: std::collections::BTreeSet<u8> =
        labels.data().iter().copied().filter(|&l| l != 0).collect();
    for label in present {
        let (id, sizes) = {
            let data = labels.data();
            components(dims, |v| data[v] == label)
        };
        let Some(largest) = (1..sizes.len()).max_by_key(|&c| sizes[c]) else {
            continue;
        };
        for (v, c) in labels.data_mut().iter_mut().zip(&id) {
            if *c != 0 && *c as usize != largest {
                *v = 0;
            }
        }
    }
}

/// Fills background cavities fully enclosed by one bone label (not touching the volume's edge
/// or another label).
pub fn fill_bone_holes(labels: &mut Volume<u8>) {
    let dims = labels.dims();
    for bone in BONES {
        let (id, sizes) = {
            let data = labels.data();
            components(dims, |v| data[v] != bone)
        };
        // A component is a hole when it touches neither the border nor a voxel of another label.
        let mut is_hole = vec![true; sizes.len()];
        let [nx, ny, nz] = dims;
        let data = labels.data();
        for (v, &c) in id.iter().enumerate() {
            if c == 0 || !is_hole[c as usize] {
                continue;
            }
            let (i, j, k) = (v % nx, (v / nx) % ny, v / (nx * ny));
            let border = i == 0 || j == 0 || k == 0 || i + 1 == nx || j + 1 == ny || k + 1 == nz;
            if border || data[v] != 0 {
                is_hole[c as usize] = false;
            }
        }
        for (v, c) in labels.data_mut().iter_mut().zip(&id) {
            if *c != 0 && is_hole[*c as usize] {
                *v = bone;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    #[test]
    fn islands_go_and_bone_holes_are_filled() {
        let dims = [12, 12, 12];
        let mut v = Volume::filled(dims, 0u8, Geometry::default());
        // A femur cube with a hollow centre, and a one-voxel island of the same label.
        for k in 2..9 {
            for j in 2..9 {
                for i in 2..9 {
                    v.set(i, j, k, 7);
                }
            }
        }
        v.set(5, 5, 5, 0);
        v.set(4, 5, 5, 0);
        v.set(10, 10, 10, 7);
        // Cartilage touching the bone is not a hole in it.
        v.set(1, 5, 5, 2);
        keep_largest_components(&mut v);
        assert_eq!(v[[10, 10, 10]], 0, "island removed");
        fill_bone_holes(&mut v);
        assert_eq!((v[[5, 5, 5]], v[[4, 5, 5]]), (7, 7), "hole filled");
        assert_eq!(v[[1, 5, 5]], 2, "other labels untouched");
        assert_eq!(v[[0, 0, 0]], 0);
    }
}
