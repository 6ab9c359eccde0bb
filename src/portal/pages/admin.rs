//! Administration: users (add, disable, enable, role, password) and the audit log. Admins only;
//! every change is audited.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::{page, see_other, when, when_opt};
use crate::audit::{self, Event};
use crate::portal::auth::users::{self, Role};
use crate::portal::auth::Admin;
use crate::portal::error::Fail;
use crate::portal::AppState;

/// Mounts `/users` and `/audit`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/users", web::get().to(list_users))
        .route("/users", web::post().to(change_user))
        .route("/audit", web::get().to(audit_log));
}

async fn list_users(state: web::Data<AppState>, admin: Admin) -> Result<HttpResponse, Fail> {
    let db = state.db.clone();
    let all = web::block(move || users::list(&db)).await??;
    let csrf = admin.csrf().to_owned();
    let body = html! {
        section.panel {
            table #users { thead { tr { th { "User" } th { "Role" } th { "State" } th { "Created" } th { "Last login" } th { "" } } }
                tbody { @for u in &all { tr {
                    td { (u.username) } td { (u.role) } td { @if u.disabled { span.bad { "disabled" } } @else { span.ok { "active" } } }
                    td { (when(u.created_at)) } td { (when_opt(u.last_login_at)) }
                    td { form.inline method="post" action="/users" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="username" value=(u.username);
                        @if u.disabled { button name="action" value="enable" { "Enable" } }
                        @else { button.danger name="action" value="disable" data-confirm="Disable this user?" { "Disable" } }
                        @if u.role() == Role::Admin { button name="action" value="make-clinician" { "Make clinician" } }
                        @else { button name="action" value="make-admin" { "Make admin" } }
                    } }
                } } } }
        }
        section.panel {
            h2 { "Add a user" }
            form #add-user method="post" action="/users" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="action" value="add";
                label { "User name " input name="username" required maxlength="64" pattern="[A-Za-z0-9._@-]+"; }
                label { "Role " select name="role" { option value="clinician" { "clinician" } option value="admin" { "admin" } } }
                label { "Initial password (at least 12 characters) " input type="password" name="password" required minlength="12" autocomplete="new-password"; }
                button type="submit" { "Add" }
            }
            p.small { "There is no default password. Users change theirs with the administrator or `kneenode user passwd`." }
        }
    };
    Ok(page("Users", &admin, body))
}

#[derive(Debug, Deserialize)]
struct UserChange {
    csrf: Option<String>,
    action: String,
    username: String,
    role: Option<String>,
    password: Option<String>,
}

async fn change_user(
    state: web::Data<AppState>,
    admin: Admin,
    form: web::Form<UserChange>,
) -> Result<HttpResponse, Fail> {
    admin.check_csrf(form.csrf.as_deref())?;
    let f = form.into_inner();
    let (db, me) = (state.db.clone(), admin.name().to_owned());
    let action = f.action.clone();
    let done = web::block(move || -> Result<(), Fail> {
        let refuse = |m: &str| Fail::new(StatusCode::UNPROCESSABLE_ENTITY, m.to_owned());
        let last_admin = || -> Result<bool, Fail> {
            let u = users::find(&db, &f.username)?;
            Ok(u.is_some_and(|u| u.role() == Role::Admin && !u.disabled)
                && users::enabled_admins(&db)? <= 1)
        };
        let r = match f.action.as_str() {
            "add" => {
                let role = f
                    .role
                    .as_deref()
                    .and_then(Role::parse)
                    .ok_or_else(|| refuse("choose a role"))?;
                users::add(
                    &db,
                    &f.username,
                    role,
                    f.password.as_deref().unwrap_or_default(),
                )
                .map(|_| ())
            }
            "disable" if f.username == me => return Err(refuse("you cannot disable yourself")),
            "disable" | "make-clinician" if last_admin()? => {
                return Err(refuse("this is the last active admin"))
            }
            "disable" => users::set_disabled(&db, &f.username, true),
            "enable" => users::set_disabled(&db, &f.username, false),
            "make-admin" => users::set_role(&db, &f.username, Role::Admin),
            "make-clinician" => users::set_role(&db, &f.username, Role::Clinician),
            _ => return Err(Fail::bad_request("unknown action")),
        };
        let outcome = if r.is_ok() { "ok" } else { "refused" };
        audit::record_or_log(
            &db,
            &Event {
                kind: "admin",
                actor: me,
                action: format!("user-{}", f.action),
                outcome: outcome.into(),
                detail: serde_json::json!({ "user": f.username }),
            },
        );
        r.map_err(|e| refuse(&e.to_string()))
    })
    .await?;
    done?;
    tracing::info!(action = %action, "user changed by an admin");
    Ok(see_other("/users"))
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    kind: Option<String>,
    limit: Option<i64>,
}

async fn audit_log(
    state: web::Data<AppState>,
    admin: Admin,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, Fail> {
    let kind = q.kind.clone().filter(|k| !k.is_empty());
    let limit = q.limit.unwrap_or(200).clamp(1, 5000);
    let (db, k) = (state.db.clone(), kind.clone());
    let events = web::block(move || audit::recent(&db, k.as_deref(), limit)).await??;
    let kinds = [
        "association",
        "login",
        "download",
        "upload",
        "admin",
        "retention",
    ];
    let body = html! {
        form.filters method="get" action="/audit" {
            label { "Kind " select name="kind" {
                option value="" { "all" }
                @for k in kinds { option value=(k) selected[kind.as_deref() == Some(k)] { (k) } }
            } }
            label { "Latest " input type="number" name="limit" min="1" max="5000" value=(limit); }
            button type="submit" { "Show" }
        }
        table #audit { thead { tr { th { "When" } th { "Kind" } th { "Who" } th { "Action" } th { "Outcome" } th { "Details" } } }
            tbody { @for e in &events { tr {
                td { (when(e.at)) } td { (e.kind) } td { (e.actor) } td { (e.action) } td { (e.outcome) } td { code { (e.detail) } }
            } } } }
    };
    Ok(page("Audit log", &admin, body))
}
