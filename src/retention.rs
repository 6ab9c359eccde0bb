//! Retention: after `storage.retention_days`, received series and job folders are deleted.
//!
//! A series goes once its last instance is older than the cutoff, it is no longer receiving, and
//! no job for it is queued or running. A job folder goes once the job ended (complete, error or
//! cancelled) before the cutoff and, for a complete job, every dispatch of its results was sent:
//! results are never deleted before the job is complete and dispatched. The rows stay as
//! history: a deleted series is marked `expired` (its instance rows go, so that a re-sent
//! instance is stored again and opens a new revision), a deleted job loses its `result_path`.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::schema::{dispatches, instances, jobs, series};
use crate::db::{Db, DbError};
use crate::dicom::store::SERIES_RECEIVING;
use crate::jobs::JobStatus;

/// `series.status` of a series whose files retention removed.
pub const SERIES_EXPIRED: &str = "expired";

/// A series folder to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesItem {
    /// Row id.
    pub id: i64,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// `incoming/<study>/<series>`.
    pub path: PathBuf,
    /// When its last instance arrived.
    pub last_received_at: NaiveDateTime,
    /// Bytes on disk.
    pub bytes: u64,
}

/// A job folder to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct JobItem {
    /// Job id.
    pub id: String,
    /// Its final status.
    pub status: String,
    /// When it ended.
    pub completed_at: NaiveDateTime,
    /// `jobs/<id>`.
    pub path: PathBuf,
    /// `uploads/<upload id>`, the input of a job made by a portal upload.
    pub upload: Option<PathBuf>,
    /// Bytes on disk (the job folder and its upload).
    pub bytes: u64,
}

/// What retention would delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The cutoff: anything older may go.
    pub cutoff: Option<NaiveDateTime>,
    /// Series folders.
    pub series: Vec<SeriesItem>,
    /// Job folders.
    pub jobs: Vec<JobItem>,
}

impl Plan {
    /// Bytes the plan frees.
    pub fn bytes(&self) -> u64 {
        self.series.iter().map(|s| s.bytes).sum::<u64>()
            + self.jobs.iter().map(|j| j.bytes).sum::<u64>()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.cutoff {
            writeln!(f, "older than {}:", c.format("%Y-%m-%d %H:%M:%S UTC"))?;
        }
        for s in &self.series {
            writeln!(
                f,
                "series {} (last instance {}, {:.1} MB)",
                s.path.display(),
                s.last_received_at.format("%Y-%m-%d %H:%M"),
                s.bytes as f64 / 1e6
            )?;
        }
        for j in &self.jobs {
            writeln!(
                f,
                "job    {}{} ({}, ended {}, {:.1} MB)",
                j.path.display(),
                j.upload
                    .as_ref()
                    .map_or_else(String::new, |u| format!(" + {}", u.display())),
                j.status,
                j.completed_at.format("%Y-%m-%d %H:%M"),
                j.bytes as f64 / 1e6
            )?;
        }
        write!(
            f,
            "{} series and {} job folder(s), {:.1} MB",
            self.series.len(),
            self.jobs.len(),
            self.bytes() as f64 / 1e6
        )
    }
}

