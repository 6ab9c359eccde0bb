//! The job list, with filters (status, dates, study, sending AE) and pages.

use actix_web::{web, HttpResponse};
use maud::html;

use super::dashboard::progress_bar;
use super::{job_link, page, status_badge, url_encode, when, when_opt};
use crate::jobs::JobStatus;
use crate::portal::auth::Viewer;
use crate::portal::error::Fail;
use crate::portal::views::{self, JobFilter};
use crate::portal::AppState;

/// Mounts `/jobs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/jobs", web::get().to(list));
}

/// The filter as a query string, with `page` replaced.
fn query_for(f: &JobFilter, page: i64) -> String {
    let mut parts = vec![format!("page={page}")];
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={}", url_encode(&v)));
        }
    };
    push("status", f.status.clone());
    push("from", f.from.map(|d| d.to_string()));
    push("to", f.to.map(|d| d.to_string()));
    push("study", f.study.clone());
    push("ae", f.ae.clone());
    push("per_page", f.per_page.map(|n| n.to_string()));
    parts.join("&")
}

async fn list(
    state: web::Data<AppState>,
    viewer: Viewer,
    q: web::Query<JobFilter>,
) -> Result<HttpResponse, Fail> {
    let filter = q.into_inner().normalised();
    let f = filter.clone();
    let db = state.db.clone();
    let jobs = web::block(move || views::list_jobs(&db, &f)).await??;
    let pages = ((jobs.total + jobs.per_page - 1) / jobs.per_page).max(1);
    let body = html! {
        form.filters method="get" action="/jobs" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in JobStatus::ALL {
                        option value=(s.as_str()) selected[filter.status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label { "From " input type="date" name="from" value=[filter.from.map(|d| d.to_string())]; }
            label { "To " input type="date" name="to" value=[filter.to.map(|d| d.to_string())]; }
            label { "Study UID " input name="study" value=[filter.study.as_deref()] placeholder="1.2.840…"; }
            label { "Sender AE " input name="ae" value=[filter.ae.as_deref()] maxlength="16"; }
            button type="submit" { "Filter" }
            a href="/jobs" { "Clear" }
        }
        p.count { (jobs.total) " job(s)" }
        table.jobs #job-list {
            thead { tr { th { "Job" } th { "Status" } th { "Progress" } th { "Source" } th { "Series" } th { "Sender" } th { "Created" } th { "Finished" } th { "Error" } } }
            tbody {
                @for j in &jobs.jobs {
                    tr {
                        td { (job_link(&j.id)) }
                        td { (status_badge(&j.status)) }
                        td { @if j.status == "processing" || j.status == "queued" { (progress_bar(j)) } }
                        td { (j.source) }
                        td { (j.series_description.as_deref().unwrap_or("—")) }
                        td { (j.calling_ae.as_deref().unwrap_or("—")) }
                        td { (when(j.created_at)) }
                        td { (when_opt(j.completed_at)) }
                        td { (j.error_code.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        nav.pages {
            @if jobs.page > 1 { a rel="prev" href={ "/jobs?" (query_for(&filter, jobs.page - 1)) } { "← newer" } }
            span { "page " (jobs.page) " of " (pages) }
            @if jobs.page < pages { a rel="next" href={ "/jobs?" (query_for(&filter, jobs.page + 1)) } { "older →" } }
        }
    };
    Ok(page("Jobs", &viewer, body))
}
