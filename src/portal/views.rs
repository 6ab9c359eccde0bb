//! What the pages and the JSON API show, read from the database and the job folders: one
//! source for both so the browser and scripts always agree. Blocking (diesel, files): call it
//! from `web::block`.

use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use crate::db::schema::{dispatches, jobs, series};
use crate::db::{Db, DbError};
use crate::jobs::{Job, JobStatus, Queue, QueueError};

/// Largest page of the job list.
pub const MAX_PER_PAGE: i64 = 200;

/// Filters and page of the job list (query-string names).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct JobFilter {
    /// One status (`queued`, `processing`, `complete`, `error`, `cancelled`).
    pub status: Option<String>,
    /// Created on or after this day (UTC).
    pub from: Option<NaiveDate>,
    /// Created on or before this day (UTC).
    pub to: Option<NaiveDate>,
    /// Study Instance UID, or its beginning.
    pub study: Option<String>,
    /// Calling AE title of the series' sender.
    pub ae: Option<String>,
    /// 1-based page.
    pub page: Option<i64>,
    /// Jobs per page (default 50, at most [`MAX_PER_PAGE`]).
    pub per_page: Option<i64>,
}

impl JobFilter {
    /// Drops empty strings (an empty form field means no filter).
    pub fn normalised(mut self) -> Self {
        let clean = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        self.status = clean(self.status);
        self.study = clean(self.study);
        self.ae = clean(self.ae);
        self
    }

    /// The page, 1-based.
    pub fn page(&self) -> i64 {
        self.page.unwrap_or(1).max(1)
    }

    /// Jobs per page.
    pub fn per_page(&self) -> i64 {
        self.per_page.unwrap_or(50).clamp(1, MAX_PER_PAGE)
    }
}

/// One job in a list.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// Job id.
    pub id: String,
    /// Status.
    pub status: String,
    /// `dicom`, `upload`, `cli`.
    pub source: String,
    /// Series revision.
    pub revision: i32,
    /// Study Instance UID.
    pub study_instance_uid: Option<String>,
    /// Series Instance UID.
    pub series_instance_uid: Option<String>,
    /// Series description (for DICOM jobs).
    pub series_description: Option<String>,
    /// Sender's AE title (for DICOM jobs).
    pub calling_ae: Option<String>,
    /// Progress, 0–100.
    pub progress_percent: f64,
    /// Current step's name.
    pub step_name: Option<String>,
    /// Created (UTC).
    pub created_at: NaiveDateTime,
    /// Started (UTC).
    pub started_at: Option<NaiveDateTime>,
    /// Finished (UTC).
    pub completed_at: Option<NaiveDateTime>,
    /// Error code of the last failure.
    pub error_code: Option<String>,
    /// The failure in words ([`friendly_error`]), for jobs that failed.
    pub error: Option<String>,
    /// Attempts used.
    pub attempts: i32,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<JobSummary>,
    /// Jobs matching the filter in all.
    pub total: i64,
    /// This page (1-based).
    pub page: i64,
    /// Jobs per page.
    pub per_page: i64,
}

type Boxed<'a> = jobs::BoxedQuery<'a, crate::db::DbBackend>;

fn filtered<'a>(f: &'a JobFilter) -> Boxed<'a> {
    let mut q = jobs::table.into_boxed();
    if let Some(s) = &f.status {
        q = q.filter(jobs::status.eq(s.clone()));
    }
    if let Some(d) = f.from.and_then(|d| d.and_hms_opt(0, 0, 0)) {
        q = q.filter(jobs::created_at.ge(d));
    }
    if let Some(d) =
        f.to.and_then(|d| d.succ_opt())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    {
        q = q.filter(jobs::created_at.lt(d));
    }
    if let Some(study) = &f.study {
        let pattern = format!("{}%", study.replace(['%', '_'], ""));
        q = q.filter(jobs::study_instance_uid.like(pattern));
    }
    if let Some(ae) = &f.ae {
        q = q.filter(
            jobs::series_instance_uid.eq_any(
                series::table
                    .filter(series::calling_ae.eq(ae.clone()))
                    .select(series::series_instance_uid.nullable()),
            ),
        );
    }
    q
}

/// The jobs matching `f`, newest first, one page.
pub fn list_jobs(db: &Db, f: &JobFilter) -> Result<JobPage, DbError> {
    let total: i64 = {
        let mut conn = db.conn()?;
        filtered(f).count().get_result(&mut *conn)?
    };
    Ok(JobPage {
        jobs: page_of(db, f)?,
        total,
        page: f.page(),
        per_page: f.per_page(),
    })
}

