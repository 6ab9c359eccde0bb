//! Enqueue, claim, heartbeat, progress and finish: the life of a job row.
//!
//! Every write by a worker is conditional on `worker_id = me AND status = 'processing'`, so a
//! worker whose lease was taken over can never overwrite the new owner's work: it gets
//! [`QueueError::LeaseLost`] and stops.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Text, Timestamp};
use sha2::{Digest, Sha256};

use super::clock::{Clock, SystemClock};
use super::model::{ErrorCode, FailureKind, Job, JobFailure, JobSource, JobStatus};
use crate::db::schema::jobs;
use crate::db::{Db, DbConnection, DbError};
use crate::pipeline::{JobOptions, OptionsError};

/// Queue failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The job's options are out of range.
    #[error("invalid job options: {0}")]
    Options(#[from] OptionsError),
    /// The worker no longer holds this job: its lease expired and the job was requeued, or the job
    /// was cancelled. The worker must stop working on it.
    #[error("job {job_id}: worker {worker_id} no longer holds the lease")]
    LeaseLost {
        /// The job.
        job_id: String,
        /// The worker that tried to write.
        worker_id: String,
    },
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(String),
}

impl From<DieselError> for QueueError {
    fn from(e: DieselError) -> Self {
        QueueError::Db(DbError::Query(e))
    }
}

/// Exponential back-off between retries: `base × 2^(attempt − 1)`, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The delay before the next attempt, after `attempts` attempts have failed.
    pub fn delay(&self, attempts: i32) -> Duration {
        let exp = attempts.saturating_sub(1).clamp(0, 30) as u32;
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// How it entered the node.
    pub source: JobSource,
    /// Study Instance UID, when known.
    pub study_instance_uid: Option<String>,
    /// Series Instance UID. With it, enqueue is idempotent per series + revision + options.
    pub series_instance_uid: Option<String>,
    /// The series revision (1 for the first).
    pub revision: i32,
    /// The input file or folder.
    pub input_path: String,
    /// Pipeline options.
    pub options: JobOptions,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts allowed in all (≥ 1).
    pub max_attempts: i32,
}

impl NewJob {
    /// A job with default priority and three attempts.
    pub fn new(source: JobSource, input_path: impl Into<String>, options: JobOptions) -> Self {
        Self {
            source,
            study_instance_uid: None,
            series_instance_uid: None,
            revision: 1,
            input_path: input_path.into(),
            options,
            priority: 0,
            max_attempts: 3,
        }
    }

    /// The idempotency key: a hash of series, revision and canonical options.
    fn dedup_key(&self) -> Option<String> {
        let series = self.series_instance_uid.as_deref()?;
        let mut h = Sha256::new();
        h.update(series.as_bytes());
        h.update([0]);
        h.update(self.revision.to_be_bytes());
        h.update(self.options.canonical_json().as_bytes());
        Some(format!("{:x}", h.finalize()))
    }
}

/// The result of an enqueue.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// The job (new, or the one already queued for the same series, revision and options).
    pub job: Job,
    /// Whether this call created it.
    pub created: bool,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Lease renewed; go on.
    Continue,
    /// Lease renewed, but a user asked to cancel: stop the job and call [`Queue::mark_cancelled`].
    CancelRequested,
}

/// A progress report from a running job.
#[derive(Debug, Clone)]
pub struct Progress {
    /// 1-based step number.
    pub step: i32,
    /// Number of steps.
    pub total: i32,
    /// The step's name.
    pub name: String,
    /// 0–100.
    pub percent: f64,
}

/// The result of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled.
    Cancelled,
    /// The job is running; its worker will stop it at the next heartbeat.
    Requested,
    /// The job had already finished with this status.
    AlreadyFinal(JobStatus),
}

/// What a sweep of expired leases did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequeueReport {
    /// Requeued for another attempt.
    pub requeued: usize,
    /// Out of attempts: now `error` with `WORKER_LOST`.
    pub failed: usize,
    /// Cancel had been requested: now `cancelled`.
    pub cancelled: usize,
}

