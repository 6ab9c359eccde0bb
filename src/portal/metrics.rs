//! `/metrics` in the Prometheus text format: DICOM traffic (from the SCP's counters), jobs and
//! dispatches by status, the queue's depth, failed sends, alive workers per device (from the
//! worker registry), a histogram of pipeline stage durations (from `jobs.stage_seconds` of
//! completed jobs), audit events by kind and outcome, and the storage disk's fill level.
//! Counts only, never identifiers; like the portal it listens on `portal.bind`.
//!
//! Everything but the SCP counters is read from the database at each scrape, so a node and its
//! workers on other hosts report the same totals; counters computed from rows (failed sends,
//! the histogram) only grow while rows are kept, which they are (rows are the node's history).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use diesel::dsl::{count_star, sum};
use diesel::prelude::*;

use crate::db::schema::{audit_events, dispatches, jobs};
use crate::db::{Db, DbError};
use crate::dicom::scp::ScpStats;
use crate::jobs::JobStatus;
use crate::worker::registry;

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

/// What the database says, read in one go.
struct Rows {
    jobs: Counts,
    /// Dispatch rows by status: (status, rows, attempts summed).
    dispatches: Vec<(String, i64, Option<i64>)>,
    /// Pending dispatches whose last attempt failed.
    dispatches_failing: i64,
    audit: PairCounts,
    /// `stage_seconds` of every completed job that has it.
    stage_seconds: Vec<String>,
    workers: Vec<registry::WorkerRow>,
}

fn rows(db: &Db) -> Result<Rows, DbError> {
    let mut conn = db.conn()?;
    let jobs = jobs::table
        .group_by(jobs::status)
        .select((jobs::status, count_star()))
        .load(&mut *conn)?;
    let dispatches = dispatches::table
        .group_by(dispatches::status)
        .select((dispatches::status, count_star(), sum(dispatches::attempts)))
        .load(&mut *conn)?;
    let dispatches_failing = dispatches::table
        .filter(dispatches::status.eq(crate::dicom::dispatch::status::PENDING))
        .filter(dispatches::attempts.gt(0))
        .count()
        .get_result(&mut *conn)?;
    let audit = audit_events::table
        .group_by((audit_events::kind, audit_events::outcome))
        .select((audit_events::kind, audit_events::outcome, count_star()))
        .load(&mut *conn)?;
    let stage_seconds: Vec<Option<String>> = jobs::table
        .filter(jobs::status.eq(JobStatus::Complete.as_str()))
        .filter(jobs::stage_seconds.is_not_null())
        .select(jobs::stage_seconds)
        .load(&mut *conn)?;
    drop(conn);
    Ok(Rows {
        jobs,
        dispatches,
        dispatches_failing,
        audit,
        stage_seconds: stage_seconds.into_iter().flatten().collect(),
        workers: registry::list(db)?,
    })
}

