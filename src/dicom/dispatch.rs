//! The dispatcher: sends each job's SEG and SR to its destinations, one `dispatches` row per
//! destination, with persistent retry.
//!
//! A row is `pending` until sent; a failed attempt stays `pending` with `attempts`, `last_error`
//! and an exponentially later `next_attempt_at`, so a PACS that is down for a weekend receives its
//! results when it returns, and the portal shows why it has not yet. A row caught in `sending` by
//! a crash goes back to `pending` at start; resending is harmless because the objects' UIDs are
//! derived from the job.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use tokio::sync::watch;
use tracing::{info, warn};

use super::scu::{self, Peer, Timeouts};
use crate::config::Destination;
use crate::db::schema::dispatches;
use crate::db::{Db, DbError};
use crate::jobs::Backoff;

/// `dispatches.status` values.
pub mod status {
    /// Waiting to be sent (first time or after a failure).
    pub const PENDING: &str = "pending";
    /// Being sent now.
    pub const SENDING: &str = "sending";
    /// Delivered.
    pub const SENT: &str = "sent";
}

/// One dispatch row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = dispatches)]
pub struct Dispatch {
    /// Row id.
    pub id: i64,
    /// The job whose results these are.
    pub job_id: String,
    /// Destination name (from the configuration).
    pub destination: String,
    /// Peer AE title.
    pub ae_title: String,
    /// Peer host.
    pub host: String,
    /// Peer port.
    pub port: i32,
    /// See [`status`].
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// JSON list of files.
    pub files: String,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// Sends a dispatch again (an administrator's "resend"): pending, due now, attempts from zero.
/// `false` when no such row exists.
pub fn resend(db: &Db, id: i64) -> Result<bool, DbError> {
    let now = Utc::now().naive_utc();
    let mut conn = db.conn()?;
    let n = diesel::update(dispatches::table.find(id))
        .set((
            dispatches::status.eq(status::PENDING),
            dispatches::next_attempt_at.eq(now),
            dispatches::attempts.eq(0),
        ))
        .execute(&mut *conn)?;
    Ok(n == 1)
}

/// Records that a job's `files` must go to `dest`. Idempotent per job and destination: calling it
/// again (a resend) makes the row pending and due now, with the new file list.
pub fn enqueue(
    db: &Db,
    job_id: &str,
    dest: &Destination,
    files: &[PathBuf],
) -> Result<(), DbError> {
    let now = Utc::now().naive_utc();
    let list: Vec<String> = files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let files = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
    let mut conn = db.conn()?;
    let updated = diesel::update(
        dispatches::table
            .filter(dispatches::job_id.eq(job_id))
            .filter(dispatches::destination.eq(&dest.name)),
    )
    .set((
        dispatches::status.eq(status::PENDING),
        dispatches::next_attempt_at.eq(now),
        dispatches::files.eq(&files),
        dispatches::ae_title.eq(&dest.ae_title),
        dispatches::host.eq(&dest.host),
        dispatches::port.eq(i32::from(dest.port)),
    ))
    .execute(&mut *conn)?;
    if updated == 0 {
        diesel::insert_into(dispatches::table)
            .values((
                dispatches::job_id.eq(job_id),
                dispatches::destination.eq(&dest.name),
                dispatches::ae_title.eq(&dest.ae_title),
                dispatches::host.eq(&dest.host),
                dispatches::port.eq(i32::from(dest.port)),
                dispatches::status.eq(status::PENDING),
                dispatches::next_attempt_at.eq(now),
                dispatches::files.eq(&files),
                dispatches::created_at.eq(now),
            ))
            .execute(&mut *conn)?;
    }
    Ok(())
}

/// Sends due dispatches.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    db: Db,
    calling_ae: String,
    /// Configured destinations by name, with TLS settings loaded.
    peers: std::collections::HashMap<String, Peer>,
    backoff: Backoff,
    timeouts: Timeouts,
}

impl Dispatcher {
    /// A dispatcher that calls peers as `calling_ae`; failed sends wait 30 s, doubling up to 1 h.
    pub fn new(db: Db, calling_ae: &str) -> Self {
        Self {
            db,
            calling_ae: calling_ae.to_owned(),
            peers: std::collections::HashMap::new(),
            backoff: Backoff {
                base: Duration::from_secs(30),
                max: Duration::from_secs(3600),
            },
            timeouts: Timeouts::default(),
        }
    }

