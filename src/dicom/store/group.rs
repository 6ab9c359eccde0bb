//! Group commit: the instances of every association are placed and recorded a batch at a time.
//!
//! Each association's blocking task has already fsynced its temp file and parsed it; it hands
//! the instance to [`Committer::commit`] and waits for the outcome. Whoever arrives while no
//! batch is being committed becomes the leader: it takes whatever is waiting (up to
//! [`MAX_BATCH`], its own instance first) and, in one database transaction, renames each file
//! into its series folder and inserts its rows; then it fsyncs each folder that received a file
//! once, commits, hands out the outcomes, and passes the lead on to a waiting thread once its
//! own instance is done. Nothing is acknowledged before its file, its directory entry and its
//! row are durable, exactly as when each instance was committed alone; a batch that cannot
//! commit removes the files it placed and every instance in it is refused (the peers resend).
//!
//! Under load this turns N directory fsyncs and N commits into one each and removes the queue
//! of writers polling SQLite's lock; with one association the instance is committed by the
//! thread that received it, without a hand-over to another thread.
//!
//! A batch is first tried without savepoints (two statements less per instance). If any
//! instance fails, the transaction is rolled back, the files go back to their temp names, and
//! the batch is done again with a savepoint per instance, so that one failure (or a unique-key
//! race, retried once) does not sink the others.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use chrono::Utc;
use diesel::prelude::*;

use super::{
    create_dir_durable, record, refused, same_dataset, Header, Incoming, Outcome, Row, Sender,
    StoreError, HASH_PREFIX,
};
use crate::db::schema::instances;
use crate::db::{Db, DbConnection};
use crate::dicom::dimse::status;
use crate::storage;

/// The most instances one batch takes; more wait for the next.
pub(super) const MAX_BATCH: usize = 64;

/// An instance ready to be placed: fsynced, parsed and checked.
pub(super) struct Pending {
    /// The received file.
    pub incoming: Incoming,
    /// Its header attributes.
    pub header: Header,
    /// `instances.content_hash` of the dataset bytes.
    pub hash: String,
    /// Who sent it.
    pub sender: Sender,
}

/// The waiting instances and the outcomes not yet collected.
#[derive(Default)]
struct State {
    queue: Vec<(u64, Pending)>,
    outcomes: HashMap<u64, Outcome>,
    leading: bool,
    next_ticket: u64,
}

/// The store's group committer, shared by every association.
pub(super) struct Committer {
    db: Db,
    incoming: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("incoming", &self.incoming)
            .finish_non_exhaustive()
    }
}

/// Gives the lead back if a batch panics, and refuses that batch's instances, so that the
/// other associations do not wait forever.
struct Lead<'a> {
    committer: &'a Committer,
    tickets: Vec<u64>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut st = self.committer.lock();
        for t in self.tickets.drain(..) {
            st.outcomes.insert(
                t,
                refused(
                    status::PROCESSING_FAILURE,
                    "the store failed while recording the instance",
                ),
            );
        }
        st.leading = false;
        self.committer.changed.notify_all();
    }
}

