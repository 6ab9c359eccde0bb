//! Hand uploads through the portal: a clinician's file becomes a job input only after it has been
//! checked, and a refused file leaves nothing behind.
//!
//! Two steps, so that the slow part runs off the HTTP worker threads:
//!
//! 1. [`save_field`] (async) streams one multipart file field into a temp file, refusing it as
//!    soon as it passes the size limit; nothing is buffered whole in memory.
//! 2. [`accept`] (blocking: call it through `web::block`) decides what the file is **by its
//!    content**, never by its name — NIfTI-1 (`.nii`), gzipped NIfTI-1 (`.nii.gz`), NRRD with
//!    attached data (`.nrrd`), or a zip of one DICOM series — and moves it under the upload's own
//!    folder with a safe name and the extension its content calls for. A zip goes through
//!    [`archive::unpack`](crate::archive::unpack) (paths, links, entry count, total bytes and
//!    inflation ratio are checked there) and every file in it must be DICOM Part 10.
//!
//! Errors ([`IntakeError`]) are written for the person who uploaded: they name the rule that was
//! broken and, for a zip, the entry; they never quote file content (which may be patient data).
//! The pipeline's readers ([`crate::volume`]) still check the image itself (datatypes, dimensions,
//! encodings); intake only keeps out what is not an image of ours at all, or is dangerous to unpack.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};

use crate::archive::{self, ArchiveError};
use crate::volume::read_up_to;

mod segmentation;
mod sniff;
pub use segmentation::check_segmentation;
use sniff::sniff;

/// How big an upload, and what it unpacks to, may be.
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    /// Largest upload as sent, bytes.
    pub max_upload_bytes: u64,
    /// Largest size after decompression, bytes: a `.nii.gz` inflated, or all files of a zip
    /// together (the smaller of this and `zip.max_total_bytes` applies to a zip).
    pub max_uncompressed_bytes: u64,
    /// The zip-bomb rules for a DICOM zip (entries, total bytes, inflation ratio).
    pub zip: archive::Limits,
}

impl Default for IntakeLimits {
    /// 2 GiB uploaded, 4 GiB unpacked: a knee MR series is tens to a few hundred MB, a NIfTI of
    /// one rarely more than 1 GB uncompressed.
    fn default() -> Self {
        Self {
            max_upload_bytes: 2 << 30,
            max_uncompressed_bytes: 4 << 30,
            zip: archive::Limits {
                max_total_bytes: 4 << 30,
                ..archive::Limits::default()
            },
        }
    }
}

/// What an accepted upload turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    /// A single-file NIfTI-1 image (`n+1`).
    Nifti,
    /// A gzipped single-file NIfTI-1 image.
    NiftiGz,
    /// An NRRD image with its data attached.
    Nrrd,
    /// A zip of DICOM Part 10 files, unpacked into a series folder.
    DicomZip,
}

impl UploadKind {
    /// The extension the job input gets (`None` for a series folder).
    pub fn extension(self) -> Option<&'static str> {
        match self {
            UploadKind::Nifti => Some(".nii"),
            UploadKind::NiftiGz => Some(".nii.gz"),
            UploadKind::Nrrd => Some(".nrrd"),
            UploadKind::DicomZip => None,
        }
    }
}

/// An upload that passed every check, in its place as a job input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// What it is.
    pub kind: UploadKind,
    /// The job input: the image file, or the series folder of a DICOM zip.
    pub input_path: PathBuf,
    /// The input's size as stored: the file's bytes, or all DICOM files of the series together.
    pub size_bytes: u64,
}

