//! The job row and the small vocabularies around it: status, source, error codes and how a
//! failure is handled.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use crate::db::schema::jobs;
use crate::pipeline::JobOptions;

/// Where a job's status stands. Stored as lower-case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a worker (possibly until `run_after`).
    Queued,
    /// Held by a worker under a lease.
    Processing,
    /// Finished with results.
    Complete,
    /// Finished without results; `error_code` says why.
    Error,
    /// Stopped by a user.
    Cancelled,
}

impl JobStatus {
    /// Every status, in display order.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Complete,
        JobStatus::Error,
        JobStatus::Cancelled,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Complete => "complete",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Complete | Self::Error | Self::Cancelled)
    }
}

/// How a job entered the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobSource {
    /// A series received by the SCP.
    Dicom,
    /// A file uploaded in the portal.
    Upload,
    /// `kneenode run` or another command-line submission.
    Cli,
}

impl JobSource {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dicom => "dicom",
            Self::Upload => "upload",
            Self::Cli => "cli",
        }
    }
}

/// The user-facing error codes: the original pipeline's, plus kneenode's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The job ran past its time limit.
    Timeout,
    /// The input file is missing.
    FileNotFound,
    /// The input is not a readable NIfTI, NRRD or DICOM series.
    InvalidFormat,
    /// The GPU ran out of memory.
    GpuOom,
    /// The DICOM data is inconsistent (missing slices, mixed series).
    DicomError,
    /// Any other failure inside the pipeline.
    PipelineError,
    /// A model named by the job is missing or unusable.
    ModelError,
    /// A user cancelled the job.
    Cancelled,
    /// The worker stopped heart-beating (crashed, killed, or lost its host) and its lease expired.
    WorkerLost,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 9] = [
        Self::Timeout,
        Self::FileNotFound,
        Self::InvalidFormat,
        Self::GpuOom,
        Self::DicomError,
        Self::PipelineError,
        Self::ModelError,
        Self::Cancelled,
        Self::WorkerLost,
    ];

    /// The stored text, e.g. `GPU_OOM`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "TIMEOUT",
            Self::FileNotFound => "FILE_NOT_FOUND",
            Self::InvalidFormat => "INVALID_FORMAT",
            Self::GpuOom => "GPU_OOM",
            Self::DicomError => "DICOM_ERROR",
            Self::PipelineError => "PIPELINE_ERROR",
            Self::ModelError => "MODEL_ERROR",
            Self::Cancelled => "CANCELLED",
            Self::WorkerLost => "WORKER_LOST",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A plain sentence for the people who read the portal, in the original's voice.
    pub fn user_message(self) -> &'static str {
        match self {
            Self::Timeout => "Processing took longer than the time limit and was stopped.",
            Self::FileNotFound => "Input file could not be read. Please check the file format.",
            Self::InvalidFormat => "Invalid file format. Supported formats: NIfTI, NRRD, DICOM.",
            Self::GpuOom => "GPU ran out of memory. Try a smaller file or contact support.",
            Self::DicomError => "The DICOM series is incomplete or inconsistent.",
            Self::PipelineError => "Segmentation failed. The image quality may be insufficient.",
            Self::ModelError => "The requested model is not installed. Contact your administrator.",
            Self::Cancelled => "The job was cancelled.",
            Self::WorkerLost => "The worker processing this job stopped unexpectedly.",
        }
    }
}

/// Whether a failed job may run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Transient: requeue with back-off while attempts remain.
    Retry,
    /// Permanent: the same input will fail the same way, so never retry.
    Abort,
}

/// One failed attempt, as the worker reports it.
#[derive(Debug, Clone)]
pub struct JobFailure {
    /// The code shown to users.
    pub code: ErrorCode,
    /// Detail for the job page and the log (never patient data).
    pub message: String,
    /// Retry or abort.
    pub kind: FailureKind,
}

/// A job row as stored.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Serialize)]
#[diesel(table_name = jobs)]
pub struct Job {
    /// UUID, as text.
    pub id: String,
    /// Revision of the series this job processes (a late instance makes revision 2, …).
    pub revision: i32,
    /// `dicom`, `upload` or `cli`.
    pub source: String,
    /// Study Instance UID, when known.
    pub study_instance_uid: Option<String>,
    /// Series Instance UID, when known.
    pub series_instance_uid: Option<String>,
    /// A file or folder the pipeline reads.
    pub input_path: String,
    /// [`JobOptions`] as canonical JSON.
    pub options: String,
    /// Idempotency key for enqueue; `None` for one-off jobs.
    pub dedup_key: Option<String>,
    /// See [`JobStatus`].
    pub status: String,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts started so far (incremented at claim).
    pub attempts: i32,
    /// Attempts allowed in all.
    pub max_attempts: i32,
    /// Not claimable before this time (back-off).
    pub run_after: NaiveDateTime,
    /// The worker holding the lease.
    pub worker_id: Option<String>,
    /// The lease ends here unless renewed by a heartbeat.
    pub lease_expires_at: Option<NaiveDateTime>,
    /// Last heartbeat.
    pub heartbeat_at: Option<NaiveDateTime>,
    /// A user asked to cancel while the job was running.
    pub cancel_requested: bool,
    /// Progress: step number (1-based; 0 before the first).
    pub current_step: i32,
    /// Progress: number of steps.
    pub total_steps: i32,
    /// Progress: the step's name.
    pub step_name: Option<String>,
    /// Progress: 0–100.
    pub progress_percent: f64,
    /// When enqueued.
    pub created_at: NaiveDateTime,
    /// When the current (or last) attempt started.
    pub started_at: Option<NaiveDateTime>,
    /// When it reached a final status.
    pub completed_at: Option<NaiveDateTime>,
    /// Results zip (or folder).
    pub result_path: Option<String>,
    /// Size of the results, bytes.
    pub result_size_bytes: Option<i64>,
    /// The last error's code (kept on retry, as history).
    pub error_code: Option<String>,
    /// The last error's message.
    pub error_message: Option<String>,
    /// Peak resident memory of the job's process (the last attempt), bytes.
    pub peak_rss_bytes: Option<i64>,
    /// Peak GPU memory of the job's process on CUDA (the last attempt), bytes.
    pub peak_gpu_bytes: Option<i64>,
}

impl Job {
    /// The status as an enum. An unknown stored value reads as `Error`, never panics.
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Error)
    }

    /// The options, parsed. Rows are written only from validated options, so this fails only on
    /// a hand-edited row.
    pub fn options(&self) -> Result<JobOptions, serde_json::Error> {
        serde_json::from_str(&self.options)
    }

    /// The last error code as an enum.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error_code.as_deref().and_then(ErrorCode::parse)
    }
}
