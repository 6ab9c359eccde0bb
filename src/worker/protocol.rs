//! What the child tells the supervisor: one JSON object per line on its stdout. Anything else
//! the child prints goes to stderr (kept in the job folder), so stdout stays machine-readable.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::jobs::ErrorCode;

/// One line from the child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A stage began.
    Progress {
        /// 1-based stage number.
        step: i32,
        /// Number of stages.
        total: i32,
        /// The stage's name.
        name: String,
        /// Overall progress, 0–100.
        percent: f64,
    },
    /// The job succeeded.
    Done {
        /// The results zip.
        zip: String,
        /// DICOM objects to send to the destinations (SEG, SR).
        dicom: Vec<String>,
        /// Peak CUDA memory, bytes (CUDA only).
        peak_gpu_bytes: Option<i64>,
        /// Seconds per stage (the same timings as `results.json`), for the job row and the
        /// stage-duration histogram of `/metrics`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        stage_seconds: BTreeMap<String, f64>,
    },
    /// The job failed in a way the child understood.
    Failed {
        /// The user-facing code.
        code: String,
        /// Detail (no patient data).
        message: String,
        /// Whether another attempt may succeed.
        retry: bool,
    },
}

impl Event {
    /// A failure event.
    pub fn failed(code: ErrorCode, message: impl Into<String>, retry: bool) -> Self {
        Self::Failed {
            code: code.as_str().into(),
            message: message.into(),
            retry,
        }
    }

    /// Parses one line; `None` for anything that is not an event (ignored, never fatal).
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// Writes one event line to stdout and flushes, so the supervisor sees it at once.
pub fn emit(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        // A closed pipe means the supervisor is gone; the job is lost either way.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_noise_is_ignored() {
        let e = Event::Progress {
            step: 2,
            total: 7,
            name: "segmentation".into(),
            percent: 14.3,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains("\"event\":\"progress\""), "{line}");
        assert_eq!(Event::parse(&line), Some(e));
        assert_eq!(Event::parse("Warning: something"), None);
        let done = Event::Done {
            zip: "/j/r.zip".into(),
            dicom: vec![],
            peak_gpu_bytes: None,
            stage_seconds: [("segmentation".to_owned(), 1.5)].into(),
        };
        assert_eq!(
            Event::parse(&serde_json::to_string(&done).unwrap()),
            Some(done)
        );
        // An older child's line, without the timings, still parses.
        let old = r#"{"event":"done","zip":"z","dicom":[],"peak_gpu_bytes":null}"#;
        assert!(
            matches!(Event::parse(old), Some(Event::Done { stage_seconds, .. }) if stage_seconds.is_empty())
        );
        let f = Event::failed(ErrorCode::GpuOom, "out of memory", true);
        assert_eq!(Event::parse(&serde_json::to_string(&f).unwrap()), Some(f));
    }
}