/// Why an upload was refused. The message is meant for the person who uploaded it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntakeError {
    /// The form had no file in it (400).
    #[error("no file was uploaded: choose a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or zipped DICOM series (.zip)")]
    MissingFile,
    /// The upload stopped before it was complete (400).
    #[error("the upload was interrupted ({0}); please try again")]
    Interrupted(String),
    /// The file is larger than allowed (413).
    #[error("the file is larger than the upload limit of {}", human(*.limit))]
    TooLarge {
        /// The limit, bytes.
        limit: u64,
    },
    /// The file holds nothing (422).
    #[error("the uploaded file is empty")]
    Empty,
    /// Not a kind of file the node takes, or a variant of one it cannot use (415).
    #[error("unsupported file: {0}")]
    Unsupported(String),
    /// A compressed file that inflates past the limit (422).
    #[error("the {what} unpacks to more than {}; it is refused as a possible decompression bomb", human(*.limit))]
    Bomb {
        /// What was being unpacked ("gzip file", …).
        what: &'static str,
        /// The limit, bytes.
        limit: u64,
    },
    /// The zip broke an unpacking rule: a path leaving its folder, a link, too many entries or
    /// bytes, an entry that inflates too far (422).
    #[error("the zip was refused: {0}")]
    ZipRefused(String),
    /// The file claims a format but is damaged or incomplete (422).
    #[error("the file is damaged: {0}")]
    Corrupt(String),
    /// A zip entry that is not a DICOM Part 10 file (422).
    #[error("the zip holds {entry:?}, which is not a DICOM file; zip only the DICOM files of one series")]
    NotDicom {
        /// The entry's name in the zip.
        entry: String,
    },
    /// A zip without a single DICOM file in it (422).
    #[error("the zip holds no DICOM files")]
    NoDicom,
    /// Uploaded as a segmentation but not a usable label volume for its map (422).
    #[error("not a usable segmentation: {0}")]
    NotSegmentation(String),
    /// The server could not store or read the upload (507 when its disk is full, else 500).
    #[error("{}", io_message(.context, .error))]
    Io {
        /// What the server was doing.
        context: &'static str,
        /// What the operating system said.
        error: io::Error,
    },
}

impl IntakeError {
    /// The HTTP status that goes with the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            IntakeError::MissingFile | IntakeError::Interrupted(_) => StatusCode::BAD_REQUEST,
            IntakeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IntakeError::Empty
            | IntakeError::Bomb { .. }
            | IntakeError::ZipRefused(_)
            | IntakeError::Corrupt(_)
            | IntakeError::NotDicom { .. }
            | IntakeError::NoDicom
            | IntakeError::NotSegmentation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IntakeError::Io { error, .. } if disk_full(error) => StatusCode::INSUFFICIENT_STORAGE,
            IntakeError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn disk_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn io_message(context: &str, error: &io::Error) -> String {
    if disk_full(error) {
        format!("the server's storage is full ({context}); please try again later or tell the administrator")
    } else {
        format!("the server could not store the upload ({context}): {error}")
    }
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> IntakeError {
    move |error| IntakeError::Io { context, error }
}

/// `2 GiB`, `1.5 MiB`, `300 bytes`.
fn human(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size {
            return if bytes % size == 0 {
                format!("{} {unit}", bytes / size)
            } else {
                // Display only: f64's precision is plenty for one decimal.
                let value = bytes as f64 / size as f64;
                format!("{value:.1} {unit}")
            };
        }
    }
    format!("{bytes} bytes")
}

/// Streams one multipart file field into a new temp file in `dir` (created); returns the file
/// and its size. Past `max_bytes` it stops at once with [`IntakeError::TooLarge`] (the rest of
/// the request is not read) and removes the partial file, as on any other error. The file is
/// fsynced before this returns. An empty field gives an empty file: [`accept`] refuses it.
pub async fn save_field(
    field: &mut actix_multipart::Field,
    dir: &Path,
    max_bytes: u64,
) -> Result<(PathBuf, u64), IntakeError> {
    save_stream(field, dir, max_bytes).await
}

/// [`save_field`] for any stream of chunks (a raw request body, a test's chunks).
pub async fn save_stream<S, E>(
    mut chunks: S,
    dir: &Path,
    max_bytes: u64,
) -> Result<(PathBuf, u64), IntakeError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    std::fs::create_dir_all(dir).map_err(io_err("creating the upload folder"))?;
    let path = dir.join(format!("upload-{}.partial", uuid::Uuid::new_v4()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("creating the upload file"))?;
    match write_chunks(&mut chunks, file, max_bytes).await {
        Ok(size) => Ok((path, size)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

async fn write_chunks<S, E>(chunks: &mut S, file: File, max_bytes: u64) -> Result<u64, IntakeError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut received = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| IntakeError::Interrupted(e.to_string()))?;
        received = received.saturating_add(chunk.len() as u64);
        // Checked before writing, so no more than the limit ever reaches the disk.
        if received > max_bytes {
            return Err(IntakeError::TooLarge { limit: max_bytes });
        }
        out.write_all(&chunk)
            .map_err(io_err("writing the upload"))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| io_err("writing the upload")(e.into_error()))?;
    // fsync can take seconds for a large file: keep it off the HTTP worker thread.
    actix_web::web::block(move || file.sync_all())
        .await
        .map_err(|e| io_err("writing the upload")(io::Error::other(e.to_string())))?
        .map_err(io_err("writing the upload"))?;
    Ok(received)
}

/// Keeps `[A-Za-z0-9._-]`, turns every run of other characters into one `_`, drops leading
/// dots and keeps at most 100 characters; never empty (`upload`). The result is a single,
/// harmless path component (no separators, never `.` or `..`).
pub fn sanitise_filename(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(100));
    let mut in_run = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    let mut out = out.trim_start_matches('.').to_owned();
    // Only ASCII is left, so any byte index is a character boundary.
    out.truncate(100);
    if out.is_empty() {
        "upload".to_owned()
    } else {
        out
    }
}

