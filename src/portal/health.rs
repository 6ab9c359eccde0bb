//! `/healthz`: one unauthenticated JSON answer for load balancers, systemd watchdogs and IT
//! monitors (Nagios, Zabbix, Kubernetes probes, Prometheus' blackbox exporter).
//!
//! ```json
//! {"status": "ok" | "degraded" | "down", "version": "…",
//!  "database": {"ok": true},
//!  "storage":  {"ok": true, "free_bytes": 1234, "used_percent": 41.2, "watermark_percent": 90.0},
//!  "workers":  {"ok": true, "alive": 2, "devices": ["cuda:0", "cuda:1"]},
//!  "scp":      {"ok": true, "enabled": true, "listening": "0.0.0.0:11112"}}
//! ```
//!
//! How to read it (a monitor only needs the status code; the body says why):
//! - **503, `down`**: the node cannot accept or keep work. The database does not answer within
//!   [`DB_TIMEOUT`] (the answer still comes within about three seconds, never hangs), or the
//!   storage disk is at or past `storage.max_disk_used_percent` (the SCP then refuses instances
//!   with Out of Resources), or the disk cannot be measured.
//! - **200, `degraded`**: the node accepts and keeps data, but something needs a look: no worker
//!   has been seen in the last 30 s on any host (jobs wait in the queue), or this process should
//!   run the DICOM SCP and it is not listening. Alert on it, but do not restart or fail over.
//! - **200, `ok`**: everything above is fine.
//!
//! `database.error` and `workers.error` are short, fixed phrases: the full error (which names
//! hosts) goes to the log, not to an unauthenticated caller. Every answer is `no-store`. The
//! checks are cheap (one `SELECT 1`, one small registry read, one `statvfs`), so polling every
//! few seconds is fine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{http::header, web, HttpResponse};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::dicom::scp::ScpStats;
use crate::worker::registry;

/// How long the database check waits for a connection.
pub const DB_TIMEOUT: Duration = Duration::from_secs(2);
/// The most the whole database part may take (a server that accepts but never answers).
const DB_DEADLINE: Duration = Duration::from_millis(2500);
/// The most measuring the disk may take (a hung network filesystem).
const DISK_DEADLINE: Duration = Duration::from_secs(2);
/// Database checks allowed in flight at once (several monitors polling together is normal).
const MAX_DB_CHECKS: usize = 4;

/// What `/healthz` reads.
pub struct Sources {
    /// The database.
    pub db: Db,
    /// The storage folder (its disk).
    pub storage_dir: PathBuf,
    /// `storage.max_disk_used_percent`.
    pub watermark_percent: f64,
    /// The SCP's state, when this process runs the SCP.
    pub scp: Option<Arc<ScpStats>>,
    /// Database checks still running. A server that accepts but never answers leaves them
    /// blocked; past [`MAX_DB_CHECKS`] a check reports that instead of blocking one more thread.
    db_checks: Arc<AtomicUsize>,
    /// The last database state, so that only changes are logged.
    db_was_ok: AtomicBool,
}

impl Sources {
    /// The sources of a node configured by `cfg`.
    pub fn new(cfg: &Config, db: Db, scp: Option<Arc<ScpStats>>) -> Self {
        Self {
            db,
            storage_dir: cfg.storage.dir.clone(),
            watermark_percent: cfg.storage.max_disk_used_percent,
            scp,
            db_checks: Arc::new(AtomicUsize::new(0)),
            db_was_ok: AtomicBool::new(true),
        }
    }
}

/// Mounts `GET /healthz` (and `HEAD`, which some monitors use).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/healthz", web::head().to(healthz));
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Everything is fine.
    Ok,
    /// Serving, but no worker or no SCP: needs a look.
    Degraded,
    /// Cannot take or keep work: database or storage.
    Down,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// The verdict.
    pub status: Status,
    /// kneenode's version.
    pub version: &'static str,
    /// The database.
    pub database: DatabaseHealth,
    /// The storage disk.
    pub storage: StorageHealth,
    /// The workers in the registry.
    pub workers: WorkersHealth,
    /// This process's DICOM SCP.
    pub scp: ScpHealth,
}

/// Whether the database answers.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseHealth {
    /// It answered `SELECT 1` in time.
    pub ok: bool,
    /// Why not, in a few words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// The storage disk.