/// Bytes under `path` (files of any depth); 0 when it does not exist.
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// What is expired at `now` with `days` of retention.
pub fn plan(db: &Db, storage_dir: &Path, days: u32, now: NaiveDateTime) -> Result<Plan, DbError> {
    let cutoff = now - chrono::Duration::days(i64::from(days));
    let mut conn = db.conn()?;
    let active = [JobStatus::Queued.as_str(), JobStatus::Processing.as_str()];
    let candidates: Vec<(i64, String, String, NaiveDateTime)> = series::table
        .filter(series::status.ne(SERIES_RECEIVING))
        .filter(series::status.ne(SERIES_EXPIRED))
        .filter(series::last_received_at.lt(cutoff))
        .select((
            series::id,
            series::study_instance_uid,
            series::series_instance_uid,
            series::last_received_at,
        ))
        .order(series::last_received_at)
        .load(&mut *conn)
        .map_err(DbError::Query)?;
    let mut plan = Plan {
        cutoff: Some(cutoff),
        ..Plan::default()
    };
    for (id, study_uid, series_uid, last_received_at) in candidates {
        let busy: i64 = jobs::table
            .filter(jobs::series_instance_uid.eq(&series_uid))
            .filter(jobs::status.eq_any(active))
            .count()
            .get_result(&mut *conn)
            .map_err(DbError::Query)?;
        if busy > 0 {
            continue;
        }
        let path = storage_dir
            .join("incoming")
            .join(&study_uid)
            .join(&series_uid);
        plan.series.push(SeriesItem {
            id,
            bytes: size_of(&path),
            study_uid,
            series_uid,
            path,
            last_received_at,
        });
    }
    let finished = [
        JobStatus::Complete.as_str(),
        JobStatus::Error.as_str(),
        JobStatus::Cancelled.as_str(),
    ];
    type Ended = (String, String, Option<NaiveDateTime>, String, String);
    let ended: Vec<Ended> = jobs::table
        .filter(jobs::status.eq_any(finished))
        .filter(jobs::completed_at.lt(cutoff))
        .select((
            jobs::id,
            jobs::status,
            jobs::completed_at,
            jobs::source,
            jobs::input_path,
        ))
        .order(jobs::completed_at)
        .load(&mut *conn)
        .map_err(DbError::Query)?;
    let uploads = storage_dir.join("uploads");
    for (id, status, completed_at, source, input) in ended {
        let path = storage_dir.join("jobs").join(&id);
        // An uploaded input lives in uploads/<upload id>/…; it goes with its job.
        let upload = (source == crate::jobs::JobSource::Upload.as_str())
            .then(|| {
                Path::new(&input)
                    .strip_prefix(&uploads)
                    .ok()?
                    .components()
                    .next()
            })
            .flatten()
            .map(|c| uploads.join(c.as_os_str()))
            .filter(|u| u.is_dir());
        if !path.exists() && upload.is_none() {
            continue;
        }
        let unsent: i64 = dispatches::table
            .filter(dispatches::job_id.eq(&id))
            .filter(dispatches::status.ne(crate::dicom::dispatch::status::SENT))
            .count()
            .get_result(&mut *conn)
            .map_err(DbError::Query)?;
        if unsent > 0 {
            continue;
        }
        plan.jobs.push(JobItem {
            bytes: size_of(&path) + upload.as_deref().map_or(0, size_of),
            upload,
            id,
            status,
            completed_at: completed_at.unwrap_or(cutoff),
            path,
        });
    }
    Ok(plan)
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Series folders removed.
    pub series: usize,
    /// Job folders removed.
    pub jobs: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// Retention could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A folder could not be removed (what was removed before stays removed and recorded).
    #[error("removing {path}: {error}")]
    Remove {
        /// The folder.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

fn remove_dir(path: &Path) -> Result<(), RetentionError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(RetentionError::Remove {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Deletes what `plan` lists and updates the rows; records one audit event.
pub fn apply(db: &Db, plan: &Plan) -> Result<Report, RetentionError> {
    let mut report = Report::default();
    let mut conn = db.conn()?;
    for s in &plan.series {
        remove_dir(&s.path)?;
        // The study folder goes when its last series did.
        if let Some(study) = s.path.parent() {
            let _ = std::fs::remove_dir(study);
        }
        conn.transaction(|c| {
            diesel::delete(
                instances::table
                    .filter(instances::series_instance_uid.eq(&s.series_uid))
                    .filter(instances::study_instance_uid.eq(&s.study_uid)),
            )
            .execute(c)?;
            diesel::update(series::table.find(s.id))
                .set(series::status.eq(SERIES_EXPIRED))
                .execute(c)
        })
        .map_err(DbError::Query)?;
        report.series += 1;
        report.bytes += s.bytes;
    }
    for j in &plan.jobs {
        remove_dir(&j.path)?;
        if let Some(u) = &j.upload {
            remove_dir(u)?;
        }
        diesel::update(jobs::table.find(&j.id))
            .set(jobs::result_path.eq(None::<String>))
            .execute(&mut *conn)
            .map_err(DbError::Query)?;
        report.jobs += 1;
        report.bytes += j.bytes;
    }
    drop(conn);
    if report != Report::default() {
        crate::audit::record_or_log(
            db,
            &crate::audit::Event {
                kind: "retention",
                actor: "kneenode".into(),
                action: "cleanup".into(),
                outcome: "ok".into(),
                detail: serde_json::json!({
                    "series": report.series,
                    "jobs": report.jobs,
                    "bytes": report.bytes,
                }),
            },
        );
    }
    Ok(report)
}
