//! Statistics: jobs processed per day, mean processing time and error rate over a period.

use actix_web::{web, HttpResponse};
use chrono::{Duration, Utc};
use maud::html;
use serde::Deserialize;

use super::{duration, page};
use crate::jobs::{Queue, Statistics};
use crate::portal::auth::Viewer;
use crate::portal::error::Fail;
use crate::portal::AppState;

/// Mounts `/statistics`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/statistics", web::get().to(show));
}

/// The period asked for.
#[derive(Debug, Deserialize)]
pub struct Period {
    /// Days back from now (default 30, at most 3650).
    pub days: Option<i64>,
}

impl Period {
    /// Days, clamped.
    pub fn days(&self) -> i64 {
        self.days.unwrap_or(30).clamp(1, 3650)
    }
}

/// Statistics of the last `days` days (blocking).
pub fn load(state: &AppState, days: i64) -> Result<Statistics, Fail> {
    let since = Utc::now().naive_utc() - Duration::days(days);
    Ok(Queue::new(state.db.clone()).statistics(since)?)
}

async fn show(
    state: web::Data<AppState>,
    viewer: Viewer,
    q: web::Query<Period>,
) -> Result<HttpResponse, Fail> {
    let days = q.days();
    let s = state.clone();
    let st = web::block(move || load(&s, days)).await??;
    let max = st
        .per_day
        .iter()
        .map(|d| d.processed + d.errors)
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h) = (640.0, 180.0);
    let step = w / st.per_day.len().max(1) as f64;
    let body = html! {
        form.filters method="get" action="/statistics" {
            label { "Last " input type="number" name="days" min="1" max="3650" value=(days); " days" }
            button type="submit" { "Show" }
        }
        section.panel #summary {
            dl.facts {
                dt { "Processed" } dd #stat-processed { (st.processed) }
                dt { "Errors" } dd #stat-errors { (st.errors) }
                dt { "Cancelled" } dd { (st.cancelled) }
                dt { "Error rate" } dd #stat-error-rate { @match st.error_rate { Some(r) => { (format!("{:.1}", r * 100.0)) " %" } None => { "—" } } }
                dt { "Mean processing time" } dd #stat-mean { @match st.mean_processing_s { Some(s) => { (duration(s)) } None => { "—" } } }
            }
        }
        section.panel #per-day {
            h2 { "Per day" }
            @if st.per_day.is_empty() { p.empty { "No finished jobs in this period." } } @else {
                svg viewBox={ "0 0 " (w) " " (h + 20.0) } role="img" aria-label="Jobs per day: processed and errors" {
                    @for (i, d) in st.per_day.iter().enumerate() {
                        @let ok_h = h * d.processed as f64 / max as f64;
                        @let err_h = h * d.errors as f64 / max as f64;
                        rect x=(step * i as f64 + 1.0) y=(h - ok_h) width=((step - 2.0).max(1.0)) height=(ok_h) fill="#3b7dd8" { title { (d.day) ": " (d.processed) " processed" } }
                        rect x=(step * i as f64 + 1.0) y=(h - ok_h - err_h) width=((step - 2.0).max(1.0)) height=(err_h) fill="#d8463b" { title { (d.day) ": " (d.errors) " errors" } }
                    }
                    text x="0" y=(h + 15.0) font-size="11" { (st.per_day.first().map(|d| d.day.to_string()).unwrap_or_default()) }
                    text x=(w) y=(h + 15.0) font-size="11" text-anchor="end" { (st.per_day.last().map(|d| d.day.to_string()).unwrap_or_default()) }
                }
                table { thead { tr { th { "Day" } th { "Processed" } th { "Errors" } th { "Mean time" } } }
                    tbody { @for d in st.per_day.iter().rev() { tr { td { (d.day) } td.num { (d.processed) } td.num { (d.errors) }
                        td.num { (d.mean_processing_s.map(duration).unwrap_or_else(|| "—".into())) } } } } }
            }
        }
        section.panel #by-status {
            h2 { "Jobs now, by status" }
            table { tbody { @for (s, n) in &st.by_status { tr { td { (s) } td.num { (n) } } } } }
        }
    };
    Ok(page("Statistics", &viewer, body))
}
