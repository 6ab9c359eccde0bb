//! Round trips through the files and grids of this module, and the errors a bad file gives.

use super::geometry::rotation;
use super::*;

#[test]
fn layout_is_i_fastest() {
    let v = Volume::from_vec([2, 3, 4], (0..24).collect(), Geometry::default()).unwrap();
    assert_eq!(v.get(1, 0, 0), Some(&1));
    assert_eq!(v.get(0, 1, 0), Some(&2));
    assert_eq!(v.get(0, 0, 1), Some(&6));
    assert_eq!(v[[1, 2, 3]], 23);
    assert_eq!(v.get(2, 0, 0), None);
    let mut w = v.map(|&x| x as f32 * 0.5);
    w.set(1, 2, 3, -1.0);
    assert_eq!(w[[1, 2, 3]], -1.0);
    assert_eq!(w.geometry(), v.geometry());
}

#[test]
fn from_vec_checks_the_length() {
    let e = Volume::from_vec([2, 2, 2], vec![0u8; 7], Geometry::default()).unwrap_err();
    assert!(e.to_string().contains("2×2×2"), "{e}");
    assert!(Volume::from_vec([usize::MAX, 2, 1], vec![0u8; 2], Geometry::default()).is_err());
}

#[test]
fn formats_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let v = Volume::from_vec([2, 1, 1], vec![1u8, 2], Geometry::default()).unwrap();
    for name in ["a.nii", "b.nii.gz", "c.nrrd"] {
        let p = dir.path().join(name);
        write_volume(&p, &v).unwrap();
        let renamed = dir.path().join(format!("upload-{name}.bin"));
        std::fs::copy(&p, &renamed).unwrap();
        assert_eq!(
            Format::detect(&renamed).unwrap(),
            Format::from_name(&p).unwrap()
        );
        assert_eq!(read_labels(&renamed).unwrap().data(), &[1, 2]);
    }
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"hello").unwrap();
    let e = read_image(&junk).unwrap_err();
    assert!(e.to_string().contains("supported formats"), "{e}");
    let missing = read_image(&dir.path().join("missing.nii")).unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert!(write_volume(&dir.path().join("x.png"), &v).is_err());
    // No temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(left.is_empty());
}

/// A deterministic pseudo-random sequence (no test dependency for this).
fn noise(n: usize, seed: u64) -> impl Iterator<Item = u64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n).map(move |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    })
}

/// Oblique (rotated about an arbitrary axis), anisotropic; the origin is exact in f32 so that
/// NIfTI's f32 fields keep it exactly.
fn oblique() -> Geometry {
    Geometry {
        origin: [-80.5, 40.25, 12.75],
        spacing: [0.3125, 0.45, 3.2],
        direction: rotation([1.0, 2.0, 3.0], 0.5),
    }
}

/// Like [`oblique`] but with the k axis reversed (a negative determinant, as in a
/// radiological-convention file).
fn reflected() -> Geometry {
    let mut g = oblique();
    for row in &mut g.direction {
        row[2] = -row[2];
    }
    g
}

fn image(dims: [usize; 3], g: Geometry) -> Volume<f32> {
    let n = dims.iter().product();
    let data = noise(n, 7)
        .map(|v| (v % 100_000) as f32 * 0.037 - 1500.0)
        .collect();
    Volume::from_vec(dims, data, g).unwrap()
}

fn labels(dims: [usize; 3], g: Geometry) -> Volume<u16> {
    let n = dims.iter().product();
    Volume::from_vec(dims, noise(n, 3).map(|v| (v % 10) as u16).collect(), g).unwrap()
}

fn assert_affine_close(a: &Geometry, b: &Geometry, tol: f64) {
    let (x, y) = (a.affine_lps(), b.affine_lps());
    for (p, q) in x.iter().flatten().zip(y.iter().flatten()) {
        assert!(
            (p - q).abs() <= tol,
            "affines differ by {}:\n{x:?}\n{y:?}",
            (p - q).abs()
        );
    }
}

