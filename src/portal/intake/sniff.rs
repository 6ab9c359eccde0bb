//! What an upload is, decided by its content: NIfTI-1 (checked against its size), gzipped
//! NIfTI-1 (inflated only as far as the limit allows), NRRD with attached data, or a zip; anything
//! else is refused with a message that names what it looks like.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::{io_err, IntakeError, IntakeLimits, UploadKind};
use crate::volume::read_up_to;

/// How many bytes the content sniff looks at (a NIfTI-2 header is 540).
const HEAD_BYTES: usize = 544;
/// The longest NRRD header read while looking for the blank line that ends it.
pub(super) const MAX_NRRD_HEADER: usize = 64 << 10;

/// Decides what `path` holds by content (NIfTI, gzipped NIfTI, NRRD, zip).
pub(super) fn sniff(path: &Path, limits: &IntakeLimits) -> Result<UploadKind, IntakeError> {
    let mut file = File::open(path).map_err(io_err("reading the upload"))?;
    let mut head = [0u8; HEAD_BYTES];
    let n = read_up_to(&mut file, &mut head).map_err(io_err("reading the upload"))?;
    let head = &head[..n];
    if head.is_empty() {
        return Err(IntakeError::Empty);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return sniff_gzip(path, limits.max_uncompressed_bytes);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(UploadKind::DicomZip);
    }
    if is_nrrd_magic(head) {
        check_nrrd(path)?;
        return Ok(UploadKind::Nrrd);
    }
    let size = file.metadata().map_err(io_err("reading the upload"))?.len();
    if let Some(result) = nifti(head, size) {
        return result.map(|()| UploadKind::Nifti);
    }
    Err(IntakeError::Unsupported(unknown_content(head)))
}

/// `Some` when `head` is a NIfTI header: `Ok` for a single-file NIfTI-1 with image data
/// (`total` is the whole file's size), else why not.
fn nifti(head: &[u8], total: u64) -> Option<Result<(), IntakeError>> {
    let first: [u8; 4] = head.get(..4)?.try_into().ok()?;
    let sizeof_hdr = [i32::from_le_bytes(first), i32::from_be_bytes(first)];
    if sizeof_hdr.contains(&348) {
        let Some(magic) = head.get(344..348) else {
            // A file this short that starts like NIfTI-1: most likely cut off.
            return Some(Err(IntakeError::Corrupt(
                "the NIfTI header is cut short (less than 348 bytes)".into(),
            )));
        };
        return match magic {
            // 348 bytes of header, 4 of extension flag, then voxels.
            b"n+1\0" if total > 352 => Some(Ok(())),
            b"n+1\0" => Some(Err(IntakeError::Corrupt(
                "the NIfTI file holds a header but no image data".into(),
            ))),
            b"ni1\0" => Some(Err(IntakeError::Unsupported(
                "a NIfTI header/image pair (.hdr/.img) cannot be uploaded; save the image as a single .nii or .nii.gz".into(),
            ))),
            _ => None,
        };
    }
    if sizeof_hdr.contains(&540) {
        return match head.get(4..8)? {
            // The volume readers take NIfTI-1 only: refusing here beats a job that fails.
            b"n+2\0" | b"ni2\0" => Some(Err(IntakeError::Unsupported(
                "NIfTI-2 images are not read by this node; save the image as NIfTI-1 (.nii or .nii.gz)".into(),
            ))),
            _ => None,
        };
    }
    None
}

/// Decompresses the whole gzip stream (counting, not keeping) to check that it holds a NIfTI-1
/// image and inflates to no more than `max_uncompressed`.
fn sniff_gzip(path: &Path, max_uncompressed: u64) -> Result<UploadKind, IntakeError> {
    let file = File::open(path).map_err(io_err("reading the upload"))?;
    let mut gz = flate2::read::MultiGzDecoder::new(BufReader::new(file));
    let mut head = [0u8; HEAD_BYTES];
    let n = read_up_to(&mut gz, &mut head).map_err(gzip_error)?;
    let head = &head[..n];
    // The NIfTI checks need the total size, so test the magic first and the size after.
    let looks_nifti = nifti(head, u64::MAX);
    match looks_nifti {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(e),
        None if head.is_empty() => {
            return Err(IntakeError::Corrupt("the gzip file holds nothing".into()))
        }
        None => {
            return Err(IntakeError::Unsupported(
                "a gzip file is taken only when it holds a NIfTI-1 image (.nii.gz)".into(),
            ))
        }
    }
    // One byte past the limit is enough to know it is over.
    let allowance = max_uncompressed.saturating_add(1).saturating_sub(n as u64);
    let rest = io::copy(&mut (&mut gz).take(allowance), &mut io::sink()).map_err(gzip_error)?;
    let total = n as u64 + rest;
    if total > max_uncompressed {
        return Err(IntakeError::Bomb {
            what: "gzip file",
            limit: max_uncompressed,
        });
    }
    match nifti(head, total) {
        Some(Err(e)) => Err(e),
        _ => Ok(UploadKind::NiftiGz),
    }
}

