//! The durable store: every received instance reaches the disk and the `instances` table before
//! the SCP answers Success.
//!
//! An instance is streamed into a temp file under `incoming/.tmp/` (same filesystem), fsynced,
//! checked (parseable, matches its SOP class, safe UIDs), renamed to
//! `incoming/<study>/<series>/<sop>.dcm`, its directory fsynced, and recorded. A crash at any
//! point leaves either nothing or a complete file; the peer only hears Success after the row is
//! committed. The last three steps are done for all associations together, a batch at a time,
//! by whichever association's thread leads ([`group`]): one directory fsync per folder and one
//! transaction per batch instead of one each per instance, and no writers queueing on the
//! database's lock. The same SOP
//! Instance UID with the same bytes is a no-op; with other bytes it is kept as a further
//! revision (`<sop>.r2.dcm`) and a warning is logged. A placed file whose row a crash lost (an
//! SQLite commit rolled back by power loss) is recorded again at the next start ([`recover`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::dimse::status;
use super::part10;

mod group;
mod recover;
use crate::db::schema::{instances, series};
use crate::db::{Db, DbConnection, DbError};
use crate::storage;
pub use recover::RECOVERED;

/// `series.status` while instances are arriving.
pub const SERIES_RECEIVING: &str = "receiving";

/// Who sent an instance: the association's identity.
#[derive(Debug, Clone)]
pub struct Sender {
    /// Calling AE title.
    pub calling_ae: String,
    /// Called AE title.
    pub called_ae: String,
    /// Peer address.
    pub peer: String,
    /// Our id for the association (for logs and the audit trail).
    pub association_id: String,
}

/// What became of one instance, and the status to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and recorded.
    Stored {
        /// Where.
        path: PathBuf,
        /// 1, or more when the same SOP Instance UID arrived before with other bytes.
        revision: i32,
        /// The series it belongs to.
        series_uid: String,
    },
    /// The same bytes were already stored; nothing changed.
    Duplicate,
    /// Not stored; answer with `status`.
    Refused {
        /// The DIMSE status.
        status: u16,
        /// Why, for the log and the Error Comment (never patient data).
        reason: String,
    },
}

impl Outcome {
    /// The DIMSE status for the C-STORE-RSP.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Stored { .. } | Outcome::Duplicate => status::SUCCESS,
            Outcome::Refused { status, .. } => *status,
        }
    }
}

/// The instance store under `storage.dir`.
#[derive(Debug, Clone)]
pub struct Store {
    incoming: PathBuf,
    tmp: PathBuf,
    db: Db,
    max_disk_used_percent: f64,
    group: std::sync::Arc<group::Committer>,
}

/// An instance being received: a temp file and a running BLAKE3 hash of the dataset bytes.
#[derive(Debug)]
pub struct Incoming {
    file: File,
    path: PathBuf,
    hasher: Box<blake3::Hasher>,
    dataset_bytes: u64,
    /// Set once the file has been renamed into place: from then on it is not ours to delete.
    placed: bool,
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
}

impl Incoming {
    /// The SOP Class UID the command announced.
    pub fn sop_class(&self) -> &str {
        &self.sop_class
    }

    /// The SOP Instance UID the command announced.
    pub fn sop_instance(&self) -> &str {
        &self.sop_instance
    }

    /// Dataset bytes received so far.
    pub fn dataset_bytes(&self) -> u64 {
        self.dataset_bytes
    }

    /// Appends dataset bytes as they arrive.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.dataset_bytes += data.len() as u64;
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // An instance never placed is abandoned (abort, refusal, error): remove its temp file.
        if !self.placed {
            drop(fs::remove_file(&self.path));
        }
    }
}

/// Header attributes read from a stored instance.
#[derive(Debug, Clone, Default)]
struct Header {
    sop_class: String,
    sop_instance: String,
    study_uid: String,
    series_uid: String,
    modality: Option<String>,
    body_part: Option<String>,
    series_description: Option<String>,
    protocol_name: Option<String>,
    expected_count: Option<i32>,
}

fn refused(status: u16, reason: impl Into<String>) -> Outcome {
    Outcome::Refused {
        status,
        reason: reason.into(),
    }
}

/// A UID that is safe as a file name and valid DICOM: digits and dots, at most 64 characters.
fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !uid.starts_with('.')
        && !uid.ends_with('.')
        && !uid.contains("..")
}

