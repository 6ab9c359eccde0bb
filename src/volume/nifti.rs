//! NIfTI-1 files (`.nii`, `.nii.gz`): the 348-byte header, then voxels from `vox_offset`.
//!
//! Reading follows the standard's order of trust: the sform when `sform_code > 0`, else the
//! qform when `qform_code > 0`, else plain `pixdim` scaling (ANALYZE-style, origin 0). NIfTI
//! coordinates are RAS, ours LPS: the first two rows of every affine change sign. The header
//! stores geometry as `f32`, so a round trip keeps it to about 1e-7 relative, not bit for bit.
//!
//! Writing stores both forms (codes 1, scanner), so readers that only know the qform (old
//! tools) and those that prefer the sform (nibabel, ITK) agree.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::geometry::Geometry;
use super::linalg::{det3, quaternion_to_rotation, rotation_to_quaternion};
use super::voxel::{
    finish_gzip, nifti_datatype_name, read_samples, rejected_label, stream_error, to_label,
    write_samples, DataType, SampleError, Voxel,
};
use super::{checked_voxel_count, read_up_to, write_atomically, Volume, VolumeError};

const HEADER_SIZE: usize = 348;
/// Header plus the 4-byte "no extensions" flag.
const VOX_OFFSET: usize = 352;

/// The header fields kneenode uses.
#[derive(Debug, Clone)]
struct Header {
    big_endian: bool,
    dims: [usize; 3],
    dtype: DataType,
    pixdim: [f32; 8],
    vox_offset: u64,
    scl_slope: f32,
    scl_inter: f32,
    xyzt_units: u8,
    qform_code: i16,
    sform_code: i16,
    quatern: [f32; 3],
    qoffset: [f32; 3],
    srow: [[f32; 4]; 3],
}

/// Reads a NIfTI-1 image as `f32`, applying `scl_slope`/`scl_inter` when the slope is set.
pub fn read_nifti_f32(path: &Path) -> Result<Volume<f32>, VolumeError> {
    read(path, |h| {
        let (slope, inter) = scaling(h);
        move |v| Ok((v * slope + inter) as f32)
    })
}

/// Reads a NIfTI-1 label map. Scaling is applied as for images; every resulting value must
/// be a whole number in 0..=65535, or the file is refused (it is an image, not labels).
pub fn read_nifti_labels(path: &Path) -> Result<Volume<u16>, VolumeError> {
    read(path, |h| {
        let (slope, inter) = scaling(h);
        move |v| to_label(v * slope + inter)
    })
}

/// `(slope, intercept)`; a slope of 0 or a non-finite one means "no scaling" (the standard).
fn scaling(h: &Header) -> (f64, f64) {
    let slope = f64::from(h.scl_slope);
    let inter = f64::from(h.scl_inter);
    if slope != 0.0 && slope.is_finite() {
        (slope, if inter.is_finite() { inter } else { 0.0 })
    } else {
        (1.0, 0.0)
    }
}

fn read<U, C>(
    path: &Path,
    make_convert: impl FnOnce(&Header) -> C,
) -> Result<Volume<U>, VolumeError>
where
    C: FnMut(f64) -> Result<U, f64>,
{
    let file = File::open(path).map_err(|e| VolumeError::io(path, e))?;
    let file_len = file.metadata().map(|m| m.len()).ok();
    let mut buffered = BufReader::with_capacity(1 << 20, file);
    let gzipped = buffered
        .fill_buf()
        .map_err(|e| VolumeError::io(path, e))?
        .starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> = if gzipped {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };

    let mut raw = [0u8; HEADER_SIZE];
    let n = read_up_to(&mut reader, &mut raw).map_err(|e| stream_error(path, e))?;
    if n < HEADER_SIZE {
        return Err(VolumeError::truncated(
            path,
            format!("{n} bytes, less than the {HEADER_SIZE}-byte NIfTI-1 header"),
        ));
    }
    let header = parse_header(path, &raw)?;
    let geometry = header_geometry(path, &header)?;
    let count = checked_voxel_count(path, header.dims)?;
    let data_bytes = count as u64 * header.dtype.size() as u64;
    let declared = || {
        format!(
            "the header declares {data_bytes} bytes of voxel data from offset {}",
            header.vox_offset
        )
    };
    // Only an uncompressed file's length is known up front; a gzip stream shows its length
    // as it is read, which `read_samples` handles without allocating ahead of the data.
    if let (false, Some(len)) = (gzipped, file_len) {
        let have = len.saturating_sub(header.vox_offset);
        if have < data_bytes {
            return Err(VolumeError::truncated(
                path,
                format!("{}, but only {have} follow", declared()),
            ));
        }
    }

    let skip = header.vox_offset - HEADER_SIZE as u64;
    let skipped = io::copy(&mut (&mut reader).take(skip), &mut io::sink())
        .map_err(|e| stream_error(path, e))?;
    if skipped < skip {
        return Err(VolumeError::truncated(
            path,
            format!("the file ends before vox_offset {}", header.vox_offset),
        ));
    }
    let convert = make_convert(&header);
    let data = read_samples(&mut reader, header.dtype, header.big_endian, count, convert).map_err(
        |e| match e {
            SampleError::Io(e) => stream_error(path, e),
            SampleError::Short { got_bytes } => {
                VolumeError::truncated(path, format!("{}, but only {got_bytes} follow", declared()))
            }
            SampleError::Rejected { index, value } => {
                rejected_label(path, header.dims, index, value)
            }
        },
    )?;
    if gzipped {
        finish_gzip(&mut reader).map_err(|e| stream_error(path, e))?;
    }
    Volume::from_vec(header.dims, data, geometry)
}

