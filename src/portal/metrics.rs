//! `/metrics` in the Prometheus text format: DICOM traffic (from the SCP's counters), jobs and
//! dispatches by status, audit events by kind and outcome, and the storage disk's fill level.
//! Counts only, never identifiers; like the portal it listens on `portal.bind`.

use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use diesel::dsl::count_star;
use diesel::prelude::*;

use crate::db::schema::{audit_events, dispatches, jobs};
use crate::db::{Db, DbError};
use crate::dicom::scp::ScpStats;

/// What `/metrics` reads.
pub struct Sources {
    /// The database.
    pub db: Db,
    /// The SCP's counters, when this process runs the SCP.
    pub scp: Option<Arc<ScpStats>>,
    /// The storage folder (its disk's fill level).
    pub storage_dir: PathBuf,
}

/// Mounts `/metrics`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

type Counts = Vec<(String, i64)>;
type PairCounts = Vec<(String, String, i64)>;

fn counts(db: &Db) -> Result<(Counts, Counts, PairCounts), DbError> {
    let mut conn = db.conn()?;
    let jobs = jobs::table
        .group_by(jobs::status)
        .select((jobs::status, count_star()))
        .load(&mut *conn)?;
    let dispatches = dispatches::table
        .group_by(dispatches::status)
        .select((dispatches::status, count_star()))
        .load(&mut *conn)?;
    let audit = audit_events::table
        .group_by((audit_events::kind, audit_events::outcome))
        .select((audit_events::kind, audit_events::outcome, count_star()))
        .load(&mut *conn)?;
    Ok((jobs, dispatches, audit))
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the metrics text.
pub fn render(src: &Sources) -> Result<String, DbError> {
    let (jobs, dispatches, audit) = counts(&src.db)?;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "kneenode_info",
        "gauge",
        "kneenode's version.",
        vec![(
            format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0,
        )],
    );
    if let Some(s) = &src.scp {
        let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        for (name, help, v) in [
            (
                "kneenode_dicom_associations_total",
                "Associations accepted.",
                c(&s.associations),
            ),
            (
                "kneenode_dicom_associations_rejected_total",
                "Associations rejected.",
                c(&s.rejected),
            ),
            (
                "kneenode_dicom_instances_stored_total",
                "Instances stored.",
                c(&s.instances),
            ),
            (
                "kneenode_dicom_instances_refused_total",
                "Instances refused with a failure status.",
                c(&s.failures),
            ),
            (
                "kneenode_dicom_received_bytes_total",
                "Dataset bytes received.",
                c(&s.bytes),
            ),
        ] {
            family(name, "counter", help, vec![(String::new(), v)]);
        }
    }
    let by = |key: &str, rows: Counts| -> Vec<(String, f64)> {
        rows.into_iter()
            .map(|(v, n)| (format!("{{{key}=\"{}\"}}", label(&v)), n as f64))
            .collect()
    };
    family(
        "kneenode_jobs",
        "gauge",
        "Jobs by status.",
        by("status", jobs),
    );
    family(
        "kneenode_dispatches",
        "gauge",
        "Result dispatches by status.",
        by("status", dispatches),
    );
    family(
        "kneenode_audit_events",
        "gauge",
        "Audit events by kind and outcome.",
        audit
            .into_iter()
            .map(|(k, o, n)| {
                (
                    format!("{{kind=\"{}\",outcome=\"{}\"}}", label(&k), label(&o)),
                    n as f64,
                )
            })
            .collect(),
    );
    if let Ok(d) = crate::storage::disk_usage(&src.storage_dir) {
        family(
            "kneenode_storage_disk_used_percent",
            "gauge",
            "Fill level of the disk holding storage.dir.",
            vec![(String::new(), d.used_percent)],
        );
    }
    Ok(out)
}

async fn metrics(src: web::Data<Sources>) -> HttpResponse {
    let src = src.into_inner();
    match web::block(move || render(&src)).await {
        Ok(Ok(text)) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(e.to_string()),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}
