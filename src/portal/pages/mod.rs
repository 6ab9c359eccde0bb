//! The portal's server-rendered pages (maud): login, dashboard, job list and detail, upload,
//! statistics, users and the audit log. Pages work without JavaScript; `app.js` only refreshes
//! progress, and `viewer.js` draws the 3D view.

pub mod actions;
pub mod admin;
pub mod dashboard;
pub mod job;
pub mod jobs;
pub mod login;
pub mod stats;
pub mod upload;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::NaiveDateTime;
use maud::{html, Markup, DOCTYPE};

use super::auth::Viewer;

/// Mounts the pages and the static assets.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/{name}", web::get().to(asset))
        .route("/favicon.ico", web::get().to(favicon))
        .configure(login::routes)
        .configure(dashboard::routes)
        .configure(jobs::routes)
        .configure(job::routes)
        .configure(upload::routes)
        .configure(stats::routes)
        .configure(admin::routes);
}

/// The embedded assets: (name, content type, bytes).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../assets/favicon.svg"),
    ),
    (
        "viewer.js",
        "text/javascript; charset=utf-8",
        crate::portal::meshview::VIEWER_JS,
    ),
];

async fn asset(name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(n, _, _)| *n == name.as_str()) {
        Some((_, ty, body)) => HttpResponse::Ok()
            .content_type(*ty)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(*body),
        None => HttpResponse::NotFound().finish(),
    }
}

/// Browsers ask for `/favicon.ico` on their own; answer with the SVG icon.
async fn favicon() -> HttpResponse {
    asset(web::Path::from("favicon.svg".to_owned())).await
}

/// Percent-encodes everything but unreserved characters (query values, `next=` targets).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A UTC time as the pages show it.
pub fn when(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional time, or a dash.
pub fn when_opt(t: Option<NaiveDateTime>) -> String {
    t.map_or_else(|| "—".to_owned(), when)
}

/// Seconds as `1 h 02 min`, `3 min 05 s` or `12.3 s`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "—".to_owned();
    }
    let whole = s.round() as u64;
    if whole >= 3600 {
        format!("{} h {:02} min", whole / 3600, (whole % 3600) / 60)
    } else if whole >= 60 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else {
        format!("{s:.1} s")
    }
}

/// Bytes as KiB/MiB/GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A status as a badge.
pub fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge status-" (status) } { (status) } }
}

/// A short job id (first 8 characters) linked to its page.
pub fn job_link(id: &str) -> Markup {
    html! { a href={ "/jobs/" (id) } title=(id) { code { (id.get(..8).unwrap_or(id)) } } }
}

/// The page frame: header with navigation (admin entries for admins), the user and a logout
/// button, then `body`.
pub fn page(title: &str, viewer: &Viewer, body: Markup) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — kneenode" }
                link rel="stylesheet" href="/static/app.css";
                link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "kneenode" }
                    nav {
                        a href="/" { "Dashboard" }
                        a href="/jobs" { "Jobs" }
                        a href="/upload" { "Upload" }
                        a href="/statistics" { "Statistics" }
                        @if viewer.is_admin() {
                            a href="/users" { "Users" }
                            a href="/audit" { "Audit log" }
                        }
                    }
                    div.who {
                        span { (viewer.name()) " (" (viewer.user().role().as_str()) ")" }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(viewer.csrf());
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
                footer { "kneenode " (env!("CARGO_PKG_VERSION")) " · research use; results need a clinician's review" }
            }
        }
    };
    html_response(markup)
}

/// A rendered page as a response.
pub fn html_response(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}

/// 303 to `to`.
pub fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_owned()))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            url_encode("/jobs?page=2&x=a b"),
            "/jobs%3Fpage%3D2%26x%3Da%20b"
        );
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(185.0), "3 min 05 s");
        assert_eq!(duration(3725.0), "1 h 02 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
