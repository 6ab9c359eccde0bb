//! NRRD files (`.nrrd`): a text header, a blank line, then the voxels (raw, gzip or ASCII).
//!
//! There is no maintained NRRD crate, so this is written against Teem's format definition
//! (<https://teem.sourceforge.net/nrrd/format.html>) for the subset that 3D medical images
//! use: `dimension: 3`, a `space` of LPS, RAS or LAS (converted to LPS), `space directions`
//! and `space origin` (or bare `spacings`). Detached headers (`.nhdr` with `data file`),
//! skips and non-spatial axes are refused with a message that says so.
//!
//! Numbers are written with Rust's shortest round-trip formatting, so write → read gives back
//! the same affine bit for bit.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::geometry::Geometry;
use super::voxel::{
    finish_gzip, read_samples, rejected_label, stream_error, to_label, write_samples, DataType,
    SampleError, Voxel,
};
use super::{checked_voxel_count, write_atomically, Volume, VolumeError};

/// Headers longer than this are not NRRD headers (a 3D image's is well under 1 kB).
const MAX_HEADER_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Raw,
    Gzip,
    Ascii,
}

#[derive(Debug)]
struct Header {
    dims: [usize; 3],
    dtype: DataType,
    big_endian: bool,
    encoding: Encoding,
    geometry: Geometry,
}

/// Reads an NRRD image as `f32`.
pub fn read_nrrd_f32(path: &Path) -> Result<Volume<f32>, VolumeError> {
    read(path, |v| Ok(v as f32))
}

/// Reads an NRRD label map; every value must be a whole number in 0..=65535.
pub fn read_nrrd_labels(path: &Path) -> Result<Volume<u16>, VolumeError> {
    read(path, to_label)
}