#[test]
fn nifti_round_trips_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    for g in [oblique(), reflected(), Geometry::default()] {
        for name in ["img.nii", "img.nii.gz"] {
            let p = dir.path().join(name);
            let v = image([7, 5, 4], g);
            write_nifti(&p, &v).unwrap();
            let back = read_nifti_f32(&p).unwrap();
            assert_eq!(back.dims(), v.dims());
            assert_eq!(back.data(), v.data());
            assert_affine_close(back.geometry(), &g, 1e-6);
            assert!(back.geometry().approx_eq(&g, 1e-6));

            let l = labels([3, 4, 5], g);
            write_nifti(&p, &l).unwrap();
            let back = read_nifti_labels(&p).unwrap();
            assert_eq!(
                back,
                Volume::from_vec(l.dims(), l.data().to_vec(), *back.geometry()).unwrap()
            );
            assert_affine_close(back.geometry(), &g, 1e-6);
        }
    }
}

#[test]
fn every_voxel_type_is_written_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.nii");
    let q = dir.path().join("t.nrrd");
    let g = oblique();
    macro_rules! check {
        ($t:ty, $vals:expr) => {{
            let vals: Vec<$t> = $vals;
            let v = Volume::from_vec([vals.len(), 1, 1], vals.clone(), g).unwrap();
            let want: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
            write_nifti(&p, &v).unwrap();
            assert_eq!(read_nifti_f32(&p).unwrap().data(), &want[..]);
            write_nrrd(&q, &v).unwrap();
            assert_eq!(read_nrrd_f32(&q).unwrap().data(), &want[..]);
        }};
    }
    check!(u8, vec![0, 1, 255]);
    check!(i8, vec![-128, 0, 127]);
    check!(i16, vec![-32768, 5, 32767]);
    check!(u16, vec![0, 9, 65535]);
    check!(i32, vec![-1 << 20, 0, 1 << 20]);
    check!(u32, vec![0, 3, 1 << 20]);
    check!(f32, vec![-1.5, 0.0, 3.25e7]);
    check!(f64, vec![-1.5, 0.0, 1e-3]);
}

/// Byte offsets of a NIfTI-1 header's 2- and 4-byte fields, for byte-swapping.
const NIFTI_I16: &[usize] = &[
    36, 40, 42, 44, 46, 48, 50, 52, 54, 68, 70, 72, 74, 120, 252, 254,
];

fn nifti_4byte_fields() -> Vec<usize> {
    let mut v = vec![0, 32, 56, 60, 64, 140, 144];
    v.extend((76..140).step_by(4));
    v.extend((256..328).step_by(4));
    v
}

#[test]
fn big_endian_nifti_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("le.nii");
    let v = image([4, 3, 2], reflected()).map(|&x| x as i16);
    write_nifti(&p, &v).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    for &o in NIFTI_I16 {
        b[o..o + 2].reverse();
    }
    for o in nifti_4byte_fields() {
        b[o..o + 4].reverse();
    }
    for chunk in b[352..].chunks_exact_mut(2) {
        chunk.reverse();
    }
    let be = dir.path().join("be.nii");
    std::fs::write(&be, &b).unwrap();
    let back = read_nifti_f32(&be).unwrap();
    assert_eq!(back.data(), v.map(|&x| f32::from(x)).data());
    assert_affine_close(back.geometry(), v.geometry(), 1e-6);
}

