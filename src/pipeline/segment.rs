//! Segmentation with a TorchScript model: sliding-window inference with Gaussian importance
//! weighting (nnU-Net's scheme: step 0.5 of the patch, σ = 1/8 of the patch), optional mirroring
//! test-time augmentation, autocast on CUDA, and softmax accumulated in one preallocated buffer.
//!
//! This module runs `patch3d` models, the second stage of a cascade included
//! ([`patch3d`]); [`segment`] (from [`super::ensemble`]) is the entry point for every
//! kind, and [`super::slice2d`] runs 2D models.

use tch::{CModule, Device, Kind, Tensor};

pub use super::ensemble::{segment, Segmentation};
use super::models::{ModelError, ModelSpec, Normalization};
use crate::volume::{
    orientation_code, reorient_to, resample_linear, resample_linear_argmax, resample_nearest,
    Geometry, Volume, VolumeError,
};

/// Sliding-window settings.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    /// Patch size in voxels (i, j, k).
    pub patch: [i64; 3],
    /// Step between patches as a fraction of the patch (0.5 = half overlap).
    pub step: f64,
    /// Patches per forward pass.
    pub batch: usize,
    /// Axes (0 = i, 1 = j, 2 = k) to mirror for test-time augmentation; empty = none.
    pub mirror_axes: Vec<i64>,
}

impl SlidingWindow {
    /// nnU-Net's defaults for a patch size: half-overlapping patches, no mirroring.
    pub fn new(patch: [i64; 3]) -> Self {
        Self {
            patch,
            step: 0.5,
            batch: 2,
            mirror_axes: Vec::new(),
        }
    }
}

/// Inference failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// libtorch failed (out of memory, a model that does not fit the input…).
    #[error("inference failed: {0}")]
    Torch(#[from] tch::TchError),
    /// The image given to [`predict`] is neither (I, J, K) nor (C, I, J, K).
    #[error("the image tensor has shape {0:?}; want (I, J, K) or (C, I, J, K)")]
    InputShape(Vec<i64>),
    /// The model's output does not have the announced shape.
    #[error("the model returned shape {got:?}, expected {want:?}")]
    Shape {
        /// What came back.
        got: Vec<i64>,
        /// What was expected.
        want: Vec<i64>,
    },
}

impl SegmentError {
    /// Whether this is the GPU running out of memory (GPU_OOM rather than PIPELINE_ERROR).
    pub fn is_out_of_memory(&self) -> bool {
        let text = self.to_string();
        text.contains("out of memory") || text.contains("CUDA error: out of memory")
    }
}

/// Patch start positions along one axis: evenly spread, first at 0, last at `size - patch`,
/// no further apart than `step × patch`.
pub fn steps(size: i64, patch: i64, step: f64) -> Vec<i64> {
    if size <= patch {
        return vec![0];
    }
    let stride = (patch as f64 * step).max(1.0);
    let n = ((size - patch) as f64 / stride).ceil() as i64 + 1;
    let span = (size - patch) as f64;
    (0..n)
        .map(|i| (span * i as f64 / (n - 1) as f64).round() as i64)
        .collect()
}

/// The Gaussian importance map of a patch: σ = patch / 8 per axis, maximum 1, and no zeros
/// (they would divide by zero where only patch corners cover a voxel).
pub fn gaussian_importance(patch: [i64; 3], device: Device) -> Tensor {
    let axis = |n: i64| {
        let c = (n as f64 - 1.0) / 2.0;
        let sigma = n as f64 / 8.0;
        let v: Vec<f32> = (0..n)
            .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp() as f32)
            .collect();
        Tensor::from_slice(&v)
    };
    let g = axis(patch[0]).view([-1, 1, 1])
        * axis(patch[1]).view([1, -1, 1])
        * axis(patch[2]).view([1, 1, -1]);
    let g = &g / g.max();
    let min_nonzero = g.min().double_value(&[]).max(1e-8);
    g.clamp_min(min_nonzero).to_device(device)
}

