//! The worker registry: one `workers` row per supervisor, so that the node (and `/healthz`,
//! `/metrics`) knows which workers exist, on which devices and hosts, and which are alive —
//! including workers in other processes or on other hosts that share the database.
//!
//! A supervisor [`register`]s at start, [`touch`]es its row every [`TOUCH_EVERY`] and on each
//! claim and finish, and marks it [`stopped`] on a clean shutdown. A worker is *alive* while its
//! row was seen within [`ALIVE_WITHIN`] and is not stopped; a killed worker simply goes stale.
//! Times are the writer's UTC clock, like the queue's leases, so hosts need synchronised clocks.
//!
//! The registry is information, not control: [`Presence`] (what the supervisor uses) logs a
//! failed write and carries on, so a database hiccup never stops a worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;
use tracing::{info, warn};

use crate::db::schema::workers;
use crate::db::{Db, DbError};
use crate::jobs::{Clock, SystemClock};

/// How often a running supervisor refreshes its row.
pub const TOUCH_EVERY: Duration = Duration::from_secs(5);
/// A worker whose row is older than this is not alive (six missed refreshes).
pub const ALIVE_WITHIN: Duration = Duration::from_secs(30);
/// How often a supervisor retries while registry writes fail.
pub const RETRY_FAILING: Duration = Duration::from_secs(30);
/// Rows not seen for this long are deleted when a worker registers (old pids, retired hosts).
pub const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Who a worker is: the fixed part of its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The id it claims jobs under (`host:pid:device`).
    pub id: String,
    /// `cpu`, `cuda:0`, …
    pub device: String,
    /// Host name.
    pub host: String,
    /// Process id of the supervisor.
    pub pid: i32,
    /// kneenode version.
    pub version: String,
}

/// One registry row, with whether the worker counts as alive now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRow {
    /// Worker id.
    pub id: String,
    /// Device.
    pub device: String,
    /// Host name.
    pub host: String,
    /// Supervisor pid.
    pub pid: i32,
    /// kneenode version.
    pub version: String,
    /// When it (last) registered.
    pub started_at: NaiveDateTime,
    /// Its last refresh.
    pub last_seen_at: NaiveDateTime,
    /// The job it runs, if any.
    pub current_job_id: Option<String>,
    /// When it stopped cleanly.
    pub stopped_at: Option<NaiveDateTime>,
    /// Seen within [`ALIVE_WITHIN`] and not stopped.
    pub alive: bool,
}

type Stored = (
    String,
    String,
    String,
    i32,
    String,
    NaiveDateTime,
    NaiveDateTime,
    Option<String>,
    Option<NaiveDateTime>,
);

fn ago(now: NaiveDateTime, d: Duration) -> NaiveDateTime {
    now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
}

/// Upserts the worker's row as freshly started (clears `stopped_at` and the current job), and
/// forgets rows not seen for [`FORGET_AFTER`].
pub fn register(db: &Db, w: &WorkerInfo) -> Result<(), DbError> {
    register_at(db, w, SystemClock.now())
}

/// [`register`] at a given time (tests).
pub fn register_at(db: &Db, w: &WorkerInfo, now: NaiveDateTime) -> Result<(), DbError> {
    let mut conn = db.conn()?;
    diesel::delete(workers::table.filter(workers::last_seen_at.lt(ago(now, FORGET_AFTER))))
        .execute(&mut *conn)?;
    let fields = (
        workers::device.eq(&w.device),
        workers::host.eq(&w.host),
        workers::pid.eq(w.pid),
        workers::version.eq(&w.version),
        workers::started_at.eq(now),
        workers::last_seen_at.eq(now),
        workers::current_job_id.eq(None::<String>),
        workers::stopped_at.eq(None::<NaiveDateTime>),
    );
    // UPDATE, then INSERT: portable across both backends, and an id belongs to one supervisor,
    // so nobody races us for it.
    let n = diesel::update(workers::table.find(&w.id))
        .set(fields.clone())
        .execute(&mut *conn)?;
    if n == 0 {
        diesel::insert_into(workers::table)
            .values((workers::id.eq(&w.id), fields))
            .execute(&mut *conn)?;
    }
    Ok(())
}

