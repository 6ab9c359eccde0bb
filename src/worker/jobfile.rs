//! `job.json`: everything the child process needs to run one job, written by the supervisor into
//! the job's folder. It plays the part of the original pipeline's per-job `config.json`: the
//! child reads no configuration file and no database, so a job folder can be rerun by hand with
//! `kneenode run-job --job-dir DIR`.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::pipeline::JobOptions;

/// The file name inside the job folder.
pub const JOB_FILE: &str = "job.json";
/// The child's stderr, kept in the job folder.
pub const STDERR_FILE: &str = "stderr.log";
/// The folder (inside the job folder) that holds the results before they are zipped.
pub const RESULTS_DIR: &str = "results";

/// One job, as the child sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// The job's id (every derived DICOM UID hangs off it).
    pub job_id: String,
    /// The series revision the job processes.
    pub revision: i32,
    /// Which attempt this is (1-based).
    pub attempt: i32,
    /// The input: a DICOM series folder, or a NIfTI / NRRD file.
    pub input_path: PathBuf,
    /// The options of the original web form.
    pub options: JobOptions,
    /// The model registry (absolute path).
    pub models_registry: PathBuf,
    /// The segment catalogue for DICOM SEG / SR (absolute path); `None` = built-in.
    pub segments_catalog: Option<PathBuf>,
    /// `cpu`, `cuda`, `cuda:N` (already resolved by the supervisor's device choice).
    pub device: String,
    /// The job's time (when it was created): DICOM content dates use it, so that a rerun writes
    /// identical objects.
    pub created_at: NaiveDateTime,
    /// Series Number of the SEG (the SR takes the next one).
    pub seg_series_number: i32,
    /// The time limit, seconds (informational: the supervisor enforces it).
    pub timeout_s: u64,
    /// kneenode's version that wrote the file.
    pub kneenode_version: String,
}

/// `job.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct JobFileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

impl JobFile {
    /// Writes `dir/job.json` (pretty, so that an administrator can read it).
    pub fn write(&self, dir: &Path) -> Result<PathBuf, JobFileError> {
        let path = dir.join(JOB_FILE);
        let err = |reason: String| JobFileError {
            path: path.clone(),
            reason,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| err(e.to_string()))?;
        Ok(path)
    }

    /// Reads `dir/job.json`.
    pub fn read(dir: &Path) -> Result<Self, JobFileError> {
        let path = dir.join(JOB_FILE);
        let err = |reason: String| JobFileError {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobFile {
            job_id: "j1".into(),
            revision: 1,
            attempt: 1,
            input_path: "/in".into(),
            options: JobOptions::default(),
            models_registry: "/m.toml".into(),
            segments_catalog: None,
            device: "cpu".into(),
            created_at: chrono::DateTime::from_timestamp(1_800_000_000, 0)
                .unwrap()
                .naive_utc(),
            seg_series_number: 9901,
            timeout_s: 30,
            kneenode_version: "0".into(),
        };
        job.write(dir.path()).unwrap();
        assert_eq!(JobFile::read(dir.path()).unwrap(), job);
        let text = std::fs::read_to_string(dir.path().join(JOB_FILE)).unwrap();
        std::fs::write(
            dir.path().join(JOB_FILE),
            text.replacen('{', "{\"surprise\": 1,", 1),
        )
        .unwrap();
        let e = JobFile::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("surprise"), "{e}");
    }
}