/// One page of the jobs matching `f`, newest first, without counting them all.
fn page_of(db: &Db, f: &JobFilter) -> Result<Vec<JobSummary>, DbError> {
    let mut conn = db.conn()?;
    let rows: Vec<Job> = filtered(f)
        .order((jobs::created_at.desc(), jobs::id.desc()))
        .limit(f.per_page())
        .offset((f.page() - 1) * f.per_page())
        .select(Job::as_select())
        .load(&mut *conn)?;
    let uids: Vec<String> = rows
        .iter()
        .filter_map(|j| j.series_instance_uid.clone())
        .collect();
    let senders: Vec<(String, Option<String>, String)> = if uids.is_empty() {
        Vec::new()
    } else {
        series::table
            .filter(series::series_instance_uid.eq_any(&uids))
            .select((
                series::series_instance_uid,
                series::series_description,
                series::calling_ae,
            ))
            .load(&mut *conn)?
    };
    Ok(rows
        .into_iter()
        .map(|j| {
            let sender = j
                .series_instance_uid
                .as_ref()
                .and_then(|u| senders.iter().find(|(s, _, _)| s == u));
            summary(j, sender)
        })
        .collect())
}

fn summary(j: Job, sender: Option<&(String, Option<String>, String)>) -> JobSummary {
    let error = friendly_error(&j);
    JobSummary {
        error,
        series_description: sender.and_then(|s| s.1.clone()),
        calling_ae: sender.map(|s| s.2.clone()),
        id: j.id,
        status: j.status,
        source: j.source,
        revision: j.revision,
        study_instance_uid: j.study_instance_uid,
        series_instance_uid: j.series_instance_uid,
        progress_percent: j.progress_percent,
        step_name: j.step_name,
        created_at: j.created_at,
        started_at: j.started_at,
        completed_at: j.completed_at,
        error_code: j.error_code,
        attempts: j.attempts,
    }
}

/// The latest jobs in `status`, newest first.
pub fn latest(db: &Db, status: JobStatus, limit: i64) -> Result<Vec<JobSummary>, DbError> {
    let f = JobFilter {
        status: Some(status.as_str().to_owned()),
        per_page: Some(limit),
        ..JobFilter::default()
    };
    page_of(db, &f)
}

/// The queue in claim order (priority, then age), at most `limit`.
pub fn queued(db: &Db, limit: i64) -> Result<Vec<JobSummary>, DbError> {
    let mut conn = db.conn()?;
    let rows: Vec<Job> = jobs::table
        .filter(jobs::status.eq(JobStatus::Queued.as_str()))
        .order((
            jobs::priority.desc(),
            jobs::created_at.asc(),
            jobs::id.asc(),
        ))
        .limit(limit)
        .select(Job::as_select())
        .load(&mut *conn)?;
    Ok(rows.into_iter().map(|j| summary(j, None)).collect())
}

/// One destination's delivery of a job's DICOM objects.
#[derive(Debug, Clone, Serialize, Queryable)]
pub struct Delivery {
    /// Row id (for resend).
    pub id: i64,
    /// Destination name.
    pub destination: String,
    /// Its AE title.
    pub ae_title: String,
    /// `pending`, `sent`, `failed`, …
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When sent.
    pub sent_at: Option<NaiveDateTime>,
}

/// A job's deliveries.
pub fn deliveries(db: &Db, job_id: &str) -> Result<Vec<Delivery>, DbError> {
    let mut conn = db.conn()?;
    Ok(dispatches::table
        .filter(dispatches::job_id.eq(job_id))
        .order(dispatches::id.asc())
        .select((
            dispatches::id,
            dispatches::destination,
            dispatches::ae_title,
            dispatches::status,
            dispatches::attempts,
            dispatches::last_error,
            dispatches::sent_at,
        ))
        .load(&mut *conn)?)
}

/// Cartilage thickness of one region, mm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionThickness {
    /// Region key as in the results (e.g. `medial_femoral_cartilage`).
    pub region: String,
    /// Mean.
    pub mean: Option<f64>,
    /// Standard deviation.
    pub std: Option<f64>,
    /// Median.
    pub median: Option<f64>,
}

/// What a finished job's folder holds, for its page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobResults {
    /// The results folder (`jobs/<id>/results`).
    #[serde(skip)]
    pub dir: Option<PathBuf>,
    /// The preview PNG's file name, when present.
    pub preview: Option<String>,
    /// Thickness by region, in the results' order.
    pub thickness: Vec<RegionThickness>,
    /// Tissue volumes, mm³.
    pub tissue_volumes_mm3: Vec<(String, f64)>,
    /// Seconds per stage.
    pub timings_s: Vec<(String, f64)>,
    /// Device the models ran on.
    pub device: Option<String>,
    /// Models and versions.
    pub models: Vec<String>,
    /// The NSM block, when NSM ran.
    pub nsm: Option<serde_json::Value>,
}

/// A job's folder: `storage/jobs/<id>`.
pub fn job_dir(storage: &Path, job_id: &str) -> Option<PathBuf> {
    // Job ids are UUIDs; anything else never names a folder.
    uuid::Uuid::parse_str(job_id).ok()?;
    Some(storage.join("jobs").join(job_id))
}

