//! Zip archives that cross a trust boundary: a job's input sent to a remote worker, and the
//! results a worker uploads back. Packing is plain; unpacking refuses anything that could escape
//! the target folder or exhaust the disk (a zip bomb): absolute or `..` paths, links, too many
//! entries, too many bytes, and entries that inflate far beyond their compressed size.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// Limits for [`unpack`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries at most.
    pub max_entries: usize,
    /// Uncompressed bytes at most, all entries together.
    pub max_total_bytes: u64,
    /// Largest uncompressed / compressed ratio of one entry (deflate reaches ~1000 on zeros; a
    /// DICOM series or a label volume stays far below 100).
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 20_000,
            max_total_bytes: 8 << 30,
            max_ratio: 200,
        }
    }
}

/// An archive that was refused or could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// Not a zip, or a damaged one.
    #[error("not a readable zip archive: {0}")]
    Format(String),
    /// The archive breaks a rule (path, size, ratio, count).
    #[error("archive refused: {0}")]
    Refused(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |error| ArchiveError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Packs `input` into a zip at `out` (see [`pack_into`]); returns the zip's size.
pub fn pack(input: &Path, out: &Path) -> Result<u64, ArchiveError> {
    let file = std::fs::File::create(out).map_err(io(out))?;
    let mut w = pack_into(input, std::io::BufWriter::new(file))?;
    w.flush().map_err(io(out))?;
    drop(w);
    Ok(std::fs::metadata(out).map_err(io(out))?.len())
}

/// Packs `input` into a zip written to `w`: a folder's files (not sub-folders) as
/// `<folder>/<file>`, or a single file as `<file>`. Entries are stored (DICOM and gzip do not
/// deflate usefully). Returns the writer.
pub fn pack_into<W: Write + std::io::Seek>(input: &Path, w: W) -> Result<W, ArchiveError> {
    let mut zip = zip::ZipWriter::new(w);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "input".into())
    };
    let entries: Vec<(String, PathBuf)> = if input.is_dir() {
        let top = name_of(input);
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(io(input))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|f| (format!("{top}/{}", name_of(&f)), f))
            .collect()
    } else {
        let _ = std::fs::metadata(input).map_err(io(input))?;
        vec![(name_of(input), input.to_owned())]
    };
    for (name, path) in entries {
        zip.start_file(name, options)
            .map_err(|e| ArchiveError::Format(e.to_string()))?;
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        std::io::copy(&mut f, &mut zip).map_err(io(&path))?;
    }
    zip.finish()
        .map_err(|e| ArchiveError::Format(e.to_string()))
}

