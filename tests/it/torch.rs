//! libtorch links, loads and computes in this build.

use kneenode::device;

#[test]
fn conv3d_forward_on_cpu() {
    // Ones through a 3×3×3 kernel of ones with padding 1: each output voxel counts its in-bounds
    // neighbours, so the total is (7 + 8 + 7)³ per output channel, times 2 channels.
    let sum = device::smoke_test(tch::Device::Cpu).expect("conv3d on CPU");
    assert_eq!(sum, 2.0 * 22f64.powi(3));
}

#[test]
fn device_selection_matches_what_libtorch_sees() {
    assert_eq!(device::select("cpu").unwrap(), tch::Device::Cpu);
    let auto = device::select("auto").unwrap();
    if tch::Cuda::is_available() {
        assert_eq!(auto, tch::Device::Cuda(0));
        assert!(device::select("cuda:0").is_ok());
    } else {
        assert_eq!(auto, tch::Device::Cpu);
        let err = device::select("cuda:0").unwrap_err();
        assert!(err.to_string().contains("CUDA is not available"), "{err}");
    }
    assert!(device::select("gpu0").is_err());
}

#[test]
fn loaded_libtorch_is_the_pinned_version() {
    let info = device::torch_info();
    let loaded = info
        .loaded_version
        .expect("version.py next to the loaded libtorch");
    assert!(loaded.starts_with("2.11.0"), "loaded libtorch {loaded}");
}
