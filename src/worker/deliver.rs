//! After a job completes: which destinations receive its SEG and SR. The routing rule that
//! queued the series names them; one `dispatches` row per destination, sent by the dispatcher
//! with persistent retry.

use std::path::PathBuf;

use diesel::prelude::*;

use crate::config::Config;
use crate::db::schema::series;
use crate::db::DbError;
use crate::dicom::dispatch;
use crate::jobs::{Job, Queue};

/// Queues `files` for every destination of the rule that routed the job's series; returns the
/// destination names. Jobs that did not come from a routed series (uploads, `run`) go nowhere.
pub fn queue_delivery(
    queue: &Queue,
    config: &Config,
    job: &Job,
    files: &[PathBuf],
) -> Result<Vec<String>, DbError> {
    let Some(series_uid) = &job.series_instance_uid else {
        return Ok(Vec::new());
    };
    let rule: Option<Option<String>> = {
        let mut conn = queue.db().conn()?;
        series::table
            .filter(series::series_instance_uid.eq(series_uid))
            .order(series::revision.desc())
            .select(series::rule_name)
            .first(&mut *conn)
            .optional()
            .map_err(DbError::Query)?
    };
    let Some(rule) = rule.flatten() else {
        return Ok(Vec::new());
    };
    let Some(rule) = config.routing.iter().find(|r| r.name == rule) else {
        tracing::warn!(job_id = %job.id, rule = %rule,
                       "the rule that routed this series is no longer configured; results not sent");
        return Ok(Vec::new());
    };
    let mut sent_to = Vec::new();
    for name in &rule.destinations {
        match config.destinations.iter().find(|d| &d.name == name) {
            Some(dest) => {
                dispatch::enqueue(queue.db(), &job.id, dest, files)?;
                sent_to.push(name.clone());
            }
            None => tracing::warn!(job_id = %job.id, destination = %name,
                                   "destination not configured; results not sent there"),
        }
    }
    Ok(sent_to)
}