/// Checks the uploaded `temp_file` by its content and puts the job input under `dest_dir`
/// (created; it should be the upload's own, new folder, e.g. `storage/uploads/<uuid>/`):
///
/// - NIfTI / NRRD: moved to `dest_dir/<name>.nii|.nii.gz|.nrrd`, where `<name>` is
///   `original_name` without its extension, [sanitised](sanitise_filename) (`input` when
///   nothing is left); the extension follows the content, not the name sent.
/// - DICOM zip: unpacked with `limits.zip` and every file checked to be DICOM Part 10 (a
///   `DICOMDIR`, `__MACOSX/` and `.DS_Store` are dropped); the instances land flat in
///   `dest_dir/series/` as `000001.dcm`, … (the series reader takes a folder's top-level files),
///   and that folder is the input.
///
/// The temp file is gone afterwards either way. On any refusal `dest_dir` is removed too, so
/// nothing is left behind — except that a `dest_dir` that already holds anything besides
/// `temp_file` is refused untouched, so a wrong argument cannot delete someone else's files.
/// Blocking (decompression reads the whole file): call it through `web::block`.
pub fn accept(
    temp_file: &Path,
    original_name: &str,
    dest_dir: &Path,
    limits: &IntakeLimits,
) -> Result<Accepted, IntakeError> {
    if let Err(e) = check_fresh(dest_dir, temp_file) {
        let _ = std::fs::remove_file(temp_file);
        return Err(e);
    }
    let result = accept_into(temp_file, original_name, dest_dir, limits);
    // After a move this finds nothing; after a copy or an unpack it removes the upload.
    let _ = std::fs::remove_file(temp_file);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest_dir);
    }
    result
}

/// `dest_dir` is absent, empty, or holds only `temp_file`.
fn check_fresh(dest_dir: &Path, temp_file: &Path) -> Result<(), IntakeError> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dest_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("preparing the upload's folder")(e)),
    };
    let temp = std::fs::metadata(temp_file)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    for entry in entries {
        let entry = entry.map_err(io_err("preparing the upload's folder"))?;
        let id = entry.metadata().ok().map(|m| (m.dev(), m.ino()));
        if id.is_none() || id != temp {
            return Err(IntakeError::Io {
                context: "preparing the upload's folder",
                error: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the folder for this upload is already in use",
                ),
            });
        }
    }
    Ok(())
}

fn accept_into(
    temp_file: &Path,
    original_name: &str,
    dest_dir: &Path,
    limits: &IntakeLimits,
) -> Result<Accepted, IntakeError> {
    let kind = sniff(temp_file, limits)?;
    std::fs::create_dir_all(dest_dir).map_err(io_err("creating the upload's folder"))?;
    let accepted = match kind.extension() {
        Some(ext) => {
            let target = dest_dir.join(format!("{}{ext}", input_stem(original_name)));
            move_file(temp_file, &target)?;
            let size_bytes = std::fs::metadata(&target)
                .map_err(io_err("storing the upload"))?
                .len();
            Accepted {
                kind,
                input_path: target,
                size_bytes,
            }
        }
        None => {
            let series = dest_dir.join("series");
            let size_bytes = unpack_series(temp_file, dest_dir, &series, limits)?;
            Accepted {
                kind,
                input_path: series,
                size_bytes,
            }
        }
    };
    sync_dir(dest_dir);
    Ok(accepted)
}