fn patch(path: &std::path::Path, offset: usize, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    b[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

#[test]
fn qform_only_and_pixdim_only_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("q.nii");
    for g in [oblique(), reflected()] {
        write_nifti(&p, &image([3, 3, 3], g)).unwrap();
        patch(&p, 254, &0i16.to_le_bytes()); // sform_code
        let back = read_nifti_f32(&p).unwrap();
        // The quaternion is stored in f32 and its first component recomputed from the others.
        assert_affine_close(back.geometry(), &g, 1e-5);
        back.geometry().validate().unwrap();
    }
    patch(&p, 252, &0i16.to_le_bytes()); // qform_code
    let back = read_nifti_f32(&p).unwrap();
    let g = back.geometry();
    assert_eq!(g.origin, [0.0; 3]);
    assert!((g.spacing[2] - 3.2).abs() < 1e-6);
    assert_eq!(orientation_code(g), "RAS");
}

#[test]
fn a_sheared_sform_falls_back_sensibly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shear.nii");
    write_nifti(&p, &image([3, 3, 3], oblique())).unwrap();
    // srow_x[1] += 0.2: a shear no voxel grid can represent.
    let mut b = std::fs::read(&p).unwrap();
    let v = f32::from_le_bytes(b[284..288].try_into().unwrap()) + 0.2;
    b[284..288].copy_from_slice(&v.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    // With a qform present, the qform wins.
    let g = *read_nifti_f32(&p).unwrap().geometry();
    assert_affine_close(&g, &oblique(), 1e-5);
    // Without one, the nearest orthonormal direction.
    patch(&p, 252, &0i16.to_le_bytes());
    let g = *read_nifti_f32(&p).unwrap().geometry();
    g.validate().unwrap();
    assert!(g.approx_eq(&oblique(), 0.2));
}

#[test]
fn scaling_is_applied_and_labels_must_be_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.nii.gz");
    let v = Volume::from_vec([3, 1, 1], vec![1i16, 2, 3], Geometry::default()).unwrap();
    write_nifti(&p, &v).unwrap();
    let raw = dir.path().join("s.nii");
    let mut b = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap()),
        &mut b,
    )
    .unwrap();
    b[112..116].copy_from_slice(&0.5f32.to_le_bytes());
    b[116..120].copy_from_slice(&10f32.to_le_bytes());
    std::fs::write(&raw, &b).unwrap();
    assert_eq!(read_nifti_f32(&raw).unwrap().data(), &[10.5, 11.0, 11.5]);
    let e = read_nifti_labels(&raw).unwrap_err();
    assert!(e.to_string().contains("voxel (0, 0, 0) holds 10.5"), "{e}");

    let f = Volume::from_vec([2, 1, 1], vec![1.0f32, 2.5], Geometry::default()).unwrap();
    write_nifti(&raw, &f).unwrap();
    let e = read_nifti_labels(&raw).unwrap_err();
    assert!(e.to_string().contains("(1, 0, 0) holds 2.5"), "{e}");
    let neg = Volume::from_vec([1, 1, 1], vec![-1i16], Geometry::default()).unwrap();
    write_nifti(&raw, &neg).unwrap();
    assert!(read_nifti_labels(&raw).is_err());
}

