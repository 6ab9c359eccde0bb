//! The internal API (`/internal/v1`) for workers on other hosts. Every call carries the bearer
//! token and the worker's id; a worker may touch a job only while it holds the job's lease, so a
//! worker that lost its lease can neither read the input again nor overwrite the new owner's
//! results.
//!
//! - `GET /internal/v1/jobs/{id}/input`: the job's input as a zip (a series folder's files under
//!   the folder's name, or the single file).
//! - `PUT /internal/v1/jobs/{id}/results`: the job's results zip (one top folder
//!   `{prefix}_results/`), unpacked with zip-bomb limits into `jobs/{id}/results/` and kept as
//!   `jobs/{id}/{prefix}_results.zip`. The node then completes the job and queues its DICOM
//!   objects (`*.dcm`) for the routing rule's destinations, which only the node's configuration
//!   knows. Answers the node-side paths as JSON ([`Uploaded`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::token;
use crate::archive::{self, Limits};
use crate::db::Db;
use crate::jobs::{Job, JobStatus, Queue, QueueError};

/// The header that names the calling worker.
pub const WORKER_HEADER: &str = "X-Kneenode-Worker";

/// What the handlers share.
pub struct State {
    /// The job table.
    pub db: Db,
    /// The node's configuration (routing rules and destinations for delivery).
    pub config: std::sync::Arc<crate::config::Config>,
    /// The node's storage folder (jobs/ lives here).
    pub storage_dir: PathBuf,
    /// The bearer token.
    pub token: String,
    /// Largest upload, bytes.
    pub max_upload_bytes: u64,
    /// The disk watermark (`storage.max_disk_used_percent`): uploads are refused past it.
    pub max_disk_used_percent: f64,
}

/// The answer to a results upload: where the node keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uploaded {
    /// The results zip on the node.
    pub zip: String,
    /// Its size, bytes.
    pub size: u64,
    /// Every unpacked file on the node.
    pub files: Vec<String>,
}

/// Mounts the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/internal/v1")
            .route("/jobs/{id}/input", web::get().to(input))
            .route("/jobs/{id}/results", web::put().to(results)),
    );
}

/// A refused or failed call: a status and a plain-text reason.
#[derive(Debug)]
pub struct Refusal(StatusCode, String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl actix_web::ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        self.0
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.0)
            .content_type("text/plain; charset=utf-8")
            .body(self.1.clone())
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Refusal {
    Refusal(status, text.into())
}

/// Checks the token and returns the calling worker's id.
fn caller(req: &HttpRequest, state: &State) -> Result<String, Refusal> {
    let bearer = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token::matches(bearer, &state.token) {
        warn!(peer = ?req.peer_addr(), path = req.path(), "internal API: bad or missing token");
        return Err(plain(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        ));
    }
    req.headers()
        .get(WORKER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            plain(
                StatusCode::BAD_REQUEST,
                format!("the {WORKER_HEADER} header is required"),
            )
        })
}

