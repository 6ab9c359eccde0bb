//! What a worker does with a job it holds besides progress and the final outcome: hand it back
//! untouched (the worker is shutting down) and record what the attempt cost (peak memory, seconds
//! per pipeline stage).

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::model::JobStatus;
use super::queue::{lease_lost, owned, Queue, QueueError};
use crate::db::schema::jobs;

/// Peak memory of one attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Peak resident set of the job's process, bytes.
    pub peak_rss_bytes: Option<i64>,
    /// Peak CUDA memory allocated by the job's process, bytes.
    pub peak_gpu_bytes: Option<i64>,
}

impl Queue {
    /// Gives a held job back to the queue without counting the attempt: the worker is stopping
    /// (node shut down), not failing. The job is claimable again at once.
    pub fn release(&self, job_id: &str, worker_id: &str) -> Result<(), QueueError> {
        let now = self.now();
        let mut conn = self.db().conn()?;
        let n = diesel::update(owned(job_id, worker_id))
            .set((
                jobs::status.eq(JobStatus::Queued.as_str()),
                jobs::attempts.eq(jobs::attempts - 1),
                jobs::run_after.eq(now),
                jobs::worker_id.eq(None::<String>),
                jobs::lease_expires_at.eq(None::<NaiveDateTime>),
                jobs::current_step.eq(0),
                jobs::step_name.eq(None::<String>),
                jobs::progress_percent.eq(0.0),
            ))
            .execute(&mut *conn)?;
        if n == 0 {
            return Err(lease_lost(job_id, worker_id));
        }
        Ok(())
    }

    /// Records the peak memory of the current attempt (while the worker holds the job).
    pub fn record_resources(
        &self,
        job_id: &str,
        worker_id: &str,
        r: Resources,
    ) -> Result<(), QueueError> {
        let mut conn = self.db().conn()?;
        let n = diesel::update(owned(job_id, worker_id))
            .set((
                jobs::peak_rss_bytes.eq(r.peak_rss_bytes),
                jobs::peak_gpu_bytes.eq(r.peak_gpu_bytes),
            ))
            .execute(&mut *conn)?;
        if n == 0 {
            return Err(lease_lost(job_id, worker_id));
        }
        Ok(())
    }

    /// Records the seconds each pipeline stage took (`jobs.stage_seconds`, a JSON object
    /// `{stage: seconds}`), while the worker holds the job; call it just before completing.
    /// Nothing is written for an empty map.
    pub fn record_stage_seconds(
        &self,
        job_id: &str,
        worker_id: &str,
        stages: &BTreeMap<String, f64>,
    ) -> Result<(), QueueError> {
        if stages.is_empty() {
            return Ok(());
        }
        // Milliseconds are plenty for a histogram and keep the column short.
        let rounded: BTreeMap<&str, f64> = stages
            .iter()
            .filter(|(_, s)| s.is_finite())
            .map(|(k, s)| (k.as_str(), (s.max(0.0) * 1000.0).round() / 1000.0))
            .collect();
        let json = serde_json::to_string(&rounded).unwrap_or_else(|_| "{}".to_owned());
        let mut conn = self.db().conn()?;
        let n = diesel::update(owned(job_id, worker_id))
            .set(jobs::stage_seconds.eq(json))
            .execute(&mut *conn)?;
        if n == 0 {
            return Err(lease_lost(job_id, worker_id));
        }
        Ok(())
    }
}