/// Reads a job's results folder; a missing or odd folder gives empty results, never an error
/// (the page still shows the job).
pub fn results(storage: &Path, job_id: &str) -> JobResults {
    let Some(dir) = job_dir(storage, job_id).map(|d| d.join("results")) else {
        return JobResults::default();
    };
    let mut out = JobResults {
        dir: dir.is_dir().then(|| dir.clone()),
        ..JobResults::default()
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.preview = names.iter().find(|n| n.ends_with("_preview.png")).cloned();
    let Some(json) = names.iter().find(|n| n.ends_with("_results.json")) else {
        return out;
    };
    let Ok(text) = std::fs::read_to_string(dir.join(json)) else {
        return out;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return out;
    };
    if let Some(map) = v.get("thickness_mm").and_then(|t| t.as_object()) {
        for (key, value) in map {
            let Some((region, stat)) = key.rsplit_once("_mm_") else {
                continue;
            };
            let idx = match out.thickness.iter().position(|r| r.region == region) {
                Some(i) => i,
                None => {
                    out.thickness.push(RegionThickness {
                        region: region.to_owned(),
                        mean: None,
                        std: None,
                        median: None,
                    });
                    out.thickness.len() - 1
                }
            };
            let r = &mut out.thickness[idx];
            match stat {
                "mean" => r.mean = value.as_f64(),
                "std" => r.std = value.as_f64(),
                "median" => r.median = value.as_f64(),
                _ => {}
            }
        }
    }
    if let Some(map) = v.get("tissue_volumes_mm3").and_then(|t| t.as_object()) {
        out.tissue_volumes_mm3 = map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
            .collect();
    }
    if let Some(list) = v.get("timings_s").and_then(|t| t.as_array()) {
        out.timings_s = list
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_str()?.to_owned(), p.get(1)?.as_f64()?)))
            .collect();
    }
    out.device = v.get("device").and_then(|d| d.as_str()).map(str::to_owned);
    if let Some(list) = v.get("models").and_then(|m| m.as_array()) {
        out.models = list
            .iter()
            .filter_map(|m| {
                Some(format!(
                    "{} {} ({})",
                    m.get("name")?.as_str()?,
                    m.get("version")?.as_str()?,
                    m.get("role")?.as_str()?
                ))
            })
            .collect();
    }
    out.nsm = v.get("nsm").filter(|n| !n.is_null()).cloned();
    out
}

/// A job's `stderr.log`, the last `max` bytes (the job page's log).
pub fn log_tail(storage: &Path, job_id: &str, max: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let path = job_dir(storage, job_id)?.join("stderr.log");
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len > max {
        f.seek(SeekFrom::Start(len - max)).ok()?;
    }
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A job with its place in the queue, for the progress endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressView {
    /// Job id.
    pub id: String,
    /// Status.
    pub status: String,
    /// 0–100.
    pub percent: f64,
    /// Current step.
    pub step: Option<String>,
    /// Step number and count.
    pub current_step: i32,
    /// Steps in all.
    pub total_steps: i32,
    /// Position in the queue (1 = next), when queued.
    pub position: Option<u64>,
    /// Estimated wait, seconds, when queued.
    pub eta_s: Option<f64>,
    /// The error code, when failed.
    pub error_code: Option<String>,
    /// The friendly error message, when failed.
    pub error_message: Option<String>,
}

/// Workers alive now (at least 1, so a queue with no live worker still gets an estimate).
pub fn alive_workers(db: &Db) -> u32 {
    let alive = crate::worker::registry::list(db)
        .map(|w| w.iter().filter(|w| w.alive).count())
        .unwrap_or(1);
    u32::try_from(alive.max(1)).unwrap_or(1)
}

/// A job's progress, with its queue position shared over the live workers.
pub fn progress(db: &Db, job_id: &str) -> Result<ProgressView, QueueError> {
    let queue = Queue::new(db.clone());
    let job = queue.get(job_id)?;
    let pos = queue.position(job_id, alive_workers(db))?;
    Ok(ProgressView {
        id: job.id.clone(),
        status: job.status.clone(),
        percent: if job.status() == JobStatus::Complete {
            100.0
        } else {
            job.progress_percent
        },
        step: job.step_name.clone(),
        current_step: job.current_step,
        total_steps: job.total_steps,
        position: pos.as_ref().map(|p| p.position),
        eta_s: pos
            .and_then(|p| p.estimated_wait)
            .map(|d| d.as_secs_f64().round()),
        error_code: job.error_code.clone(),
        error_message: friendly_error(&job),
    })
}

/// The failure as a user reads it: the code's sentence, then the stored detail.
pub fn friendly_error(job: &Job) -> Option<String> {
    if job.status() != JobStatus::Error && job.error_message.is_none() {
        return None;
    }
    let code = job.error_code();
    match (code, &job.error_message) {
        (Some(c), Some(m)) if m.starts_with(c.user_message()) => Some(m.clone()),
        (Some(c), Some(m)) => Some(format!("{} {m}", c.user_message())),
        (Some(c), None) => Some(c.user_message().to_owned()),
        (None, m) => m.clone(),
    }
}
