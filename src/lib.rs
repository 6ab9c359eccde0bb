//! kneenode: a DICOM node that brings knee-MRI analysis into a hospital's PACS.
//!
//! A series arrives at the DICOM SCP (`dicom::scp`), is stored durably (`dicom::store`) and,
//! once complete (`dicom::series`), becomes a job in the database (`jobs`, over `db`: PostgreSQL
//! or an embedded SQLite file). A `worker` supervisor per device claims jobs under a lease and runs
//! each in a child process (`kneenode run-job`) that runs the `pipeline` — segmentation, meshes,
//! cartilage thickness, shape-model fitting — on `volume`s, writes the results zip and the DICOM
//! SEG and SR (`dicom::seg`, `dicom::sr`); `dicom::dispatch` sends those back to the PACS. The
//! `portal` (actix-web) serves the internal API through which workers on other hosts fetch
//! inputs and return results (`archive` packs and safely unpacks them), and the clinicians'
//! pages as they land. `config` turns the TOML file, the environment and the command line into
//! one validated value that every part receives; `device` knows which libtorch was loaded and
//! which GPUs exist; `phantom` makes synthetic knees for tests, demos and training.
//!
//! Arrows point one way: `pipeline` and `volume` know nothing of `db`, networking or the portal;
//! `jobs` builds on `db`; only the worker (and the portal's internal API, which completes jobs a
//! remote worker uploaded) joins jobs, pipeline and DICOM.

pub mod archive;
pub mod audit;
pub mod bench;
pub mod config;
pub mod db;
pub mod device;
pub mod dicom;
pub mod doctor;
pub mod jobs;
pub mod notify;
pub mod phantom;
pub mod pipeline;
pub mod portal;
pub mod retention;
pub mod storage;
pub mod telemetry;
pub mod volume;
pub mod worker;