#[test]
fn truncated_and_bogus_nifti_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.nii");
    write_nifti(&full, &image([10, 10, 10], oblique())).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("knee.nii");
    for len in [0, 100, 347, 350, 352, 4000] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let e = read_nifti_f32(&cut).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&cut.display().to_string()), "{msg}");
        assert!(matches!(e, VolumeError::Truncated { .. }), "{len}: {msg}");
    }

    let gz = dir.path().join("full.nii.gz");
    write_nifti(&gz, &image([10, 10, 10], oblique())).unwrap();
    let bytes = std::fs::read(&gz).unwrap();
    let cut = dir.path().join("knee.nii.gz");
    for len in [10, 200, bytes.len() / 2, bytes.len() - 4] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let e = read_nifti_f32(&cut).unwrap_err();
        assert!(
            matches!(
                e,
                VolumeError::Truncated { .. } | VolumeError::Malformed { .. }
            ),
            "{len}: {e}"
        );
    }

    // A header that declares 2·10⁹ voxels over a few bytes fails fast, without allocating them.
    let mut b = std::fs::read(&full).unwrap();
    for (n, d) in [2000i16, 2000, 500].iter().enumerate() {
        b[42 + 2 * n..44 + 2 * n].copy_from_slice(&d.to_le_bytes());
    }
    std::fs::write(&cut, &b).unwrap();
    let e = read_nifti_f32(&cut).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // The same, gzipped: the length is unknown until the stream ends.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &b).unwrap();
    std::fs::write(&cut, enc.finish().unwrap()).unwrap();
    assert!(matches!(
        read_nifti_f32(&cut),
        Err(VolumeError::Truncated { .. })
    ));
    // More voxels than kneenode reads at all.
    for (n, d) in [32767i16, 32767, 32767].iter().enumerate() {
        b[42 + 2 * n..44 + 2 * n].copy_from_slice(&d.to_le_bytes());
    }
    std::fs::write(&cut, &b).unwrap();
    let e = read_nifti_f32(&cut).unwrap_err();
    assert!(e.to_string().contains("unsupported size"), "{e}");

    let mut b = std::fs::read(&full).unwrap();
    b[70..72].copy_from_slice(&128i16.to_le_bytes());
    std::fs::write(&cut, &b).unwrap();
    let e = read_nifti_f32(&cut).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: unsupported NIfTI datatype 128 (RGB24)", cut.display())
    );

    let mut b = std::fs::read(&full).unwrap();
    b[40..42].copy_from_slice(&4i16.to_le_bytes());
    b[48..50].copy_from_slice(&1i16.to_le_bytes());
    std::fs::write(&cut, &b).unwrap();
    assert_eq!(read_nifti_f32(&cut).unwrap().dims(), [10, 10, 10]);
    b[48..50].copy_from_slice(&5i16.to_le_bytes());
    std::fs::write(&cut, &b).unwrap();
    let e = read_nifti_f32(&cut).unwrap_err();
    assert!(e.to_string().contains("4D data"), "{e}");

    let mut b = std::fs::read(&full).unwrap();
    b[0..4].copy_from_slice(&540i32.to_le_bytes());
    std::fs::write(&cut, &b).unwrap();
    assert!(read_nifti_f32(&cut)
        .unwrap_err()
        .to_string()
        .contains("NIfTI-2"));
    std::fs::write(&cut, b"not a nifti file at all, but long enough? no").unwrap();
    assert!(read_nifti_f32(&cut).is_err());
}

#[test]
fn writers_refuse_what_the_format_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let big = Volume::filled([40_000, 1, 1], 0u8, Geometry::default());
    assert!(write_nifti(&dir.path().join("b.nii"), &big).is_err());
    let mut g = oblique();
    g.spacing[0] = 0.0;
    let flat = Volume::filled([2, 2, 2], 0u8, g);
    assert!(write_nifti(&dir.path().join("f.nii"), &flat).is_err());
    assert!(write_nrrd(&dir.path().join("f.nrrd"), &flat).is_err());
    assert!(!dir.path().join("f.nii").exists());
}

#[test]
fn nrrd_round_trips_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img.nrrd");
    // An origin that f32 cannot hold: NRRD's text keeps f64.
    let mut g = oblique();
    g.origin = [-80.123456789012, 40.1, 1e-3];
    for g in [g, reflected(), Geometry::default()] {
        let v = image([6, 5, 4], g);
        write_nrrd(&p, &v).unwrap();
        let back = read_nrrd_f32(&p).unwrap();
        assert_eq!(back.data(), v.data());
        assert_eq!(back.geometry().affine_lps(), g.affine_lps());
        assert!(back.geometry().approx_eq(&g, 1e-14));
        let l = labels([4, 3, 2], g);
        write_nrrd(&p, &l).unwrap();
        assert_eq!(read_nrrd_labels(&p).unwrap().data(), l.data());
    }
}

