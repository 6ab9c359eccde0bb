//! The audit trail: who did what, when, with which result — DICOM associations, logins,
//! downloads, administrative actions and retention — as rows in `audit_events`. Details are
//! JSON and never hold patient names or IDs (AE titles, addresses, counts, UIDs at most).

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::db::schema::audit_events;
use crate::db::{Db, DbError};

/// One event to record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// `association`, `login`, `download`, `admin`, `retention`, …
    pub kind: &'static str,
    /// Who: a calling AE and address, a user name, `kneenode` for the node itself.
    pub actor: String,
    /// What, e.g. `c-store`, `rejected`, `cleanup`.
    pub action: String,
    /// `ok`, `released`, `aborted`, `refused`, …
    pub outcome: String,
    /// Details as JSON.
    pub detail: serde_json::Value,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = audit_events)]
pub struct Stored {
    /// Row id.
    pub id: i64,
    /// When.
    pub at: NaiveDateTime,
    /// Kind.
    pub kind: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Result.
    pub outcome: String,
    /// JSON details.
    pub detail: String,
}

/// Records `event` now.
pub fn record(db: &Db, event: &Event) -> Result<(), DbError> {
    let mut conn = db.conn()?;
    diesel::insert_into(audit_events::table)
        .values((
            audit_events::at.eq(Utc::now().naive_utc()),
            audit_events::kind.eq(event.kind),
            audit_events::actor.eq(&event.actor),
            audit_events::action.eq(&event.action),
            audit_events::outcome.eq(&event.outcome),
            audit_events::detail.eq(event.detail.to_string()),
        ))
        .execute(&mut *conn)
        .map_err(DbError::Query)?;
    Ok(())
}

/// Records `event`, logging instead of failing: losing an audit row must not stop the node.
pub fn record_or_log(db: &Db, event: &Event) {
    if let Err(e) = record(db, event) {
        tracing::warn!(error = %e, kind = event.kind, action = %event.action, "audit event not recorded");
    }
}

/// The latest `limit` events of `kind` (all kinds when `None`), newest first.
pub fn recent(db: &Db, kind: Option<&str>, limit: i64) -> Result<Vec<Stored>, DbError> {
    let mut conn = db.conn()?;
    let mut q = audit_events::table
        .select(Stored::as_select())
        .order(audit_events::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(k) = kind {
        q = q.filter(audit_events::kind.eq(k.to_owned()));
    }
    q.load(&mut *conn).map_err(DbError::Query)
}
