//! kneenode: a DICOM node that brings knee-MRI analysis into a hospital's PACS.
//!
//! A series arrives at the DICOM SCP, is stored durably and becomes a job in the database
//! (`jobs`, over `db`: PostgreSQL or an embedded SQLite file). Workers claim jobs under a lease and
//! run the `pipeline` — segmentation, meshes, cartilage thickness, shape-model fitting — in a child
//! process per job; results go back to the PACS as DICOM SEG and SR and to clinicians through the
//! portal. `config` turns the TOML file, the environment and the command line into one validated
//! value that every part receives; `device` knows which libtorch was loaded and which GPUs exist.
//!
//! Arrows point one way: `pipeline` knows nothing of `db`, networking or the portal; `jobs`
//! builds on `db`; only the worker joins jobs, pipeline and DICOM.

pub mod archive;
pub mod bench;
pub mod config;
pub mod db;
pub mod device;
pub mod dicom;
pub mod doctor;
pub mod jobs;
pub mod phantom;
pub mod pipeline;
pub mod portal;
pub mod storage;
pub mod telemetry;
pub mod volume;
pub mod worker;
