//! What the queue has done and what a waiting job can expect: queue position, estimated wait
//! from recorded processing times, and per-day statistics.
//!
//! Durations and days are computed in Rust from the stored timestamps rather than in SQL, because
//! date arithmetic differs between PostgreSQL and SQLite and the row counts involved are small.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use serde::Serialize;

use super::model::JobStatus;
use super::queue::{Queue, QueueError};
use crate::db::schema::jobs;

/// How many recent completed jobs the mean processing time is taken over.
const RECENT_FOR_MEAN: i64 = 50;

/// Where a queued job stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QueuePosition {
    /// 1 = next to be claimed.
    pub position: u64,
    /// Jobs running now.
    pub running: u64,
    /// Estimated time until it starts; `None` until some job has completed.
    pub estimated_wait: Option<Duration>,
}

/// One day's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayStats {
    /// The day (UTC) on which jobs finished.
    pub day: NaiveDate,
    /// Completed jobs.
    pub processed: u64,
    /// Jobs that ended in error.
    pub errors: u64,
    /// Mean processing time of that day's completed jobs, seconds.
    pub mean_processing_s: Option<f64>,
}

/// Statistics over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Statistics {
    /// Completed jobs.
    pub processed: u64,
    /// Jobs that ended in error.
    pub errors: u64,
    /// Cancelled jobs.
    pub cancelled: u64,
    /// Mean processing time (last attempt's start to completion), seconds.
    pub mean_processing_s: Option<f64>,
    /// errors / (processed + errors).
    pub error_rate: Option<f64>,
    /// Per day, oldest first.
    pub per_day: Vec<DayStats>,
    /// Jobs now in each status, over all time.
    pub by_status: BTreeMap<&'static str, u64>,
}

fn seconds(start: NaiveDateTime, end: NaiveDateTime) -> f64 {
    (end - start).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

impl Queue {
    /// Mean processing time of the last completed jobs.
    pub fn mean_processing_time(&self) -> Result<Option<Duration>, QueueError> {
        let mut conn = self.db().conn()?;
        let rows: Vec<(Option<NaiveDateTime>, Option<NaiveDateTime>)> = jobs::table
            .filter(jobs::status.eq(JobStatus::Complete.as_str()))
            .order(jobs::completed_at.desc())
            .limit(RECENT_FOR_MEAN)
            .select((jobs::started_at, jobs::completed_at))
            .load(&mut *conn)?;
        let xs: Vec<f64> = rows
            .into_iter()
            .filter_map(|(s, e)| Some(seconds(s?, e?)))
            .collect();
        Ok(mean(&xs).map(Duration::from_secs_f64))
    }

    /// The position of a queued job (`None` when it is not queued) and its estimated wait:
    /// the mean processing time × the jobs ahead of it and running, shared over `workers`.
    pub fn position(
        &self,
        job_id: &str,
        workers: u32,
    ) -> Result<Option<QueuePosition>, QueueError> {
        let job = self.get(job_id)?;
        if job.status() != JobStatus::Queued {
            return Ok(None);
        }
        let mut conn = self.db().conn()?;
        let queued = || jobs::table.filter(jobs::status.eq(JobStatus::Queued.as_str()));
        // Ahead = claimed earlier by the claim order: priority desc, created_at, id.
        let ahead: i64 = queued()
            .filter(
                jobs::priority
                    .gt(job.priority)
                    .or(jobs::priority.eq(job.priority).and(
                        jobs::created_at.lt(job.created_at).or(jobs::created_at
                            .eq(job.created_at)
                            .and(jobs::id.lt(&job.id))),
                    )),
            )
            .count()
            .get_result(&mut *conn)?;
        let running: i64 = jobs::table
            .filter(jobs::status.eq(JobStatus::Processing.as_str()))
            .count()
            .get_result(&mut *conn)?;
        drop(conn);
        let ahead = ahead.max(0) as u64;
        let running = running.max(0) as u64;
        let workers = u64::from(workers.max(1));
        let estimated_wait = self.mean_processing_time()?.map(|m| {
            // Every worker must finish one job before this one starts, in rounds of `workers`.
            let rounds = (ahead + running).div_ceil(workers);
            m.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX))
        });
        Ok(Some(QueuePosition {
            position: ahead + 1,
            running,
            estimated_wait,
        }))
    }

    /// Statistics of the jobs finished since `since` (UTC), plus current counts by status.
    pub fn statistics(&self, since: NaiveDateTime) -> Result<Statistics, QueueError> {
        let mut conn = self.db().conn()?;
        let rows: Vec<(String, Option<NaiveDateTime>, Option<NaiveDateTime>)> = jobs::table
            .filter(jobs::completed_at.ge(since))
            .select((jobs::status, jobs::started_at, jobs::completed_at))
            .load(&mut *conn)?;
        let counts: Vec<(String, i64)> = jobs::table
            .group_by(jobs::status)
            .select((jobs::status, diesel::dsl::count_star()))
            .load(&mut *conn)?;

        let mut days: BTreeMap<NaiveDate, (u64, u64, Vec<f64>)> = BTreeMap::new();
        let (mut processed, mut errors, mut cancelled) = (0u64, 0u64, 0u64);
        let mut durations = Vec::new();
        for (status, started, completed) in rows {
            let Some(completed) = completed else { continue };
            let day = days.entry(completed.date()).or_default();
            match JobStatus::parse(&status) {
                Some(JobStatus::Complete) => {
                    processed += 1;
                    day.0 += 1;
                    if let Some(s) = started {
                        durations.push(seconds(s, completed));
                        day.2.push(seconds(s, completed));
                    }
                }
                Some(JobStatus::Error) => {
                    errors += 1;
                    day.1 += 1;
                }
                Some(JobStatus::Cancelled) => cancelled += 1,
                _ => {}
            }
        }
        let per_day = days
            .into_iter()
            .map(|(day, (p, e, d))| DayStats {
                day,
                processed: p,
                errors: e,
                mean_processing_s: mean(&d),
            })
            .collect();
        let by_status = JobStatus::ALL
            .into_iter()
            .map(|s| {
                let n = counts
                    .iter()
                    .find(|(k, _)| k == s.as_str())
                    .map_or(0, |(_, n)| *n);
                (s.as_str(), n.max(0) as u64)
            })
            .collect();
        let finished = processed + errors;
        Ok(Statistics {
            processed,
            errors,
            cancelled,
            mean_processing_s: mean(&durations),
            error_rate: (finished > 0).then(|| errors as f64 / finished as f64),
            per_day,
            by_status,
        })
    }
}
