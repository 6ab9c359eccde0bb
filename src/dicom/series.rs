//! The series watcher: decides when a received series is complete and turns it into a job.
//!
//! A series is complete when (a) an association that sent it was released and the instance count
//! reached what the data announced (Images in Acquisition; one instance for enhanced multi-frame
//! MR), or (b) no instance of it arrived for `series.quiet_seconds`. Complete series are routed:
//! the first matching rule's options become a job; a series no rule matches, or one that is not
//! MR, is marked unrouted and kept. A late instance re-opens a series as a new revision (see
//! `store`), and its completion makes a job for that revision; enqueueing is idempotent, so a
//! series completed twice for the same revision still has one job.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::routing::{Router, SeriesAttributes};
use super::scp::AssociationEnded;
use super::store::SERIES_RECEIVING;
use super::uids;
use crate::db::schema::{instances, series};
use crate::jobs::{JobSource, NewJob, Queue, QueueError};

/// `series.status` once a job was made for the current revision.
pub const SERIES_ROUTED: &str = "routed";
/// `series.status` for a complete series that no rule (or no MR class) lets through.
pub const SERIES_UNROUTED: &str = "unrouted";

/// What completing a series did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// A job was enqueued (or already existed) for this revision.
    Routed {
        /// The series.
        series_uid: String,
        /// Its revision.
        revision: i32,
        /// The rule that matched.
        rule: String,
        /// The job.
        job_id: String,
    },
    /// Kept but not processed.
    Unrouted {
        /// The series.
        series_uid: String,
        /// Why.
        reason: String,
    },
}

/// Watches series and makes jobs of the complete ones.
#[derive(Debug, Clone)]
pub struct SeriesWatcher {
    queue: Queue,
    router: Router,
    quiet: Duration,
    max_attempts: i32,
    incoming: PathBuf,
}

/// The columns of a series row that completion needs.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = series)]
struct SeriesRow {
    id: i64,
    series_instance_uid: String,
    study_instance_uid: String,
    modality: Option<String>,
    body_part: Option<String>,
    series_description: Option<String>,
    protocol_name: Option<String>,
    calling_ae: String,
    called_ae: String,
    instance_count: i32,
    expected_count: Option<i32>,
    revision: i32,
}

impl SeriesWatcher {
    /// A watcher that enqueues into `queue`; inputs live under `storage_dir/incoming`.
    pub fn new(
        queue: Queue,
        router: Router,
        quiet: Duration,
        max_attempts: u32,
        storage_dir: &std::path::Path,
    ) -> Self {
        Self {
            queue,
            router,
            quiet,
            max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
            incoming: storage_dir.join("incoming"),
        }
    }

    /// After a released association: completes each of its series whose count is reached.
    pub fn on_released(&self, series_uids: &[String]) -> Result<Vec<Completed>, QueueError> {
        let mut conn = self.queue.db().conn()?;
        let rows: Vec<SeriesRow> = series::table
            .filter(series::series_instance_uid.eq_any(series_uids))
            .filter(series::status.eq(SERIES_RECEIVING))
            .select(SeriesRow::as_select())
            .load(&mut *conn)
            .map_err(crate::db::DbError::Query)?;
        drop(conn);
        let full = rows.into_iter().filter(|r| {
            r.expected_count
                .is_some_and(|expected| r.instance_count >= expected)
        });
        self.complete_all(full)
    }

    /// Completes every series that has been quiet for the quiet period.
    pub fn sweep(&self) -> Result<Vec<Completed>, QueueError> {
        let quiet = chrono::Duration::from_std(self.quiet).unwrap_or(chrono::Duration::zero());
        let cutoff: NaiveDateTime = Utc::now().naive_utc() - quiet;
        let mut conn = self.queue.db().conn()?;
        let rows: Vec<SeriesRow> = series::table
            .filter(series::status.eq(SERIES_RECEIVING))
            .filter(series::last_received_at.le(cutoff))
            .select(SeriesRow::as_select())
            .load(&mut *conn)
            .map_err(crate::db::DbError::Query)?;
        drop(conn);
        self.complete_all(rows)
    }

    fn complete_all(
        &self,
        rows: impl IntoIterator<Item = SeriesRow>,
    ) -> Result<Vec<Completed>, QueueError> {
        let mut done = Vec::new();
        for row in rows {
            done.extend(self.complete(row)?);
        }
        Ok(done)
    }