impl Store {
    /// The database the store records instances in.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Opens the store under `storage_dir`, creating its folders, clearing temp files that a
    /// crash left behind (they were never acknowledged) and recording stored files whose rows a
    /// crash lost ([`recover`]). A recovery that cannot reach the database is logged and tried
    /// again at the next start: the files stay where they are.
    pub fn open(storage_dir: &Path, db: Db, max_disk_used_percent: f64) -> io::Result<Self> {
        let incoming = storage_dir.join("incoming");
        let tmp = incoming.join(".tmp");
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "part") {
                fs::remove_file(&path)?;
            }
        }
        match recover::recover(&db, &incoming) {
            Ok(r) if r.recorded + r.skipped > 0 => tracing::warn!(
                recorded = r.recorded,
                skipped = r.skipped,
                "stored instances without a record were found after a crash and recorded"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "checking stored instances against the database failed")
            }
        }
        let group = std::sync::Arc::new(group::Committer::new(db.clone(), incoming.clone()));
        Ok(Self {
            incoming,
            tmp,
            db,
            max_disk_used_percent,
            group,
        })
    }

    /// Whether the disk is below the watermark. Measured on every call: statvfs costs
    /// microseconds, and a cached value would let a burst overshoot.
    pub fn has_room(&self) -> bool {
        storage::disk_usage(&self.incoming).is_ok_and(|u| !u.above(self.max_disk_used_percent))
    }

    /// Starts receiving an instance announced by a C-STORE-RQ.
    pub fn begin(
        &self,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
        sender: &Sender,
    ) -> io::Result<Incoming> {
        let path = self.tmp.join(format!("{}.part", uuid::Uuid::new_v4()));
        let mut file = File::create(&path)?;
        part10::write_header(
            &mut file,
            sop_class,
            sop_instance,
            transfer_syntax,
            &sender.calling_ae,
        )?;
        Ok(Incoming {
            file,
            path,
            hasher: Box::default(),
            dataset_bytes: 0,
            placed: false,
            sop_class: sop_class.to_owned(),
            sop_instance: sop_instance.to_owned(),
            transfer_syntax: transfer_syntax.to_owned(),
        })
    }

    /// Makes a received instance durable and records it. Blocking (fsync, parse, database):
    /// call it from a blocking thread. The file's own fsync and the parse run here, in the
    /// caller's thread, beside other associations; placing and recording are group-committed.
    pub fn commit(&self, incoming: Incoming, sender: &Sender) -> Outcome {
        // fdatasync: the data and the file size; the name is made durable by the directory
        // fsync after the rename.
        if let Err(e) = incoming.file.sync_data() {
            return refused(
                status::PROCESSING_FAILURE,
                format!("cannot write to disk: {e}"),
            );
        }
        let header = match read_header(&incoming.path) {
            Ok(h) => h,
            Err(e) => {
                return refused(
                    status::CANNOT_UNDERSTAND,
                    format!("unreadable dataset: {e}"),
                )
            }
        };
        if header.sop_class != incoming.sop_class || header.sop_instance != incoming.sop_instance {
            return refused(
                status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class or Instance UID in the dataset differs from the command",
            );
        }
        for (name, uid) in [
            ("SOP Instance", &header.sop_instance),
            ("Study Instance", &header.study_uid),
            ("Series Instance", &header.series_uid),
        ] {
            if !valid_uid(uid) {
                return refused(
                    status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    format!("missing or invalid {name} UID"),
                );
            }
        }
        let hash = content_hash(&incoming.hasher);
        self.group.commit(group::Pending {
            incoming,
            header,
            hash,
            sender: sender.clone(),
        })
    }
}

/// `instances.content_hash` of the dataset bytes hashed so far: `blake3:` and 64 hex digits.
/// (Rows from before BLAKE3 hold `sha256:…`.)
fn content_hash(hasher: &blake3::Hasher) -> String {
    format!("{HASH_PREFIX}{}", hasher.finalize().to_hex())
}

/// The prefix of the hashes the store writes.
const HASH_PREFIX: &str = "blake3:";

/// Whether two Part-10 files hold the same dataset bytes (their meta groups may differ).
fn same_dataset(a: &Path, b: &Path) -> io::Result<bool> {
    Ok(part10::read_dataset(a)?.1 == part10::read_dataset(b)?.1)
}

/// One instance's row, and what its series row needs.
struct Row<'a> {
    header: &'a Header,
    hash: &'a str,
    revision: i32,
    path: &'a Path,
    size: i64,
    received_at: chrono::NaiveDateTime,
    transfer_syntax: &'a str,
    sender: &'a Sender,
}