/// Upper bounds of the stage-duration histogram's buckets, seconds (`+Inf` is implied).
pub const STAGE_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// One stage's histogram: observations per bucket (not cumulative; the last is `+Inf`), sum and
/// count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations that fell in each bucket of [`STAGE_BUCKETS`], then above the last bound.
    pub buckets: [u64; STAGE_BUCKETS.len() + 1],
    /// Sum of the observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        let i = STAGE_BUCKETS
            .iter()
            .position(|&le| v <= le)
            .unwrap_or(STAGE_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// Histograms by stage name from `jobs.stage_seconds` values (JSON objects `{stage: seconds}`);
/// anything that is not such an object, or not a finite non-negative number, is skipped.
pub fn stage_histograms<'a>(
    rows: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, Histogram> {
    let mut out: BTreeMap<String, Histogram> = BTreeMap::new();
    for row in rows {
        let Ok(map) = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(row) else {
            continue;
        };
        for (stage, v) in map {
            if let Some(s) = v.as_f64().filter(|s| s.is_finite() && *s >= 0.0) {
                out.entry(stage).or_default().observe(s);
            }
        }
    }
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the metrics text.
pub fn render(src: &Sources) -> Result<String, DbError> {
    let Rows {
        jobs,
        dispatches,
        dispatches_failing,
        audit,
        stage_seconds,
        workers,
    } = rows(&src.db)?;
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
    let jobs_in = |status: JobStatus| {
        jobs.iter()
            .filter(|(s, _)| s == status.as_str())
            .map(|(_, n)| *n as f64)
            .sum::<f64>()
    };
    family(
        "kneenode_queue_depth",
        "gauge",
        "Jobs waiting to be claimed (status queued, including retries waiting out their back-off).",
        vec![(String::new(), jobs_in(JobStatus::Queued))],
    );
    family(
        "kneenode_jobs_running",
        "gauge",
        "Jobs a worker is processing now.",
        vec![(String::new(), jobs_in(JobStatus::Processing))],
    );
    family(
        "kneenode_jobs",
        "gauge",
        "Jobs by status.",
        by("status", jobs),
    );
    // Every attempt of a row failed except the one that sent it, so failures are the attempts
    // of all rows minus the rows sent. A row's attempts only grow, so this is a counter; an
    // administrator's resend zeroes them, which Prometheus takes as a counter reset.
    let sent = crate::dicom::dispatch::status::SENT;
    let failures: i64 = dispatches
        .iter()
        .map(|(status, n, attempts)| attempts.unwrap_or(0) - if status == sent { *n } else { 0 })
        .sum();
    family(
        "kneenode_dispatch_failures_total",
        "counter",
        "Failed attempts to send results to a destination (each is retried with back-off).",
        vec![(String::new(), failures.max(0) as f64)],
    );
    family(
        "kneenode_dispatches_failing",
        "gauge",
        "Dispatches whose last attempt failed and that wait for their next retry.",
        vec![(String::new(), dispatches_failing as f64)],
    );
    family(
        "kneenode_dispatches",
        "gauge",
        "Result dispatches by status.",
        dispatches
            .into_iter()
            .map(|(v, n, _)| (format!("{{status=\"{}\"}}", label(&v)), n as f64))
            .collect(),
    );
    let mut alive: BTreeMap<String, f64> = BTreeMap::new();
    for w in &workers {
        *alive.entry(w.device.clone()).or_default() += if w.alive { 1.0 } else { 0.0 };
    }
    family(
        "kneenode_workers_alive",
        "gauge",
        "Workers seen in the last 30 s and not stopped, by device (every host sharing the database).",
        by(
            "device",
            alive.into_iter().map(|(d, n)| (d, n as i64)).collect(),
        ),
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
        family(
            "kneenode_storage_free_bytes",
            "gauge",
            "Bytes still usable on the disk holding storage.dir.",
            vec![(String::new(), d.available_bytes as f64)],
        );
    }
    write_stage_histogram(
        &mut out,
        &stage_histograms(stage_seconds.iter().map(String::as_str)),
    );
    Ok(out)
}

/// Writes `kneenode_stage_duration_seconds` (cumulative `_bucket`s, `_sum`, `_count` per stage).
fn write_stage_histogram(out: &mut String, hists: &BTreeMap<String, Histogram>) {
    let name = "kneenode_stage_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Seconds each pipeline stage took, over completed jobs.\n# TYPE {name} histogram"
    );
    for (stage, h) in hists {
        let stage = label(stage);
        let mut cumulative = 0u64;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = STAGE_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{stage=\"{stage}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_sum{{stage=\"{stage}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{stage=\"{stage}\"}} {}", h.count);
    }
}

async fn metrics(src: web::Data<Sources>) -> HttpResponse {
    let src = src.into_inner();
    match web::block(move || render(&src)).await {
        Ok(Ok(text)) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        // The error can name the database's host: it goes to the log, not to the scraper.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "/metrics: the database did not answer");
            HttpResponse::ServiceUnavailable().body("database unavailable (see /healthz)\n")
        }
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_histograms_bucket_and_skip_junk() {
        let rows = [
            r#"{"segmentation": 0.5, "loading": 3}"#,
            r#"{"segmentation": 700.0, "loading": -1}"#,
            "not json",
            r#"{"segmentation": "slow"}"#,
        ];
        let h = stage_histograms(rows);
        let seg = &h["segmentation"];
        assert_eq!((seg.count, seg.sum), (2, 700.5));
        assert_eq!(seg.buckets[0], 1, "0.5 falls in le=0.5");
        assert_eq!(seg.buckets[STAGE_BUCKETS.len()], 1, "700 only in +Inf");
        assert_eq!(h["loading"].count, 1);
        assert_eq!(h["loading"].buckets[3], 1, "3 s falls in le=5");

        let mut out = String::new();
        write_stage_histogram(&mut out, &h);
        assert!(out.contains(
            "kneenode_stage_duration_seconds_bucket{stage=\"segmentation\",le=\"0.5\"} 1\n"
        ));
        assert!(out.contains(
            "kneenode_stage_duration_seconds_bucket{stage=\"segmentation\",le=\"+Inf\"} 2\n"
        ));
        assert!(out.contains("kneenode_stage_duration_seconds_count{stage=\"loading\"} 1\n"));
    }
}