/// The job, if `worker` holds it.
async fn held_job(state: &web::Data<State>, id: &str, worker: &str) -> Result<Job, Refusal> {
    let db = state.db.clone();
    let id_owned = id.to_owned();
    let job = web::block(move || Queue::new(db).get(&id_owned))
        .await
        .map_err(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match job {
        Ok(job)
            if job.status() == JobStatus::Processing
                && job.worker_id.as_deref() == Some(worker) =>
        {
            Ok(job)
        }
        Ok(_) => Err(plain(
            StatusCode::CONFLICT,
            format!("job {id} is not held by {worker}"),
        )),
        Err(QueueError::NotFound(_)) => Err(plain(StatusCode::NOT_FOUND, format!("no job {id}"))),
        Err(e) => Err(plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn input(
    req: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
) -> Result<HttpResponse, Refusal> {
    let worker = caller(&req, &state)?;
    let job = held_job(&state, &id, &worker).await?;
    let path = PathBuf::from(&job.input_path);
    if !path.exists() {
        return Err(plain(
            StatusCode::NOT_FOUND,
            format!("the input of job {} is gone", job.id),
        ));
    }
    // Whole-series zips are held in memory while sent (MR series are tens to hundreds of MB).
    let packed = web::block(move || {
        archive::pack_into(&path, std::io::Cursor::new(Vec::new())).map(|c| c.into_inner())
    })
    .await;
    let bytes = packed
        .map_err(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    info!(job_id = %job.id, worker = %worker, bytes = bytes.len(), "input sent to a remote worker");
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .body(bytes))
}

async fn results(
    req: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
    mut body: web::Payload,
) -> Result<HttpResponse, Refusal> {
    use futures_util::StreamExt;
    let worker = caller(&req, &state)?;
    let job = held_job(&state, &id, &worker).await?;
    let full = crate::storage::disk_usage(&state.storage_dir)
        .map(|d| d.above(state.max_disk_used_percent))
        .unwrap_or(false);
    if full {
        warn!(job_id = %job.id, "results upload refused: the storage disk is past its watermark");
        return Err(plain(
            StatusCode::INSUFFICIENT_STORAGE,
            "the node's storage is past its watermark (storage.max_disk_used_percent)",
        ));
    }
    let dir = state.storage_dir.join("jobs").join(&job.id);
    let partial = dir.join("upload.zip.partial");
    let write = (|| {
        std::fs::create_dir_all(&dir)?;
        std::fs::File::create(&partial)
    })();
    let mut file = write.map_err(|e| {
        plain(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("storing the upload: {e}"),
        )
    })?;
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(&partial);
                return Err(plain(
                    StatusCode::BAD_REQUEST,
                    format!("upload interrupted: {e}"),
                ));
            }
        };
        received += chunk.len() as u64;
        if received > state.max_upload_bytes {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("uploads are limited to {} bytes", state.max_upload_bytes),
            ));
        }
        if let Err(e) = file.write_all(&chunk) {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(plain(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("storing the upload: {e}"),
            ));
        }
    }
    let limit = state.max_upload_bytes.saturating_mul(4);
    let job_id = job.id.clone();
    let (db, config, me) = (state.db.clone(), state.config.clone(), worker.clone());
    let done = web::block(move || {
        file.sync_all()
            .map_err(|e| plain(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))?;
        drop(file);
        let uploaded = install_results(&dir, &partial, limit)
            .map_err(|reason| plain(StatusCode::UNPROCESSABLE_ENTITY, reason))?;
        let queue = Queue::new(db);
        let size = i64::try_from(uploaded.size).unwrap_or(i64::MAX);
        queue
            .complete(&job.id, &me, &uploaded.zip, size)
            .map_err(|e| match e {
                QueueError::LeaseLost { .. } => plain(StatusCode::CONFLICT, e.to_string()),
                e => plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            })?;
        let dicom: Vec<PathBuf> = uploaded
            .files
            .iter()
            .filter(|f| f.ends_with(".dcm"))
            .map(PathBuf::from)
            .collect();
        if !dicom.is_empty() {
            if let Err(e) = crate::worker::deliver::queue_delivery(&queue, &config, &job, &dicom) {
                warn!(job_id = %job.id, error = %e, "queueing the results for dispatch failed");
            }
        }
        Ok::<_, Refusal>(uploaded)
    })
    .await;
    let uploaded = done.map_err(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    info!(job_id = %job_id, worker = %worker, bytes = uploaded.size, "results received from a remote worker");
    Ok(HttpResponse::Ok().json(uploaded))
}

/// Unpacks an uploaded results zip into `dir/results` (replacing an earlier attempt's) and keeps
/// the zip as `dir/{top}.zip`.
fn install_results(dir: &Path, upload: &Path, max_total_bytes: u64) -> Result<Uploaded, String> {
    let incoming = dir.join("results.incoming");
    let _ = std::fs::remove_dir_all(&incoming);
    let limits = Limits {
        max_total_bytes,
        ..Limits::default()
    };
    let files = archive::unpack(upload, &incoming, limits).map_err(|e| {
        let _ = std::fs::remove_file(upload);
        e.to_string()
    })?;
    let tops: std::collections::BTreeSet<_> = files
        .iter()
        .filter_map(|f| f.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let top = match (tops.len(), tops.iter().next()) {
        (1, Some(top))
            if top.ends_with("_results") && files.iter().all(|f| f.components().count() == 2) =>
        {
            top.clone()
        }
        _ => {
            let _ = std::fs::remove_dir_all(&incoming);
            let _ = std::fs::remove_file(upload);
            return Err(
                "a results zip holds one folder named {prefix}_results with files only".into(),
            );
        }
    };
    let results = dir.join(crate::worker::jobfile::RESULTS_DIR);
    let _ = std::fs::remove_dir_all(&results);
    let io = |e: std::io::Error| e.to_string();
    std::fs::rename(incoming.join(&top), &results).map_err(io)?;
    let _ = std::fs::remove_dir_all(&incoming);
    let zip = dir.join(format!("{top}.zip"));
    std::fs::rename(upload, &zip).map_err(io)?;
    let size = std::fs::metadata(&zip).map_err(io)?.len();
    let mut paths: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|n| results.join(n).to_string_lossy().into_owned())
        .collect();
    paths.sort();
    Ok(Uploaded {
        zip: zip.to_string_lossy().into_owned(),
        size,
        files: paths,
    })
}