/// The original name without a known image/archive extension, sanitised; `input` if empty.
fn input_stem(original_name: &str) -> String {
    let lower = original_name.to_ascii_lowercase();
    let mut stem = original_name;
    for ext in [".nii.gz", ".nii", ".nrrd", ".nhdr", ".gz", ".zip"] {
        if lower.ends_with(ext) {
            stem = &original_name[..original_name.len() - ext.len()];
            break;
        }
    }
    if stem.trim_start_matches('.').trim().is_empty() {
        "input".to_owned()
    } else {
        sanitise_filename(stem)
    }
}

/// Renames, or copies (another file system) and fsyncs.
fn move_file(from: &Path, to: &Path) -> Result<(), IntakeError> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let copy = || -> io::Result<()> {
        let mut src = File::open(from)?;
        let mut dst = OpenOptions::new().write(true).create_new(true).open(to)?;
        io::copy(&mut src, &mut dst)?;
        dst.sync_all()
    };
    copy().map_err(io_err("storing the upload"))
}

/// Best effort: makes renames into `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Unpacks the zip into `dest_dir/.unpack`, checks every file, and moves the DICOM files flat
/// into `series`; returns their bytes together.
fn unpack_series(
    zip: &Path,
    dest_dir: &Path,
    series: &Path,
    limits: &IntakeLimits,
) -> Result<u64, IntakeError> {
    let staging = dest_dir.join(".unpack");
    let zip_limits = archive::Limits {
        max_total_bytes: limits
            .zip
            .max_total_bytes
            .min(limits.max_uncompressed_bytes),
        ..limits.zip
    };
    let files =
        archive::unpack(zip, &staging, zip_limits).map_err(|e| archive_error(e, zip_limits))?;
    let mut instances = Vec::new();
    for rel in files {
        if is_ignored(&rel) {
            continue;
        }
        if !is_part10(&staging.join(&rel))? {
            return Err(IntakeError::NotDicom {
                entry: rel.to_string_lossy().into_owned(),
            });
        }
        instances.push(rel);
    }
    if instances.is_empty() {
        return Err(IntakeError::NoDicom);
    }
    std::fs::create_dir_all(series).map_err(io_err("unpacking the zip"))?;
    let mut total = 0u64;
    // `unpack` lists entries in zip order; sorting by path keeps a folder's files together.
    instances.sort();
    for (i, rel) in instances.iter().enumerate() {
        let target = series.join(format!("{:06}.dcm", i + 1));
        std::fs::rename(staging.join(rel), &target).map_err(io_err("unpacking the zip"))?;
        total += std::fs::metadata(&target)
            .map_err(io_err("unpacking the zip"))?
            .len();
    }
    let _ = std::fs::remove_dir_all(&staging);
    sync_dir(series);
    Ok(total)
}

fn archive_error(error: ArchiveError, limits: archive::Limits) -> IntakeError {
    match error {
        ArchiveError::Io { error, .. } => io_err("unpacking the zip")(error),
        ArchiveError::Format(reason) => {
            IntakeError::Corrupt(format!("not a readable zip archive ({reason})"))
        }
        ArchiveError::Refused(reason) => IntakeError::ZipRefused(format!(
            "{reason} (limits: {} entries, {} unpacked, {}× inflation per entry)",
            limits.max_entries,
            human(limits.max_total_bytes),
            limits.max_ratio
        )),
    }
}

/// A `DICOMDIR` (an index, not an image) or macOS's folder junk.
fn is_ignored(rel: &Path) -> bool {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.eq_ignore_ascii_case("DICOMDIR")
        || name == ".DS_Store"
        || rel.components().any(|c| c.as_os_str() == "__MACOSX")
}

/// Whether the file carries the Part 10 preamble and `DICM` prefix.
fn is_part10(path: &Path) -> Result<bool, IntakeError> {
    let mut file = File::open(path).map_err(io_err("unpacking the zip"))?;
    let mut head = [0u8; 132];
    let n = read_up_to(&mut file, &mut head).map_err(io_err("unpacking the zip"))?;
    Ok(n == 132 && &head[128..] == b"DICM")
}

#[cfg(test)]
mod tests;