fn nrrd_file(dir: &std::path::Path, header: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join("hand.nrrd");
    let mut b = header.as_bytes().to_vec();
    b.extend_from_slice(data);
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn nrrd_spaces_encodings_and_byte_orders() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<u8> = [1u16, 2, 300, 4]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let p = nrrd_file(
        dir.path(),
        "NRRD0005\r\n# comment\r\ntype: unsigned short\r\ndimension: 3\r\nspace: right-anterior-superior\r\n\
         sizes: 2 2 1\r\nspace directions: (-2,0,0) (0,0,1.5) (0,3,0)\r\nspace origin: (10,20,30)\r\n\
         endian: big\r\nencoding: raw\r\nkinds: domain domain domain\r\nfoo:=bar\r\n\r\n",
        &values,
    );
    let v = read_nrrd_labels(&p).unwrap();
    assert_eq!(v.data(), &[1, 2, 300, 4]);
    let g = v.geometry();
    assert_eq!(g.origin, [-10.0, -20.0, 30.0]);
    assert_eq!(g.spacing, [2.0, 1.5, 3.0]);
    assert_eq!(
        g.direction,
        [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    );
    assert_eq!(orientation_code(g), "LSA");

    let p = nrrd_file(
        dir.path(),
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 3 1 1\nspacings: 0.5 nan 2\nencoding: ascii\n\n",
        b"1.5 -2\n3e2\n",
    );
    let v = read_nrrd_f32(&p).unwrap();
    assert_eq!(v.data(), &[1.5, -2.0, 300.0]);
    assert_eq!(v.geometry().spacing, [0.5, 1.0, 2.0]);
}

#[test]
fn bad_nrrd_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let head = |extra: &str| {
        format!(
            "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 4 4\n\
             space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\n{extra}\n"
        )
    };
    let expect = |header: String, data: &[u8], want: &str| {
        let p = nrrd_file(dir.path(), &header, data);
        let e = read_nrrd_f32(&p).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
    };
    expect(head("encoding: raw\n"), &[0; 100], "truncated");
    expect(head("encoding: gzip\n"), &[0x1f, 0x8b, 8, 0], "");
    expect(head("encoding: bzip2\n"), &[], "unsupported NRRD encoding");
    expect(
        head("encoding: raw\ndata file: knee.raw\n"),
        &[],
        "detached data file",
    );
    expect(
        head("encoding: raw\nbyte skip: -1\n"),
        &[0; 128],
        "byte skip",
    );
    expect(
        head("encoding: raw\nkinds: RGB-color domain domain\n"),
        &[0; 128],
        "kinds",
    );
    expect(
        head("encoding: raw\n").replace("dimension: 3", "dimension: 4"),
        &[],
        "dimension 4",
    );
    expect(
        head("encoding: raw\n").replace("short", "int64"),
        &[],
        "type \"int64\"",
    );
    expect(
        head("encoding: raw\n").replace("left-posterior-superior", "scanner-xyz"),
        &[],
        "space",
    );
    expect(
        head("encoding: raw\n").replace("sizes: 4 4 4", "sizes: 100000 100000 1000"),
        &[],
        "more than",
    );
    expect("NRRD0004\ntype: short\n".to_string(), &[], "blank line");
    expect("P6\n".to_string(), &[], "not an NRRD file");

    // A gzip stream cut short.
    let p = dir.path().join("g.nrrd");
    write_nrrd(&p, &image([8, 8, 8], oblique())).unwrap();
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    assert!(read_nrrd_f32(&p).is_err());
}

#[test]
fn nifti_and_nrrd_agree() {
    let dir = tempfile::tempdir().unwrap();
    let v = image([5, 6, 7], reflected());
    write_volume(&dir.path().join("a.nii.gz"), &v).unwrap();
    write_volume(&dir.path().join("a.nrrd"), &v).unwrap();
    let a = read_image(&dir.path().join("a.nii.gz")).unwrap();
    let b = read_image(&dir.path().join("a.nrrd")).unwrap();
    assert_eq!(a.data(), b.data());
    assert_affine_close(a.geometry(), b.geometry(), 1e-6);
}

