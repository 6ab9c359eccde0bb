//! One job: status with live progress, steps and timings, the log, the error in words, and the
//! results — preview, thickness table and plot, 3D view, the zip — with the deliveries to the
//! PACS. Admins can cancel, retry, delete and resend; downloads are audited and streamed.

use std::path::PathBuf;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};

use super::{bytes, duration, page, status_badge, when, when_opt};
use crate::audit::{self, Event};
use crate::jobs::{Job, JobStatus, Queue};
use crate::portal::auth::Viewer;
use crate::portal::error::Fail;
use crate::portal::views::{self, Delivery, JobResults, RegionThickness};
use crate::portal::{meshview, AppState};

/// Mounts `/jobs/{id}` and its parts and actions.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/jobs/{id}", web::get().to(detail))
        .route("/jobs/{id}/preview.png", web::get().to(preview))
        .route("/jobs/{id}/download", web::get().to(download))
        .route("/jobs/{id}/meshes.json", web::get().to(meshes_manifest))
        .route("/jobs/{id}/meshes/{name}.bin", web::get().to(mesh_bin))
        .configure(super::actions::routes);
}

struct Detail {
    job: Job,
    results: JobResults,
    deliveries: Vec<Delivery>,
    log: Option<String>,
    position: Option<crate::jobs::QueuePosition>,
}

fn load(state: &AppState, id: &str) -> Result<Detail, Fail> {
    let queue = Queue::new(state.db.clone());
    let job = queue.get(id)?;
    let position = queue.position(id, views::alive_workers(&state.db))?;
    Ok(Detail {
        results: views::results(&state.config.storage.dir, id),
        deliveries: views::deliveries(&state.db, id)?,
        log: views::log_tail(&state.config.storage.dir, id, 16 * 1024),
        job,
        position,
    })
}

/// Regional thickness as a bar chart (mean, with ±SD whiskers), inline SVG.
fn thickness_plot(rows: &[RegionThickness]) -> Markup {
    let bars: Vec<(&str, f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.region.as_str(), r.mean?, r.std.unwrap_or(0.0))))
        .collect();
    if bars.is_empty() {
        return html! {};
    }
    let top = bars
        .iter()
        .map(|(_, m, s)| m + s)
        .fold(0.5_f64, f64::max)
        .ceil();
    let (w, h, left, bottom) = (640.0, 260.0, 44.0, 90.0);
    let plot_h = h - bottom - 10.0;
    let step = (w - left - 10.0) / bars.len() as f64;
    let y = |v: f64| 10.0 + plot_h * (1.0 - v / top);
    html! {
        svg #thickness-plot viewBox={ "0 0 " (w) " " (h) } role="img" aria-label="Cartilage thickness by region (mean ± SD, mm)" {
            line x1=(left) y1=(y(0.0)) x2=(w - 10.0) y2=(y(0.0)) stroke="#555" {}
            @for t in 0..=(top as u32) {
                text x=(left - 6.0) y=(y(f64::from(t)) + 4.0) text-anchor="end" font-size="11" { (t) }
                line x1=(left) y1=(y(f64::from(t))) x2=(w - 10.0) y2=(y(f64::from(t))) stroke="#ddd" {}
            }
            text x="12" y=(10.0 + plot_h / 2.0) font-size="11" transform={ "rotate(-90 12 " (10.0 + plot_h / 2.0) ")" } text-anchor="middle" { "mm" }
            @for (i, (name, mean, sd)) in bars.iter().enumerate() {
                @let x = left + step * i as f64 + step * 0.2;
                @let bw = step * 0.6;
                rect x=(x) y=(y(*mean)) width=(bw) height=(y(0.0) - y(*mean)) fill="#3b7dd8" {
                    title { (name) ": " (format!("{mean:.2}")) " ± " (format!("{sd:.2}")) " mm" }
                }
                line x1=(x + bw / 2.0) x2=(x + bw / 2.0) y1=(y(mean + sd)) y2=(y((mean - sd).max(0.0))) stroke="#222" {}
                text x=(x + bw / 2.0) y=(y(0.0) + 12.0) font-size="10" text-anchor="end"
                    transform={ "rotate(-40 " (x + bw / 2.0) " " (y(0.0) + 12.0) ")" } { (name.replace('_', " ")) }
            }
        }
    }
}

