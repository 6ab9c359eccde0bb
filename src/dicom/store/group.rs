//! Group commit: one thread places and records the instances of every association, a batch at
//! a time.
//!
//! Each association's blocking task has already fsynced its temp file and parsed it; it hands
//! the instance to [`Committer::commit`] and waits for the outcome. The committer takes
//! whatever is waiting (up to [`MAX_BATCH`]) and, in one database transaction, renames each
//! file into its series folder and inserts its rows (each instance in its own savepoint, so
//! one failure does not sink the others); then it fsyncs each folder that received a file once,
//! commits, and only then answers. Nothing is acknowledged before its file, its directory entry
//! and its row are durable, exactly as when each instance was committed alone; a batch that
//! cannot commit removes the files it placed and every instance in it is refused (the peers
//! resend).
//!
//! Under load this turns N directory fsyncs and N commits into one each, and it removes the
//! queue of writers polling SQLite's lock; with one association it costs a channel hop.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::Utc;
use diesel::prelude::*;

use super::{create_dir_durable, record, refused, Header, Incoming, Outcome, Sender, StoreError};
use crate::db::schema::instances;
use crate::db::{Db, DbConnection};
use crate::dicom::dimse::status;

/// The most instances one batch takes; more wait for the next.
pub(super) const MAX_BATCH: usize = 64;

/// An instance ready to be placed: fsynced, parsed and checked.
pub(super) struct Pending {
    /// The received file.
    pub incoming: Incoming,
    /// Its header attributes.
    pub header: Header,
    /// SHA-256 of the dataset bytes, hex.
    pub sha: String,
    /// Who sent it.
    pub sender: Sender,
}

struct Request {
    pending: Pending,
    reply: mpsc::SyncSender<Outcome>,
}

/// The committer thread's mailbox. Dropping the last handle ends the thread.
#[derive(Debug)]
pub(super) struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committer thread for the store rooted at `incoming`.
    pub fn start(db: Db, incoming: PathBuf) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || run(&db, &incoming, &rx))?;
        Ok(Committer { tx })
    }

    /// Places and records one instance; blocks until its batch is committed.
    pub fn commit(&self, pending: Pending) -> Outcome {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.tx.send(Request { pending, reply }).is_err() {
            return refused(
                status::PROCESSING_FAILURE,
                "the store's committer has stopped",
            );
        }
        answer.recv().unwrap_or_else(|_| {
            refused(
                status::PROCESSING_FAILURE,
                "the store's committer failed while recording the instance",
            )
        })
    }
}

fn run(db: &Db, incoming: &Path, rx: &mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut pendings: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for r in batch {
            pendings.push(r.pending);
            replies.push(r.reply);
        }
        let outcomes = commit_batch(db, incoming, &mut pendings);
        // The temp files of refused and duplicate instances go when `pendings` drops.
        drop(pendings);
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A peer that went away meanwhile: its instance is stored all the same.
            drop(reply.send(outcome));
        }
    }
}

/// One transaction for the batch; returns one outcome per instance, in order.
fn commit_batch(db: &Db, incoming: &Path, batch: &mut [Pending]) -> Vec<Outcome> {
    let n = batch.len();
    let fail_all = |reason: String| -> Vec<Outcome> {
        (0..n)
            .map(|_| refused(status::PROCESSING_FAILURE, reason.clone()))
            .collect()
    };
    let mut conn = match db.conn() {
        Ok(c) => c,
        Err(e) => return fail_all(e.to_string()),
    };
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut dirs = BTreeSet::new();
    let committed = conn.transaction::<_, StoreError, _>(|c| {
        // Take the write lock first. SQLite's deferred BEGIN would start as a reader (the
        // duplicate check below) and then fail at once with "database is locked", without
        // waiting, if another connection wrote in between; a write as the first statement
        // waits on busy_timeout instead. (An UPDATE matching no row still takes the lock; on
        // PostgreSQL it is a no-op.)
        diesel::sql_query("UPDATE instances SET revision = revision WHERE 1 = 0").execute(c)?;
        for p in batch.iter_mut() {
            let mut result = place(c, incoming, p, &mut dirs);
            if result.as_ref().is_err_and(StoreError::is_unique_violation) {
                result = place(c, incoming, p, &mut dirs);
            }
            outcomes.push(
                result.unwrap_or_else(|e| refused(status::PROCESSING_FAILURE, e.to_string())),
            );
        }
        for dir in &dirs {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    });
    match committed {
        Ok(()) => outcomes,
        Err(e) => {
            // Keep the disk and the table in step: nothing of this batch was recorded.
            for o in &outcomes {
                if let Outcome::Stored { path, .. } = o {
                    drop(fs::remove_file(path));
                }
            }
            fail_all(format!("recording the instance failed: {e}"))
        }
    }
}

/// Renames one instance into its series folder and records it, in a savepoint of the batch's
/// transaction. The folder is added to `dirs` for the batch's directory fsyncs.
fn place(
    conn: &mut DbConnection,
    incoming: &Path,
    p: &mut Pending,
    dirs: &mut BTreeSet<PathBuf>,
) -> Result<Outcome, StoreError> {
    let h = &p.header;
    conn.transaction::<_, StoreError, _>(|c| {
        // Rows of earlier instances of this batch are visible here: same transaction.
        let existing: Vec<(i32, String)> = instances::table
            .filter(instances::sop_instance_uid.eq(&h.sop_instance))
            .select((instances::revision, instances::sha256))
            .load(c)?;
        if existing.iter().any(|(_, s)| *s == p.sha) {
            return Ok(Outcome::Duplicate);
        }
        let revision = existing.iter().map(|(r, _)| *r).max().unwrap_or(0) + 1;
        if revision > 1 {
            tracing::warn!(
                sop_instance = %h.sop_instance,
                revision,
                "an instance with this SOP Instance UID but different content arrived; kept as a new revision"
            );
        }
        let dir = incoming.join(&h.study_uid).join(&h.series_uid);
        create_dir_durable(&dir)?;
        let name = if revision == 1 {
            format!("{}.dcm", h.sop_instance)
        } else {
            format!("{}.r{revision}.dcm", h.sop_instance)
        };
        let path = dir.join(name);
        fs::rename(&p.incoming.path, &path)?;
        p.incoming.placed = true;
        let size = i64::try_from(fs::metadata(&path)?.len()).unwrap_or(i64::MAX);
        let now = Utc::now().naive_utc();
        // On an error the savepoint is rolled back with the rows `record` wrote.
        if let Err(e) = record(c, h, &p.sha, revision, &path, size, now, &p.incoming, &p.sender) {
            // Back where it came from, so that a retry finds it and a refusal removes it.
            if fs::rename(&path, &p.incoming.path).is_ok() {
                p.incoming.placed = false;
            } else {
                drop(fs::remove_file(&path));
            }
            return Err(StoreError::Query(e));
        }
        dirs.insert(dir);
        Ok(Outcome::Stored {
            path,
            revision,
            series_uid: h.series_uid.clone(),
        })
    })
}
