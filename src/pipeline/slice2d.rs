//! Slice-by-slice segmentation with a 2D network (`slice2d`: the Goyal / DOSMA knee U-Nets).
//!
//! The volume is reoriented to the manifest's `orientation` (no interpolation) and normalised as
//! a whole; slices are taken along its third axis k, so the plane follows from k's letter (L/R
//! sagittal, A/P coronal, S/I axial). Each slice, (I, J) voxels, is resized to `slice_size`
//! `[H, W]` with bilinear interpolation (`align_corners = false`, as PyTorch's and DOSMA's
//! resizing), the network gives logits (N, classes, H, W), and the argmax is brought back to
//! (I, J) with nearest neighbour (centre-aligned: pixel d of I takes resized pixel
//! ⌊(d + ½) · H / I⌋, the same grid convention as the bilinear step). Labels are then reoriented
//! back to exactly the source grid.

use tch::{CModule, Device, Kind, Tensor};

use super::models::{ModelError, ModelSpec, Normalization};
use super::segment::{
    back_to_source, forward_tta, to_tensor, zscore, SegmentError, SegmentVolumeError,
};
use crate::volume::{reorient_to, Volume};

/// Slices per forward pass when the manifest gives no `batch`.
pub const DEFAULT_BATCH: usize = 8;

/// The plane of the slices a model with this orientation code sees: from the third letter,
/// `"sagittal"` (L/R), `"coronal"` (A/P) or `"axial"` (S/I); `None` for a malformed code.
pub fn plane_of(orientation: &str) -> Option<&'static str> {
    let letters: Vec<char> = orientation.chars().collect();
    if letters.len() != 3 {
        return None;
    }
    match letters[2].to_ascii_uppercase() {
        'L' | 'R' => Some("sagittal"),
        'A' | 'P' => Some("coronal"),
        'S' | 'I' => Some("axial"),
        _ => None,
    }
}

/// For each of `original` pixels along one axis, the pixel of the `resized` axis whose centre
/// is nearest (ties to the later pixel), as indices for `index_select`.
fn nearest_back(original: i64, resized: i64) -> Tensor {
    let scale = resized as f64 / original as f64;
    let idx: Vec<i64> = (0..original)
        .map(|d| (((d as f64 + 0.5) * scale).floor() as i64).clamp(0, resized - 1))
        .collect();
    Tensor::from_slice(&idx)
}

/// Segments `image` with a `slice2d` model (see the module documentation); labels lie on
/// exactly `image`'s grid. With `tta`, the softmax is averaged over the manifest's in-plane
/// `mirror_axes` (0 = H, 1 = W).
pub fn segment_slices(
    image: &Volume<f32>,
    spec: &ModelSpec,
    model: &CModule,
    device: Device,
    tta: bool,
) -> Result<Volume<u8>, SegmentVolumeError> {
    let m = &spec.manifest;
    let (Some(orientation), Some([h, w]), Some(classes)) =
        (m.orientation.as_deref(), m.slice_size, m.num_classes)
    else {
        return Err(ModelError::KindNotAvailable {
            name: m.name.clone(),
            kind: m.kind.clone(),
        }
        .into());
    };
    let (h, w) = (h as i64, w as i64);
    let canon = reorient_to(image, orientation)?;
    let dims = canon.dims();
    let geometry = *canon.geometry();
    let x = to_tensor(&canon);
    drop(canon);
    let x = match m.normalization {
        Some(Normalization::None) => x,
        _ => zscore(&x),
    };
    let [ni, nj, nk] = dims.map(|d| d as i64);
    let resized = (ni, nj) != (h, w);
    let rows = nearest_back(ni, h).to_device(device);
    let cols = nearest_back(nj, w).to_device(device);
    let mirror: Vec<i64> = if tta {
        m.mirror_axes.iter().map(|&a| a as i64).collect()
    } else {
        Vec::new()
    };
    let batch = m.batch.unwrap_or(DEFAULT_BATCH).max(1) as i64;
    // (K, I, J): one slice per k, the in-plane axes in the orientation's order.
    let slices = x.permute([2, 0, 1]);
    let mut labels = Vec::new();
    let _no_grad = tch::no_grad_guard();
    let mut start = 0;
    while start < nk {
        let n = batch.min(nk - start);
        let mut input = slices
            .narrow(0, start, n)
            .unsqueeze(1)
            .f_to_device(device)
            .map_err(SegmentError::from)?
            .to_kind(Kind::Float)
            .contiguous();
        if resized {
            input = input
                .f_upsample_bilinear2d([h, w], false, None, None)
                .map_err(SegmentError::from)?;
        }
        let probs = forward_tta(model, &input, classes as i64, &mirror, device)?;
        drop(input);
        let mut argmax = probs.argmax(1, false);
        drop(probs);
        if resized {
            argmax = argmax.index_select(1, &rows).index_select(2, &cols);
        }
        labels.push(argmax.to_kind(Kind::Uint8).to_device(Device::Cpu));
        start += n;
    }
    // (K, I, J) → i fastest, then j, then k.
    let all = Tensor::f_cat(&labels, 0).map_err(SegmentError::from)?;
    let data = Vec::<u8>::try_from(all.permute([0, 2, 1]).contiguous().view([-1]))
        .map_err(SegmentError::from)?;
    Ok(back_to_source(
        &Volume::from_vec(dims, data, geometry)?,
        image,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_follow_the_third_letter() {
        assert_eq!(plane_of("PIR"), Some("sagittal"));
        assert_eq!(plane_of("pil"), Some("sagittal"));
        assert_eq!(plane_of("IRA"), Some("coronal"));
        assert_eq!(plane_of("SLP"), Some("coronal"));
        assert_eq!(plane_of("ARI"), Some("axial"));
        assert_eq!(plane_of("RAS"), Some("axial"));
        assert_eq!(plane_of("RA"), None);
        assert_eq!(plane_of("RAX"), None);
    }

    #[test]
    fn nearest_back_is_centre_aligned() {
        let v = |t: Tensor| Vec::<i64>::try_from(t).unwrap();
        // Same size: identity.
        assert_eq!(v(nearest_back(5, 5)), vec![0, 1, 2, 3, 4]);
        // Upsampled ×2: pixel d came from 2d and 2d + 1; its centre sits between them.
        assert_eq!(v(nearest_back(4, 8)), vec![1, 3, 5, 7]);
        // Downsampled ×2: pixel d of the original covers half of resized pixel d / 2.
        assert_eq!(v(nearest_back(6, 3)), vec![0, 0, 1, 1, 2, 2]);
        // The ends map to the ends whatever the ratio.
        let odd = v(nearest_back(7, 512));
        assert_eq!((odd[0] < 512 / 7, odd[6] > 512 - 512 / 7), (true, true));
    }
}
