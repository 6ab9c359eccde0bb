//! Sliding-window inference against a whole-volume forward pass of the same TorchScript model.

use kneenode::pipeline::segment::{predict, zscore, SlidingWindow};
use tch::{CModule, Device, Kind, Tensor};

/// A pointwise (1×1×1) network made by tracing, so it has no receptive field beyond a voxel:
/// sliding-window and whole-volume results must then agree everywhere.
fn pointwise_model(classes: i64) -> CModule {
    tch::manual_seed(7);
    let w1 = Tensor::randn([6, 1, 1, 1, 1], (Kind::Float, Device::Cpu));
    let w2 = Tensor::randn([classes, 6, 1, 1, 1], (Kind::Float, Device::Cpu));
    let example = Tensor::randn([1, 1, 8, 8, 8], (Kind::Float, Device::Cpu));
    CModule::create_by_tracing("Pointwise", "forward", &[example], &mut |x| {
        let h = x[0]
            .conv3d::<Tensor>(&w1, None, [1, 1, 1], [0, 0, 0], [1, 1, 1], 1)
            .tanh();
        vec![h.conv3d::<Tensor>(&w2, None, [1, 1, 1], [0, 0, 0], [1, 1, 1], 1) * 3.0]
    })
    .unwrap()
}

#[test]
fn sliding_window_equals_a_whole_volume_forward_pass() {
    let model = pointwise_model(4);
    let image = zscore(&Tensor::randn([41, 37, 23], (Kind::Float, Device::Cpu)));
    let whole = model
        .forward_ts(&[image.view([1, 1, 41, 37, 23])])
        .unwrap()
        .softmax(1, Kind::Float)
        .squeeze_dim(0);
    for (patch, mirror) in [
        ([16, 16, 8], vec![]),
        ([24, 20, 16], vec![0, 2]),
        ([64, 64, 64], vec![]),
    ] {
        let window = SlidingWindow {
            patch,
            step: 0.5,
            batch: 3,
            mirror_axes: mirror,
        };
        let probs = predict(&model, &image, 4, &window, Device::Cpu).unwrap();
        assert_eq!(probs.size(), vec![4, 41, 37, 23]);
        let diff = (&probs - &whole).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "patch {patch:?}: max difference {diff}");
        // Probabilities sum to one everywhere, borders included: the Gaussian weights normalise.
        let sums = probs.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        let off = (sums - 1.0).abs().max().double_value(&[]);
        assert!(off < 1e-5, "patch {patch:?}: sums off by {off}");
    }
}

#[test]
fn a_model_with_the_wrong_output_is_a_clear_error() {
    let model = pointwise_model(3);
    let image = Tensor::randn([16, 16, 8], (Kind::Float, Device::Cpu));
    let err = predict(
        &model,
        &image,
        10,
        &SlidingWindow::new([16, 16, 8]),
        Device::Cpu,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("expected [1, 10, 16, 16, 8]"),
        "{err}"
    );
}
