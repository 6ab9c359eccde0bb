//! How an attempt ended, from the supervisor's point of view: the child's last event, its exit
//! status, what the supervisor itself did to it (timeout, cancel, shutdown) and its stderr.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::protocol::Event;
use crate::jobs::{ErrorCode, FailureKind, JobFailure};

/// What the supervisor did to the child, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intervention {
    /// Nothing: the child ended by itself.
    None,
    /// Stopped at the time limit.
    Timeout,
    /// Stopped because a user cancelled the job.
    Cancel,
    /// Stopped because the worker is shutting down.
    Shutdown,
    /// Stopped because the lease was lost (another worker owns the job now).
    LeaseLost,
}

/// The end of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Results are ready.
    Complete {
        /// The results zip.
        zip: String,
        /// DICOM objects for the destinations.
        dicom: Vec<String>,
        /// Peak CUDA memory, bytes.
        peak_gpu_bytes: Option<i64>,
        /// Seconds per pipeline stage, as the job's process measured them.
        stage_seconds: std::collections::BTreeMap<String, f64>,
    },
    /// The attempt failed.
    Failed(FailureOf),
    /// The job was cancelled by a user.
    Cancelled,
    /// Hand the job back untouched (shutdown), or leave it (lease lost).
    Abandoned(Intervention),
}

/// A failure together with the stage it happened in.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureOf {
    /// The code.
    pub code: ErrorCode,
    /// Retry or abort.
    pub kind: FailureKind,
    /// Detail for the job page (no patient data).
    pub detail: String,
}

impl FailureOf {
    fn new(code: ErrorCode, kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            code,
            kind,
            detail: detail.into(),
        }
    }

    /// The failure as the queue records it, naming the stage: "Segmentation failed. … (stage
    /// 2/7 segmentation: …)".
    pub fn into_job_failure(self, stage: Option<&str>) -> JobFailure {
        let at = stage.map(|s| format!(" during {s}")).unwrap_or_default();
        JobFailure {
            code: self.code,
            message: format!("{} Failed{at}: {}", self.code.user_message(), self.detail),
            kind: self.kind,
        }
    }
}

/// Whether a code is worth another attempt. Bad input and missing models fail the same way
/// every time; timeouts, out-of-memory and crashes may be load or luck.
pub fn kind_of(code: ErrorCode) -> FailureKind {
    match code {
        ErrorCode::FileNotFound
        | ErrorCode::InvalidFormat
        | ErrorCode::DicomError
        | ErrorCode::ModelError
        | ErrorCode::Cancelled => FailureKind::Abort,
        _ => FailureKind::Retry,
    }
}

/// Signs of the GPU running out of memory in a child's stderr.
fn looks_like_gpu_oom(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("cuda out of memory")
        || s.contains("cuda error: out of memory")
        || s.contains("cudaerrormemoryallocation")
        || s.contains("cublas_status_alloc_failed")
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// Classifies an attempt. `last` is the child's last event, `stderr_tail` the end of its stderr.
pub fn classify(
    status: ExitStatus,
    last: Option<&Event>,
    intervention: Intervention,
    timeout_s: u64,
    stderr_tail: &str,
) -> Outcome {
    match intervention {
        Intervention::Timeout => {
            return Outcome::Failed(FailureOf::new(
                ErrorCode::Timeout,
                kind_of(ErrorCode::Timeout),
                format!("stopped after the time limit of {timeout_s} s"),
            ))
        }
        Intervention::Cancel => return Outcome::Cancelled,
        Intervention::Shutdown | Intervention::LeaseLost => {
            return Outcome::Abandoned(intervention)
        }
        Intervention::None => {}
    }
    match (last, status.code()) {
        (
            Some(Event::Done {
                zip,
                dicom,
                peak_gpu_bytes,
                stage_seconds,
            }),
            Some(0),
        ) => Outcome::Complete {
            zip: zip.clone(),
            dicom: dicom.clone(),
            peak_gpu_bytes: *peak_gpu_bytes,
            stage_seconds: stage_seconds.clone(),
        },
        (
            Some(Event::Failed {
                code,
                message,
                retry,
            }),
            _,
        ) => {
            let code = ErrorCode::parse(code).unwrap_or(ErrorCode::PipelineError);
            let kind = if *retry {
                FailureKind::Retry
            } else {
                FailureKind::Abort
            };
            Outcome::Failed(FailureOf::new(code, kind, message.clone()))
        }
        _ if looks_like_gpu_oom(stderr_tail) => Outcome::Failed(FailureOf::new(
            ErrorCode::GpuOom,
            kind_of(ErrorCode::GpuOom),
            "the GPU ran out of memory",
        )),
        _ => {
            let detail = match (status.code(), status.signal()) {
                (_, Some(9)) => "the job's process was killed (SIGKILL; the host may have run out \
                                 of memory)"
                    .to_owned(),
                (_, Some(sig)) => format!("the job's process died of {}", signal_name(sig)),
                (Some(0), _) => "the job's process ended without reporting results".to_owned(),
                (Some(code), _) => format!("the job's process exited with status {code}"),
                (None, None) => "the job's process ended abnormally".to_owned(),
            };
            Outcome::Failed(FailureOf::new(
                ErrorCode::PipelineError,
                kind_of(ErrorCode::PipelineError),
                detail,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }
    fn signalled(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    #[test]
    fn every_end_gets_a_code_and_a_kind() {
        let done = Event::Done {
            zip: "z".into(),
            dicom: vec![],
            peak_gpu_bytes: None,
            stage_seconds: Default::default(),
        };
        assert!(matches!(
            classify(exited(0), Some(&done), Intervention::None, 9, ""),
            Outcome::Complete { .. }
        ));
        let timeout = classify(signalled(9), None, Intervention::Timeout, 3, "");
        let Outcome::Failed(f) = timeout else {
            panic!("{timeout:?}")
        };
        assert_eq!((f.code, f.kind), (ErrorCode::Timeout, FailureKind::Retry));
        assert!(f.detail.contains("3 s"));

        let Outcome::Failed(f) = classify(signalled(9), None, Intervention::None, 3, "") else {
            panic!()
        };
        assert_eq!(
            (f.code, f.kind),
            (ErrorCode::PipelineError, FailureKind::Retry)
        );
        assert!(f.detail.contains("SIGKILL"), "{}", f.detail);

        let bad = Event::failed(ErrorCode::InvalidFormat, "not NIfTI", false);
        let Outcome::Failed(f) = classify(exited(3), Some(&bad), Intervention::None, 3, "") else {
            panic!()
        };
        assert_eq!(
            (f.code, f.kind),
            (ErrorCode::InvalidFormat, FailureKind::Abort)
        );

        let oom = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB";
        let Outcome::Failed(f) = classify(signalled(6), None, Intervention::None, 3, oom) else {
            panic!()
        };
        assert_eq!(f.code, ErrorCode::GpuOom);
        // A "done" line from a process that then crashed is not a success.
        assert!(matches!(
            classify(exited(1), Some(&done), Intervention::None, 3, ""),
            Outcome::Failed(_)
        ));
        assert_eq!(
            classify(exited(0), None, Intervention::Cancel, 3, ""),
            Outcome::Cancelled
        );
    }

    #[test]
    fn the_message_names_the_stage() {
        let f = FailureOf::new(ErrorCode::PipelineError, FailureKind::Retry, "boom")
            .into_job_failure(Some("segmentation"));
        assert!(
            f.message.starts_with("Segmentation failed."),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("during segmentation: boom"),
            "{}",
            f.message
        );
    }
}
