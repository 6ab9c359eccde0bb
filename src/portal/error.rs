//! What a portal handler answers when it cannot do what was asked: a status and a message for
//! people, rendered as a small HTML page for the browser or as `{"error": …}` for `/api`. An
//! unauthenticated page request is redirected to the login page instead.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use maud::html;

/// A refusal or failure.
#[derive(Debug)]
pub struct Fail {
    /// HTTP status.
    pub status: StatusCode,
    /// The message shown (never patient data, never internals at info level).
    pub message: String,
    /// Answer as JSON (the `/api` routes).
    pub json: bool,
    /// For a browser not logged in: where to come back to after login.
    pub login_next: Option<String>,
    /// Seconds for `Retry-After` (throttled logins).
    pub retry_after: Option<u64>,
}

impl Fail {
    /// A failure with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            json: false,
            login_next: None,
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    /// 500: logs the detail, shows a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "portal request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the node's log has the details",
        )
    }

    /// The same failure as JSON.
    pub fn json(mut self) -> Self {
        self.json = true;
        self
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl From<crate::db::DbError> for Fail {
    fn from(e: crate::db::DbError) -> Self {
        Self::internal(e)
    }
}

impl From<crate::jobs::QueueError> for Fail {
    fn from(e: crate::jobs::QueueError) -> Self {
        match e {
            crate::jobs::QueueError::NotFound(_) => Self::not_found("job"),
            other => Self::internal(other),
        }
    }
}

impl From<actix_web::error::BlockingError> for Fail {
    fn from(e: actix_web::error::BlockingError) -> Self {
        Self::internal(e)
    }
}

impl actix_web::ResponseError for Fail {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if let (Some(next), false) = (&self.login_next, self.json) {
            let target = format!("/login?next={}", crate::portal::pages::url_encode(next));
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, target))
                .finish();
        }
        let mut resp = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        if self.json {
            return resp.json(serde_json::json!({ "error": self.message }));
        }
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "kneenode — " (title) }
                    link rel="stylesheet" href="/static/app.css";
                    link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
                }
                body.error-page {
                    main {
                        h1 { (self.status.as_u16()) " " (title) }
                        p.error-message { (self.message) }
                        p { a href="/" { "Back to the dashboard" } }
                    }
                }
            }
        };
        resp.content_type("text/html; charset=utf-8")
            .body(body.into_string())
    }
}