/// Inserts the instance's row and counts it in its series (creating or re-opening the series).
fn record(conn: &mut DbConnection, row: &Row) -> Result<(), DieselError> {
    let Row {
        header: h,
        hash,
        revision,
        path,
        size,
        received_at: now,
        transfer_syntax,
        sender,
    } = *row;
    // Write first: on SQLite that takes the write lock at once (waiting on busy_timeout) instead
    // of failing to upgrade a read snapshot.
    diesel::insert_into(instances::table)
        .values((
            instances::sop_instance_uid.eq(&h.sop_instance),
            instances::sop_class_uid.eq(&h.sop_class),
            instances::study_instance_uid.eq(&h.study_uid),
            instances::series_instance_uid.eq(&h.series_uid),
            instances::transfer_syntax_uid.eq(transfer_syntax),
            instances::revision.eq(revision),
            instances::path.eq(path.to_string_lossy().as_ref()),
            instances::size_bytes.eq(size),
            instances::content_hash.eq(hash),
            instances::calling_ae.eq(&sender.calling_ae),
            instances::called_ae.eq(&sender.called_ae),
            instances::peer.eq(&sender.peer),
            instances::association_id.eq(&sender.association_id),
            instances::received_at.eq(now),
        ))
        .execute(conn)?;
    let this_series = || series::table.filter(series::series_instance_uid.eq(&h.series_uid));
    let mut updated = diesel::update(this_series().filter(series::status.eq(SERIES_RECEIVING)))
        .set((
            series::instance_count.eq(series::instance_count + 1),
            series::last_received_at.eq(now),
        ))
        .execute(conn)?;
    if updated == 0 {
        // A late instance for a series that was already complete: re-open it as a new revision,
        // so the series watcher makes a new job for it rather than dropping the instance.
        updated = diesel::update(this_series())
            .set((
                series::instance_count.eq(series::instance_count + 1),
                series::last_received_at.eq(now),
                series::status.eq(SERIES_RECEIVING),
                series::revision.eq(series::revision + 1),
                series::completed_at.eq(None::<chrono::NaiveDateTime>),
            ))
            .execute(conn)?;
        if updated > 0 {
            tracing::info!(series_uid = %h.series_uid, "late instance re-opened a completed series");
        }
    }
    if updated == 0 {
        diesel::insert_into(series::table)
            .values((
                series::series_instance_uid.eq(&h.series_uid),
                series::study_instance_uid.eq(&h.study_uid),
                series::modality.eq(&h.modality),
                series::body_part.eq(&h.body_part),
                series::series_description.eq(&h.series_description),
                series::protocol_name.eq(&h.protocol_name),
                series::calling_ae.eq(&sender.calling_ae),
                series::called_ae.eq(&sender.called_ae),
                series::instance_count.eq(1),
                series::expected_count.eq(h.expected_count),
                series::first_received_at.eq(now),
                series::last_received_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Store failures that become a processing-failure status.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database: {0}")]
    Query(#[from] DieselError),
    #[error("storage: {0}")]
    Io(#[from] io::Error),
}

impl StoreError {
    /// A unique-key race with another writer of the same instance or series (another node on
    /// the same database): worth one more try.
    fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            StoreError::Query(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _
            )) | StoreError::Db(DbError::Query(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _
            )))
        )
    }
}

/// Creates a folder and makes its new directory entries durable up to the first existing parent.
fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut created = Vec::new();
    let mut p = dir;
    while !p.exists() {
        created.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    fs::create_dir_all(dir)?;
    for d in created.iter().rev() {
        if let Some(parent) = d.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Parses the whole stored file: this both proves the dataset is complete and well-formed and
/// yields the attributes for the tables.
fn read_header(path: &Path) -> Result<Header, String> {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| e.to_string())?;
    let text = |tag| {
        obj.get(tag)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<i32>().ok());
    let expected_count = match int(tags::NUMBER_OF_FRAMES) {
        Some(_) => Some(1),
        None => int(tags::IMAGES_IN_ACQUISITION).filter(|n| *n > 0),
    };
    Ok(Header {
        sop_class: text(tags::SOP_CLASS_UID).unwrap_or_default(),
        sop_instance: text(tags::SOP_INSTANCE_UID).unwrap_or_default(),
        study_uid: text(tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        series_uid: text(tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        modality: text(tags::MODALITY),
        body_part: text(tags::BODY_PART_EXAMINED),
        series_description: text(tags::SERIES_DESCRIPTION),
        protocol_name: text(tags::PROTOCOL_NAME),
        expected_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_that_could_escape_the_folder_are_invalid() {
        assert!(valid_uid("1.2.840.113619.2.55.3"));
        for bad in [
            "",
            "..",
            "../etc",
            "1..2",
            ".1",
            "1.",
            "1/2",
            "1.2.3a",
            &"1".repeat(65),
        ] {
            assert!(!valid_uid(bad), "{bad:?}");
        }
    }
}
