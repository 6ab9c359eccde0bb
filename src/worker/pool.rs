//! The supervisors a process runs: one thread per configured device, stopped together.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::warn;

use super::remote::RemoteNode;
use super::Supervisor;
use crate::config::Config;
use crate::device::DeviceError;
use crate::jobs::Queue;

/// Expands the configured devices: `auto` becomes every CUDA device when there are any, else
/// `cpu`; other names are checked to exist. Duplicates are kept (two workers on one big GPU).
pub fn expand_devices(specs: &[String]) -> Result<Vec<String>, DeviceError> {
    let mut out = Vec::new();
    for spec in specs {
        if spec.trim().eq_ignore_ascii_case("auto") {
            if tch::Cuda::is_available() {
                out.extend((0..tch::Cuda::device_count()).map(|i| format!("cuda:{i}")));
            } else {
                out.push("cpu".to_owned());
            }
        } else {
            out.push(crate::device::name(crate::device::select(spec)?));
        }
    }
    Ok(out)
}

/// Running supervisors.
pub struct Pool {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts one supervisor thread per device; with `remote`, they work for a node on another
    /// host.
    pub fn start(
        queue: &Queue,
        config: &Arc<Config>,
        devices: &[String],
        remote: Option<&RemoteNode>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for device in devices {
            let mut supervisor = Supervisor::new(queue.clone(), config.clone(), device);
            if let Some(r) = remote {
                supervisor = supervisor.with_remote(r.clone());
            }
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("worker-{device}"))
                    .spawn(move || supervisor.run(&stop))?,
            );
        }
        Ok(Self { stop, threads })
    }

    /// Number of supervisors.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether the pool runs no supervisor.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Stops every supervisor (running jobs are handed back) and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            if t.join().is_err() {
                warn!("a worker thread panicked");
            }
        }
    }
}
