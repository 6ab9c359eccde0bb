//! Start-up recovery: instances on disk whose rows a crash lost.
//!
//! A file under `incoming/<study>/<series>/` was fsynced, parsed and checked before it was
//! renamed there, and its directory was fsynced before its row was committed: every such file is
//! a complete instance. Its row can still be missing after a crash:
//! - SQLite runs in WAL mode with `synchronous = NORMAL`: a commit survives a crash of the
//!   process (the `kill -9` test) but the last commits can roll back on power loss or an OS
//!   crash, and those instances were acknowledged;
//! - a crash between the directory fsync and the commit leaves an instance the peer never heard
//!   Success for (its resend is then a duplicate).
//!
//! Either way the right row is the one the committer would have written, so [`recover`]
//! writes it, from the file: the header attributes, the BLAKE3 hash of the dataset bytes, the
//! revision from the name (`<sop>.dcm`, `<sop>.r<N>.dcm`), the calling AE from the meta
//! group's Source AE Title (the SCP writes it), the file's modification time as the time of
//! receipt. A series whose files all have rows costs one `read_dir`: the walk compares counts
//! first. It runs in [`super::Store::open`], before the committer starts and before the SCP
//! accepts anything.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;

use diesel::prelude::*;

use super::{content_hash, read_header, record, valid_uid, Row, Sender, StoreError};
use crate::db::schema::instances;
use crate::db::Db;
use crate::dicom::part10;
use crate::storage;

/// `instances.association_id` of a recovered row.
pub const RECOVERED: &str = "recovered at start-up";

/// What a recovery pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Rows written for files that had none.
    pub recorded: usize,
    /// Files left alone because they are not what their place says (logged).
    pub skipped: usize,
}

/// Records every file under `incoming` that has no row.
pub(super) fn recover(db: &Db, incoming: &Path) -> Result<Recovered, StoreError> {
    let mut conn = db.conn()?;
    let counts: HashMap<String, i64> = instances::table
        .group_by(instances::series_instance_uid)
        .select((instances::series_instance_uid, diesel::dsl::count_star()))
        .load::<(String, i64)>(&mut *conn)?
        .into_iter()
        .collect();
    let mut found = Recovered::default();
    for study in uid_dirs(incoming)? {
        for series in uid_dirs(&incoming.join(&study))? {
            let dir = incoming.join(&study).join(&series);
            let files: Vec<String> = fs::read_dir(&dir)?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".dcm") && !n.starts_with('.'))
                .collect();
            if files.len() as i64 <= counts.get(&series).copied().unwrap_or(0) {
                continue;
            }
            let known: HashSet<String> = instances::table
                .filter(instances::series_instance_uid.eq(&series))
                .select(instances::path)
                .load::<String>(&mut *conn)?
                .into_iter()
                .filter_map(|p| Some(Path::new(&p).file_name()?.to_str()?.to_owned()))
                .collect();
            for name in files.iter().filter(|n| !known.contains(*n)) {
                let path = dir.join(name);
                match recover_file(&mut conn, &path, &study, &series, name) {
                    Ok(()) => found.recorded += 1,
                    Err(why) => {
                        tracing::warn!(file = %path.display(), reason = %why,
                            "a stored file without a record was left as it is");
                        found.skipped += 1;
                    }
                }
            }
        }
    }
    Ok(found)
}

/// The sub-folders of `dir` named like UIDs (which leaves out `.tmp`).
fn uid_dirs(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            if valid_uid(&name) {
                out.push(name);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn recover_file(
    conn: &mut crate::db::DbConnection,
    path: &Path,
    study: &str,
    series: &str,
    name: &str,
) -> Result<(), String> {
    let (sop, revision) =
        storage::parse_instance_file_name(name).ok_or("not a stored instance's name")?;
    let revision = i32::try_from(revision).map_err(|_| "revision out of range")?;
    let (meta, dataset) = part10::read_dataset(path).map_err(|e| e.to_string())?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(&dataset);
    drop(dataset);
    let header = read_header(path)?;
    if header.sop_instance != sop || header.series_uid != series || header.study_uid != study {
        return Err("its UIDs do not match its folder and name".into());
    }
    let stat = fs::metadata(path).map_err(|e| e.to_string())?;
    let received_at = stat
        .modified()
        .map(|t| chrono::DateTime::<chrono::Utc>::from(t).naive_utc())
        .unwrap_or_else(|_| chrono::Utc::now().naive_utc());
    let sender = Sender {
        calling_ae: meta.source_ae.clone().unwrap_or_default(),
        called_ae: String::new(),
        peer: String::new(),
        association_id: RECOVERED.to_owned(),
    };
    let hash = content_hash(&hasher);
    let row = Row {
        header: &header,
        hash: &hash,
        revision,
        path,
        size: i64::try_from(stat.len()).unwrap_or(i64::MAX),
        received_at,
        transfer_syntax: &meta.transfer_syntax,
        sender: &sender,
    };
    conn.transaction::<_, diesel::result::Error, _>(|c| record(c, &row))
        .map_err(|e| format!("recording it failed: {e}"))
}