#[test]
fn identity_resampling_is_exact() {
    let v = image([9, 8, 7], oblique());
    let r = resample_linear(&v, v.geometry(), v.dims()).unwrap();
    assert_eq!(r, v);
    let l = labels([9, 8, 7], reflected());
    assert_eq!(resample_nearest(&l, l.geometry(), l.dims()).unwrap(), l);
    // Every other voxel of the same grid is a grid-aligned subsample: also exact.
    let mut half = *v.geometry();
    half.spacing = half.spacing.map(|s| 2.0 * s);
    let r = resample_linear(&v, &half, [5, 4, 4]).unwrap();
    assert_eq!(r[[2, 3, 1]], v[[4, 6, 2]]);
}

#[test]
fn trilinear_reproduces_a_linear_ramp() {
    let g = Geometry {
        spacing: [0.5, 0.6, 0.8],
        ..oblique()
    };
    let dims = [20, 20, 20];
    let ramp = |p: [f64; 3]| 0.5 * p[0] - 0.25 * p[1] + 0.125 * p[2] + 3.0;
    let mut v = Volume::filled(dims, 0f32, g);
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                v.set(
                    i,
                    j,
                    k,
                    ramp(g.index_to_point([i as f64, j as f64, k as f64])) as f32,
                );
            }
        }
    }
    // A smaller, rotated, finer grid well inside the source.
    let target = Geometry {
        origin: g.index_to_point([4.3, 4.7, 4.1]),
        spacing: [0.35, 0.4, 0.9],
        direction: rotation([-1.0, 0.5, 2.0], 0.3),
    };
    let tdims = [10, 9, 8];
    let r = resample_linear(&v, &target, tdims).unwrap();
    let mut inside = 0;
    for k in 0..tdims[2] {
        for j in 0..tdims[1] {
            for i in 0..tdims[0] {
                let p = target.index_to_point([i as f64, j as f64, k as f64]);
                let c = g.point_to_index(p);
                let interior = (0..3).all(|a| c[a] >= 0.0 && c[a] <= (dims[a] - 1) as f64);
                assert!(interior, "test grid leaves the source at {c:?}");
                inside += 1;
                let got = f64::from(r[[i, j, k]]);
                assert!((got - ramp(p)).abs() < 1e-4, "{got} vs {}", ramp(p));
            }
        }
    }
    assert_eq!(inside, 10 * 9 * 8);
}

#[test]
fn outside_is_zero_and_edges_clamp() {
    let v = Volume::from_vec([2, 1, 1], vec![10f32, 20.0], Geometry::default()).unwrap();
    let target = Geometry {
        origin: [-1.0, 0.0, 0.0],
        spacing: [0.25, 1.0, 1.0],
        ..Geometry::default()
    };
    let r = resample_linear(&v, &target, [14, 1, 1]).unwrap();
    // x = -1, -0.75 (outside), -0.5..0 (edge), 0.25…, 1 .. 1.5 (edge), 1.75+ (outside)
    assert_eq!(
        r.data(),
        &[0.0, 0.0, 10.0, 10.0, 10.0, 12.5, 15.0, 17.5, 20.0, 20.0, 20.0, 0.0, 0.0, 0.0]
    );
    let n = resample_nearest(&v.map(|&x| x as u16), &target, [14, 1, 1]).unwrap();
    assert_eq!(
        n.data(),
        &[0, 0, 10, 10, 10, 10, 20, 20, 20, 20, 0, 0, 0, 0]
    );
}

