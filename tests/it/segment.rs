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

/// On the model's own grid, `segment_volume` is the argmax of the sliding-window softmax (the
/// path that skips resampling the class probabilities).
#[test]
fn on_the_model_grid_labels_are_the_plain_argmax() {
    use kneenode::pipeline::models::Registry;
    use kneenode::pipeline::segment::segment_volume;
    use kneenode::volume::{Geometry, Volume};
    let registry = Registry::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dicom_config/models.toml"
    )))
    .unwrap();
    let spec = registry.spec(Some("demo")).unwrap();
    let model = kneenode::pipeline::segment::load_model(&spec, Device::Cpu).unwrap();
    let phantom = kneenode::phantom::generate(&kneenode::phantom::PhantomParams::small(4));
    // The phantom's grid, with the demo model's spacing (PIR orientation, as the phantom).
    let dims = phantom.image.dims();
    let g = Geometry {
        spacing: spec.manifest.spacing.unwrap(),
        ..*phantom.image.geometry()
    };
    assert_eq!(kneenode::volume::orientation_code(&g), "PIR");
    let image = Volume::from_vec(
        dims,
        phantom.image.data().iter().map(|&v| f32::from(v)).collect(),
        g,
    )
    .unwrap();
    let labels = segment_volume(&image, &spec, &model, Device::Cpu, false).unwrap();
    let x = Tensor::from_slice(image.data())
        .view([dims[2] as i64, dims[1] as i64, dims[0] as i64])
        .permute([2, 1, 0])
        .contiguous();
    let window = SlidingWindow::new(spec.manifest.patch_size.unwrap().map(|p| p as i64));
    let probs = predict(&model, &zscore(&x), 10, &window, Device::Cpu).unwrap();
    let want: Vec<u8> = Vec::<i64>::try_from(
        probs
            .argmax(0, false)
            .permute([2, 1, 0])
            .contiguous()
            .view([-1]),
    )
    .unwrap()
    .into_iter()
    .map(|c| c as u8)
    .collect();
    assert!(
        labels.data() == want.as_slice(),
        "labels differ from the argmax"
    );
}

/// The knee's side comes out of the DICOM loading path beside the image: a classic series'
/// Laterality, and for an enhanced instance its frames' Frame Laterality before the instance's
/// own Laterality. An empty laterality, or a NIfTI file, says nothing.
#[test]
fn the_dicom_laterality_comes_with_the_image() {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    use kneenode::dicom::write::{write_mr_series, SeriesInfo};
    use kneenode::dicom::write_enhanced::write_enhanced_mr;
    use kneenode::phantom::{generate, PhantomParams};
    use kneenode::pipeline::models::Side;
    use kneenode::pipeline::run::load_input;
    use kneenode::volume::Selection;

    let dir = tempfile::tempdir().unwrap();
    let phantom = generate(&PhantomParams {
        dims: [16, 16, 6],
        ..PhantomParams::small(3)
    });
    let info = |laterality: &str| SeriesInfo {
        laterality: laterality.into(),
        ..Default::default()
    };
    write_mr_series(&phantom.image, &info("L"), &dir.path().join("left")).unwrap();
    write_mr_series(&phantom.image, &info(""), &dir.path().join("unstated")).unwrap();
    let enhanced = dir.path().join("enhanced/e.dcm");
    write_enhanced_mr(&[&phantom.image], &info("L"), &enhanced).unwrap();
    // The same instance with Frame Anatomy in the shared functional groups saying "right".
    let mut obj = dicom_object::open_file(&enhanced).unwrap();
    let mut shared = obj
        .element(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0]
        .clone();
    let mut anatomy = InMemDicomObject::new_empty();
    anatomy.put(DataElement::new(
        tags::FRAME_LATERALITY,
        VR::CS,
        PrimitiveValue::from("R"),
    ));
    shared.put(DataElement::new(
        tags::FRAME_ANATOMY_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![anatomy]),
    ));
    obj.put(DataElement::new(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![shared]),
    ));
    std::fs::create_dir_all(dir.path().join("framed")).unwrap();
    obj.write_to_file(dir.path().join("framed/e.dcm")).unwrap();
    let nifti = dir.path().join("image.nii.gz");
    kneenode::volume::write_nifti(&nifti, &phantom.image).unwrap();

    let side = |input: &std::path::Path| {
        let loaded = load_input(input, &Selection::default()).unwrap();
        assert_eq!(loaded.image.dims(), [16, 16, 6]);
        loaded.side
    };
    assert_eq!(side(&dir.path().join("left")), Some(Side::Left));
    assert_eq!(side(&dir.path().join("unstated")), None);
    assert_eq!(side(&dir.path().join("enhanced")), Some(Side::Left));
    assert_eq!(side(&dir.path().join("framed")), Some(Side::Right));
    assert_eq!(side(&nifti), None);
}