/// A decoding failure is damage; anything else is the server's trouble.
fn gzip_error(error: io::Error) -> IntakeError {
    match error.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            IntakeError::Corrupt(
                "the gzip data is damaged or incomplete (was the upload cut off?)".into(),
            )
        }
        _ => io_err("reading the upload")(error),
    }
}

/// `NRRD000` and a version digit alone on the first line.
fn is_nrrd_magic(head: &[u8]) -> bool {
    head.len() >= 9
        && head.starts_with(b"NRRD000")
        && head[7].is_ascii_digit()
        && matches!(head[8], b'\n' | b'\r')
}

/// An NRRD header must end with a blank line within its first 64 KiB, not point at a detached
/// data file, and be followed by data.
fn check_nrrd(path: &Path) -> Result<(), IntakeError> {
    let mut file = File::open(path).map_err(io_err("reading the upload"))?;
    let mut buf = vec![0u8; MAX_NRRD_HEADER];
    let n = read_up_to(&mut file, &mut buf).map_err(io_err("reading the upload"))?;
    buf.truncate(n);
    let mut data_at = None;
    let mut pos = 0;
    let mut detached = false;
    let mut first = true;
    while let Some(len) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + len];
        pos += len + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if first {
            first = false;
            continue;
        }
        if line.is_empty() {
            data_at = Some(pos);
            break;
        }
        let text = String::from_utf8_lossy(line);
        if text.starts_with('#') || text.contains(":=") {
            continue; // comments and key/value pairs
        }
        if let Some((key, _)) = text.split_once(':') {
            let key = key.trim().to_ascii_lowercase();
            detached |= key == "data file" || key == "datafile";
        }
    }
    if detached {
        return Err(IntakeError::Unsupported(
            "an NRRD header that points to a separate data file (.nhdr) cannot be uploaded; save the image as a single .nrrd".into(),
        ));
    }
    let Some(data_at) = data_at else {
        return Err(IntakeError::Corrupt(
            "the NRRD header does not end with a blank line within its first 64 KiB".into(),
        ));
    };
    let size = file.metadata().map_err(io_err("reading the upload"))?.len();
    if size <= data_at as u64 {
        return Err(IntakeError::Corrupt(
            "the NRRD file holds a header but no image data".into(),
        ));
    }
    Ok(())
}

/// Why a file that is none of ours was refused, naming what it looks like where that is easy.
fn unknown_content(head: &[u8]) -> String {
    const KNOWN: [(usize, &[u8], &str); 9] = [
        (0, b"\x89PNG", "a PNG image"),
        (0, b"\xff\xd8\xff", "a JPEG image"),
        (0, b"%PDF", "a PDF document"),
        (0, b"BZh", "a bzip2 archive"),
        (0, b"7z\xbc\xaf", "a 7-Zip archive"),
        (0, b"Rar!", "a RAR archive"),
        (0, b"\xfd7zXZ", "an xz archive"),
        (257, b"ustar", "a tar archive"),
        (
            128,
            b"DICM",
            "a single DICOM file (zip the whole series instead)",
        ),
    ];
    let looks = KNOWN
        .iter()
        .find(|(at, magic, _)| head.get(*at..).is_some_and(|h| h.starts_with(magic)))
        .map(|(_, _, what)| format!(" (it looks like {what})"))
        .unwrap_or_default();
    format!("the file is not a NIfTI-1 (.nii, .nii.gz), NRRD (.nrrd) or zipped DICOM series (.zip), whatever its name says{looks}")
}