fn results_section(id: &str, d: &Detail) -> Markup {
    let r = &d.results;
    let done = d.job.status() == JobStatus::Complete;
    html! {
        @if done {
            section.panel #results {
                h2 { "Results" }
                @if d.job.result_path.is_some() {
                    p { a #download-zip .button href={ "/jobs/" (id) "/download" } download { "Download results (zip"
                        @if let Some(n) = d.job.result_size_bytes { ", " (bytes(u64::try_from(n).unwrap_or(0))) } ")" } }
                }
                @if r.preview.is_some() {
                    figure { img #preview src={ "/jobs/" (id) "/preview.png" } alt="Segmentation overlay on four slices";
                        figcaption { "Segmentation overlay (preview)" } }
                }
                @if !r.thickness.is_empty() {
                    h3 { "Cartilage thickness by region (mm)" }
                    (thickness_plot(&r.thickness))
                    table #thickness { thead { tr { th { "Region" } th { "Mean" } th { "SD" } th { "Median" } } }
                        tbody { @for t in &r.thickness { tr {
                            td { (t.region.replace('_', " ")) }
                            td.num { (fmt(t.mean)) } td.num { (fmt(t.std)) } td.num { (fmt(t.median)) } } } } }
                }
                @if !r.tissue_volumes_mm3.is_empty() {
                    h3 { "Tissue volumes" }
                    table #volumes { tbody { @for (name, v) in &r.tissue_volumes_mm3 {
                        tr { td { (name) } td.num { (format!("{:.0}", v)) " mm³" } } } } }
                }
                @if let Some(n) = &r.nsm { h3 { "Neural shape model" } pre { (serde_json::to_string_pretty(n).unwrap_or_default()) } }
                @if !r.models.is_empty() { p.small { "Models: " (r.models.join(", ")) @if let Some(dev) = &r.device { " · device " (dev) } } }
            }
            section.panel #view3d {
                h2 { "3D view" }
                p.small { "Bone surfaces coloured by cartilage thickness. Drag to rotate, scroll to zoom, double-click to reset." }
                div.viewer-wrap {
                    canvas #viewer width="800" height="520"
                        data-manifest={ "/jobs/" (id) "/meshes.json" }
                        data-mesh-base={ "/jobs/" (id) "/meshes/" } {}
                    div #viewer-side { div #viewer-legend {} div #viewer-layers {} }
                }
                p #viewer-status { "Loading meshes…" }
                script src="/static/viewer.js" defer {}
            }
        }
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{x:.2}"))
}

async fn detail(
    state: web::Data<AppState>,
    viewer: Viewer,
    id: web::Path<String>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let s = state.clone();
    let key = id.clone();
    let d = web::block(move || load(&s, &key)).await??;
    let job = &d.job;
    let pct = if job.status() == JobStatus::Complete {
        100.0
    } else {
        job.progress_percent.clamp(0.0, 100.0)
    };
    let admin = viewer.is_admin();
    let csrf = viewer.csrf().to_owned();
    let action = |path: &str, label: &str, confirm: bool| {
        html! {
            form.inline method="post" action={ "/jobs/" (id) "/" (path) } {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" class=(if confirm { "danger" } else { "" }) data-confirm=[confirm.then_some("Are you sure?")] { (label) }
            }
        }
    };
    let body = html! {
        section.panel #summary {
            div #job-progress .progress data-job=(id) data-status=(job.status) data-percent=(format!("{pct:.0}")) data-reload="1" {
                (status_badge(&job.status)) " "
                progress max="100" value=(format!("{pct:.0}")) {}
                span.progress-label { (format!("{pct:.0}")) " % " (job.step_name.as_deref().unwrap_or("")) }
            }
            @if let Some(p) = &d.position {
                p #queue-position { "Position " (p.position) " in the queue"
                    @if let Some(w) = p.estimated_wait { "; starts in about " (duration(w.as_secs_f64())) } "." }
            }
            @if let Some(msg) = views::friendly_error(job) {
                @if job.status() == JobStatus::Error || job.status() == JobStatus::Cancelled {
                    div.error-box role="alert" { strong { (job.error_code.as_deref().unwrap_or("ERROR")) } ": " (msg) }
                }
            }
            dl.facts {
                dt { "Job" } dd { code { (id) } }
                dt { "Source" } dd { (job.source) @if job.revision > 1 { " (series revision " (job.revision) ")" } }
                @if let Some(u) = &job.study_instance_uid { dt { "Study UID" } dd { code { (u) } } }
                @if let Some(u) = &job.series_instance_uid { dt { "Series UID" } dd { code { (u) } } }
                dt { "Created" } dd { (when(job.created_at)) }
                dt { "Started" } dd { (when_opt(job.started_at)) }
                dt { "Finished" } dd { (when_opt(job.completed_at)) }
                dt { "Attempts" } dd { (job.attempts) " of " (job.max_attempts) }
                @if let Some(w) = &job.worker_id { dt { "Worker" } dd { code { (w) } } }
                @if let Some(b) = job.peak_rss_bytes { dt { "Peak memory" } dd { (bytes(u64::try_from(b).unwrap_or(0))) } }
                @if let Some(map) = serde_json::from_str::<crate::pipeline::JobOptions>(&job.options).ok().and_then(|o| o.label_map) {
                    dt { "Input" } dd { "a segmentation, analysed without segmenting: "
                        @for (n, (tissue, value)) in map.entries().into_iter().enumerate() {
                            @if n > 0 { ", " } (tissue.replace('_', " ")) " = " (value)
                        }
                    }
                }
                dt { "Options" } dd { code { (job.options) } }
            }
            @if admin {
                div.actions {
                    @if !job.status().is_final() { (action("cancel", "Cancel", true)) }
                    @if matches!(job.status(), JobStatus::Error | JobStatus::Cancelled) { (action("retry", "Retry", false)) }
                    @if job.status().is_final() { (action("delete", "Delete", true)) }
                }
            }
        }
        (results_section(&id, &d))
        @if !d.results.timings_s.is_empty() {
            section.panel #steps {
                h2 { "Steps" }
                table { thead { tr { th { "Step" } th { "Time" } } }
                    tbody { @for (name, s) in &d.results.timings_s { tr { td { (name) } td.num { (duration(*s)) } } } } }
            }
        }
        section.panel #deliveries {
            h2 { "Deliveries to the PACS" }
            @if d.deliveries.is_empty() { p.empty { "No DICOM destinations for this job." } } @else {
                table { thead { tr { th { "Destination" } th { "AE" } th { "Status" } th { "Attempts" } th { "Sent" } th { "Last error" } @if admin { th {} } } }
                    tbody { @for x in &d.deliveries { tr {
                        td { (x.destination) } td { code { (x.ae_title) } } td { (status_badge(&x.status)) }
                        td { (x.attempts) } td { (when_opt(x.sent_at)) } td { (x.last_error.as_deref().unwrap_or("")) }
                        @if admin { td { (action(&format!("dispatches/{}/resend", x.id), "Resend", false)) } }
                    } } } }
            }
        }
        @if let Some(log) = &d.log {
            section.panel #log { h2 { "Log" } pre.log { (log) } }
        }
    };
    Ok(page(
        &format!("Job {}", id.get(..8).unwrap_or(&id)),
        &viewer,
        body,
    ))
}

