//! Login and logout, for the browser (a form with a double-submit CSRF cookie, since there is no
//! session yet) and for scripts (`POST /api/login` with JSON). Wrong passwords are throttled
//! (see [`crate::portal::auth::throttle`]) and every attempt is audited.

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, DOCTYPE};
use serde::Deserialize;

use crate::audit::{self, Event};
use crate::portal::auth::sessions::{self, Created};
use crate::portal::auth::{password, peer_ip, users, Viewer};
use crate::portal::error::Fail;
use crate::portal::AppState;

/// The cookie holding the login form's CSRF token.
const LOGIN_CSRF_COOKIE: &str = "kneenode_login_csrf";

/// Mounts `/login`, `/logout`, `/api/login`, `/api/logout`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/login", web::get().to(form))
        .route("/login", web::post().to(submit))
        .route("/logout", web::post().to(logout))
        .route("/api/login", web::post().to(api_login))
        .route("/api/logout", web::post().to(api_logout));
}

fn secure(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

fn cookie<'c>(req: &HttpRequest, name: &'c str, value: String, max_age: Option<i64>) -> Cookie<'c> {
    let mut c = Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure(req))
        .finish();
    if let Some(s) = max_age {
        c.set_max_age(CookieDuration::seconds(s));
    }
    c
}

/// Where to go after login: a local path only (no `//host`, no scheme).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn render(csrf: &str, next: &str, message: Option<&str>) -> maud::Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in — kneenode" }
                link rel="stylesheet" href="/static/app.css";
                    link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
            }
            body.login-page {
                main.login {
                    h1 { "kneenode" }
                    p.sub { "Knee MRI analysis node" }
                    @if let Some(m) = message { p.error-message role="alert" { (m) } }
                    form #login-form method="post" action="/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="next" value=(next);
                        label { "User name" input name="username" autocomplete="username" required autofocus; }
                        label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

async fn form(req: HttpRequest, q: web::Query<NextQuery>) -> HttpResponse {
    let token = sessions::random_hex(16);
    let next = safe_next(q.next.as_deref());
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .cookie(cookie(&req, LOGIN_CSRF_COOKIE, token.clone(), None))
        .body(render(&token, &next, None).into_string())
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    csrf: Option<String>,
    next: Option<String>,
}

/// Checks a user name and password against the throttle and the users table; opens a session.
async fn attempt(
    state: &web::Data<AppState>,
    username: &str,
    password: &str,
    peer: &str,
) -> Result<Created, Fail> {
    let event = |outcome: &str, detail: serde_json::Value| Event {
        kind: "login",
        actor: username.chars().take(64).collect(),
        action: "login".into(),
        outcome: outcome.into(),
        detail,
    };
    if let Err(wait) = state.throttle.check(username, peer) {
        let secs = wait.as_secs().max(1);
        let db = state.db.clone();
        let e = event(
            "throttled",
            serde_json::json!({ "peer": peer, "retry_after_s": secs }),
        );
        web::block(move || audit::record_or_log(&db, &e)).await?;
        let mut fail = Fail::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed logins. Try again in {secs} s."),
        );
        fail.retry_after = Some(secs);
        return Err(fail);
    }
    let (db, name, pw) = (state.db.clone(), username.to_owned(), password.to_owned());
    let user = web::block(move || -> Result<Option<users::User>, Fail> {
        let user = users::find(&db, &name)?;
        let ok = password::verify(&pw, user.as_ref().map(|u| u.password_hash.as_str()));
        Ok(user.filter(|u| ok && !u.disabled))
    })
    .await??;
    let Some(user) = user else {
        state.throttle.failed(username, peer);
        let db = state.db.clone();
        let e = event("refused", serde_json::json!({ "peer": peer }));
        web::block(move || audit::record_or_log(&db, &e)).await?;
        return Err(Fail::new(
            StatusCode::UNAUTHORIZED,
            "Wrong user name or password, or the account is disabled.",
        ));
    };
    state.throttle.succeeded(username);
    let (db, key, peer_owned) = (state.db.clone(), state.session_key.clone(), peer.to_owned());
    let e = event("ok", serde_json::json!({ "peer": peer, "role": user.role }));
    let created = web::block(move || -> Result<Created, Fail> {
        let created = sessions::create(&db, &key, &user, &peer_owned)?;
        users::record_login(&db, user.id)?;
        audit::record_or_log(&db, &e);
        Ok(created)
    })
    .await??;
    Ok(created)
}

async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, Fail> {
    let next = safe_next(form.next.as_deref());
    let expected = req.cookie(LOGIN_CSRF_COOKIE).map(|c| c.value().to_owned());
    match (&expected, &form.csrf) {
        (Some(e), Some(f)) if sessions::same_secret(e, f) => {}
        _ => {
            return Err(Fail::forbidden(
                "missing or wrong CSRF token: reload the login page and try again",
            ))
        }
    }
    let peer = peer_ip(&req);
    match attempt(&state, form.username.trim(), &form.password, &peer).await {
        Ok(created) => Ok(HttpResponse::SeeOther()
            .insert_header(("Location", next))
            .cookie(cookie(&req, sessions::COOKIE, created.cookie, None))
            .cookie(cookie(&req, LOGIN_CSRF_COOKIE, String::new(), Some(0)))
            .finish()),
        Err(fail) if fail.status == StatusCode::UNAUTHORIZED || fail.retry_after.is_some() => {
            let token = expected.unwrap_or_default();
            let mut resp = HttpResponse::build(fail.status);
            if let Some(s) = fail.retry_after {
                resp.insert_header(("Retry-After", s.to_string()));
            }
            Ok(resp
                .content_type("text/html; charset=utf-8")
                .body(render(&token, &next, Some(&fail.message)).into_string()))
        }
        Err(fail) => Err(fail),
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn end_session(state: &web::Data<AppState>, viewer: &Viewer) -> Result<(), Fail> {
    let (db, id) = (state.db.clone(), viewer.session.id.clone());
    let e = Event {
        kind: "login",
        actor: viewer.name().to_owned(),
        action: "logout".into(),
        outcome: "ok".into(),
        detail: serde_json::json!({}),
    };
    web::block(move || -> Result<(), Fail> {
        sessions::delete(&db, &id)?;
        audit::record_or_log(&db, &e);
        Ok(())
    })
    .await?
}

async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    viewer: Viewer,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, Fail> {
    viewer.check_csrf(form.csrf.as_deref())?;
    end_session(&state, &viewer).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", "/login"))
        .cookie(cookie(&req, sessions::COOKIE, String::new(), Some(0)))
        .finish())
}

#[derive(Debug, Deserialize)]
struct ApiLogin {
    username: String,
    password: String,
}

async fn api_login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ApiLogin>,
) -> Result<HttpResponse, Fail> {
    let peer = peer_ip(&req);
    let created = attempt(&state, body.username.trim(), &body.password, &peer)
        .await
        .map_err(Fail::json)?;
    let user = &created.session.user;
    Ok(HttpResponse::Ok()
        .cookie(cookie(&req, sessions::COOKIE, created.cookie.clone(), None))
        .json(serde_json::json!({
            "username": user.username,
            "role": user.role,
            "csrf": created.session.csrf,
            "csrf_header": crate::portal::auth::CSRF_HEADER,
        })))
}

async fn api_logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    viewer: Viewer,
) -> Result<HttpResponse, Fail> {
    viewer.check_csrf_header(&req)?;
    end_session(&state, &viewer).await?;
    Ok(HttpResponse::NoContent()
        .cookie(cookie(&req, sessions::COOKIE, String::new(), Some(0)))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/jobs/1")), "/jobs/1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
