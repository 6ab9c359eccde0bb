//! The dashboard: the node's state at a glance — the queue with positions and waits, running
//! jobs with live progress, recent results, recent errors, and the node itself (SCP, workers
//! and their devices, free disk, database).

use actix_web::{web, HttpResponse};
use maud::{html, Markup};

use super::{bytes, duration, job_link, page, status_badge, when, when_opt};
use crate::jobs::{JobStatus, Queue};
use crate::portal::auth::Viewer;
use crate::portal::error::Fail;
use crate::portal::views::{self, JobSummary};
use crate::portal::AppState;
use crate::worker::registry::{self, WorkerRow};

/// Mounts `/`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(dashboard));
}

/// The node's parts as the dashboard shows them.
pub struct NodeView {
    /// `AE@host:port` when this process runs the SCP.
    pub scp: Option<String>,
    /// Associations and instances so far (this process).
    pub scp_counts: Option<(u64, u64)>,
    /// Known workers.
    pub workers: Vec<WorkerRow>,
    /// Disk of the storage folder.
    pub disk: Option<crate::storage::DiskUsage>,
    /// The watermark.
    pub watermark: f64,
    /// `sqlite` or `postgres`, and whether it answered.
    pub database: (&'static str, bool),
}

struct Data {
    queued: Vec<(JobSummary, Option<f64>)>,
    running: Vec<JobSummary>,
    recent: Vec<JobSummary>,
    errors: Vec<(JobSummary, Option<String>)>,
    node: NodeView,
}

/// Collects the node view (blocking).
pub fn node_view(state: &AppState) -> NodeView {
    use std::sync::atomic::Ordering;
    let cfg = &state.config;
    let scp_addr = state.scp.as_ref().and_then(|s| s.listening());
    NodeView {
        scp: scp_addr.map(|a| format!("{}@{}", cfg.node.ae_title, a)),
        scp_counts: state.scp.as_ref().map(|s| {
            (
                s.associations.load(Ordering::Relaxed),
                s.instances.load(Ordering::Relaxed),
            )
        }),
        workers: registry::list(&state.db).unwrap_or_default(),
        disk: crate::storage::disk_usage(&cfg.storage.dir).ok(),
        watermark: cfg.storage.max_disk_used_percent,
        database: (state.db.kind().name(), state.db.ping().is_ok()),
    }
}

fn collect(state: &AppState) -> Result<Data, Fail> {
    let db = &state.db;
    let node = node_view(state);
    let alive = node.workers.iter().filter(|w| w.alive).count().max(1);
    let mean = Queue::new(db.clone())
        .mean_processing_time()?
        .map(|d| d.as_secs_f64());
    let running = views::latest(db, JobStatus::Processing, 50)?;
    let queued = views::queued(db, 50)?
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            // Jobs ahead plus running ones, shared over the live workers, in rounds.
            let rounds = (i + running.len()).div_ceil(alive);
            let eta = mean.map(|m| m * rounds as f64);
            (j, eta)
        })
        .collect();
    let errors = views::latest(db, JobStatus::Error, 10)?
        .into_iter()
        .map(|j| {
            let msg = j.error.clone();
            (j, msg)
        })
        .collect();
    Ok(Data {
        queued,
        running,
        recent: views::latest(db, JobStatus::Complete, 10)?,
        errors,
        node,
    })
}

/// A live progress bar (app.js refreshes it from `/api/jobs/{id}/progress`).
pub fn progress_bar(j: &JobSummary) -> Markup {
    let pct = j.progress_percent.clamp(0.0, 100.0);
    html! {
        div.progress data-job=(j.id) data-status=(j.status) data-percent=(format!("{pct:.0}")) {
            progress max="100" value=(format!("{pct:.0}")) {}
            span.progress-label { (format!("{pct:.0}")) " % " (j.step_name.as_deref().unwrap_or("")) }
        }
    }
}

