use super::sniff::MAX_NRRD_HEADER;
use super::*;

/// A NIfTI-1 header (348 bytes, `n+1`) plus the extension flag and `data` bytes.
fn nifti_bytes(big_endian: bool, magic: &[u8; 4], data: usize) -> Vec<u8> {
    let mut b = vec![0u8; 352 + data];
    let size = if big_endian {
        348i32.to_be_bytes()
    } else {
        348i32.to_le_bytes()
    };
    b[..4].copy_from_slice(&size);
    b[344..348].copy_from_slice(magic);
    b
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn part10(extra: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b.extend_from_slice(b"DICM");
    b.extend_from_slice(extra);
    b
}

fn zip_bytes(entries: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let mut z = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        z.start_file(
            *name,
            zip::write::SimpleFileOptions::default().compression_method(method),
        )
        .unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

struct Case {
    _root: tempfile::TempDir,
    temp: PathBuf,
    dest: PathBuf,
}

/// An upload holding `content` in `root/tmp/`, and `root/uploads/u1` as its destination.
fn case(content: &[u8]) -> Case {
    let root = tempfile::tempdir().unwrap();
    let tmp = root.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let temp = tmp.join("upload.partial");
    std::fs::write(&temp, content).unwrap();
    let dest = root.path().join("uploads").join("u1");
    Case {
        _root: root,
        temp,
        dest,
    }
}

fn accept_ok(content: &[u8], name: &str, limits: &IntakeLimits) -> (Case, Accepted) {
    let c = case(content);
    let a = accept(&c.temp, name, &c.dest, limits).unwrap();
    assert!(!c.temp.exists(), "the temp file is gone");
    (c, a)
}

/// Refuses `content`, checks that nothing is left, returns the error.
fn refused(content: &[u8], name: &str, limits: &IntakeLimits) -> IntakeError {
    let c = case(content);
    let e = accept(&c.temp, name, &c.dest, limits).unwrap_err();
    assert!(!c.dest.exists(), "{e}: dest_dir left behind");
    assert!(!c.temp.exists(), "{e}: temp file left behind");
    e
}

#[test]
fn nifti_is_moved_with_a_safe_name_and_its_extension() {
    let bytes = nifti_bytes(false, b"n+1\0", 1000);
    let (c, a) = accept_ok(&bytes, "Knee Left (3T).NII", &IntakeLimits::default());
    assert_eq!(a.kind, UploadKind::Nifti);
    assert_eq!(a.input_path, c.dest.join("Knee_Left_3T_.nii"));
    assert_eq!(a.size_bytes, bytes.len() as u64);
    assert_eq!(std::fs::read(&a.input_path).unwrap(), bytes);
    // Big-endian; the name lies (.nrrd) and the content wins.
    let be = nifti_bytes(true, b"n+1\0", 10);
    let (c, a) = accept_ok(&be, "scan.nrrd", &IntakeLimits::default());
    assert_eq!(a.kind, UploadKind::Nifti);
    assert_eq!(a.input_path, c.dest.join("scan.nii"));
}

#[test]
fn gzipped_nifti_is_counted_to_the_end() {
    let raw = nifti_bytes(false, b"n+1\0", 100_000);
    let (c, a) = accept_ok(&gzip(&raw), "knee.gz", &IntakeLimits::default());
    assert_eq!(a.kind, UploadKind::NiftiGz);
    assert_eq!(a.input_path, c.dest.join("knee.nii.gz"));
    // The limit is on the inflated size: exactly at it passes, one byte under refuses.
    let at = IntakeLimits {
        max_uncompressed_bytes: raw.len() as u64,
        ..IntakeLimits::default()
    };
    accept_ok(&gzip(&raw), "knee.nii.gz", &at);
    let under = IntakeLimits {
        max_uncompressed_bytes: raw.len() as u64 - 1,
        ..IntakeLimits::default()
    };
    let e = refused(&gzip(&raw), "knee.nii.gz", &under);
    assert!(matches!(e, IntakeError::Bomb { .. }), "{e}");
}

#[test]
fn a_gzip_bomb_is_refused() {
    // 50 MB of zeros behind a NIfTI header gzips to ~50 KB.
    let bomb = gzip(&nifti_bytes(false, b"n+1\0", 50_000_000));
    assert!(bomb.len() < 1_000_000);
    let limits = IntakeLimits {
        max_uncompressed_bytes: 10 << 20,
        ..IntakeLimits::default()
    };
    let e = refused(&bomb, "bomb.nii.gz", &limits);
    assert!(matches!(e, IntakeError::Bomb { .. }), "{e}");
    assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e.to_string().contains("10 MiB"), "{e}");
    // The same file under the default limit is a (large, dull) image.
    accept_ok(&bomb, "bomb.nii.gz", &IntakeLimits::default());
}

#[test]
fn damaged_or_foreign_gzip_is_refused() {
    let mut cut = gzip(&nifti_bytes(false, b"n+1\0", 100_000));
    cut.truncate(cut.len() - 10);
    let e = refused(&cut, "k.nii.gz", &IntakeLimits::default());
    assert!(matches!(e, IntakeError::Corrupt(_)), "{e}");
    let e = refused(&gzip(b"just text"), "k.nii.gz", &IntakeLimits::default());
    assert!(matches!(e, IntakeError::Unsupported(_)), "{e}");
    assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[test]
fn nrrd_with_attached_data_is_accepted() {
    let mut bytes = b"NRRD0004\n# comment\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nfoo:=data file\n\n".to_vec();
    bytes.extend_from_slice(&[0u8; 16]);
    let (c, a) = accept_ok(&bytes, "../../etc/knee.nrrd", &IntakeLimits::default());
    assert_eq!(a.kind, UploadKind::Nrrd);
    assert_eq!(a.input_path, c.dest.join("_.._etc_knee.nrrd"));
    // CRLF line ends.
    let crlf = b"NRRD0005\r\ntype: short\r\nsizes: 2 2 2\r\n\r\n\x01\x02".to_vec();
    let (_, a) = accept_ok(&crlf, "x", &IntakeLimits::default());
    assert_eq!(a.kind, UploadKind::Nrrd);
}

#[test]
fn nrrd_refusals() {
    let l = IntakeLimits::default();
    for field in [
        "data file: knee.raw",
        "DataFile: knee.raw.gz",
        "datafile : x",
    ] {
        let bytes = format!("NRRD0004\ntype: short\n{field}\n\n");
        let e = refused(bytes.as_bytes(), "k.nrrd", &l);
        assert!(
            matches!(e, IntakeError::Unsupported(ref m) if m.contains("separate data file")),
            "{field}: {e}"
        );
    }
    // An .nhdr without the blank line is still named as detached.
    let e = refused(b"NRRD0004\ntype: short\ndata file: k.raw\n", "k.nhdr", &l);
    assert!(matches!(e, IntakeError::Unsupported(_)), "{e}");
    let mut endless = b"NRRD0004\n".to_vec();
    while endless.len() <= MAX_NRRD_HEADER {
        endless.extend_from_slice(b"# a comment line that goes on\n");
    }
    endless.extend_from_slice(b"\n\x01");
    let e = refused(&endless, "k.nrrd", &l);
    assert!(
        matches!(e, IntakeError::Corrupt(ref m) if m.contains("64 KiB")),
        "{e}"
    );
    let e = refused(b"NRRD0004\ntype: short\n\n", "k.nrrd", &l);
    assert!(
        matches!(e, IntakeError::Corrupt(ref m) if m.contains("no image data")),
        "{e}"
    );
}

#[test]
fn dicom_zip_is_unpacked_flat_without_junk() {
    let zip = zip_bytes(
        &[
            ("STUDY/SER1/IM2", part10(b"two")),
            ("STUDY/SER1/IM1", part10(b"one")),
            ("STUDY/DICOMDIR", b"index".to_vec()),
            ("__MACOSX/STUDY/._IM1", b"junk".to_vec()),
            ("STUDY/.DS_Store", b"junk".to_vec()),
        ],
        true,
    );
    let (c, a) = accept_ok(&zip, "series.zip", &IntakeLimits::default());
    assert_eq!(a.kind, UploadKind::DicomZip);
    assert_eq!(a.input_path, c.dest.join("series"));
    let mut names: Vec<String> = std::fs::read_dir(&a.input_path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["000001.dcm", "000002.dcm"]);
    assert_eq!(
        std::fs::read(a.input_path.join("000001.dcm")).unwrap(),
        part10(b"one")
    );
    assert_eq!(a.size_bytes, 2 * 135);
    // Nothing but the series folder remains in dest_dir.
    let top: Vec<_> = std::fs::read_dir(&c.dest).unwrap().collect();
    assert_eq!(top.len(), 1);
    // The series reader sees both instances.
    assert_eq!(crate::volume::dicom_files(&a.input_path).unwrap().len(), 2);
}

#[test]
fn zip_refusals_leave_nothing() {
    let l = IntakeLimits::default();
    let e = refused(
        &zip_bytes(
            &[("ok.dcm", part10(b"")), ("../evil.dcm", part10(b""))],
            false,
        ),
        "s.zip",
        &l,
    );
    assert!(
        matches!(e, IntakeError::ZipRefused(ref m) if m.contains("../evil.dcm")),
        "{e}"
    );
    assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A deflate bomb by ratio: 8 MiB of zeros behind a DICOM preamble.
    let e = refused(
        &zip_bytes(&[("a.dcm", part10(&vec![0u8; 8 << 20]))], true),
        "s.zip",
        &l,
    );
    assert!(
        matches!(e, IntakeError::ZipRefused(ref m) if m.contains("inflates")),
        "{e}"
    );

    // The total limit is the smaller of the two.
    let small = IntakeLimits {
        max_uncompressed_bytes: 1500,
        ..IntakeLimits::default()
    };
    let two = zip_bytes(&[("a", part10(&[1; 900])), ("b", part10(&[2; 900]))], false);
    let e = refused(&two, "s.zip", &small);
    assert!(
        matches!(e, IntakeError::ZipRefused(ref m) if m.contains("1500")),
        "{e}"
    );
    accept_ok(&two, "s.zip", &l);

    let e = refused(
        &zip_bytes(
            &[("s/IM1", part10(b"")), ("s/notes.txt", b"hello".to_vec())],
            true,
        ),
        "s.zip",
        &l,
    );
    assert!(
        matches!(e, IntakeError::NotDicom { ref entry } if entry == "s/notes.txt"),
        "{e}"
    );
    assert!(e.to_string().contains("\"s/notes.txt\""), "{e}");

    let e = refused(
        &zip_bytes(&[("DICOMDIR", b"x".to_vec())], false),
        "s.zip",
        &l,
    );
    assert!(matches!(e, IntakeError::NoDicom), "{e}");
    let e = refused(&zip_bytes(&[], false), "s.zip", &l);
    assert!(matches!(e, IntakeError::NoDicom), "{e}");

    let e = refused(b"PK\x03\x04 not really a zip", "s.zip", &l);
    assert!(matches!(e, IntakeError::Corrupt(_)), "{e}");
}

#[test]
fn other_content_is_refused_whatever_its_name() {
    let l = IntakeLimits::default();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.resize(2000, 7);
    let e = refused(&png, "knee.nii", &l);
    assert!(
        matches!(e, IntakeError::Unsupported(ref m) if m.contains("PNG")),
        "{e}"
    );
    assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let e = refused(&part10(&[0; 100]), "IM0001.dcm", &l);
    assert!(e.to_string().contains("single DICOM file"), "{e}");

    let e = refused(b"", "knee.nii", &l);
    assert!(matches!(e, IntakeError::Empty), "{e}");
    assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let e = refused(&nifti_bytes(false, b"ni1\0", 10), "knee.hdr", &l);
    assert!(
        matches!(e, IntakeError::Unsupported(ref m) if m.contains(".hdr/.img")),
        "{e}"
    );
    let e = refused(&nifti_bytes(false, b"n+1\0", 0), "knee.nii", &l);
    assert!(
        matches!(e, IntakeError::Corrupt(ref m) if m.contains("no image data")),
        "{e}"
    );
    let e = refused(&nifti_bytes(false, b"n+1\0", 0)[..200], "knee.nii", &l);
    assert!(
        matches!(e, IntakeError::Corrupt(ref m) if m.contains("cut short")),
        "{e}"
    );

    let mut v2 = vec![0u8; 600];
    v2[..4].copy_from_slice(&540i32.to_le_bytes());
    v2[4..8].copy_from_slice(b"n+2\0");
    let e = refused(&v2, "knee.nii", &l);
    assert!(
        matches!(e, IntakeError::Unsupported(ref m) if m.contains("NIfTI-2")),
        "{e}"
    );

    // 348 at the start but no magic: not ours.
    let e = refused(&nifti_bytes(false, b"xxxx", 10), "knee.nii", &l);
    assert!(matches!(e, IntakeError::Unsupported(_)), "{e}");
}

#[test]
fn a_used_destination_is_refused_untouched() {
    let c = case(&nifti_bytes(false, b"n+1\0", 10));
    std::fs::create_dir_all(&c.dest).unwrap();
    std::fs::write(c.dest.join("other.nii"), b"keep").unwrap();
    let e = accept(&c.temp, "k.nii", &c.dest, &IntakeLimits::default()).unwrap_err();
    assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(std::fs::read(c.dest.join("other.nii")).unwrap(), b"keep");
    assert!(!c.temp.exists());

    // A temp file saved into the destination itself is fine.
    let c = case(&nifti_bytes(false, b"n+1\0", 10));
    std::fs::create_dir_all(&c.dest).unwrap();
    let inside = c.dest.join("upload.partial");
    std::fs::rename(&c.temp, &inside).unwrap();
    let a = accept(&inside, "k.nii", &c.dest, &IntakeLimits::default()).unwrap();
    assert_eq!(a.input_path, c.dest.join("k.nii"));
    assert!(!inside.exists());
}

#[test]
fn sanitised_names() {
    assert_eq!(sanitise_filename("knee_L-1.nii.gz"), "knee_L-1.nii.gz");
    assert_eq!(
        sanitise_filename("Knie Müller  (links).nii"),
        "Knie_M_ller_links_.nii"
    );
    assert_eq!(sanitise_filename("../../etc/passwd"), "_.._etc_passwd");
    assert_eq!(sanitise_filename("..."), "upload");
    assert_eq!(sanitise_filename(""), "upload");
    assert_eq!(sanitise_filename(".hidden"), "hidden");
    assert_eq!(sanitise_filename("a/b\\c"), "a_b_c");
    assert_eq!(sanitise_filename(&"x".repeat(300)).len(), 100);
    assert_eq!(input_stem("SCAN.NII.GZ"), "SCAN");
    assert_eq!(input_stem(".nii"), "input");
    assert_eq!(input_stem(""), "input");
}

#[test]
fn statuses_and_messages() {
    let full = IntakeError::Io {
        context: "writing the upload",
        error: io::Error::from(io::ErrorKind::StorageFull),
    };
    assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(full.to_string().contains("storage is full"), "{full}");
    let other = IntakeError::Io {
        context: "writing the upload",
        error: io::Error::from(io::ErrorKind::PermissionDenied),
    };
    assert_eq!(other.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(IntakeError::MissingFile.status(), StatusCode::BAD_REQUEST);
    let big = IntakeError::TooLarge { limit: 2 << 30 };
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big.to_string().contains("2 GiB"), "{big}");
    assert_eq!(human(1536), "1.5 KiB");
    assert_eq!(human(999), "999 bytes");
}

fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
    let v: Vec<Result<Bytes, io::Error>> = sizes
        .iter()
        .map(|&n| Ok(Bytes::from(vec![7u8; n])))
        .collect();
    futures_util::stream::iter(v)
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[actix_web::test]
async fn streamed_uploads_stop_at_the_limit() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("incoming");
    // Exactly at the limit: kept.
    let (path, size) = save_stream(chunks(&[400, 400, 200]), &dir, 1000)
        .await
        .unwrap();
    assert_eq!(size, 1000);
    assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1000]);
    std::fs::remove_file(&path).unwrap();
    // One byte over: refused, nothing left.
    let e = save_stream(chunks(&[400, 400, 201]), &dir, 1000)
        .await
        .unwrap_err();
    assert!(matches!(e, IntakeError::TooLarge { limit: 1000 }), "{e}");
    assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(files_in(&dir), 0);
    // Refused as soon as the limit is passed: later chunks are never pulled.
    let pulled = std::cell::Cell::new(0);
    let counting = futures_util::stream::iter(0..100).map(|_| {
        pulled.set(pulled.get() + 1);
        Ok::<_, io::Error>(Bytes::from(vec![1u8; 100]))
    });
    let e = save_stream(counting, &dir, 250).await.unwrap_err();
    assert!(matches!(e, IntakeError::TooLarge { .. }), "{e}");
    assert_eq!(pulled.get(), 3);
    assert_eq!(files_in(&dir), 0);
    // A broken stream: 400, nothing left.
    let broken = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(io::Error::other("connection reset")),
    ]);
    let e = save_stream(broken, &dir, 1000).await.unwrap_err();
    assert!(matches!(e, IntakeError::Interrupted(_)), "{e}");
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert_eq!(files_in(&dir), 0);
}

#[actix_web::test]
async fn a_saved_upload_goes_through_accept() {
    let root = tempfile::tempdir().unwrap();
    let bytes = nifti_bytes(false, b"n+1\0", 5000);
    let parts: Vec<Result<Bytes, io::Error>> = bytes
        .chunks(1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let (path, size) = save_stream(
        futures_util::stream::iter(parts),
        &root.path().join("tmp"),
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(size, bytes.len() as u64);
    let dest = root.path().join("uploads/x");
    let a = accept(&path, "k.nii", &dest, &IntakeLimits::default()).unwrap();
    assert_eq!(std::fs::read(a.input_path).unwrap(), bytes);
    assert_eq!(files_in(&root.path().join("tmp")), 0);
}
