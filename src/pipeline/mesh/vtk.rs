//! Legacy VTK polydata files (`.vtk`), the format pymskt writes and Slicer, ParaView and
//! meshio read.
//!
//! **Writing.** Version 4.2 (pymskt pins the legacy 4.2 layout because VTK 9's 5.1 is not read
//! by older tools), ASCII or BINARY. Binary data are big-endian, as the legacy format requires:
//! points as `double`, polygon cells as `int`, `float`/`int` scalars. The first point array is
//! written as `SCALARS` (the active scalars), the others in a `FIELD FieldData` block, exactly
//! the split `vtkDataWriter` makes: a plain `vtkPolyDataReader` keeps only the first `SCALARS`
//! section unless told to read them all, but always reads field arrays.
//!
//! **Names with spaces.** A legacy file is whitespace-tokenised, so `thickness (mm)` cannot be
//! written as is. VTK's writer percent-encodes every byte outside `!`–`~`, and `"` and `%`, as
//! `%XX` (two upper-case hex digits), and VTK's reader decodes it: the pymskt files therefore
//! say `SCALARS thickness%20(mm) double`, and VTK, ParaView, Slicer and pyvista show
//! `thickness (mm)`. We do the same both ways. (meshio's legacy reader is no help here: it
//! does not read POLYDATA at all.)
//!
//! **Reading.** POINTS, POLYGONS (4.2 counts, or 5.1 `OFFSETS`/`CONNECTIVITY`; polygons of
//! more than three vertices are fanned into triangles), point `SCALARS` and `FIELD` arrays of
//! one component; VERTICES, LINES, TRIANGLE_STRIPS, cell data, normals, vectors, tensors,
//! texture coordinates, colours, lookup tables and METADATA are read past and dropped.

use std::path::{Path, PathBuf};

use super::{Mesh, PointScalars, ScalarValues};

/// ASCII or big-endian binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Human-readable text.
    Ascii,
    /// Big-endian binary data after text headers.
    Binary,
}

/// Reading or writing a mesh file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshIoError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a mesh this reader understands.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Percent-encodes a name the way `vtkWriter::EncodeString` does.
pub fn encode_name(name: &str) -> String {
    let mut out = String::new();
    for &b in name.as_bytes() {
        if !(33..=126).contains(&b) || b == b'"' || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    if out.is_empty() {
        out.push_str("scalars");
    }
    out
}

/// Decodes `%XX` escapes (the inverse of [`encode_name`]); malformed escapes stay as they are.
pub fn decode_name(name: &str) -> String {
    let b = name.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file's bytes.
pub fn to_bytes(mesh: &Mesh, encoding: Encoding) -> Vec<u8> {
    let binary = encoding == Encoding::Binary;
    let mut out = Vec::new();
    out.extend_from_slice(b"# vtk DataFile Version 4.2\nkneenode mesh\n");
    out.extend_from_slice(if binary { b"BINARY\n" } else { b"ASCII\n" });
    out.extend_from_slice(b"DATASET POLYDATA\n");
    out.extend_from_slice(format!("POINTS {} double\n", mesh.vertices.len()).as_bytes());
    if binary {
        for v in &mesh.vertices {
            for x in v {
                out.extend_from_slice(&x.to_be_bytes());
            }
        }
        out.push(b'\n');
    } else {
        for v in &mesh.vertices {
            out.extend_from_slice(format!("{} {} {}\n", v[0], v[1], v[2]).as_bytes());
        }
    }
    let nt = mesh.triangles.len();
    out.extend_from_slice(format!("POLYGONS {} {}\n", nt, 4 * nt).as_bytes());
    if binary {
        for t in &mesh.triangles {
            out.extend_from_slice(&3i32.to_be_bytes());
            for &v in t {
                out.extend_from_slice(&(v as i32).to_be_bytes());
            }
        }
        out.push(b'\n');
    } else {
        for t in &mesh.triangles {
            out.extend_from_slice(format!("3 {} {} {}\n", t[0], t[1], t[2]).as_bytes());
        }
    }
    let arrays: Vec<&PointScalars> = mesh
        .point_scalars
        .iter()
        .filter(|s| s.values.len() == mesh.vertices.len())
        .collect();
    if let Some((first, rest)) = arrays.split_first() {
        out.extend_from_slice(format!("POINT_DATA {}\n", mesh.vertices.len()).as_bytes());
        out.extend_from_slice(
            format!(
                "SCALARS {} {} 1\nLOOKUP_TABLE default\n",
                encode_name(&first.name),
                type_name(&first.values)
            )
            .as_bytes(),
        );
        write_values(&mut out, &first.values, binary);
        if !rest.is_empty() {
            out.extend_from_slice(format!("FIELD FieldData {}\n", rest.len()).as_bytes());
            for a in rest {
                out.extend_from_slice(
                    format!(
                        "{} 1 {} {}\n",
                        encode_name(&a.name),
                        a.values.len(),
                        type_name(&a.values)
                    )
                    .as_bytes(),
                );
                write_values(&mut out, &a.values, binary);
            }
        }
    }
    out
}

fn type_name(v: &ScalarValues) -> &'static str {
    match v {
        ScalarValues::F32(_) => "float",
        ScalarValues::I32(_) => "int",
    }
}

fn write_values(out: &mut Vec<u8>, values: &ScalarValues, binary: bool) {
    match (values, binary) {
        (ScalarValues::F32(v), true) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_be_bytes())),
        (ScalarValues::I32(v), true) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_be_bytes())),
        (ScalarValues::F32(v), false) => v
            .iter()
            .for_each(|x| out.extend_from_slice(format!("{x}\n").as_bytes())),
        (ScalarValues::I32(v), false) => v
            .iter()
            .for_each(|x| out.extend_from_slice(format!("{x}\n").as_bytes())),
    }
    if binary {
        out.push(b'\n');
    }
}