fn parse_header(path: &Path, b: &[u8; HEADER_SIZE]) -> Result<Header, VolumeError> {
    let first = [b[0], b[1], b[2], b[3]];
    let big_endian = if i32::from_le_bytes(first) == 348 {
        false
    } else if i32::from_be_bytes(first) == 348 {
        true
    } else if i32::from_le_bytes(first) == 540 || i32::from_be_bytes(first) == 540 {
        return Err(VolumeError::unsupported(
            path,
            "NIfTI-2 file; save it as NIfTI-1",
        ));
    } else {
        return Err(VolumeError::malformed(
            path,
            "not a NIfTI-1 file (sizeof_hdr is not 348)",
        ));
    };
    let bytes4 = |o: usize| [b[o], b[o + 1], b[o + 2], b[o + 3]];
    let i16_at = |o: usize| {
        let a = [b[o], b[o + 1]];
        if big_endian {
            i16::from_be_bytes(a)
        } else {
            i16::from_le_bytes(a)
        }
    };
    let f32_at = |o: usize| {
        if big_endian {
            f32::from_be_bytes(bytes4(o))
        } else {
            f32::from_le_bytes(bytes4(o))
        }
    };

    match &b[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(VolumeError::unsupported(
                path,
                "NIfTI header/image pair (.hdr/.img); save it as a single .nii",
            ))
        }
        _ => {
            return Err(VolumeError::malformed(
                path,
                "not a NIfTI-1 file (no \"n+1\" magic; ANALYZE 7.5 is not read)",
            ))
        }
    }

    let dim: Vec<i16> = (0..8).map(|n| i16_at(40 + 2 * n)).collect();
    let ndim = dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(VolumeError::malformed(
            path,
            format!("dim[0] = {ndim}, not 1 to 7"),
        ));
    }
    let ndim = ndim as usize;
    let mut dims = [1usize; 3];
    for n in 1..=ndim {
        if dim[n] < 1 {
            return Err(VolumeError::malformed(
                path,
                format!("dim[{n}] = {}", dim[n]),
            ));
        }
        if n <= 3 {
            dims[n - 1] = dim[n] as usize;
        } else if dim[n] != 1 {
            return Err(VolumeError::unsupported(
                path,
                format!(
                    "{ndim}D data (dim[{n}] = {}); kneenode reads 3D volumes",
                    dim[n]
                ),
            ));
        }
    }

    let code = i16_at(70);
    let dtype = DataType::from_nifti(code).ok_or_else(|| {
        VolumeError::unsupported(
            path,
            format!("NIfTI datatype {code} ({})", nifti_datatype_name(code)),
        )
    })?;

    let vox_offset = f32_at(108);
    if !(vox_offset.is_finite()
        && vox_offset >= HEADER_SIZE as f32
        && vox_offset.fract() == 0.0
        && vox_offset < (1u64 << 31) as f32)
    {
        return Err(VolumeError::malformed(
            path,
            format!("vox_offset {vox_offset} is not a whole number of bytes past the header"),
        ));
    }

    let mut pixdim = [0f32; 8];
    for (n, p) in pixdim.iter_mut().enumerate() {
        *p = f32_at(76 + 4 * n);
    }
    let mut srow = [[0f32; 4]; 3];
    for (r, row) in srow.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = f32_at(280 + 16 * r + 4 * c);
        }
    }
    Ok(Header {
        big_endian,
        dims,
        dtype,
        pixdim,
        vox_offset: vox_offset as u64,
        scl_slope: f32_at(112),
        scl_inter: f32_at(116),
        xyzt_units: b[123],
        qform_code: i16_at(252),
        sform_code: i16_at(254),
        quatern: [f32_at(256), f32_at(260), f32_at(264)],
        qoffset: [f32_at(268), f32_at(272), f32_at(276)],
        srow,
    })
}