#[test]
fn nearest_keeps_the_label_set() {
    let l = labels([10, 9, 8], oblique());
    let target = Geometry {
        origin: l.geometry().index_to_point([1.5, 1.5, 1.5]),
        spacing: [0.7, 0.33, 1.1],
        direction: rotation([2.0, -1.0, 0.5], 0.4),
    };
    let r = resample_nearest(&l, &target, [12, 14, 10]).unwrap();
    let set = |d: &[u16]| d.iter().copied().collect::<std::collections::BTreeSet<_>>();
    assert!(set(r.data()).is_subset(&set(l.data())));
    assert!(set(r.data()).len() >= 9);
}

#[test]
fn reorientation_round_trip_is_exact() {
    let v = labels([5, 4, 3], oblique());
    assert_eq!(orientation_code(v.geometry()), "LPS");
    for code in ["RAS", "PIL", "ial", "SLA"] {
        let r = reorient_to(&v, code).unwrap();
        assert_eq!(orientation_code(r.geometry()), code.to_ascii_uppercase());
        r.geometry().validate().unwrap();
        let back = reorient_to(&r, "LPS").unwrap();
        assert_eq!(back.dims(), v.dims());
        assert_eq!(back.data(), v.data());
        assert!(back.geometry().approx_eq(v.geometry(), 1e-12));
        // Every voxel keeps its value at its physical point.
        let rg = r.geometry();
        let [nx, ny, nz] = r.dims();
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let p = rg.index_to_point([i as f64, j as f64, k as f64]);
                    let c = v.geometry().point_to_index(p).map(|x| x.round());
                    let q = v.geometry().point_to_index(p);
                    assert!((0..3).all(|a| (q[a] - c[a]).abs() < 1e-9));
                    let src = v[[c[0] as usize, c[1] as usize, c[2] as usize]];
                    assert_eq!(r[[i, j, k]], src);
                }
            }
        }
    }
    assert!(reorient_to(&v, "LPQ").is_err());
}

/// The fused argmax is exactly the argmax of each channel resampled on its own, outside the
/// source (0) and at its edges included, on an oblique grid larger than the source.
#[test]
fn resampled_argmax_equals_the_argmax_of_each_resampled_channel() {
    let dims = [9, 7, 5];
    let g = oblique();
    let m: usize = dims.iter().product();
    // Ties on purpose: values drawn from a few levels, so that "the first on a tie" matters.
    let channels: Vec<Vec<f32>> = (0..6u64)
        .map(|c| noise(m, 11 + c).map(|v| (v % 4) as f32 * 0.25).collect())
        .collect();
    let target = Geometry {
        origin: g.index_to_point([-1.3, -0.7, -1.1]),
        spacing: [0.21, 0.33, 1.7],
        direction: rotation([-1.0, 0.5, 2.0], 0.3),
    };
    let tdims = [40, 30, 9];
    let views: Vec<&[f32]> = channels.iter().map(Vec::as_slice).collect();
    let fused = resample_linear_argmax(&views, &g, dims, &target, tdims).unwrap();
    let resampled: Vec<Volume<f32>> = channels
        .iter()
        .map(|c| {
            let v = Volume::from_vec(dims, c.clone(), g).unwrap();
            resample_linear(&v, &target, tdims).unwrap()
        })
        .collect();
    let (mut outside, mut ties) = (0, 0);
    for (n, &got) in fused.iter().enumerate() {
        let (mut best, mut want) = (f32::MIN, 0u8);
        for (l, r) in resampled.iter().enumerate() {
            let v = r.data()[n];
            if v > best {
                best = v;
                want = l as u8;
            } else if v == best {
                ties += 1;
            }
        }
        if resampled.iter().all(|r| r.data()[n] == 0.0) {
            outside += 1;
        }
        assert_eq!(got, want, "voxel {n}");
    }
    assert!(outside > 0 && outside < fused.len(), "{outside}");
    assert!(ties > 0);
    assert!(resample_linear_argmax(&views[..1], &g, [9, 7, 4], &target, tdims).is_err());
}