/// Writes `mesh` to `path` as legacy VTK polydata.
pub fn write(path: &Path, mesh: &Mesh, encoding: Encoding) -> Result<(), MeshIoError> {
    std::fs::write(path, to_bytes(mesh, encoding)).map_err(|source| MeshIoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a legacy VTK polydata file.
pub fn read(path: &Path) -> Result<Mesh, MeshIoError> {
    let bytes = std::fs::read(path).map_err(|source| MeshIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes).map_err(|reason| MeshIoError::Format {
        path: path.to_path_buf(),
        reason,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    binary: bool,
}

impl<'a> Cursor<'a> {
    fn line(&mut self) -> Result<String, String> {
        if self.pos >= self.b.len() {
            return Err("unexpected end of file".into());
        }
        let rest = &self.b[self.pos..];
        let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
        self.pos += (end + 1).min(rest.len());
        Ok(String::from_utf8_lossy(&rest[..end]).trim().to_string())
    }

    fn token(&mut self) -> Option<String> {
        while self.pos < self.b.len() && self.b[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let start = self.pos;
        while self.pos < self.b.len() && !self.b[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        (self.pos > start).then(|| String::from_utf8_lossy(&self.b[start..self.pos]).into_owned())
    }

    fn need(&mut self, what: &str) -> Result<String, String> {
        self.token()
            .ok_or_else(|| format!("unexpected end of file reading {what}"))
    }

    fn count(&mut self, what: &str) -> Result<usize, String> {
        let t = self.need(what)?;
        t.parse()
            .map_err(|_| format!("{what}: `{t}` is not a count"))
    }

    /// Ends a header line: binary data start right after its newline.
    fn end_header(&mut self) {
        while self.pos < self.b.len() && self.b[self.pos] != b'\n' {
            self.pos += 1;
        }
        self.pos = (self.pos + 1).min(self.b.len());
    }

    /// Skips VTK 9 `METADATA` blocks (array information, component names) if one comes next:
    /// lines that are blank or start with one of its keywords.
    fn skip_metadata(&mut self) {
        loop {
            let save = self.pos;
            let Ok(line) = self.line() else {
                return;
            };
            let first = line.split_whitespace().next().unwrap_or("");
            let keep_going = line.is_empty()
                || matches!(
                    first,
                    "METADATA" | "INFORMATION" | "NAME" | "DATA" | "COMPONENT_NAMES"
                );
            if !keep_going {
                self.pos = save;
                return;
            }
        }
    }

    fn values(&mut self, n: usize, ty: &str) -> Result<Vec<f64>, String> {
        let ty = ty.to_ascii_lowercase();
        if !self.binary {
            let mut v = Vec::with_capacity(n.min(1 << 24));
            for _ in 0..n {
                let t = self.need(&ty)?;
                v.push(
                    t.parse::<f64>()
                        .map_err(|_| format!("`{t}` is not a number"))?,
                );
            }
            return Ok(v);
        }
        self.end_header();
        let size = match ty.as_str() {
            "bit" => return Err("bit arrays are not supported".into()),
            "char" | "unsigned_char" => 1,
            "short" | "unsigned_short" => 2,
            "int" | "unsigned_int" | "float" => 4,
            "long" | "unsigned_long" | "vtktypeint64" | "vtktypeuint64" | "vtkidtype"
            | "double" => 8,
            other => return Err(format!("unknown data type `{other}`")),
        };
        let bytes = n
            .checked_mul(size)
            .filter(|&len| self.pos + len <= self.b.len())
            .ok_or_else(|| format!("binary {ty} data run past the end of the file"))?;
        let raw = &self.b[self.pos..self.pos + bytes];
        self.pos += bytes;
        let v = raw
            .chunks_exact(size)
            .map(|c| {
                let mut a = [0u8; 8];
                a[..size].copy_from_slice(c);
                match ty.as_str() {
                    "char" => f64::from(c[0] as i8),
                    "unsigned_char" => f64::from(c[0]),
                    "short" => f64::from(i16::from_be_bytes([c[0], c[1]])),
                    "unsigned_short" => f64::from(u16::from_be_bytes([c[0], c[1]])),
                    "int" => f64::from(i32::from_be_bytes([c[0], c[1], c[2], c[3]])),
                    "unsigned_int" => f64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
                    "float" => f64::from(f32::from_be_bytes([c[0], c[1], c[2], c[3]])),
                    "double" => f64::from_be_bytes(a),
                    "unsigned_long" | "vtktypeuint64" => u64::from_be_bytes(a) as f64,
                    _ => i64::from_be_bytes(a) as f64,
                }
            })
            .collect();
        Ok(v)
    }
}

fn is_real(ty: &str) -> bool {
    matches!(ty.to_ascii_lowercase().as_str(), "float" | "double")
}

fn to_scalars(values: Vec<f64>, ty: &str) -> ScalarValues {
    if is_real(ty) {
        ScalarValues::F32(values.into_iter().map(|x| x as f32).collect())
    } else {
        ScalarValues::I32(values.into_iter().map(|x| x as i32).collect())
    }
}

/// Cells of a 4.2 (`n size` then counts) or 5.1 (`OFFSETS`/`CONNECTIVITY`) cell section.
fn cells(cur: &mut Cursor<'_>) -> Result<Vec<Vec<usize>>, String> {
    let a = cur.count("cell count")?;
    let b = cur.count("cell size")?;
    let save = cur.pos;
    if cur.token().as_deref() == Some("OFFSETS") {
        let ty = cur.need("offset type")?;
        let offsets = cur.values(a, &ty)?;
        let _ = cur.need("CONNECTIVITY")?;
        let ty = cur.need("connectivity type")?;
        let conn = cur.values(b, &ty)?;
        let mut out = Vec::new();
        for w in offsets.windows(2) {
            let (s, e) = (w[0] as usize, w[1] as usize);
            let c = conn
                .get(s..e)
                .ok_or("cell offsets run past the connectivity")?;
            out.push(c.iter().map(|&x| x as usize).collect());
        }
        return Ok(out);
    }
    cur.pos = save;
    let flat = cur.values(b, "int")?;
    let mut out = Vec::with_capacity(a);
    let mut i = 0;
    for _ in 0..a {
        let n = *flat.get(i).ok_or("cell list is shorter than announced")? as usize;
        let c = flat
            .get(i + 1..i + 1 + n)
            .ok_or("cell list is shorter than announced")?;
        out.push(c.iter().map(|&x| x as usize).collect());
        i += 1 + n;
    }
    Ok(out)
}

/// Parses a legacy VTK polydata file; the error is a sentence for users.
pub fn parse(bytes: &[u8]) -> Result<Mesh, String> {
    let mut cur = Cursor {
        b: bytes,
        pos: 0,
        binary: false,
    };
    let magic = cur.line()?;
    if !magic.starts_with("# vtk DataFile") {
        return Err("not a legacy VTK file (no `# vtk DataFile` line)".into());
    }
    let _title = cur.line()?;
    cur.binary = match cur.line()?.to_ascii_uppercase().as_str() {
        "ASCII" => false,
        "BINARY" => true,
        other => return Err(format!("expected ASCII or BINARY, found `{other}`")),
    };
    let mut mesh = Mesh::default();
    // The current attribute section: whether it is point data, and its tuple count.
    let mut in_point_data = false;
    let mut data_count = 0usize;
    while let Some(key) = cur.token() {
        match key.to_ascii_uppercase().as_str() {
            "DATASET" => {
                let kind = cur.need("dataset type")?;
                if !kind.eq_ignore_ascii_case("POLYDATA") {
                    return Err(format!("dataset is {kind}, not POLYDATA"));
                }
            }
            "POINTS" => {
                let n = cur.count("point count")?;
                let ty = cur.need("point type")?;
                let v = cur.values(3 * n, &ty)?;
                mesh.vertices = v.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
            }
            "POLYGONS" => {
                for c in cells(&mut cur)? {
                    if c.len() < 3 || c.iter().any(|&v| v >= mesh.vertices.len()) {
                        return Err("a polygon has under 3 vertices or an unknown vertex".into());
                    }
                    for k in 1..c.len() - 1 {
                        mesh.triangles
                            .push([c[0], c[k], c[k + 1]].map(|v| v as u32));
                    }
                }
            }
            "VERTICES" | "LINES" | "TRIANGLE_STRIPS" => {
                cells(&mut cur)?;
            }
            "POINT_DATA" | "CELL_DATA" => {
                data_count = cur.count("data count")?;
                in_point_data = key.eq_ignore_ascii_case("POINT_DATA");
            }
            "SCALARS" => {
                let name = decode_name(&cur.need("scalar name")?);
                let ty = cur.need("scalar type")?;
                // Optional component count, then an optional LOOKUP_TABLE line.
                let save = cur.pos;
                let mut ncomp = 1;
                match cur.token() {
                    Some(t) if t.parse::<usize>().is_ok() => ncomp = t.parse().unwrap_or(1),
                    _ => cur.pos = save,
                }
                let save = cur.pos;
                if cur.token().as_deref() == Some("LOOKUP_TABLE") {
                    cur.need("lookup table name")?;
                } else {
                    cur.pos = save;
                }
                let v = cur.values(data_count * ncomp, &ty)?;
                cur.skip_metadata();
                if in_point_data && ncomp == 1 && data_count == mesh.vertices.len() {
                    mesh.point_scalars.push(PointScalars {
                        name,
                        values: to_scalars(v, &ty),
                    });
                }
            }
            "NORMALS" | "VECTORS" | "TENSORS" => {
                cur.need("name")?;
                let ty = cur.need("type")?;
                let per = if key.eq_ignore_ascii_case("TENSORS") {
                    9
                } else {
                    3
                };
                cur.values(per * data_count, &ty)?;
                cur.skip_metadata();
            }
            "TEXTURE_COORDINATES" => {
                cur.need("name")?;
                let dim = cur.count("dimension")?;
                let ty = cur.need("type")?;
                cur.values(dim * data_count, &ty)?;
                cur.skip_metadata();
            }
            "COLOR_SCALARS" | "LOOKUP_TABLE" => {
                // Colours: floats in ASCII, bytes in binary; a table has 4 per entry.
                cur.need("name")?;
                let n = cur.count("size")?;
                let n = if key.eq_ignore_ascii_case("COLOR_SCALARS") {
                    n * data_count
                } else {
                    4 * n
                };
                let ty = if cur.binary { "unsigned_char" } else { "float" };
                cur.values(n, ty)?;
            }
            "FIELD" => {
                cur.need("field name")?;
                let k = cur.count("array count")?;
                for _ in 0..k {
                    let name = decode_name(&cur.need("array name")?);
                    let ncomp = cur.count("components")?;
                    let ntup = cur.count("tuples")?;
                    let ty = cur.need("array type")?;
                    let v = cur.values(ncomp * ntup, &ty)?;
                    cur.skip_metadata();
                    if in_point_data && ncomp == 1 && ntup == mesh.vertices.len() {
                        mesh.point_scalars.push(PointScalars {
                            name,
                            values: to_scalars(v, &ty),
                        });
                    }
                }
            }
            "METADATA" => cur.skip_metadata(),
            other => return Err(format!("unsupported section `{other}`")),
        }
    }
    Ok(mesh)
}