/// The queue: a database handle, a clock and a retry policy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    db: Db,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
}

const CLAIM_PG: &str = "UPDATE jobs SET status = 'processing', worker_id = $1, \
     attempts = attempts + 1, lease_expires_at = $2, heartbeat_at = $3, started_at = $3, \
     cancel_requested = FALSE, current_step = 0, total_steps = 0, step_name = NULL, \
     progress_percent = 0 \
     WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND run_after <= $3 \
                 ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING *";

// SQLite has one writer at a time, so selecting and updating in one statement is already atomic.
// Without statistics its planner prefers the (status, completed_at) index and sorts every queued
// row on each claim; INDEXED BY keeps the claim a walk down the claim-order index.
const CLAIM_SQLITE: &str = "UPDATE jobs SET status = 'processing', worker_id = ?1, \
     attempts = attempts + 1, lease_expires_at = ?2, heartbeat_at = ?3, started_at = ?3, \
     cancel_requested = FALSE, current_step = 0, total_steps = 0, step_name = NULL, \
     progress_percent = 0 \
     WHERE id = (SELECT id FROM jobs INDEXED BY jobs_claimable \
                 WHERE status = 'queued' AND run_after <= ?3 \
                 ORDER BY priority DESC, created_at, id LIMIT 1) \
     RETURNING *";

