//! What an admin does to a job from its page: cancel, retry, delete, and resend a delivery.
//! Each checks the form's CSRF token, runs off the async threads, and is audited with its
//! outcome whether it succeeded or was refused.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::see_other;
use crate::audit::{self, Event};
use crate::jobs::{CancelOutcome, Queue};
use crate::portal::auth::Admin;
use crate::portal::error::Fail;
use crate::portal::{views, AppState};

/// Mounts the actions under `/jobs/{id}/…`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/jobs/{id}/cancel", web::post().to(cancel))
        .route("/jobs/{id}/retry", web::post().to(retry))
        .route("/jobs/{id}/delete", web::post().to(delete))
        .route(
            "/jobs/{id}/dispatches/{dispatch}/resend",
            web::post().to(resend),
        );
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// Checks the token, runs `op` (which answers the audited outcome: `ok`, or why not), and
/// records the admin event.
async fn act<F>(
    state: &web::Data<AppState>,
    admin: &Admin,
    form: &CsrfForm,
    action: &str,
    detail: serde_json::Value,
    op: F,
) -> Result<&'static str, Fail>
where
    F: FnOnce(&AppState) -> Result<&'static str, Fail> + Send + 'static,
{
    admin.check_csrf(form.csrf.as_deref())?;
    let s = state.clone();
    let outcome = web::block(move || op(&s)).await??;
    let (db, event) = (
        state.db.clone(),
        Event {
            kind: "admin",
            actor: admin.name().to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            detail,
        },
    );
    web::block(move || audit::record_or_log(&db, &event)).await?;
    Ok(outcome)
}

async fn cancel(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let key = id.clone();
    act(
        &state,
        &admin,
        &form,
        "cancel-job",
        json!({ "job_id": id }),
        move |s| {
            Ok(match Queue::new(s.db.clone()).cancel(&key)? {
                CancelOutcome::Cancelled => "cancelled",
                CancelOutcome::Requested => "requested",
                _ => "already-final",
            })
        },
    )
    .await?;
    Ok(see_other(&format!("/jobs/{id}")))
}

async fn retry(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let key = id.clone();
    let outcome = act(
        &state,
        &admin,
        &form,
        "retry-job",
        json!({ "job_id": id }),
        move |s| {
            Ok(if Queue::new(s.db.clone()).retry(&key)? {
                "ok"
            } else {
                "refused"
            })
        },
    )
    .await?;
    if outcome != "ok" {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            "only failed or cancelled jobs can be retried",
        ));
    }
    Ok(see_other(&format!("/jobs/{id}")))
}

async fn delete(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, Fail> {
    let id = id.into_inner();
    let key = id.clone();
    let outcome = act(
        &state,
        &admin,
        &form,
        "delete-job",
        json!({ "job_id": id }),
        move |s| {
            if !Queue::new(s.db.clone()).delete(&key)? {
                return Ok("refused");
            }
            if let Some(dir) = views::job_dir(&s.config.storage.dir, &key).filter(|d| d.exists()) {
                std::fs::remove_dir_all(&dir).map_err(Fail::internal)?;
            }
            Ok("ok")
        },
    )
    .await?;
    if outcome != "ok" {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            "cancel the job before deleting it",
        ));
    }
    Ok(see_other("/jobs"))
}

async fn resend(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, i64)>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, Fail> {
    let (id, dispatch) = path.into_inner();
    let detail = json!({ "job_id": id, "dispatch": dispatch });
    let key = id.clone();
    let outcome = act(&state, &admin, &form, "resend", detail, move |s| {
        let ok = views::deliveries(&s.db, &key)?
            .iter()
            .any(|d| d.id == dispatch)
            && crate::dicom::dispatch::resend(&s.db, dispatch)?;
        Ok(if ok { "ok" } else { "not-found" })
    })
    .await?;
    if outcome != "ok" {
        return Err(Fail::not_found("delivery"));
    }
    Ok(see_other(&format!("/jobs/{id}")))
}