#[derive(Debug, Clone, Serialize)]
pub struct StorageHealth {
    /// Measured, and below the watermark.
    pub ok: bool,
    /// Bytes a non-root writer can still use.
    pub free_bytes: Option<u64>,
    /// Used share of the disk, percent.
    pub used_percent: Option<f64>,
    /// `storage.max_disk_used_percent`.
    pub watermark_percent: f64,
    /// Why not, in a few words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// The workers, from the registry (every host that shares the database).
#[derive(Debug, Clone, Serialize)]
pub struct WorkersHealth {
    /// At least one worker is alive.
    pub ok: bool,
    /// Workers seen within the last 30 s and not stopped.
    pub alive: usize,
    /// Their devices, sorted, without repeats.
    pub devices: Vec<String>,
    /// Why the registry could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// This process's DICOM SCP.
#[derive(Debug, Clone, Serialize)]
pub struct ScpHealth {
    /// Listening, or not this process's job.
    pub ok: bool,
    /// Whether this process runs an SCP at all.
    pub enabled: bool,
    /// Where it accepts associations.
    pub listening: Option<String>,
}

/// Checks everything, each part within its deadline.
pub async fn check(src: &Sources) -> Health {
    let ((database, workers), storage) = tokio::join!(check_db(src), check_storage(src));
    let scp = match &src.scp {
        None => ScpHealth {
            ok: true,
            enabled: false,
            listening: None,
        },
        Some(s) => {
            let addr: Option<SocketAddr> = s.listening();
            ScpHealth {
                ok: addr.is_some(),
                enabled: true,
                listening: addr.map(|a| a.to_string()),
            }
        }
    };
    let status = if !database.ok || !storage.ok {
        Status::Down
    } else if !workers.ok || !scp.ok {
        Status::Degraded
    } else {
        Status::Ok
    };
    Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        database,
        storage,
        workers,
        scp,
    }
}

/// Counts a database check as in flight until the blocking work ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn check_db(src: &Sources) -> (DatabaseHealth, WorkersHealth) {
    let down = |error: &'static str| {
        (
            DatabaseHealth {
                ok: false,
                error: Some(error),
            },
            WorkersHealth {
                ok: false,
                alive: 0,
                devices: Vec::new(),
                error: Some("database unavailable"),
            },
        )
    };
    let in_flight = InFlight(src.db_checks.clone());
    if src.db_checks.fetch_add(1, Ordering::AcqRel) >= MAX_DB_CHECKS {
        return down("earlier checks are still waiting for the database");
    }
    let db = src.db.clone();
    let work = web::block(move || {
        let _in_flight = in_flight;
        db.check(DB_TIMEOUT)?;
        registry::list(&db)
    });
    let (result, detail) = match tokio::time::timeout(DB_DEADLINE, work).await {
        Ok(Ok(Ok(rows))) => (Ok(rows), None),
        Ok(Ok(Err(e))) => {
            let phrase = match &e {
                DbError::Pool(_) => "no connection within 2 s",
                DbError::Query(_) => "query failed",
                _ => "unavailable",
            };
            (Err(phrase), Some(e.to_string()))
        }
        Ok(Err(_)) => (Err("check failed"), None),
        Err(_) => (Err("no answer within 2.5 s"), None),
    };
    let ok = result.is_ok();
    if src.db_was_ok.swap(ok, Ordering::Relaxed) != ok {
        match (&result, &detail) {
            (Ok(_), _) => info!("healthz: the database answers again"),
            (Err(p), Some(d)) => warn!(error = %d, "healthz: database down ({p})"),
            (Err(p), None) => warn!("healthz: database down ({p})"),
        }
    }
    match result {
        Err(phrase) => down(phrase),
        Ok(rows) => {
            let alive: Vec<_> = rows.into_iter().filter(|r| r.alive).collect();
            let mut devices: Vec<String> = alive.iter().map(|r| r.device.clone()).collect();
            devices.sort();
            devices.dedup();
            (
                DatabaseHealth {
                    ok: true,
                    error: None,
                },
                WorkersHealth {
                    ok: !alive.is_empty(),
                    alive: alive.len(),
                    devices,
                    error: None,
                },
            )
        }
    }
}

async fn check_storage(src: &Sources) -> StorageHealth {
    let dir = src.storage_dir.clone();
    let measured = tokio::time::timeout(
        DISK_DEADLINE,
        web::block(move || crate::storage::disk_usage(&dir)),
    )
    .await;
    let watermark_percent = src.watermark_percent;
    match measured {
        Ok(Ok(Ok(d))) => StorageHealth {
            ok: !d.above(watermark_percent),
            free_bytes: Some(d.available_bytes),
            used_percent: Some((d.used_percent * 100.0).round() / 100.0),
            watermark_percent,
            error: d
                .above(watermark_percent)
                .then_some("past the watermark: new data is refused"),
        },
        Ok(Ok(Err(_))) | Ok(Err(_)) => StorageHealth {
            ok: false,
            free_bytes: None,
            used_percent: None,
            watermark_percent,
            error: Some("the storage folder cannot be measured"),
        },
        Err(_) => StorageHealth {
            ok: false,
            free_bytes: None,
            used_percent: None,
            watermark_percent,
            error: Some("measuring the disk took longer than 2 s"),
        },
    }
}

async fn healthz(src: web::Data<Sources>) -> HttpResponse {
    let health = check(&src).await;
    let mut response = if health.status == Status::Down {
        HttpResponse::ServiceUnavailable()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(health)
}