/// Class probabilities (classes, I, J, K) of a normalised image: (I, J, K) for a one-channel
/// model, or (C, I, J, K) for a model with C input channels (the second stage of a cascade).
pub fn predict(
    model: &CModule,
    image: &Tensor,
    num_classes: i64,
    window: &SlidingWindow,
    device: Device,
) -> Result<Tensor, SegmentError> {
    let _no_grad = tch::no_grad_guard();
    let image = match image.dim() {
        3 => image.unsqueeze(0),
        4 => image.shallow_clone(),
        _ => return Err(SegmentError::InputShape(image.size())),
    };
    let size = image.size()[1..].to_vec();
    let p = window.patch;
    // Pad the spatial axes up to one patch where the image is smaller; cropped at the end.
    let pad: Vec<i64> = (0..3)
        .rev()
        .flat_map(|a| [0, (p[a] - size[a]).max(0)])
        .collect();
    let padded = if pad.iter().any(|&x| x > 0) {
        image.f_constant_pad_nd(pad.as_slice())?
    } else {
        image
    };
    let ps = padded.size()[1..].to_vec();
    let padded = padded.to_device(device).to_kind(Kind::Float);
    let importance = gaussian_importance(p, device);
    let mut acc = Tensor::f_zeros([num_classes, ps[0], ps[1], ps[2]], (Kind::Float, device))?;
    let weight = Tensor::f_zeros([ps[0], ps[1], ps[2]], (Kind::Float, device))?;
    let mut starts = Vec::new();
    for i in steps(ps[0], p[0], window.step) {
        for j in steps(ps[1], p[1], window.step) {
            for k in steps(ps[2], p[2], window.step) {
                starts.push([i, j, k]);
            }
        }
    }
    for chunk in starts.chunks(window.batch.max(1)) {
        let patches: Vec<Tensor> = chunk
            .iter()
            .map(|s| {
                padded
                    .narrow(1, s[0], p[0])
                    .narrow(2, s[1], p[1])
                    .narrow(3, s[2], p[2])
            })
            .collect();
        let input = Tensor::f_stack(&patches, 0)?;
        let probs = forward_tta(model, &input, num_classes, &window.mirror_axes, device)?;
        for (b, s) in chunk.iter().enumerate() {
            let weighted = probs.get(b as i64) * &importance;
            let mut dst = acc
                .narrow(1, s[0], p[0])
                .narrow(2, s[1], p[1])
                .narrow(3, s[2], p[2]);
            dst += weighted;
            let mut w = weight
                .narrow(0, s[0], p[0])
                .narrow(1, s[1], p[1])
                .narrow(2, s[2], p[2]);
            w += &importance;
        }
    }
    acc /= weight.unsqueeze(0);
    Ok(acc
        .narrow(1, 0, size[0])
        .narrow(2, 0, size[1])
        .narrow(3, 0, size[2])
        .contiguous())
}

/// Softmax of one batch (N, C, spatial…), averaged over the mirrored copies (TTA) when asked;
/// `mirror_axes` count spatial axes from 0. Autocast on CUDA.
pub(crate) fn forward_tta(
    model: &CModule,
    input: &Tensor,
    num_classes: i64,
    mirror_axes: &[i64],
    device: Device,
) -> Result<Tensor, SegmentError> {
    let run = |x: &Tensor| -> Result<Tensor, SegmentError> {
        let out = if device.is_cuda() {
            tch::autocast(true, || model.forward_ts(&[x]))?
        } else {
            model.forward_ts(&[x])?
        };
        let mut want = x.size();
        want[1] = num_classes;
        if out.size() != want {
            return Err(SegmentError::Shape {
                got: out.size(),
                want,
            });
        }
        Ok(out.to_kind(Kind::Float).softmax(1, Kind::Float))
    };
    let mut sum = run(input)?;
    // Every non-empty subset of the mirror axes, as nnU-Net does.
    let axes: Vec<i64> = mirror_axes.iter().map(|a| a + 2).collect();
    let mut count = 1.0;
    for mask in 1..(1u32 << axes.len()) {
        let dims: Vec<i64> = axes
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, a)| *a)
            .collect();
        sum += run(&input.flip(dims.as_slice()))?.flip(dims.as_slice());
        count += 1.0;
    }
    Ok(sum / count)
}