fn read<U>(
    path: &Path,
    convert: impl FnMut(f64) -> Result<U, f64>,
) -> Result<Volume<U>, VolumeError> {
    let file = File::open(path).map_err(|e| VolumeError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let header = read_header(path, &mut reader)?;
    let count = checked_voxel_count(path, header.dims)?;
    let declared = count as u64 * header.dtype.size() as u64;
    let short = |got_bytes: u64| {
        VolumeError::truncated(
            path,
            format!(
                "the header declares {declared} bytes of voxel data, but only {got_bytes} follow"
            ),
        )
    };
    let result = match header.encoding {
        Encoding::Raw => read_samples(&mut reader, header.dtype, header.big_endian, count, convert),
        Encoding::Gzip => {
            let mut gz = MultiGzDecoder::new(reader);
            read_samples(&mut gz, header.dtype, header.big_endian, count, convert)
                .and_then(|data| finish_gzip(&mut gz).map(|()| data).map_err(SampleError::Io))
        }
        Encoding::Ascii => return read_ascii(path, reader, &header, count, convert),
    };
    let data = result.map_err(|e| match e {
        SampleError::Io(e) => stream_error(path, e),
        SampleError::Short { got_bytes } => short(got_bytes),
        SampleError::Rejected { index, value } => rejected_label(path, header.dims, index, value),
    })?;
    Volume::from_vec(header.dims, data, header.geometry)
}

fn read_ascii<U>(
    path: &Path,
    reader: impl Read,
    header: &Header,
    count: usize,
    mut convert: impl FnMut(f64) -> Result<U, f64>,
) -> Result<Volume<U>, VolumeError> {
    // ASCII data is only ever small (it is 5–20× the binary size); 64 bytes a value is plenty.
    let mut text = String::new();
    reader
        .take((count as u64).saturating_mul(64))
        .read_to_string(&mut text)
        .map_err(|e| stream_error(path, e))?;
    let mut data = Vec::with_capacity(count);
    for token in text.split_whitespace().take(count) {
        let value: f64 = token.parse().map_err(|_| {
            VolumeError::malformed(path, format!("{token:?} in the ASCII data is not a number"))
        })?;
        match convert(value) {
            Ok(v) => data.push(v),
            Err(value) => return Err(rejected_label(path, header.dims, data.len(), value)),
        }
    }
    if data.len() < count {
        return Err(VolumeError::truncated(
            path,
            format!(
                "the header declares {count} values, but only {} follow",
                data.len()
            ),
        ));
    }
    Volume::from_vec(header.dims, data, header.geometry)
}

fn read_header(path: &Path, reader: &mut impl BufRead) -> Result<Header, VolumeError> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut limited = reader.take(MAX_HEADER_BYTES);
    let mut line = Vec::new();
    let mut first = true;
    loop {
        line.clear();
        let n = limited
            .read_until(b'\n', &mut line)
            .map_err(|e| VolumeError::io(path, e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            if first {
                return Err(VolumeError::malformed(path, "not an NRRD file (empty)"));
            }
            if fields.contains_key("data file") || fields.contains_key("datafile") {
                break;
            }
            return Err(VolumeError::truncated(
                path,
                "the NRRD header does not end with a blank line before the data",
            ));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if first {
            if !(text.starts_with("NRRD000") && text.len() == 8) {
                return Err(VolumeError::malformed(
                    path,
                    "not an NRRD file (no NRRD000x magic)",
                ));
            }
            first = false;
            continue;
        }
        if text.is_empty() {
            break;
        }
        if text.starts_with('#') || text.contains(":=") {
            continue; // comments and key/value pairs carry nothing we use
        }
        let Some((key, value)) = text.split_once(':') else {
            return Err(VolumeError::malformed(
                path,
                format!("header line {text:?} is not \"field: value\""),
            ));
        };
        fields.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    interpret(path, &fields)
}

fn interpret(path: &Path, f: &HashMap<String, String>) -> Result<Header, VolumeError> {
    let bad = |reason: String| VolumeError::malformed(path, reason);
    let unsupported = |what: String| VolumeError::unsupported(path, what);
    let get = |key: &str| f.get(key).map(String::as_str);

    if let Some(file) = get("data file").or(get("datafile")) {
        return Err(unsupported(format!(
            "detached data file ({file}); save the volume as a single .nrrd"
        )));
    }
    for key in ["line skip", "lineskip", "byte skip", "byteskip"] {
        if get(key).is_some_and(|v| v != "0") {
            return Err(unsupported(format!("NRRD field \"{key}\"")));
        }
    }
    let dimension = get("dimension").ok_or_else(|| bad("no \"dimension\" field".into()))?;
    if dimension != "3" {
        return Err(unsupported(format!(
            "NRRD dimension {dimension}; kneenode reads 3D volumes"
        )));
    }
    let type_name = get("type").ok_or_else(|| bad("no \"type\" field".into()))?;
    let dtype =
        data_type(type_name).ok_or_else(|| unsupported(format!("NRRD type {type_name:?}")))?;
    let sizes = get("sizes").ok_or_else(|| bad("no \"sizes\" field".into()))?;
    let sizes: Vec<usize> = sizes
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("sizes {sizes:?} are not whole numbers")))?;
    let dims: [usize; 3] = sizes
        .as_slice()
        .try_into()
        .ok()
        .filter(|d: &[usize; 3]| d.iter().all(|&n| n > 0))
        .ok_or_else(|| bad(format!("sizes {sizes:?}: want three positive numbers")))?;
    let encoding = match get("encoding").unwrap_or("") {
        "raw" => Encoding::Raw,
        "gzip" | "gz" => Encoding::Gzip,
        "ascii" | "text" | "txt" => Encoding::Ascii,
        "" => return Err(bad("no \"encoding\" field".into())),
        other => {
            return Err(unsupported(format!(
                "NRRD encoding {other:?} (use raw or gzip)"
            )))
        }
    };
    // NRRD requires `endian` for multi-byte types; a file without it is taken as little-endian,
    // the byte order of every machine that writes these files today.
    let big_endian = match get("endian") {
        None | Some("little") => false,
        Some("big") => true,
        Some(other) => return Err(bad(format!("endian {other:?}"))),
    };
    if let Some(kinds) = get("kinds") {
        let spatial = ["domain", "space", "???", "none"];
        if kinds.split_whitespace().any(|k| !spatial.contains(&k)) {
            return Err(unsupported(format!(
                "NRRD kinds {kinds:?}: only spatial axes are read"
            )));
        }
    }
    if let Some(units) = get("space units") {
        if units
            .split_whitespace()
            .any(|u| u.trim_matches('"') != "mm")
        {
            return Err(unsupported(format!("space units {units:?} (want mm)")));
        }
    }

    // Sign of x and y going from the file's space to LPS.
    let flip = match get("space").map(str::to_ascii_lowercase).as_deref() {
        None | Some("left-posterior-superior") | Some("lps") => [1.0, 1.0, 1.0],
        Some("right-anterior-superior") | Some("ras") => [-1.0, -1.0, 1.0],
        Some("left-anterior-superior") | Some("las") => [1.0, -1.0, 1.0],
        Some(other) => return Err(unsupported(format!("NRRD space {other:?}"))),
    };
    let origin = match get("space origin") {
        Some(s) => match parse_vectors(s).as_deref() {
            Some([Some(o)]) => *o,
            _ => return Err(bad(format!("space origin {s:?} is not one (x,y,z) vector"))),
        },
        None => [0.0; 3],
    };
    let origin = [
        origin[0] * flip[0],
        origin[1] * flip[1],
        origin[2] * flip[2],
    ];
    let geometry = if let Some(s) = get("space directions") {
        let vectors =
            parse_vectors(s).ok_or_else(|| bad(format!("space directions {s:?} do not parse")))?;
        let columns: Vec<[f64; 3]> = vectors.into_iter().flatten().collect();
        let [i, j, k]: [[f64; 3]; 3] = columns.try_into().map_err(|_| {
            unsupported(format!(
                "space directions {s:?}: want three spatial vectors"
            ))
        })?;
        let mut m = [[0.0; 3]; 3];
        for (c, col) in [i, j, k].iter().enumerate() {
            for r in 0..3 {
                m[r][c] = col[r] * flip[r];
            }
        }
        let g = Geometry::from_index_matrix(origin, &m);
        if g.is_orthonormal() {
            g
        } else {
            g.orthonormalized()
        }
    } else {
        let mut spacing = [1.0; 3];
        if let Some(s) = get("spacings") {
            for (out, token) in spacing.iter_mut().zip(s.split_whitespace()) {
                // "nan" is NRRD's "not given".
                match token.parse::<f64>() {
                    Ok(v) if v.is_finite() && v > 0.0 => *out = v,
                    _ => {}
                }
            }
        }
        Geometry {
            origin,
            spacing,
            direction: super::geometry::IDENTITY,
        }
    };
    geometry
        .validate()
        .map_err(|e| bad(format!("unusable geometry: {e}")))?;
    Ok(Header {
        dims,
        dtype,
        big_endian,
        encoding,
        geometry,
    })
}

fn data_type(name: &str) -> Option<DataType> {
    Some(match name {
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => DataType::U8,
        "signed char" | "int8" | "int8_t" => DataType::I8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            DataType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => DataType::U16,
        "int" | "signed int" | "int32" | "int32_t" => DataType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => DataType::U32,
        "float" => DataType::F32,
        "double" => DataType::F64,
        _ => return None,
    })
}

/// Parses `(a,b,c) none (d,e,f)`; `None` entries are the `none` of non-spatial axes.
fn parse_vectors(s: &str) -> Option<Vec<Option<[f64; 3]>>> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("none") {
            out.push(None);
            rest = after.trim_start();
            continue;
        }
        let inner_start = rest.strip_prefix('(')?;
        let (inner, after) = inner_start.split_once(')')?;
        let numbers: Vec<f64> = inner
            .split(',')
            .map(|t| t.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .ok()?;
        out.push(Some(numbers.try_into().ok()?));
        rest = after.trim_start();
    }
    Some(out)
}

