//! Voxel types on disk: the [`Voxel`] trait for writing, and the decoding that NIfTI and NRRD
//! share for reading (every stored type, either byte order, streamed in chunks so that a file
//! that lies about its size cannot make us allocate what it does not hold).

use std::io::{self, Read, Write};
use std::path::Path;

use super::VolumeError;

/// A type that can be written to NIfTI and NRRD files.
///
/// Implemented for the integer types up to 32 bits and for `f32`/`f64`. The trait is sealed:
/// the codes below must match the bytes `write_le` produces, so only this module implements it.
pub trait Voxel: Copy + Send + Sync + 'static + sealed::Sealed {
    /// NIfTI-1 `datatype` code.
    const NIFTI_DATATYPE: i16;
    /// NRRD `type` name (Teem's canonical spelling).
    const NRRD_TYPE: &'static str;
    /// Bytes per voxel.
    const SIZE: usize;
    /// Appends the value's little-endian bytes.
    fn write_le(self, out: &mut Vec<u8>);
}

mod sealed {
    /// Keeps [`super::Voxel`] implementable only here.
    pub trait Sealed {}
}

macro_rules! voxel {
    ($t:ty, $code:expr, $nrrd:expr) => {
        impl sealed::Sealed for $t {}
        impl Voxel for $t {
            const NIFTI_DATATYPE: i16 = $code;
            const NRRD_TYPE: &'static str = $nrrd;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}

voxel!(u8, 2, "uchar");
voxel!(i8, 256, "signed char");
voxel!(i16, 4, "short");
voxel!(u16, 512, "ushort");
voxel!(i32, 8, "int");
voxel!(u32, 768, "uint");
voxel!(f32, 16, "float");
voxel!(f64, 64, "double");

/// A stored sample type that the readers decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl DataType {
    pub(crate) fn size(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::I16 | DataType::U16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::F64 => 8,
        }
    }

    /// The type of a NIfTI-1 `datatype` code, if kneenode reads it.
    pub(crate) fn from_nifti(code: i16) -> Option<DataType> {
        Some(match code {
            2 => DataType::U8,
            256 => DataType::I8,
            4 => DataType::I16,
            512 => DataType::U16,
            8 => DataType::I32,
            768 => DataType::U32,
            16 => DataType::F32,
            64 => DataType::F64,
            _ => return None,
        })
    }

    /// Decodes one sample; `b` holds exactly `size()` bytes. Every type fits f64 exactly.
    fn decode(self, b: &[u8], big_endian: bool) -> f64 {
        macro_rules! num {
            ($t:ty, $n:expr) => {{
                let mut a = [0u8; $n];
                a.copy_from_slice(b);
                if big_endian {
                    f64::from(<$t>::from_be_bytes(a))
                } else {
                    f64::from(<$t>::from_le_bytes(a))
                }
            }};
        }
        match self {
            DataType::U8 => num!(u8, 1),
            DataType::I8 => num!(i8, 1),
            DataType::I16 => num!(i16, 2),
            DataType::U16 => num!(u16, 2),
            DataType::I32 => num!(i32, 4),
            DataType::U32 => num!(u32, 4),
            DataType::F32 => num!(f32, 4),
            DataType::F64 => num!(f64, 8),
        }
    }
}

/// Why [`read_samples`] stopped.
#[derive(Debug)]
pub(crate) enum SampleError {
    /// The reader failed (for gzip, a corrupt or cut stream also lands here).
    Io(io::Error),
    /// The data ended after this many bytes.
    Short { got_bytes: u64 },
    /// `convert` refused the sample at this linear index.
    Rejected { index: usize, value: f64 },
}

/// The first allocation for decoded samples. Beyond it the vector grows only as data
/// arrives, so a header that claims billions of voxels over a few bytes of data fails fast.
const INITIAL_SAMPLES: usize = 1 << 24;

/// Reads `count` samples of `dtype`, passing each through `convert` (scaling, range checks).
/// `convert` refuses a sample by returning the value to report (e.g. after scaling).
pub(crate) fn read_samples<R: Read, U>(
    reader: &mut R,
    dtype: DataType,
    big_endian: bool,
    count: usize,
    mut convert: impl FnMut(f64) -> Result<U, f64>,
) -> Result<Vec<U>, SampleError> {
    let size = dtype.size();
    let mut out = Vec::with_capacity(count.min(INITIAL_SAMPLES));
    let mut buf = vec![0u8; (1 << 20) / size * size];
    let mut got_bytes: u64 = 0;
    while out.len() < count {
        let want = (count - out.len()).saturating_mul(size).min(buf.len());
        let chunk = &mut buf[..want];
        let mut filled = 0;
        while filled < want {
            match reader.read(&mut chunk[filled..]) {
                Ok(0) => {
                    return Err(SampleError::Short {
                        got_bytes: got_bytes + filled as u64,
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(SampleError::Short {
                        got_bytes: got_bytes + filled as u64,
                    })
                }
                Err(e) => return Err(SampleError::Io(e)),
            }
        }
        got_bytes += want as u64;
        for b in chunk.chunks_exact(size) {
            match convert(dtype.decode(b, big_endian)) {
                Ok(v) => out.push(v),
                Err(value) => {
                    return Err(SampleError::Rejected {
                        index: out.len(),
                        value,
                    })
                }
            }
        }
    }
    Ok(out)
}

/// Writes samples little-endian in chunks, so a large volume is never copied whole.
pub(crate) fn write_samples<T: Voxel, W: Write>(writer: &mut W, data: &[T]) -> io::Result<()> {
    let per_chunk = (1 << 20) / T::SIZE;
    let mut buf = Vec::with_capacity(per_chunk * T::SIZE);
    for chunk in data.chunks(per_chunk) {
        buf.clear();
        for &v in chunk {
            v.write_le(&mut buf);
        }
        writer.write_all(&buf)?;
    }
    Ok(())
}

/// Label conversion shared by the readers: whole numbers in `0..=u16::MAX`.
pub(crate) fn to_label(v: f64) -> Result<u16, f64> {
    if v.fract() == 0.0 && (0.0..=f64::from(u16::MAX)).contains(&v) {
        Ok(v as u16)
    } else {
        Err(v)
    }
}

/// Reads a gzip stream to its end after the voxels, so that its CRC and length trailer are
/// checked: a damaged or cut file must not pass for a complete one.
pub(crate) fn finish_gzip(reader: &mut impl Read) -> io::Result<()> {
    // Anything after the voxels is unexpected; read a bounded amount so junk cannot stall us.
    let extra = io::copy(&mut reader.take(1 << 26), &mut io::sink())?;
    if extra == 1 << 26 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more than 64 MiB of data after the voxels",
        ));
    }
    Ok(())
}

