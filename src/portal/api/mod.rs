//! The JSON API under `/api`, for scripts and other systems: the same data as the pages (through
//! [`crate::portal::views`]), the same session login (`POST /api/login`), and writes that carry
//! the session's CSRF token in `X-CSRF-Token`. Described by `/api/openapi.json`.

mod openapi;

use actix_multipart::Multipart;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::jobs::{Job, Queue};
use crate::portal::auth::{Viewer, CSRF_HEADER};
use crate::portal::error::Fail;
use crate::portal::pages::{job, stats, upload};
use crate::portal::views::{self, Delivery, JobFilter, JobResults, ProgressView};
use crate::portal::AppState;

/// Mounts `/api/…` (login and logout are mounted with the login page).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/openapi.json", web::get().to(openapi::document))
        .route("/api/jobs", web::get().to(list))
        .route("/api/jobs", web::post().to(create))
        .route("/api/jobs/{id}", web::get().to(detail))
        .route("/api/jobs/{id}/progress", web::get().to(progress))
        .route("/api/jobs/{id}/download", web::get().to(job::download))
        .route("/api/statistics", web::get().to(statistics));
}

async fn list(
    state: web::Data<AppState>,
    _viewer: Viewer,
    q: web::Query<JobFilter>,
) -> Result<HttpResponse, Fail> {
    let f = q.into_inner().normalised();
    let db = state.db.clone();
    let page = web::block(move || views::list_jobs(&db, &f))
        .await
        .map_err(Fail::from)
        .and_then(|r| r.map_err(Fail::from))
        .map_err(Fail::json)?;
    Ok(HttpResponse::Ok().json(page))
}

/// A job as `/api/jobs/{id}` shows it.
#[derive(Debug, Serialize)]
struct JobDetail {
    job: Job,
    progress: ProgressView,
    results: JobResults,
    deliveries: Vec<Delivery>,
    download: Option<String>,
}

async fn detail(
    state: web::Data<AppState>,
    _viewer: Viewer,
    id: web::Path<String>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let s = state.clone();
    let d = web::block(move || -> Result<JobDetail, Fail> {
        let job = Queue::new(s.db.clone()).get(&id)?;
        let download = job
            .result_path
            .is_some()
            .then(|| format!("/api/jobs/{id}/download"));
        Ok(JobDetail {
            progress: views::progress(&s.db, &id)?,
            results: views::results(&s.config.storage.dir, &id),
            deliveries: views::deliveries(&s.db, &id)?,
            download,
            job,
        })
    })
    .await
    .map_err(Fail::from)
    .and_then(|r| r)
    .map_err(Fail::json)?;
    Ok(HttpResponse::Ok().json(d))
}

async fn progress(
    state: web::Data<AppState>,
    _viewer: Viewer,
    id: web::Path<String>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let db = state.db.clone();
    let workers = web::block(move || views::progress(&db, &id))
        .await
        .map_err(Fail::from)
        .and_then(|r| r.map_err(Fail::from))
        .map_err(Fail::json)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(workers))
}

async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    viewer: Viewer,
    payload: Multipart,
) -> Result<HttpResponse, Fail> {
    let header = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let job = upload::receive(&state, &viewer, header.as_deref(), payload).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/jobs/{}", job.id)))
        .json(serde_json::json!({ "id": job.id, "status": job.status, "url": format!("/jobs/{}", job.id) })))
}

async fn statistics(
    state: web::Data<AppState>,
    _viewer: Viewer,
    q: web::Query<stats::Period>,
) -> Result<HttpResponse, Fail> {
    let days = q.days();
    let s = state.clone();
    let st = web::block(move || stats::load(&s, days))
        .await
        .map_err(Fail::from)
        .and_then(|r| r)
        .map_err(Fail::json)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "days": days, "statistics": st })))
}