fn results_dir(state: &AppState, id: &str) -> Result<PathBuf, Fail> {
    views::job_dir(&state.config.storage.dir, id)
        .map(|d| d.join("results"))
        .filter(|d| d.is_dir())
        .ok_or_else(|| Fail::not_found("results"))
}

async fn preview(
    state: web::Data<AppState>,
    _viewer: Viewer,
    id: web::Path<String>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let s = state.clone();
    let png = web::block(move || -> Result<Vec<u8>, Fail> {
        let dir = results_dir(&s, &id)?;
        let name = views::results(&s.config.storage.dir, &id)
            .preview
            .ok_or_else(|| Fail::not_found("preview"))?;
        std::fs::read(dir.join(name)).map_err(|_| Fail::not_found("preview"))
    })
    .await??;
    Ok(HttpResponse::Ok()
        .content_type("image/png")
        .insert_header((header::CACHE_CONTROL, "private, max-age=300"))
        .body(png))
}

async fn meshes_manifest(
    state: web::Data<AppState>,
    _viewer: Viewer,
    id: web::Path<String>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let s = state.clone();
    let manifest = web::block(move || -> Result<serde_json::Value, Fail> {
        Ok(meshview::manifest(&results_dir(&s, &id)?))
    })
    .await??;
    Ok(HttpResponse::Ok().json(manifest))
}

async fn mesh_bin(
    state: web::Data<AppState>,
    _viewer: Viewer,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Fail> {
    let (id, name) = path.into_inner();
    let s = state.clone();
    let body = web::block(move || -> Result<Vec<u8>, Fail> {
        let dir = results_dir(&s, &id)?;
        let entry = meshview::find(&dir, &name).ok_or_else(|| Fail::not_found("mesh"))?;
        meshview::encode_file(&entry.file).map_err(Fail::internal)
    })
    .await??;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((header::CACHE_CONTROL, "private, max-age=300"))
        .body(body))
}

/// Streams a job's results zip, audited.
pub async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    viewer: Viewer,
    id: web::Path<String>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let (db, key) = (state.db.clone(), id.clone());
    let job = web::block(move || Queue::new(db).get(&key)).await??;
    let zip = job
        .result_path
        .as_deref()
        .filter(|_| job.status() == JobStatus::Complete)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| viewer.fail(Fail::not_found("results zip")))?;
    let file = std::fs::File::open(&zip).map_err(|e| viewer.fail(Fail::internal(e)))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let name = crate::portal::intake::sanitise_filename(
        &zip.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let (db, event) = (
        state.db.clone(),
        Event {
            kind: "download",
            actor: viewer.name().to_owned(),
            action: "results-zip".into(),
            outcome: "ok".into(),
            detail: serde_json::json!({ "job_id": id, "bytes": size, "peer": crate::portal::auth::peer_ip(&req) }),
        },
    );
    web::block(move || audit::record_or_log(&db, &event)).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .no_chunking(size)
        .streaming(file_stream(file)))
}

/// A file as a stream of 256 KiB chunks, read off the async threads.
fn file_stream(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let read = web::block(move || {
            use std::io::Read;
            let mut buf = vec![0u8; 256 * 1024];
            let n = file.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((buf, file))
        })
        .await;
        match read {
            Ok(Ok((buf, _))) if buf.is_empty() => None,
            Ok(Ok((buf, file))) => Some((Ok(web::Bytes::from(buf)), Some(file))),
            Ok(Err(e)) => Some((Err(actix_web::error::ErrorInternalServerError(e)), None)),
            Err(e) => Some((Err(actix_web::error::ErrorInternalServerError(e)), None)),
        }
    })
}