    fn complete(&self, row: SeriesRow) -> Result<Option<Completed>, QueueError> {
        let SeriesRow {
            id,
            series_instance_uid: series_uid,
            study_instance_uid: study_uid,
            revision,
            ..
        } = row;
        let count = row.instance_count;
        let mut conn = self.queue.db().conn()?;
        let now = Utc::now().naive_utc();
        // Claim the completion: only if nothing arrived since we read the row.
        let claimed = diesel::update(
            series::table
                .find(id)
                .filter(series::status.eq(SERIES_RECEIVING))
                .filter(series::revision.eq(revision))
                .filter(series::instance_count.eq(count)),
        )
        .set((series::status.eq("complete"), series::completed_at.eq(now)))
        .execute(&mut *conn)
        .map_err(crate::db::DbError::Query)?;
        if claimed == 0 {
            return Ok(None);
        }
        let class: Option<String> = instances::table
            .filter(instances::series_instance_uid.eq(&series_uid))
            .select(instances::sop_class_uid)
            .first(&mut *conn)
            .optional()
            .map_err(crate::db::DbError::Query)?;
        let attrs = SeriesAttributes {
            modality: row.modality,
            body_part: row.body_part,
            series_description: row.series_description,
            protocol_name: row.protocol_name,
            calling_ae: row.calling_ae,
            called_ae: row.called_ae,
        };
        let unrouted = |conn: &mut crate::db::PooledConn,
                        reason: String|
         -> Result<Option<Completed>, QueueError> {
            diesel::update(series::table.find(id).filter(series::revision.eq(revision)))
                .set(series::status.eq(SERIES_UNROUTED))
                .execute(&mut **conn)
                .map_err(crate::db::DbError::Query)?;
            info!(series_uid = %series_uid, instances = count, reason = %reason, "series complete, not analysed");
            Ok(Some(Completed::Unrouted {
                series_uid: series_uid.clone(),
                reason,
            }))
        };
        if !class.as_deref().is_some_and(uids::is_routed) {
            return unrouted(&mut conn, "not an MR image series".into());
        }
        let Some(rule) = self.router.route(&attrs) else {
            return unrouted(&mut conn, "no routing rule matches".into());
        };
        let mut new = NewJob::new(
            JobSource::Dicom,
            self.incoming
                .join(&study_uid)
                .join(&series_uid)
                .to_string_lossy(),
            rule.options.clone(),
        );
        new.study_instance_uid = Some(study_uid);
        new.series_instance_uid = Some(series_uid.clone());
        new.revision = revision;
        new.max_attempts = self.max_attempts;
        drop(conn);
        let enqueued = self.queue.enqueue(&new)?;
        let mut conn = self.queue.db().conn()?;
        diesel::update(series::table.find(id).filter(series::revision.eq(revision)))
            .set((
                series::status.eq(SERIES_ROUTED),
                series::rule_name.eq(&rule.name),
            ))
            .execute(&mut *conn)
            .map_err(crate::db::DbError::Query)?;
        info!(series_uid = %series_uid, revision, instances = count, rule = %rule.name,
              job_id = %enqueued.job.id, "series complete, job queued");
        Ok(Some(Completed::Routed {
            series_uid,
            revision,
            rule: rule.name.clone(),
            job_id: enqueued.job.id,
        }))
    }

    /// Runs until shutdown: reacts to released associations and sweeps for quiet series.
    pub async fn run(
        self,
        mut ended: mpsc::UnboundedReceiver<AssociationEnded>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(
            Duration::from_secs(1).min(self.quiet.max(Duration::from_millis(100))),
        );
        loop {
            let work = tokio::select! {
                Some(e) = ended.recv() => if e.released && !e.series.is_empty() { Some(e.series) } else { None },
                _ = tick.tick() => Some(Vec::new()),
                _ = shutdown.changed() => break,
            };
            let Some(series) = work else { continue };
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || {
                if series.is_empty() {
                    me.sweep()
                } else {
                    me.on_released(&series)
                }
            })
            .await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "series completion failed; retrying on the next tick")
                }
                Err(e) => warn!(error = %e, "series completion task failed"),
            }
        }
    }
}
