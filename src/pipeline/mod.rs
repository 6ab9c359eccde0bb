//! The knee pipeline as pure functions: volumes in, labels, meshes and numbers out.
//!
//! Nothing here knows about the database, DICOM networking or the portal; `worker` is the only
//! place where the pipeline meets jobs and DICOM.

pub mod ensemble;
pub mod fusion;
pub mod label_map;
pub mod mesh;
pub mod models;
pub mod nsm;
pub mod options;
pub mod package;
pub mod postprocess;
pub mod preview;
pub mod run;
pub mod segment;
pub mod shapes;
pub mod slice2d;
pub mod thickness;

pub use options::{JobOptions, NsmType, OptionsError};