/// The node panel (also on the statistics page).
pub fn node_panel(n: &NodeView) -> Markup {
    html! {
        dl.node {
            dt { "DICOM SCP" }
            dd {
                @match &n.scp {
                    Some(a) => { span.ok { "listening" } " " code { (a) } }
                    None => { span.warn { "not in this process" } }
                }
                @if let Some((assoc, inst)) = n.scp_counts {
                    " · " (assoc) " associations, " (inst) " instances since start"
                }
            }
            dt { "Workers" }
            dd {
                @let alive: Vec<&WorkerRow> = n.workers.iter().filter(|w| w.alive).collect();
                @if alive.is_empty() { span.bad { "none running" } }
                @for w in &alive {
                    span.worker { code { (w.device) } " on " (w.host)
                        @if let Some(j) = &w.current_job_id { " — job " (job_link(j)) } @else { " — idle" } }
                }
            }
            dt { "Storage" }
            dd {
                @match &n.disk {
                    Some(d) => {
                        span class=(if d.above(n.watermark) { "bad" } else { "ok" }) {
                            (bytes(d.available_bytes)) " free"
                        }
                        " (" (format!("{:.1}", d.used_percent)) " % used; new data refused from "
                        (format!("{:.0}", n.watermark)) " %)"
                    }
                    None => { span.bad { "cannot be measured" } }
                }
            }
            dt { "Database" }
            dd {
                (n.database.0) " "
                @if n.database.1 { span.ok { "answering" } } @else { span.bad { "not answering" } }
            }
        }
    }
}

/// A compact job table.
pub fn job_table(jobs: &[JobSummary], empty: &str) -> Markup {
    html! {
        @if jobs.is_empty() { p.empty { (empty) } } @else {
            table.jobs {
                thead { tr { th { "Job" } th { "Status" } th { "Series" } th { "From" } th { "Created" } th { "Finished" } } }
                tbody {
                    @for j in jobs {
                        tr {
                            td { (job_link(&j.id)) }
                            td { (status_badge(&j.status)) }
                            td { (j.series_description.as_deref().unwrap_or(&j.source)) }
                            td { (j.calling_ae.as_deref().unwrap_or("—")) }
                            td { (when(j.created_at)) }
                            td { (when_opt(j.completed_at)) }
                        }
                    }
                }
            }
        }
    }
}

async fn dashboard(state: web::Data<AppState>, viewer: Viewer) -> Result<HttpResponse, Fail> {
    let s = state.clone();
    let d = web::block(move || collect(&s)).await??;
    let body = html! {
        section.panel #node { h2 { "Node" } (node_panel(&d.node)) }
        section.panel #running {
            h2 { "Running" }
            @if d.running.is_empty() { p.empty { "Nothing is running." } }
            @for j in &d.running {
                div.running-job { (job_link(&j.id)) " " (progress_bar(j)) }
            }
        }
        section.panel #queue {
            h2 { "Queue (" (d.queued.len()) ")" }
            @if d.queued.is_empty() { p.empty { "The queue is empty." } } @else {
                table.jobs {
                    thead { tr { th { "#" } th { "Job" } th { "Source" } th { "Waiting since" } th { "Estimated start" } } }
                    tbody {
                        @for (i, (j, eta)) in d.queued.iter().enumerate() {
                            tr {
                                td { (i + 1) }
                                td { (job_link(&j.id)) }
                                td { (j.source) }
                                td { (when(j.created_at)) }
                                td { @match eta { Some(s) => { "in about " (duration(*s)) } None => { "—" } } }
                            }
                        }
                    }
                }
            }
        }
        section.panel #recent { h2 { "Recent results" } (job_table(&d.recent, "No finished jobs yet.")) }
        section.panel #errors {
            h2 { "Recent errors" }
            @if d.errors.is_empty() { p.empty { "No errors." } }
            ul.errors {
                @for (j, msg) in &d.errors {
                    li { (job_link(&j.id)) " " (when_opt(j.completed_at)) ": "
                        span.error-message { (msg.as_deref().unwrap_or("failed")) } }
                }
            }
        }
    };
    Ok(page("Dashboard", &viewer, body))
}