impl Committer {
    /// A committer for the store rooted at `incoming`.
    pub fn new(db: Db, incoming: PathBuf) -> Committer {
        Committer {
            db,
            incoming,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Places and records one instance; blocks until its batch is committed.
    pub fn commit(&self, pending: Pending) -> Outcome {
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push((ticket, pending));
        loop {
            if let Some(outcome) = st.outcomes.remove(&ticket) {
                return outcome;
            }
            if st.leading {
                st = self
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Lead: commit batches until this thread's own instance is done, then hand over.
            st.leading = true;
            while !st.outcomes.contains_key(&ticket) {
                let take = st.queue.len().min(MAX_BATCH);
                let (tickets, mut batch): (Vec<u64>, Vec<Pending>) = st.queue.drain(..take).unzip();
                drop(st);
                let lead = Lead {
                    committer: self,
                    tickets,
                };
                let outcomes = commit_batch(&self.db, &self.incoming, &mut batch);
                // The temp files of refused and duplicate instances go with `batch`.
                drop(batch);
                st = self.lock();
                for (t, o) in lead.tickets.iter().zip(outcomes) {
                    st.outcomes.insert(*t, o);
                }
                drop(lead);
                self.changed.notify_all();
            }
            st.leading = false;
            // Anyone still queued needs a leader: wake them.
            self.changed.notify_all();
        }
    }
}

/// Commits a batch; returns one outcome per instance, in order.
fn commit_batch(db: &Db, incoming: &Path, batch: &mut [Pending]) -> Vec<Outcome> {
    let mut conn = match db.conn() {
        Ok(c) => c,
        Err(e) => return fail_all(batch.len(), &e.to_string()),
    };
    if batch.len() > 1 {
        match try_batch(&mut conn, incoming, batch, false) {
            Ok(outcomes) => return outcomes,
            Err(e) => {
                tracing::debug!(error = %e, "batch without savepoints failed; redoing it instance by instance")
            }
        }
    }
    try_batch(&mut conn, incoming, batch, true)
        .unwrap_or_else(|e| fail_all(batch.len(), &format!("recording the instance failed: {e}")))
}

fn fail_all(n: usize, reason: &str) -> Vec<Outcome> {
    (0..n)
        .map(|_| refused(status::PROCESSING_FAILURE, reason))
        .collect()
}

/// One transaction for the batch. With `savepoints`, each instance is placed in a savepoint of
/// its own and a failure becomes that instance's refusal; without, the first failure rolls the
/// whole batch back. Either way, when the transaction does not commit, every file it placed is
/// back at its temp name (not recorded, not acknowledged) and the error is returned.
fn try_batch(
    conn: &mut DbConnection,
    incoming: &Path,
    batch: &mut [Pending],
    savepoints: bool,
) -> Result<Vec<Outcome>, StoreError> {
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
            let outcome = if savepoints {
                let mut result = c.transaction(|c| place(c, incoming, p, &mut dirs));
                if result.as_ref().is_err_and(StoreError::is_unique_violation) {
                    result = c.transaction(|c| place(c, incoming, p, &mut dirs));
                }
                result.unwrap_or_else(|e| refused(status::PROCESSING_FAILURE, e.to_string()))
            } else {
                place(c, incoming, p, &mut dirs)?
            };
            outcomes.push(outcome);
        }
        for dir in &dirs {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    });
    match committed {
        Ok(()) => Ok(outcomes),
        Err(e) => {
            // Keep the disk and the table in step: nothing of this batch was recorded.
            for (p, o) in batch.iter_mut().zip(&outcomes) {
                if let Outcome::Stored { path, .. } = o {
                    if fs::rename(path, &p.incoming.path).is_ok() {
                        p.incoming.placed = false;
                    } else {
                        drop(fs::remove_file(path));
                    }
                }
            }
            Err(e)
        }
    }
}

/// Renames one instance into its series folder and records it, in the batch's transaction. The
/// folder is added to `dirs` for the batch's directory fsyncs. On an error the file is back at
/// its temp name.
fn place(
    conn: &mut DbConnection,
    incoming: &Path,
    p: &mut Pending,
    dirs: &mut BTreeSet<PathBuf>,
) -> Result<Outcome, StoreError> {
    let h = &p.header;
    // Rows of earlier instances of this batch are visible here: same transaction.
    let existing: Vec<(i32, String, String)> = instances::table
        .filter(instances::sop_instance_uid.eq(&h.sop_instance))
        .select((
            instances::revision,
            instances::content_hash,
            instances::path,
        ))
        .load(conn)?;
    let same = |(_, hash, path): &(i32, String, String)| {
        if hash.starts_with(HASH_PREFIX) {
            *hash == p.hash
        } else {
            // Hashed otherwise (before BLAKE3): compare the bytes.
            same_dataset(Path::new(path), &p.incoming.path).unwrap_or(false)
        }
    };
    if existing.iter().any(same) {
        return Ok(Outcome::Duplicate);
    }
    let revision = existing.iter().map(|(r, _, _)| *r).max().unwrap_or(0) + 1;
    if revision > 1 {
        tracing::warn!(
            sop_instance = %h.sop_instance,
            revision,
            "an instance with this SOP Instance UID but different content arrived; kept as a new revision"
        );
    }
    let dir = incoming.join(&h.study_uid).join(&h.series_uid);
    create_dir_durable(&dir)?;
    let name = storage::instance_file_name(&h.sop_instance, revision.unsigned_abs());
    let path = dir.join(name);
    let size = i64::try_from(p.incoming.file.metadata()?.len()).unwrap_or(i64::MAX);
    fs::rename(&p.incoming.path, &path)?;
    p.incoming.placed = true;
    let now = Utc::now().naive_utc();
    let row = Row {
        header: h,
        hash: &p.hash,
        revision,
        path: &path,
        size,
        received_at: now,
        transfer_syntax: &p.incoming.transfer_syntax,
        sender: &p.sender,
    };
    if let Err(e) = record(conn, &row) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ScratchDb;
    use crate::dicom::store::Store;

    /// A store on a fresh SQLite database with `pool` connections.
    fn fresh_store(pool: u32) -> (ScratchDb, Db, tempfile::TempDir, Store) {
        let scratch = ScratchDb::sqlite();
        let db = Db::open(&scratch.url, pool).unwrap();
        db.migrate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), db.clone(), 100.0).unwrap();
        (scratch, db, dir, store)
    }

    fn pending(store: &Store, series: &str, sop: &str, bytes: &[u8]) -> Pending {
        let sender = Sender {
            calling_ae: "MOD".into(),
            called_ae: "KNEENODE".into(),
            peer: "127.0.0.1:1".into(),
            association_id: "a".into(),
        };
        let class = "1.2.840.10008.5.1.4.1.1.4";
        let mut incoming = store
            .begin(class, sop, "1.2.840.10008.1.2.1", &sender)
            .unwrap();
        incoming.write(bytes).unwrap();
        Pending {
            incoming,
            header: Header {
                sop_class: class.into(),
                sop_instance: sop.into(),
                study_uid: "1.2.3".into(),
                series_uid: series.into(),
                ..Header::default()
            },
            hash: format!("{HASH_PREFIX}{:02x}", bytes[0]),
            sender,
        }
    }

    #[test]
    fn one_failing_instance_is_refused_and_the_rest_of_its_batch_is_stored() {
        let (_scratch, db, dir, store) = fresh_store(2);
        let incoming = dir.path().join("incoming");
        let mut batch: Vec<Pending> = (1..=4u8)
            .map(|i| pending(&store, "1.2.3.4", &format!("1.2.3.4.{i}"), &[i; 64]))
            .collect();
        // The third one's file vanished: its rename fails after two were placed, which rolls
        // back the batch without savepoints; the batch is then done instance by instance.
        fs::remove_file(&batch[2].incoming.path).unwrap();
        let outcomes = commit_batch(&db, &incoming, &mut batch);
        assert!(
            matches!(outcomes[0], Outcome::Stored { .. }),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1], Outcome::Stored { .. }),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[2].status(), status::PROCESSING_FAILURE);
        assert!(
            matches!(outcomes[3], Outcome::Stored { .. }),
            "{outcomes:?}"
        );
        let rows: Vec<String> = instances::table
            .select(instances::sop_instance_uid)
            .order(instances::sop_instance_uid)
            .load(&mut *db.conn().unwrap())
            .unwrap();
        assert_eq!(rows, ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.4"]);
        for (i, o) in outcomes.iter().enumerate() {
            if let Outcome::Stored { path, .. } = o {
                let want = [i as u8 + 1; 64];
                assert!(
                    fs::read(path).unwrap().ends_with(&want),
                    "{}",
                    path.display()
                );
            }
        }
        let series_dir = incoming.join("1.2.3").join("1.2.3.4");
        assert_eq!(
            fs::read_dir(&series_dir).unwrap().count(),
            3,
            "no file left unrecorded"
        );
    }

    #[test]
    fn a_row_hashed_before_blake3_is_compared_by_its_bytes() {
        let (_scratch, db, dir, store) = fresh_store(2);
        let incoming = dir.path().join("incoming");
        let sop = "1.2.3.4.1";
        let mut first = vec![pending(&store, "1.2.3.4", sop, &[7; 64])];
        assert!(matches!(
            commit_batch(&db, &incoming, &mut first)[0],
            Outcome::Stored { revision: 1, .. }
        ));
        // As the migration leaves a row stored before the change of hash.
        diesel::update(instances::table)
            .set(instances::content_hash.eq("sha256:0123"))
            .execute(&mut *db.conn().unwrap())
            .unwrap();
        let mut same = vec![pending(&store, "1.2.3.4", sop, &[7; 64])];
        same[0].hash = format!("{HASH_PREFIX}other");
        assert_eq!(
            commit_batch(&db, &incoming, &mut same)[0],
            Outcome::Duplicate
        );
        let mut changed = vec![pending(&store, "1.2.3.4", sop, &[8; 64])];
        assert!(matches!(
            commit_batch(&db, &incoming, &mut changed)[0],
            Outcome::Stored { revision: 2, .. }
        ));
    }

    #[test]
    fn concurrent_commits_each_get_their_own_outcome() {
        let (_scratch, db, dir, store) = fresh_store(4);
        let committer = Committer::new(db.clone(), dir.path().join("incoming"));
        std::thread::scope(|s| {
            for t in 0..6u8 {
                let (store, committer) = (&store, &committer);
                s.spawn(move || {
                    for i in 0..20u8 {
                        let sop = format!("1.2.3.{t}.{i}");
                        let p = pending(store, &format!("1.2.3.{t}"), &sop, &[t * 20 + i; 16]);
                        match committer.commit(p) {
                            Outcome::Stored { path, .. } => {
                                assert!(path.ends_with(format!("{sop}.dcm")));
                            }
                            other => panic!("{sop}: {other:?}"),
                        }
                    }
                });
            }
        });
        let n: i64 = instances::table
            .count()
            .get_result(&mut *db.conn().unwrap())
            .unwrap();
        assert_eq!(n, 120);
    }
}