/// Refreshes `last_seen_at` and records the job the worker runs (`None` when idle). Returns
/// false when the worker has no row (never registered, or forgotten).
pub fn touch(db: &Db, id: &str, current_job_id: Option<&str>) -> Result<bool, DbError> {
    touch_at(db, id, current_job_id, SystemClock.now())
}

/// [`touch`] at a given time (tests).
pub fn touch_at(
    db: &Db,
    id: &str,
    current_job_id: Option<&str>,
    now: NaiveDateTime,
) -> Result<bool, DbError> {
    let mut conn = db.conn()?;
    let n = diesel::update(workers::table.find(id))
        .set((
            workers::last_seen_at.eq(now),
            workers::current_job_id.eq(current_job_id),
        ))
        .execute(&mut *conn)?;
    Ok(n > 0)
}

/// Marks the worker stopped (a clean shutdown): it no longer counts as alive.
pub fn stopped(db: &Db, id: &str) -> Result<(), DbError> {
    let now = SystemClock.now();
    let mut conn = db.conn()?;
    diesel::update(workers::table.find(id))
        .set((
            workers::stopped_at.eq(now),
            workers::last_seen_at.eq(now),
            workers::current_job_id.eq(None::<String>),
        ))
        .execute(&mut *conn)?;
    Ok(())
}

/// Every known worker, by device then id, with `alive` derived from the current time.
pub fn list(db: &Db) -> Result<Vec<WorkerRow>, DbError> {
    list_at(db, SystemClock.now())
}

/// [`list`] as seen at `now` (tests).
pub fn list_at(db: &Db, now: NaiveDateTime) -> Result<Vec<WorkerRow>, DbError> {
    let mut conn = db.conn()?;
    let rows: Vec<Stored> = workers::table
        .select((
            workers::id,
            workers::device,
            workers::host,
            workers::pid,
            workers::version,
            workers::started_at,
            workers::last_seen_at,
            workers::current_job_id,
            workers::stopped_at,
        ))
        .order((workers::device, workers::id))
        .load(&mut *conn)?;
    let fresh_since = ago(now, ALIVE_WITHIN);
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                device,
                host,
                pid,
                version,
                started_at,
                last_seen_at,
                current_job_id,
                stopped_at,
            )| {
                WorkerRow {
                    alive: stopped_at.is_none() && last_seen_at >= fresh_since,
                    id,
                    device,
                    host,
                    pid,
                    version,
                    started_at,
                    last_seen_at,
                    current_job_id,
                    stopped_at,
                }
            },
        )
        .collect())
}

/// A supervisor's presence in the registry: the same calls, but a failed write is logged (once
/// per run of failures) instead of returned, and periodic refreshes are rate-limited.
#[derive(Debug)]
pub struct Presence {
    db: Db,
    info: WorkerInfo,
    last_touch: Mutex<Option<Instant>>,
    failing: AtomicBool,
}

