//! The job queue: durable jobs in the database, claimed by workers under a lease.
//!
//! A job is enqueued once per series revision and option set, claimed by exactly one worker at a
//! time (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: one atomic `UPDATE … RETURNING`), kept alive
//! by heartbeats, and finished as complete, error (after retries with back-off) or cancelled. A
//! worker that disappears stops heart-beating; its lease expires and the job is requeued. Rows are
//! never deleted here: they are the node's history and the source of its statistics.

mod clock;
mod lease;
mod manage;
mod model;
mod queue;
mod stats;

pub use clock::{Clock, ManualClock, SystemClock};
pub use lease::Resources;
pub use model::{ErrorCode, FailureKind, Job, JobFailure, JobSource, JobStatus};
pub use queue::{
    Backoff, CancelOutcome, Enqueued, HeartbeatOutcome, NewJob, Progress, Queue, QueueError,
    RequeueReport,
};
pub use stats::{DayStats, QueuePosition, Statistics};
