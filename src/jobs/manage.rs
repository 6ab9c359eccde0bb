//! What an administrator does to finished jobs: run one again, or delete it. (Cancel lives with
//! the queue, since it races the workers.)

use diesel::prelude::*;

use super::{JobStatus, Queue, QueueError};
use crate::db::schema::{dispatches, jobs};

impl Queue {
    /// Queues a finished job (error or cancelled) again with fresh attempts, due now; its last
    /// error stays visible until the new attempt ends. `false` when the job is not in a status
    /// that can be retried (queued, running or complete).
    pub fn retry(&self, job_id: &str) -> Result<bool, QueueError> {
        let now = self.now();
        let mut conn = self.db().conn()?;
        let n = diesel::update(jobs::table.find(job_id).filter(
            jobs::status.eq_any([JobStatus::Error.as_str(), JobStatus::Cancelled.as_str()]),
        ))
        .set((
            jobs::status.eq(JobStatus::Queued.as_str()),
            jobs::attempts.eq(0),
            jobs::run_after.eq(now),
            jobs::cancel_requested.eq(false),
            jobs::worker_id.eq(None::<String>),
            jobs::lease_expires_at.eq(None::<chrono::NaiveDateTime>),
            jobs::current_step.eq(0),
            jobs::step_name.eq(None::<String>),
            jobs::progress_percent.eq(0.0),
            jobs::completed_at.eq(None::<chrono::NaiveDateTime>),
        ))
        .execute(&mut *conn)?;
        if n == 0 {
            // Distinguish "no such job" from "not retryable".
            self.get(job_id)?;
        }
        Ok(n == 1)
    }

    /// Deletes a finished job's row and its dispatch rows (the caller removes its folder).
    /// `false` when the job is queued or running: cancel it first.
    pub fn delete(&self, job_id: &str) -> Result<bool, QueueError> {
        let job = self.get(job_id)?;
        if !job.status().is_final() {
            return Ok(false);
        }
        let mut conn = self.db().conn()?;
        conn.transaction(|c| {
            diesel::delete(dispatches::table.filter(dispatches::job_id.eq(job_id))).execute(c)?;
            diesel::delete(jobs::table.find(job_id)).execute(c)
        })?;
        Ok(true)
    }
}