    /// Uses the configured destinations (and their TLS settings) for rows that name them; rows
    /// for destinations no longer configured are sent as recorded, over plain TCP.
    pub fn with_destinations(
        mut self,
        destinations: &[Destination],
    ) -> Result<Self, super::tls::TlsError> {
        for d in destinations {
            self.peers
                .insert(d.name.clone(), Peer::from_destination(d)?);
        }
        Ok(self)
    }

    /// Replaces the retry policy.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Puts rows a crash left in `sending` back to `pending`.
    pub fn recover(&self) -> Result<usize, DbError> {
        let mut conn = self.db.conn()?;
        Ok(
            diesel::update(dispatches::table.filter(dispatches::status.eq(status::SENDING)))
                .set(dispatches::status.eq(status::PENDING))
                .execute(&mut *conn)?,
        )
    }

    /// Sends every due dispatch once; returns (sent, failed). Blocking.
    pub fn run_due(&self) -> Result<(usize, usize), DbError> {
        let now = Utc::now().naive_utc();
        let due: Vec<Dispatch> = dispatches::table
            .filter(dispatches::status.eq(status::PENDING))
            .filter(dispatches::next_attempt_at.le(now))
            .order(dispatches::next_attempt_at)
            .select(Dispatch::as_select())
            .load(&mut *self.db.conn()?)?;
        let (mut sent, mut failed) = (0, 0);
        for d in due {
            // Claim it, so that two dispatchers never send the same row at once.
            let claimed = diesel::update(
                dispatches::table
                    .find(d.id)
                    .filter(dispatches::status.eq(status::PENDING)),
            )
            .set(dispatches::status.eq(status::SENDING))
            .execute(&mut *self.db.conn()?)?;
            if claimed == 0 {
                continue;
            }
            if self.send_one(&d)? {
                sent += 1;
            } else {
                failed += 1;
            }
        }
        Ok((sent, failed))
    }

    fn send_one(&self, d: &Dispatch) -> Result<bool, DbError> {
        let files: Vec<PathBuf> = serde_json::from_str::<Vec<String>>(&d.files)
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let peer = self
            .peers
            .get(&d.destination)
            .cloned()
            .unwrap_or_else(|| Peer {
                ae_title: d.ae_title.clone(),
                host: d.host.clone(),
                port: u16::try_from(d.port).unwrap_or(0),
                tls: None,
            });
        let result = scu::send(&self.calling_ae, &peer, &files, self.timeouts);
        let now = Utc::now().naive_utc();
        let attempts = d.attempts + 1;
        let mut conn = self.db.conn()?;
        match result {
            Ok(n) => {
                info!(job_id = %d.job_id, destination = %d.destination, instances = n, "results sent");
                diesel::update(dispatches::table.find(d.id))
                    .set((
                        dispatches::status.eq(status::SENT),
                        dispatches::attempts.eq(attempts),
                        dispatches::sent_at.eq(now),
                        dispatches::last_error.eq(None::<String>),
                    ))
                    .execute(&mut *conn)?;
                Ok(true)
            }
            Err(e) => {
                let delay = self.backoff.delay(attempts);
                warn!(job_id = %d.job_id, destination = %d.destination, attempts, error = %e,
                      retry_in_s = delay.as_secs(), "sending results failed; will retry");
                let next =
                    now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
                diesel::update(dispatches::table.find(d.id))
                    .set((
                        dispatches::status.eq(status::PENDING),
                        dispatches::attempts.eq(attempts),
                        dispatches::next_attempt_at.eq(next),
                        dispatches::last_error.eq(e.to_string()),
                    ))
                    .execute(&mut *conn)?;
                Ok(false)
            }
        }
    }

    /// Runs until shutdown, checking for due dispatches every `every`.
    pub async fn run(self, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.recover()).await {
            Ok(Ok(n)) if n > 0 => info!(n, "dispatches interrupted by a restart are pending again"),
            Ok(Err(e)) => warn!(error = %e, "cannot recover interrupted dispatches"),
            _ => {}
        }
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.run_due()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "dispatcher database error"),
                Err(e) => warn!(error = %e, "dispatcher task failed"),
            }
        }
    }
}