/// A relative path made only of normal components, or `None`.
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\\') || name.contains('\0') {
        return None;
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Unpacks `zip_path` into `dest` (created), enforcing `limits`; returns the files written, as
/// paths relative to `dest`. On refusal, whatever was written is removed.
pub fn unpack(zip_path: &Path, dest: &Path, limits: Limits) -> Result<Vec<PathBuf>, ArchiveError> {
    let result = unpack_inner(zip_path, dest, limits);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner(
    zip_path: &Path,
    dest: &Path,
    limits: Limits,
) -> Result<Vec<PathBuf>, ArchiveError> {
    let file = std::fs::File::open(zip_path).map_err(io(zip_path))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| ArchiveError::Format(e.to_string()))?;
    if zip.len() > limits.max_entries {
        return Err(ArchiveError::Refused(format!(
            "{} entries (at most {})",
            zip.len(),
            limits.max_entries
        )));
    }
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut total = 0u64;
    let mut written = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| ArchiveError::Format(e.to_string()))?;
        let name = entry.name().to_owned();
        if entry.is_dir() {
            continue;
        }
        if entry.is_symlink() || !entry.is_file() {
            return Err(ArchiveError::Refused(format!(
                "{name:?} is not a plain file"
            )));
        }
        let rel = safe_relative(&name)
            .ok_or_else(|| ArchiveError::Refused(format!("unsafe path {name:?}")))?;
        let declared = entry.size();
        if declared > limits.max_total_bytes.saturating_sub(total) {
            return Err(ArchiveError::Refused(format!(
                "more than {} bytes uncompressed",
                limits.max_total_bytes
            )));
        }
        let compressed = entry.compressed_size().max(1);
        if declared > 1 << 20 && declared / compressed > limits.max_ratio {
            return Err(ArchiveError::Refused(format!(
                "{name:?} inflates {}× (at most {}×)",
                declared / compressed,
                limits.max_ratio
            )));
        }
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut out = std::fs::File::create(&target).map_err(io(&target))?;
        // The declared size can lie: count what actually comes out, one byte past the claim.
        let mut limited = (&mut entry).take(declared + 1);
        let copied = std::io::copy(&mut limited, &mut out).map_err(io(&target))?;
        if copied != declared {
            return Err(ArchiveError::Refused(format!(
                "{name:?} holds other than its declared {declared} bytes"
            )));
        }
        out.sync_all().map_err(io(&target))?;
        total += copied;
        written.push(rel);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(entries: &[(&str, Vec<u8>)], deflate: bool) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(std::fs::File::create(f.path()).unwrap());
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        for (name, data) in entries {
            z.start_file(
                *name,
                zip::write::SimpleFileOptions::default().compression_method(method),
            )
            .unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        f
    }

    #[test]
    fn a_folder_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let series = dir.path().join("1.2.3");
        std::fs::create_dir(&series).unwrap();
        std::fs::write(series.join("a.dcm"), b"aaa").unwrap();
        std::fs::write(series.join("b.dcm"), b"bb").unwrap();
        let z = dir.path().join("in.zip");
        pack(&series, &z).unwrap();
        let out = dir.path().join("out");
        let files = unpack(&z, &out, Limits::default()).unwrap();
        assert_eq!(
            files,
            [PathBuf::from("1.2.3/a.dcm"), PathBuf::from("1.2.3/b.dcm")]
        );
        assert_eq!(std::fs::read(out.join("1.2.3/b.dcm")).unwrap(), b"bb");
    }

    #[test]
    fn escapes_bombs_and_floods_are_refused_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["../evil", "/etc/passwd", "a/../../b", "c:\\x"] {
            let z = zip_of(&[(name, b"x".to_vec())], false);
            let out = dir.path().join("o1");
            let e = unpack(z.path(), &out, Limits::default()).unwrap_err();
            assert!(matches!(e, ArchiveError::Refused(_)), "{name}: {e}");
            assert!(!out.exists());
        }
        // 64 MiB of zeros deflates to ~64 KiB: a bomb by ratio.
        let z = zip_of(&[("zeros.bin", vec![0u8; 64 << 20])], true);
        let e = unpack(z.path(), &dir.path().join("o2"), Limits::default()).unwrap_err();
        assert!(e.to_string().contains("inflates"), "{e}");
        // Too many bytes in all.
        let z = zip_of(&[("a", vec![1u8; 1000]), ("b", vec![2u8; 1000])], false);
        let small = Limits {
            max_total_bytes: 1500,
            ..Limits::default()
        };
        let e = unpack(z.path(), &dir.path().join("o3"), small).unwrap_err();
        assert!(e.to_string().contains("1500 bytes"), "{e}");
        // Too many entries.
        let few = Limits {
            max_entries: 1,
            ..Limits::default()
        };
        let e = unpack(z.path(), &dir.path().join("o4"), few).unwrap_err();
        assert!(e.to_string().contains("2 entries"), "{e}");
        // Not a zip at all.
        let junk = dir.path().join("junk.zip");
        std::fs::write(&junk, b"PK\x03\x04 nonsense").unwrap();
        assert!(matches!(
            unpack(&junk, &dir.path().join("o5"), Limits::default()),
            Err(ArchiveError::Format(_))
        ));
    }
}
