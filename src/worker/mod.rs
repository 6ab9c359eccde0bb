//! Workers: the only place where jobs, the pipeline and DICOM output meet.
//!
//! A [`Supervisor`] per device claims jobs from the queue and runs each one in a child process
//! (`kneenode run-job`, [`child::run_job`]) in its own process group. The child reports progress
//! as JSON lines ([`protocol`]); the supervisor writes them into the job row, heart-beats the
//! lease, enforces the time limit and classifies the end of the attempt ([`classify`]). The
//! child's exit frees all of its host and GPU memory, which is the memory clean-up between jobs.
//! Each supervisor keeps a row in the worker [`registry`], which `/healthz` and `/metrics` read.

pub mod child;
pub mod classify;
pub mod deliver;
pub mod jobfile;
pub mod pool;
pub mod protocol;
pub mod registry;
pub mod remote;
pub mod resources;
pub mod supervisor;

pub use pool::{expand_devices, Pool};
pub use supervisor::{Attempt, Supervisor};