fn header_geometry(path: &Path, h: &Header) -> Result<Geometry, VolumeError> {
    // Spatial units are bits 0–2 of xyzt_units; "unknown" is taken as mm, like everyone does.
    let unit = match h.xyzt_units & 0x07 {
        1 => 1000.0,
        3 => 0.001,
        _ => 1.0,
    };
    let geometry = if h.sform_code > 0 {
        let mut m = [[0.0; 3]; 3];
        let mut origin = [0.0; 3];
        for (r, row) in m.iter_mut().enumerate() {
            let sign = if r < 2 { -1.0 } else { 1.0 };
            for (v, s) in row.iter_mut().zip(h.srow[r]) {
                *v = sign * unit * f64::from(s);
            }
            origin[r] = sign * unit * f64::from(h.srow[r][3]);
        }
        let g = Geometry::from_index_matrix(origin, &m);
        if g.is_orthonormal() && g.validate().is_ok() {
            g
        } else if h.qform_code > 0 {
            // A sheared or degenerate sform cannot describe a voxel grid; the qform is a
            // rotation by construction.
            qform_geometry(h, unit)
        } else {
            g.orthonormalized()
        }
    } else if h.qform_code > 0 {
        qform_geometry(h, unit)
    } else {
        let s = |n: usize| positive_or_one(h.pixdim[n]) * unit;
        Geometry {
            origin: [0.0; 3],
            spacing: [s(1), s(2), s(3)],
            // Index axes along RAS, i.e. R and A in LPS.
            direction: [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
        }
    };
    geometry
        .validate()
        .map_err(|e| VolumeError::malformed(path, format!("unusable geometry: {e}")))?;
    Ok(geometry)
}

fn positive_or_one(v: f32) -> f64 {
    if v > 0.0 && v.is_finite() {
        f64::from(v)
    } else {
        1.0
    }
}

fn qform_geometry(h: &Header, unit: f64) -> Geometry {
    let [b, c, d] = h.quatern.map(f64::from);
    let r = quaternion_to_rotation(b, c, d);
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let spacing = [
        positive_or_one(h.pixdim[1]) * unit,
        positive_or_one(h.pixdim[2]) * unit,
        positive_or_one(h.pixdim[3]) * unit,
    ];
    let mut direction = r;
    for (row, sign) in direction.iter_mut().zip([-1.0, -1.0, 1.0]) {
        row[0] *= sign;
        row[1] *= sign;
        row[2] *= sign * qfac;
    }
    let q = h.qoffset.map(|v| f64::from(v) * unit);
    Geometry {
        origin: [-q[0], -q[1], q[2]],
        spacing,
        direction,
    }
}

/// Writes a NIfTI-1 file; a name ending in `.gz` is gzip-compressed. The geometry must pass
/// [`Geometry::validate`] and every dimension must fit NIfTI-1's 16-bit fields.
pub fn write_nifti<T: Voxel>(path: &Path, volume: &Volume<T>) -> Result<(), VolumeError> {
    let header = build_header::<T>(volume.dims(), volume.geometry())?;
    let gzip = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    write_atomically(path, |w| {
        if gzip {
            let mut gz = GzEncoder::new(w, Compression::default());
            gz.write_all(&header)?;
            write_samples(&mut gz, volume.data())?;
            gz.finish()?;
        } else {
            w.write_all(&header)?;
            write_samples(w, volume.data())?;
        }
        Ok(())
    })
}

fn build_header<T: Voxel>(dims: [usize; 3], g: &Geometry) -> Result<[u8; VOX_OFFSET], VolumeError> {
    g.validate()?;
    let mut dim = [3i16, 1, 1, 1, 1, 1, 1, 1];
    for a in 0..3 {
        dim[a + 1] = i16::try_from(dims[a])
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| VolumeError::Invalid {
                reason: format!("NIfTI-1 cannot store size {dims:?}: each axis must be 1 to 32767"),
            })?;
    }

    // qform: a rotation with the reflection moved into qfac, as the standard requires.
    let mut r = g.orthonormalized().direction;
    for row in r.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    let qfac = if det3(&r) < 0.0 {
        for row in &mut r {
            row[2] = -row[2];
        }
        -1.0f32
    } else {
        1.0
    };
    let quatern = rotation_to_quaternion(&r);
    let affine = g.affine_ras();

    let mut h = [0u8; VOX_OFFSET];
    let mut put =
        |offset: usize, bytes: &[u8]| h[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &348i32.to_le_bytes());
    put(38, b"r");
    for (n, d) in dim.iter().enumerate() {
        put(40 + 2 * n, &d.to_le_bytes());
    }
    put(70, &T::NIFTI_DATATYPE.to_le_bytes());
    put(72, &((T::SIZE * 8) as i16).to_le_bytes());
    let pixdim = [
        qfac,
        g.spacing[0] as f32,
        g.spacing[1] as f32,
        g.spacing[2] as f32,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for (n, p) in pixdim.iter().enumerate() {
        put(76 + 4 * n, &p.to_le_bytes());
    }
    put(108, &(VOX_OFFSET as f32).to_le_bytes());
    put(112, &1f32.to_le_bytes());
    put(116, &0f32.to_le_bytes());
    put(123, &[2]); // NIFTI_UNITS_MM
    put(148, b"kneenode");
    put(252, &1i16.to_le_bytes());
    put(254, &1i16.to_le_bytes());
    for (n, q) in quatern.iter().enumerate() {
        put(256 + 4 * n, &(*q as f32).to_le_bytes());
    }
    for (n, row) in affine.iter().take(3).enumerate() {
        put(268 + 4 * n, &(row[3] as f32).to_le_bytes());
        for (c, v) in row.iter().enumerate() {
            put(280 + 16 * n + 4 * c, &(*v as f32).to_le_bytes());
        }
    }
    put(344, b"n+1\0");
    // Bytes 348..352 stay zero: no extensions.
    Ok(h)
}