impl Presence {
    /// The presence of `info` in `db`'s registry (nothing is written yet).
    pub fn new(db: Db, info: WorkerInfo) -> Self {
        Self {
            db,
            info,
            last_touch: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    /// Who this is.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    fn outcome(&self, what: &str, r: Result<(), DbError>) {
        match r {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!(worker = %self.info.id, "worker registry writable again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(worker = %self.info.id, error = %e,
                          "{what} in the worker registry failed; the worker carries on");
                }
            }
        }
    }

    fn stamp(&self) {
        *self.last_touch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Registers (or re-registers) the worker as started.
    pub fn register(&self) {
        self.stamp();
        self.outcome("registering", register(&self.db, &self.info));
    }

    /// Refreshes the row now, with the current job; registers again if the row is gone.
    pub fn touch(&self, current_job_id: Option<&str>) {
        self.stamp();
        let r = touch(&self.db, &self.info.id, current_job_id).and_then(|found| {
            if found {
                Ok(())
            } else {
                register(&self.db, &self.info)
                    .and_then(|()| touch(&self.db, &self.info.id, current_job_id).map(|_| ()))
            }
        });
        self.outcome("refreshing", r);
    }

    /// Refreshes the row if the last write is [`TOUCH_EVERY`] old, or [`RETRY_FAILING`] old
    /// while writes fail (each failed write can wait out the pool's connection timeout, and the
    /// supervisor's loop should not spend its time on that).
    pub fn touch_if_due(&self, current_job_id: Option<&str>) {
        let every = if self.failing.load(Ordering::Relaxed) {
            RETRY_FAILING
        } else {
            TOUCH_EVERY
        };
        let due = self
            .last_touch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| t.elapsed() >= every);
        if due {
            self.touch(current_job_id);
        }
    }

    /// Marks the worker stopped.
    pub fn stopped(&self) {
        self.outcome("marking stopped", stopped(&self.db, &self.info.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ScratchDb;

    fn info(id: &str, device: &str) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            device: device.into(),
            host: "h".into(),
            pid: 42,
            version: "0".into(),
        }
    }

    #[test]
    fn register_alive_stale_and_stopped() {
        let scratch = ScratchDb::sqlite();
        let db = Db::open(&scratch.url, 2).unwrap();
        db.migrate().unwrap();
        let t0 = SystemClock.now();
        register_at(&db, &info("h:42:cpu", "cpu"), t0).unwrap();
        register_at(&db, &info("h:42:cuda:0", "cuda:0"), t0).unwrap();
        assert!(touch_at(&db, "h:42:cuda:0", Some("job-1"), t0).unwrap());
        assert!(!touch_at(&db, "nobody", None, t0).unwrap());

        let rows = list_at(&db, t0 + chrono::Duration::seconds(5)).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.alive), "{rows:?}");
        assert_eq!(rows[1].current_job_id.as_deref(), Some("job-1"));

        // Not seen for longer than ALIVE_WITHIN: stale, not alive.
        let later = t0 + chrono::Duration::seconds(31);
        assert!(list_at(&db, later).unwrap().iter().all(|r| !r.alive));

        // A clean stop: not alive however fresh; registering again revives the row.
        stopped(&db, "h:42:cpu").unwrap();
        let rows = list(&db).unwrap();
        let cpu = rows.iter().find(|r| r.device == "cpu").unwrap();
        assert!(!cpu.alive && cpu.stopped_at.is_some());
        register(&db, &info("h:42:cpu", "cpu")).unwrap();
        let rows = list(&db).unwrap();
        assert!(rows.iter().find(|r| r.device == "cpu").unwrap().alive);

        // Rows unseen for a week are forgotten at the next registration.
        register_at(
            &db,
            &info("h:7:cpu", "cpu"),
            later + chrono::Duration::days(8),
        )
        .unwrap();
        let ids: Vec<_> = list(&db).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["h:7:cpu"]);
    }

    #[test]
    fn presence_survives_a_broken_database_and_re_registers() {
        let scratch = ScratchDb::sqlite();
        let db = Db::open(&scratch.url, 2).unwrap();
        // Not migrated: every write fails, and nothing panics.
        let p = Presence::new(db.clone(), info("h:1:cpu", "cpu"));
        p.register();
        p.touch(Some("j"));
        p.stopped();
        db.migrate().unwrap();
        // The row never got written; a touch registers it.
        p.touch(Some("j"));
        let rows = list(&db).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].alive);
        assert_eq!(rows[0].current_job_id.as_deref(), Some("j"));
        p.stopped();
        assert!(!list(&db).unwrap()[0].alive);
    }
}