pub(crate) fn nifti_datatype_name(code: i16) -> &'static str {
    match code {
        0 => "unknown",
        1 => "BINARY",
        32 => "COMPLEX64",
        128 => "RGB24",
        1024 => "INT64",
        1280 => "UINT64",
        1536 => "FLOAT128",
        1792 => "COMPLEX128",
        2048 => "COMPLEX256",
        2304 => "RGBA32",
        _ => "not a NIfTI-1 type",
    }
}

/// An error while reading data: a cut or corrupt gzip stream says so rather than
/// pretending to be an operating-system error.
pub(crate) fn stream_error(path: &Path, e: io::Error) -> VolumeError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            VolumeError::truncated(path, format!("the data ends early ({e})"))
        }
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            VolumeError::malformed(path, format!("corrupt compressed data: {e}"))
        }
        _ => VolumeError::io(path, e),
    }
}

pub(crate) fn rejected_label(
    path: &Path,
    dims: [usize; 3],
    index: usize,
    value: f64,
) -> VolumeError {
    let i = index % dims[0];
    let j = index / dims[0] % dims[1];
    let k = index / (dims[0] * dims[1]);
    VolumeError::malformed(
        path,
        format!(
            "not a label map: voxel ({i}, {j}, {k}) holds {value}, labels are whole numbers 0–65535"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_byte_orders() {
        let le = (-1234i16).to_le_bytes();
        let be = (-1234i16).to_be_bytes();
        let a = read_samples(&mut &le[..], DataType::I16, false, 1, Ok).unwrap();
        let b = read_samples(&mut &be[..], DataType::I16, true, 1, Ok).unwrap();
        assert_eq!(a, vec![-1234.0]);
        assert_eq!(b, vec![-1234.0]);
        let f = 1.5e-3f64.to_be_bytes();
        let c = read_samples(&mut &f[..], DataType::F64, true, 1, Ok).unwrap();
        assert_eq!(c, vec![1.5e-3]);
    }

    #[test]
    fn short_data_is_reported_not_allocated() {
        let bytes = [0u8; 10];
        let r = read_samples(&mut &bytes[..], DataType::F32, false, usize::MAX / 8, Ok);
        assert!(matches!(r, Err(SampleError::Short { got_bytes: 10 })));
    }

    #[test]
    fn labels_must_be_whole_and_in_range() {
        assert_eq!(to_label(7.0), Ok(7));
        assert_eq!(to_label(65535.0), Ok(65535));
        assert_eq!(to_label(2.5), Err(2.5));
        assert_eq!(to_label(-1.0), Err(-1.0));
        assert_eq!(to_label(65536.0), Err(65536.0));
        assert!(to_label(f64::NAN).is_err());
    }

    #[test]
    fn unknown_datatypes_are_named() {
        assert_eq!(nifti_datatype_name(128), "RGB24");
        assert_eq!(nifti_datatype_name(1024), "INT64");
    }
}
