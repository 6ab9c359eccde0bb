//! Compute devices and the libtorch underneath them.
//!
//! A worker's device comes from the configuration (`auto`, `cpu`, `cuda`, `cuda:N`); `auto` picks
//! the first GPU when CUDA is available and the CPU otherwise, so the same binary and the same
//! configuration work on a laptop and on a GPU host.

use std::path::PathBuf;

/// A device that cannot be used here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// Not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device {0:?} (expected auto, cpu, cuda or cuda:N)")]
    Unknown(String),
    /// A CUDA device was asked for, but libtorch sees no GPU.
    #[error("device {0} was requested but CUDA is not available")]
    NoCuda(String),
    /// The GPU index is past the last GPU.
    #[error("device {requested} was requested but only {count} CUDA device(s) exist")]
    NoSuchGpu {
        /// What the configuration asked for.
        requested: String,
        /// GPUs present.
        count: i64,
    },
}

/// Resolves a configured device name to a tch device, checking that it exists.
pub fn select(spec: &str) -> Result<tch::Device, DeviceError> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        _ => {
            let index = match spec.as_str() {
                "cuda" => 0,
                s => s
                    .strip_prefix("cuda:")
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| DeviceError::Unknown(spec.clone()))?,
            };
            if !tch::Cuda::is_available() {
                return Err(DeviceError::NoCuda(spec));
            }
            let count = tch::Cuda::device_count();
            if i64::try_from(index).unwrap_or(i64::MAX) >= count {
                return Err(DeviceError::NoSuchGpu {
                    requested: spec,
                    count,
                });
            }
            Ok(tch::Device::Cuda(index))
        }
    }
}

/// A device's name as the configuration and logs write it.
pub fn name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Mps => "mps".into(),
        _ => "cpu".into(),
    }
}

/// What libtorch this process runs on.
#[derive(Debug, Clone)]
pub struct TorchInfo {
    /// The version of the libtorch actually loaded (from its `version.py`), if it could be found.
    pub loaded_version: Option<String>,
    /// The folder the loaded `libtorch_cpu.so` came from.
    pub loaded_from: Option<PathBuf>,
    /// The version the binary was built against.
    pub built_version: Option<&'static str>,
    /// Whether CUDA is usable.
    pub cuda_available: bool,
    /// GPUs visible to libtorch.
    pub cuda_device_count: i64,
    /// GPU names from `nvidia-smi`, when it is installed.
    pub gpu_names: Vec<String>,
    /// cuDNN usable.
    pub cudnn_available: bool,
}

/// Inspects the loaded libtorch. Cheap, except for one `nvidia-smi` call when CUDA is present.
pub fn torch_info() -> TorchInfo {
    let loaded_from = loaded_torch_lib();
    let loaded_version = loaded_from
        .as_ref()
        .and_then(|lib| std::fs::read_to_string(lib.parent()?.join("version.py")).ok())
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches(['\'', '"']).to_owned())
        });
    let cuda_available = tch::Cuda::is_available();
    TorchInfo {
        loaded_version,
        loaded_from,
        built_version: option_env!("KNEENODE_LIBTORCH_BUILT_VERSION"),
        cuda_available,
        cuda_device_count: if cuda_available {
            tch::Cuda::device_count()
        } else {
            0
        },
        gpu_names: if cuda_available {
            gpu_names()
        } else {
            Vec::new()
        },
        cudnn_available: cuda_available && tch::Cuda::cudnn_is_available(),
    }
}

/// The folder of the `libtorch_cpu.so` mapped into this process (LD_LIBRARY_PATH may have chosen
/// another one than the rpath).
fn loaded_torch_lib() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from))
}

fn gpu_names() -> Vec<String> {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A tiny forward pass (conv3d) on `device`: proves libtorch loads and computes there.
pub fn smoke_test(device: tch::Device) -> Result<f64, tch::TchError> {
    let _guard = tch::no_grad_guard();
    let opts = (tch::Kind::Float, device);
    let input = tch::Tensor::f_ones([1, 1, 8, 8, 8], opts)?;
    let weight = tch::Tensor::f_ones([2, 1, 3, 3, 3], opts)?;
    let out = input.f_conv3d::<tch::Tensor>(&weight, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1)?;
    // Interior voxels see all 27 ones; the sum checks the whole output, borders included.
    out.f_sum(tch::Kind::Double)?.f_double_value(&[])
}
