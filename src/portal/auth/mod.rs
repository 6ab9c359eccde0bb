//! Who is asking: users and roles ([`users`]), argon2id passwords ([`password`]), sessions with
//! their CSRF tokens ([`sessions`]) and login throttling ([`throttle`]). Handlers take a
//! [`Viewer`] (any logged-in user) or an [`Admin`] argument; without a valid session a page
//! request is redirected to the login page and an `/api` request gets 401, and a clinician
//! asking for an admin action gets 403.

pub mod cli;
pub mod password;
pub mod sessions;
pub mod throttle;
pub mod users;

use std::future::Future;
use std::pin::Pin;

use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};

use self::sessions::Session;
use self::users::{Role, User};
use super::error::Fail;
use super::AppState;

/// The header an `/api` write carries its CSRF token in (forms use the `csrf` field).
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// A logged-in user of any role, with their session.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The session (its id and CSRF token).
    pub session: Session,
    /// Whether the request came to `/api` (errors answer JSON).
    pub api: bool,
}

impl Viewer {
    /// The user.
    pub fn user(&self) -> &User {
        &self.session.user
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.session.user.username
    }

    /// Whether the user is an admin.
    pub fn is_admin(&self) -> bool {
        self.session.user.role() == Role::Admin
    }

    /// The session's CSRF token, for forms.
    pub fn csrf(&self) -> &str {
        &self.session.csrf
    }

    /// Refuses (403) a write whose CSRF token is missing or wrong.
    pub fn check_csrf(&self, token: Option<&str>) -> Result<(), Fail> {
        match token {
            Some(t) if sessions::same_secret(t, &self.session.csrf) => Ok(()),
            _ => Err(self.fail(Fail::forbidden(
                "missing or wrong CSRF token: reload the page and try again",
            ))),
        }
    }

    /// Checks the CSRF header of an `/api` write.
    pub fn check_csrf_header(&self, req: &HttpRequest) -> Result<(), Fail> {
        let token = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        self.check_csrf(token)
    }

    /// Refuses (403) unless the user is an admin.
    pub fn require_admin(&self) -> Result<(), Fail> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(self.fail(Fail::forbidden("this needs the admin role")))
        }
    }

    /// `fail` in this request's format.
    pub fn fail(&self, fail: Fail) -> Fail {
        if self.api {
            fail.json()
        } else {
            fail
        }
    }
}

/// An admin.
#[derive(Debug, Clone)]
pub struct Admin(pub Viewer);

impl std::ops::Deref for Admin {
    type Target = Viewer;
    fn deref(&self) -> &Viewer {
        &self.0
    }
}

/// The client's address as text (the TCP peer; forwarded headers are not trusted here, so a
/// client cannot dodge the login throttle by inventing them).
pub fn peer_ip(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn unauthenticated(req: &HttpRequest) -> Fail {
    let api = req.path().starts_with("/api");
    let mut fail = Fail::new(StatusCode::UNAUTHORIZED, "log in first");
    if api {
        fail = fail.json();
    } else {
        let next = if req.method() == actix_web::http::Method::GET {
            match req.query_string() {
                "" => req.path().to_owned(),
                q => format!("{}?{q}", req.path()),
            }
        } else {
            "/".to_owned()
        };
        fail.login_next = Some(next);
    }
    fail
}

impl FromRequest for Viewer {
    type Error = Fail;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Fail>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(|| Fail::internal("portal state missing"))?;
            let cookie = req
                .cookie(sessions::COOKIE)
                .map(|c| c.value().to_owned())
                .ok_or_else(|| unauthenticated(&req))?;
            let found =
                web::block(move || sessions::lookup(&state.db, &state.session_key, &cookie))
                    .await
                    .map_err(Fail::from)?
                    .map_err(Fail::from)?;
            match found {
                Some(session) => Ok(Viewer {
                    session,
                    api: req.path().starts_with("/api"),
                }),
                None => Err(unauthenticated(&req)),
            }
        })
    }
}

impl FromRequest for Admin {
    type Error = Fail;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Fail>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let viewer = Viewer::from_request(req, payload);
        Box::pin(async move {
            let viewer = viewer.await?;
            viewer.require_admin()?;
            Ok(Admin(viewer))
        })
    }
}