fn plus(t: NaiveDateTime, d: Duration) -> NaiveDateTime {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Queue {
    /// A queue on the real clock with the default back-off.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            clock: Arc::new(SystemClock),
            backoff: Backoff::default(),
        }
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the back-off policy.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The database underneath.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The queue's notion of now.
    pub fn now(&self) -> NaiveDateTime {
        self.clock.now()
    }

    /// Adds a job. With a series UID this is idempotent: the same series, revision and options
    /// return the existing job instead of creating a second one.
    pub fn enqueue(&self, new: &NewJob) -> Result<Enqueued, QueueError> {
        new.options.validate()?;
        let key = new.dedup_key();
        let mut conn = self.db.conn()?;
        if let Some(existing) = find_by_key(&mut conn, key.as_deref())? {
            return Ok(Enqueued {
                job: existing,
                created: false,
            });
        }
        let now = self.clock.now();
        let id = uuid::Uuid::new_v4().to_string();
        let inserted = diesel::insert_into(jobs::table)
            .values((
                jobs::id.eq(&id),
                jobs::revision.eq(new.revision),
                jobs::source.eq(new.source.as_str()),
                jobs::study_instance_uid.eq(&new.study_instance_uid),
                jobs::series_instance_uid.eq(&new.series_instance_uid),
                jobs::input_path.eq(&new.input_path),
                jobs::options.eq(new.options.canonical_json()),
                jobs::dedup_key.eq(&key),
                jobs::status.eq(JobStatus::Queued.as_str()),
                jobs::priority.eq(new.priority),
                jobs::max_attempts.eq(new.max_attempts.max(1)),
                jobs::run_after.eq(now),
                jobs::created_at.eq(now),
            ))
            .execute(&mut *conn);
        match inserted {
            Ok(_) => Ok(Enqueued {
                job: get_job(&mut conn, &id)?,
                created: true,
            }),
            // Two enqueuers raced on the same key: the other one won, and its job is ours too.
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                let job = find_by_key(&mut conn, key.as_deref())?
                    .ok_or_else(|| QueueError::NotFound(key.unwrap_or_default()))?;
                Ok(Enqueued {
                    job,
                    created: false,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Claims the next runnable job for `worker_id` under a lease of `lease`, or `None` when no
    /// job is runnable now. The attempt counter is incremented here.
    pub fn claim(&self, worker_id: &str, lease: Duration) -> Result<Option<Job>, QueueError> {
        let now = self.clock.now();
        let expires = plus(now, lease);
        let mut conn = self.db.conn()?;
        let job = match &mut *conn {
            DbConnection::Pg(c) => diesel::sql_query(CLAIM_PG)
                .bind::<Text, _>(worker_id)
                .bind::<Timestamp, _>(expires)
                .bind::<Timestamp, _>(now)
                .get_result::<Job>(c)
                .optional()?,
            DbConnection::Sqlite(c) => diesel::sql_query(CLAIM_SQLITE)
                .bind::<Text, _>(worker_id)
                .bind::<Timestamp, _>(expires)
                .bind::<Timestamp, _>(now)
                .get_result::<Job>(c)
                .optional()?,
        };
        Ok(job)
    }

    /// Renews the lease. Tells the worker whether a cancel was requested; fails with
    /// [`QueueError::LeaseLost`] when the job is no longer this worker's.
    pub fn heartbeat(
        &self,
        job_id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> Result<HeartbeatOutcome, QueueError> {
        let now = self.clock.now();
        let mut conn = self.db.conn()?;
        let n = diesel::update(owned(job_id, worker_id))
            .set((
                jobs::heartbeat_at.eq(now),
                jobs::lease_expires_at.eq(plus(now, lease)),
            ))
            .execute(&mut *conn)?;
        if n == 0 {
            return Err(lease_lost(job_id, worker_id));
        }
        let cancel: bool = jobs::table
            .find(job_id)
            .select(jobs::cancel_requested)
            .get_result(&mut *conn)?;
        Ok(if cancel {
            HeartbeatOutcome::CancelRequested
        } else {
            HeartbeatOutcome::Continue
        })
    }

    /// Records progress of a running job.
    pub fn progress(&self, job_id: &str, worker_id: &str, p: &Progress) -> Result<(), QueueError> {
        let mut conn = self.db.conn()?;
        let n = diesel::update(owned(job_id, worker_id))
            .set((
                jobs::current_step.eq(p.step),
                jobs::total_steps.eq(p.total),
                jobs::step_name.eq(&p.name),
                jobs::progress_percent.eq(p.percent.clamp(0.0, 100.0)),
            ))
            .execute(&mut *conn)?;
        if n == 0 {
            return Err(lease_lost(job_id, worker_id));
        }
        Ok(())
    }

    /// Marks a running job complete with its results.
    pub fn complete(
        &self,
        job_id: &str,
        worker_id: &str,
        result_path: &str,
        result_size_bytes: i64,
    ) -> Result<(), QueueError> {
        let now = self.clock.now();
        let mut conn = self.db.conn()?;
        let n = diesel::update(owned(job_id, worker_id))
            .set((
                jobs::status.eq(JobStatus::Complete.as_str()),
                jobs::completed_at.eq(now),
                jobs::lease_expires_at.eq(None::<NaiveDateTime>),
                jobs::progress_percent.eq(100.0),
                jobs::result_path.eq(result_path),
                jobs::result_size_bytes.eq(result_size_bytes),
            ))
            .execute(&mut *conn)?;
        if n == 0 {
            return Err(lease_lost(job_id, worker_id));
        }
        Ok(())
    }

    /// Records a failed attempt. `Retry` requeues with back-off while attempts remain; `Abort`,
    /// or a retry after the last attempt, ends the job in `error`. Returns the new status.
    pub fn fail(
        &self,
        job_id: &str,
        worker_id: &str,
        failure: &JobFailure,
    ) -> Result<JobStatus, QueueError> {
        let now = self.clock.now();
        let mut conn = self.db.conn()?;
        // Attempts cannot change under us while we hold the lease; the update below re-checks it.
        let (attempts, max_attempts): (i32, i32) = owned(job_id, worker_id)
            .select((jobs::attempts, jobs::max_attempts))
            .get_result(&mut *conn)
            .optional()?
            .ok_or_else(|| lease_lost(job_id, worker_id))?;
        let retry = failure.kind == FailureKind::Retry && attempts < max_attempts;
        let status = if retry {
            JobStatus::Queued
        } else {
            JobStatus::Error
        };
        let code = failure.code.as_str();
        let n = if retry {
            diesel::update(owned(job_id, worker_id))
                .set((
                    jobs::status.eq(status.as_str()),
                    jobs::run_after.eq(plus(now, self.backoff.delay(attempts))),
                    jobs::worker_id.eq(None::<String>),
                    jobs::lease_expires_at.eq(None::<NaiveDateTime>),
                    jobs::error_code.eq(code),
                    jobs::error_message.eq(&failure.message),
                ))
                .execute(&mut *conn)?
        } else {
            diesel::update(owned(job_id, worker_id))
                .set((
                    jobs::status.eq(status.as_str()),
                    jobs::completed_at.eq(now),
                    jobs::lease_expires_at.eq(None::<NaiveDateTime>),
                    jobs::error_code.eq(code),
                    jobs::error_message.eq(&failure.message),
                ))
                .execute(&mut *conn)?
        };
        if n == 0 {
            return Err(lease_lost(job_id, worker_id));
        }
        Ok(status)
    }

    /// Cancels a job: at once when queued; by flagging it when running (the worker stops it at
    /// its next heartbeat, or the lease sweep does if the worker is gone).
    pub fn cancel(&self, job_id: &str) -> Result<CancelOutcome, QueueError> {
        let now = self.clock.now();
        let mut conn = self.db.conn()?;
        let n = diesel::update(
            jobs::table
                .find(job_id)
                .filter(jobs::status.eq(JobStatus::Queued.as_str())),
        )
        .set(cancelled_now(now))
        .execute(&mut *conn)?;
        if n == 1 {
            return Ok(CancelOutcome::Cancelled);
        }
        let n = diesel::update(
            jobs::table
                .find(job_id)
                .filter(jobs::status.eq(JobStatus::Processing.as_str())),
        )
        .set(jobs::cancel_requested.eq(true))
        .execute(&mut *conn)?;
        if n == 1 {
            return Ok(CancelOutcome::Requested);
        }
        Ok(CancelOutcome::AlreadyFinal(
            get_job(&mut conn, job_id)?.status(),
        ))
    }

    /// The worker confirms that it stopped a job whose cancel was requested.
    pub fn mark_cancelled(&self, job_id: &str, worker_id: &str) -> Result<(), QueueError> {
        let now = self.clock.now();
        let mut conn = self.db.conn()?;
        let n = diesel::update(owned(job_id, worker_id))
            .set(cancelled_now(now))
            .execute(&mut *conn)?;
        if n == 0 {
            return Err(lease_lost(job_id, worker_id));
        }
        Ok(())
    }

    /// Sweeps jobs whose lease has expired: cancel-requested ones become `cancelled`, those out of
    /// attempts become `error` (`WORKER_LOST`), the rest are requeued at once. Safe to run from
    /// every worker concurrently: each statement only touches rows still matching its condition.
    pub fn requeue_expired(&self) -> Result<RequeueReport, QueueError> {
        let now = self.clock.now();
        let mut conn = self.db.conn()?;
        let expired = || {
            jobs::table
                .filter(jobs::status.eq(JobStatus::Processing.as_str()))
                .filter(jobs::lease_expires_at.lt(now))
        };
        let cancelled = diesel::update(expired().filter(jobs::cancel_requested.eq(true)))
            .set(cancelled_now(now))
            .execute(&mut *conn)?;
        let lost = ErrorCode::WorkerLost;
        let failed = diesel::update(expired().filter(jobs::attempts.ge(jobs::max_attempts)))
            .set((
                jobs::status.eq(JobStatus::Error.as_str()),
                jobs::completed_at.eq(now),
                jobs::lease_expires_at.eq(None::<NaiveDateTime>),
                jobs::error_code.eq(lost.as_str()),
                jobs::error_message.eq(lost.user_message()),
            ))
            .execute(&mut *conn)?;
        let requeued = diesel::update(expired())
            .set((
                jobs::status.eq(JobStatus::Queued.as_str()),
                jobs::run_after.eq(now),
                jobs::worker_id.eq(None::<String>),
                jobs::lease_expires_at.eq(None::<NaiveDateTime>),
                jobs::error_code.eq(lost.as_str()),
                jobs::error_message.eq(lost.user_message()),
            ))
            .execute(&mut *conn)?;
        Ok(RequeueReport {
            requeued,
            failed,
            cancelled,
        })
    }

    /// One job by id.
    pub fn get(&self, job_id: &str) -> Result<Job, QueueError> {
        let mut conn = self.db.conn()?;
        get_job(&mut conn, job_id)
    }
}

pub(super) type OwnedFilter<'a> = diesel::dsl::Filter<
    diesel::dsl::Filter<
        diesel::dsl::Find<jobs::table, &'a str>,
        diesel::dsl::Eq<jobs::worker_id, &'a str>,
    >,
    diesel::dsl::Eq<jobs::status, &'static str>,
>;

/// The job, but only while `worker_id` holds it.
pub(super) fn owned<'a>(job_id: &'a str, worker_id: &'a str) -> OwnedFilter<'a> {
    jobs::table
        .find(job_id)
        .filter(jobs::worker_id.eq(worker_id))
        .filter(jobs::status.eq(JobStatus::Processing.as_str()))
}

type CancelledSet = (
    diesel::dsl::Eq<jobs::status, &'static str>,
    diesel::dsl::Eq<jobs::completed_at, NaiveDateTime>,
    diesel::dsl::Eq<jobs::lease_expires_at, Option<NaiveDateTime>>,
    diesel::dsl::Eq<jobs::error_code, &'static str>,
    diesel::dsl::Eq<jobs::error_message, &'static str>,
);

fn cancelled_now(now: NaiveDateTime) -> CancelledSet {
    (
        jobs::status.eq(JobStatus::Cancelled.as_str()),
        jobs::completed_at.eq(now),
        jobs::lease_expires_at.eq(None),
        jobs::error_code.eq(ErrorCode::Cancelled.as_str()),
        jobs::error_message.eq(ErrorCode::Cancelled.user_message()),
    )
}

pub(super) fn lease_lost(job_id: &str, worker_id: &str) -> QueueError {
    QueueError::LeaseLost {
        job_id: job_id.to_owned(),
        worker_id: worker_id.to_owned(),
    }
}

fn get_job(conn: &mut DbConnection, job_id: &str) -> Result<Job, QueueError> {
    jobs::table
        .find(job_id)
        .select(Job::as_select())
        .get_result(conn)
        .optional()?
        .ok_or_else(|| QueueError::NotFound(job_id.to_owned()))
}

fn find_by_key(conn: &mut DbConnection, key: Option<&str>) -> Result<Option<Job>, QueueError> {
    let Some(key) = key else { return Ok(None) };
    Ok(jobs::table
        .filter(jobs::dedup_key.eq(key))
        .select(Job::as_select())
        .get_result(conn)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.delay(1), Duration::from_secs(10));
        assert_eq!(b.delay(2), Duration::from_secs(20));
        assert_eq!(b.delay(3), Duration::from_secs(40));
        assert_eq!(b.delay(4), Duration::from_secs(60));
        assert_eq!(b.delay(100), Duration::from_secs(60));
    }

    #[test]
    fn dedup_key_depends_on_series_revision_and_options() {
        let mut a = NewJob::new(JobSource::Dicom, "/in", JobOptions::default());
        assert_eq!(a.dedup_key(), None);
        a.series_instance_uid = Some("1.2.3".into());
        let k1 = a.dedup_key();
        a.revision = 2;
        let k2 = a.dedup_key();
        a.options.perform_nsm = false;
        let k3 = a.dedup_key();
        assert!(k1.is_some() && k1 != k2 && k2 != k3);
    }
}