/// z-score normalisation over the whole volume.
pub fn zscore(image: &Tensor) -> Tensor {
    let mean = image.mean(Kind::Float);
    let std = image.std(true).clamp_min(1e-8);
    (image - mean) / std
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_cover_the_axis_with_half_overlap() {
        assert_eq!(steps(64, 64, 0.5), vec![0]);
        assert_eq!(steps(40, 64, 0.5), vec![0]);
        // As nnU-Net: ceil((100 - 64) / 32) + 1 = 3 positions.
        assert_eq!(steps(100, 64, 0.5), vec![0, 18, 36]);
        let s = steps(200, 64, 0.5);
        assert_eq!((s[0], *s.last().unwrap()), (0, 136));
        assert!(s.windows(2).all(|w| w[1] - w[0] <= 32));
    }

    /// On a grid that matches the labels' nowhere (rotated, other spacing), every channel is
    /// still exactly 0 or 1, channel c is label c + 1, and background has no channel.
    #[test]
    fn cascade_channels_are_one_hot_in_label_order() {
        let g = Geometry {
            origin: [3.0, -2.0, 1.0],
            spacing: [1.0, 1.2, 2.0],
            direction: crate::volume::geometry::rotation([0.2, 1.0, 0.4], 0.3),
        };
        let dims = [9, 8, 7];
        let labels: Vec<u8> = (0..9 * 8 * 7).map(|o| ((o / 5) % 4) as u8).collect();
        let labels = Volume::from_vec(dims, labels, g).unwrap();
        let canon = reorient_to(&labels, "SLA").unwrap();
        let target = Geometry {
            spacing: [0.7, 0.9, 1.3],
            ..*canon.geometry()
        };
        let target_dims = [13, 11, 10];
        let t = cascade_channels(&labels, "SLA", &target, target_dims, 4).unwrap();
        assert_eq!(t.size(), vec![3, 13, 11, 10]);
        let ones = t.eq(1.0).logical_or(&t.eq(0.0)).all().int64_value(&[]);
        assert_eq!(ones, 1, "only 0 and 1");
        let sum = t.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        assert!(sum.max().double_value(&[]) <= 1.0);
        let want = to_tensor(&resample_nearest(&canon, &target, target_dims).unwrap());
        for c in 0..3 {
            let diff = t.get(c).ne_tensor(&want.eq(c + 1).to_kind(Kind::Float));
            assert_eq!(diff.sum(Kind::Int64).int64_value(&[]), 0, "channel {c}");
        }
        assert!(t.sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn predict_takes_one_or_several_channels() {
        let image = Tensor::randn([2, 5, 6, 7], (Kind::Float, Device::Cpu));
        let model = CModule::create_by_tracing(
            "FirstChannel",
            "forward",
            &[image.unsqueeze(0)],
            &mut |x| {
                vec![Tensor::cat(
                    &[x[0].narrow(1, 0, 1), x[0].narrow(1, 0, 1) * -1.0],
                    1,
                )]
            },
        )
        .unwrap();
        let window = SlidingWindow::new([4, 4, 4]);
        let two = predict(&model, &image, 2, &window, Device::Cpu).unwrap();
        let one = predict(&model, &image.get(0), 2, &window, Device::Cpu).unwrap();
        assert_eq!(two.size(), vec![2, 5, 6, 7]);
        let diff = (&two - &one).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        assert!(predict(&model, &image.view([-1]), 2, &window, Device::Cpu).is_err());
    }

    #[test]
    fn importance_peaks_in_the_middle_and_has_no_zeros() {
        let g = gaussian_importance([16, 16, 8], Device::Cpu);
        assert_eq!(g.size(), vec![16, 16, 8]);
        assert!((g.max().double_value(&[]) - 1.0).abs() < 1e-6);
        assert!(g.min().double_value(&[]) > 0.0);
        assert!(g.double_value(&[8, 8, 4]) > g.double_value(&[0, 0, 0]));
    }
}

/// Failures of [`segment_volume`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentVolumeError {
    /// The model cannot be used (MODEL_ERROR).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Inference failed (PIPELINE_ERROR, or GPU_OOM).
    #[error(transparent)]
    Inference(#[from] SegmentError),
    /// The volume could not be brought to the model's grid.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// An ensemble's members could not be fused (PIPELINE_ERROR).
    #[error("fusing the ensemble's labels: {0}")]
    Fusion(#[from] super::fusion::FusionError),
}

/// Loads a model's TorchScript weights onto `device`.
pub fn load_model(spec: &ModelSpec, device: Device) -> Result<CModule, ModelError> {
    let name = spec.manifest.name.clone();
    let path = spec.weights_path().ok_or_else(|| ModelError::Weights {
        name: name.clone(),
        path: spec.dir.clone(),
        reason: "the manifest names no file".into(),
    })?;
    let mut model = CModule::load_on_device(&path, device).map_err(|e| ModelError::Weights {
        name,
        path: path.clone(),
        reason: e.to_string(),
    })?;
    model.set_eval();
    Ok(model)
}

/// A volume's voxels as an (I, J, K) tensor (the volume stores i fastest).
pub(crate) fn to_tensor<T: tch::kind::Element>(v: &Volume<T>) -> Tensor {
    let [nx, ny, nz] = v.dims();
    Tensor::from_slice(v.data())
        .view([nz as i64, ny as i64, nx as i64])
        .permute([2, 1, 0])
        .contiguous()
}

/// An (I, J, K) tensor back to i-fastest voxels.
fn from_tensor(t: &Tensor) -> Result<Vec<f32>, tch::TchError> {
    Vec::<f32>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .permute([2, 1, 0])
            .contiguous()
            .view([-1]),
    )
}

/// Labels of a reoriented copy of `image` (same voxels, permuted and flipped axes) brought
/// back onto `image`'s own grid: the permutation is exact, and the geometry is pinned to the
/// source's bit for bit.
pub(crate) fn back_to_source(
    canon_labels: &Volume<u8>,
    image: &Volume<f32>,
) -> Result<Volume<u8>, VolumeError> {
    let mut out = reorient_to(canon_labels, &orientation_code(image.geometry()))?;
    if out.dims() != image.dims() {
        return Err(VolumeError::Invalid {
            reason: format!(
                "labels came back as {:?}, the image is {:?}",
                out.dims(),
                image.dims()
            ),
        });
    }
    out.set_geometry(*image.geometry());
    Ok(out)
}

/// The first stage of a cascade, as the second stage takes it: its labels on the source grid
/// and its number of classes (background included).
#[derive(Debug, Clone, Copy)]
pub struct CascadeInput<'a> {
    /// The low-res model's labels, on the image's grid.
    pub labels: &'a Volume<u8>,
    /// The low-res model's `num_classes`.
    pub num_classes: usize,
}

/// Segments `image` with a `patch3d` model: reorient to the model's orientation, resample to its
/// spacing, normalise, infer, resample the class probabilities back to the (reoriented) source
/// grid, take the argmax and return labels on exactly the source grid.
pub fn segment_volume(
    image: &Volume<f32>,
    spec: &ModelSpec,
    model: &CModule,
    device: Device,
    tta: bool,
) -> Result<Volume<u8>, SegmentVolumeError> {
    patch3d(image, spec, model, device, tta, None)
}

/// A patch3d model on either stage of a cascade (with `cascade`, the model's input is the
/// normalised image followed by the one-hot channels of the first stage's labels, see
/// [`cascade_channels`], and `in_channels` must be `1 + (cascade.num_classes − 1)`).
pub(crate) fn patch3d(
    image: &Volume<f32>,
    spec: &ModelSpec,
    model: &CModule,
    device: Device,
    tta: bool,
    cascade: Option<CascadeInput<'_>>,
) -> Result<Volume<u8>, SegmentVolumeError> {
    let m = &spec.manifest;
    let (Some(orientation), Some(spacing), Some(patch), Some(classes)) = (
        m.orientation.as_deref(),
        m.spacing,
        m.patch_size,
        m.num_classes,
    ) else {
        return Err(ModelError::KindNotAvailable {
            name: m.name.clone(),
            kind: m.kind.clone(),
        }
        .into());
    };
    let in_channels = 1 + cascade.map_or(0, |c| c.num_classes.saturating_sub(1));
    if m.in_channels.unwrap_or(1) != in_channels {
        return Err(ModelError::Composition {
            name: m.name.clone(),
            reason: format!(
                "in_channels is {}, but {in_channels} channels are fed{}",
                m.in_channels.unwrap_or(1),
                if cascade.is_some() {
                    " (the image and one one-hot channel per foreground label of the low-res model)"
                } else {
                    " (the image; a model with more input channels needs `cascade`)"
                }
            ),
        }
        .into());
    }
    let canon = reorient_to(image, orientation)?;
    let g = *canon.geometry();
    let dims = canon.dims();
    let target_dims: [usize; 3] = std::array::from_fn(|a| {
        ((dims[a] as f64 * g.spacing[a] / spacing[a]).round() as usize).max(1)
    });
    let target = Geometry { spacing, ..g };
    let resampled = resample_linear(&canon, &target, target_dims)?;
    drop(canon);
    let mut input = match m.normalization {
        Some(Normalization::None) => to_tensor(&resampled),
        _ => zscore(&to_tensor(&resampled)),
    };
    drop(resampled);
    if let Some(c) = cascade {
        let onehot = cascade_channels(c.labels, orientation, &target, target_dims, c.num_classes)?;
        input = Tensor::f_cat(&[input.unsqueeze(0), onehot], 0).map_err(SegmentError::from)?;
    }
    let mut window = SlidingWindow::new(patch.map(|p| p as i64));
    if tta {
        window.mirror_axes = m.mirror_axes.iter().map(|&a| a as i64).collect();
    }
    let probs = predict(model, &input, classes as i64, &window, device)?;
    drop(input);
    let same_grid = target_dims == dims
        && (0..3).all(|a| (spacing[a] - g.spacing[a]).abs() <= 1e-6 * g.spacing[a]);
    let labels = if same_grid {
        // The model ran on the source grid itself: the argmax needs no resampling.
        let argmax = probs.argmax(0, false).to_kind(Kind::Float);
        from_tensor(&argmax)
            .map_err(SegmentError::from)?
            .into_iter()
            .map(|c| c as u8)
            .collect()
    } else {
        resampled_argmax(&probs, classes, target_dims, target, &g, dims)?
    };
    drop(probs);
    Ok(back_to_source(&Volume::from_vec(dims, labels, g)?, image)?)
}

/// The extra input channels of a cascade's second stage (nnU-Net's `3d_cascade_fullres`): for
/// each foreground label 1..`num_classes` in order, 1 where the first stage's `labels` (on the
/// source grid) say it and 0 elsewhere, on the model grid (`target`, `target_dims`, in
/// `orientation`). The labels are moved with nearest neighbour, never interpolated, so every
/// channel is exactly 0 or 1 and at most one is 1 per voxel. Shape (num_classes − 1, I, J, K).
pub fn cascade_channels(
    labels: &Volume<u8>,
    orientation: &str,
    target: &Geometry,
    target_dims: [usize; 3],
    num_classes: usize,
) -> Result<Tensor, SegmentVolumeError> {
    let canon = reorient_to(labels, orientation)?;
    let on_grid = resample_nearest(&canon, target, target_dims)?;
    drop(canon);
    let t = to_tensor(&on_grid);
    let [i, j, k] = target_dims.map(|d| d as i64);
    let channels: Vec<Tensor> = (1..num_classes)
        .map(|l| t.eq(l as i64).to_kind(Kind::Float))
        .collect();
    if channels.is_empty() {
        return Ok(Tensor::zeros([0, i, j, k], (Kind::Float, Device::Cpu)));
    }
    Ok(Tensor::f_stack(&channels, 0).map_err(SegmentError::from)?)
}

/// Back on the source grid: the most probable class per voxel of each class's probability
/// resampled (trilinearly) from the model grid.
fn resampled_argmax(
    probs: &Tensor,
    classes: usize,
    target_dims: [usize; 3],
    target: Geometry,
    g: &Geometry,
    dims: [usize; 3],
) -> Result<Vec<u8>, SegmentVolumeError> {
    // (C, I, J, K) → C blocks of i-fastest voxels.
    let all = Vec::<f32>::try_from(
        probs
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .permute([0, 3, 2, 1])
            .contiguous()
            .view([-1]),
    )
    .map_err(SegmentError::from)?;
    let per_class: usize = target_dims.iter().product();
    let channels: Vec<&[f32]> = all.chunks(per_class).take(classes).collect();
    Ok(resample_linear_argmax(
        &channels,
        &target,
        target_dims,
        g,
        dims,
    )?)
}