/// Writes an NRRD file in LPS with gzip-compressed little-endian data.
pub fn write_nrrd<T: Voxel>(path: &Path, volume: &Volume<T>) -> Result<(), VolumeError> {
    let g = volume.geometry();
    g.validate()?;
    let m = g.index_matrix();
    let column = |c: usize| format!("({:?},{:?},{:?})", m[0][c], m[1][c], m[2][c]);
    let [nx, ny, nz] = volume.dims();
    let header = format!(
        "NRRD0004\n\
         # Complete NRRD file format specification at:\n\
         # http://teem.sourceforge.net/nrrd/format.html\n\
         type: {}\n\
         dimension: 3\n\
         space: left-posterior-superior\n\
         sizes: {nx} {ny} {nz}\n\
         space directions: {} {} {}\n\
         kinds: domain domain domain\n\
         endian: little\n\
         encoding: gzip\n\
         space origin: ({:?},{:?},{:?})\n\n",
        T::NRRD_TYPE,
        column(0),
        column(1),
        column(2),
        g.origin[0],
        g.origin[1],
        g.origin[2],
    );
    write_atomically(path, |w| {
        w.write_all(header.as_bytes())?;
        let mut gz = GzEncoder::new(w, Compression::default());
        write_samples(&mut gz, volume.data())?;
        gz.finish()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_parse() {
        let v = parse_vectors("(1,0,0) none ( -0.5 , 2e-3,3 )").unwrap();
        assert_eq!(
            v,
            vec![Some([1.0, 0.0, 0.0]), None, Some([-0.5, 2e-3, 3.0])]
        );
        assert!(parse_vectors("(1,0)").is_none());
        assert!(parse_vectors("(1,0,0").is_none());
        assert!(parse_vectors("1,0,0").is_none());
    }

    #[test]
    fn type_aliases() {
        assert_eq!(data_type("unsigned short"), Some(DataType::U16));
        assert_eq!(data_type("float"), Some(DataType::F32));
        assert_eq!(data_type("int64"), None);
    }
}
