//! Volumes: voxels on a grid in patient space, and the files they come from and go to.
//!
//! A [`Volume<T>`] is a flat vector of voxels (i fastest, then j, then k) plus a [`Geometry`]
//! in DICOM's LPS patient coordinates. NIfTI-1 ([`nifti`]) and NRRD ([`nrrd`]) files are read
//! and written here, hand-written against the format specifications; RAS files are converted
//! at the boundary. [`resample`] moves a volume onto another grid or into the axis order a
//! model expects. Nothing here knows about the database, the network or DICOM.

pub mod dicom_series;
mod enhanced;
pub mod geometry;
mod linalg;
pub mod nifti;
pub mod nrrd;
pub mod resample;
pub mod select;
mod side;
pub use side::Side;
#[cfg(test)]
mod tests;
mod voxel;

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::ops::{Index, IndexMut};
use std::path::{Path, PathBuf};

pub use dicom_series::{dicom_files, read_dicom_dir, read_dicom_selected, read_dicom_series};
pub use geometry::{orientation_code, Geometry};
pub use nifti::{read_nifti_f32, read_nifti_labels, write_nifti};
pub use nrrd::{read_nrrd_f32, read_nrrd_labels, write_nrrd};
pub use resample::{reorient_to, resample_linear, resample_linear_argmax, resample_nearest};
pub use select::{Echo, Plane, Selection};
pub use voxel::Voxel;

/// The most voxels a file may declare (2³¹, e.g. 1290³). Checked before anything is
/// allocated, so a corrupt header cannot ask for terabytes.
pub const MAX_VOXELS: usize = 1 << 31;

/// What can go wrong with a volume or its file. File errors start with the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The file could not be opened, read or written.
    // The I/O error is part of the message rather than a `#[source]`, so that printing the
    // chain does not repeat it.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// The file ends before the data its header declares.
    #[error("{}: truncated: {detail}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// How much was declared and how much was there.
        detail: String,
    },
    /// A valid file that uses something kneenode does not read (a datatype, 4D data, a
    /// detached data file, an encoding).
    #[error("{}: unsupported {what}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported, e.g. "NIfTI datatype 128 (RGB24)".
        what: String,
    },
    /// The file is not a well-formed file of its format, or its content does not fit what was
    /// asked for (e.g. fractional values read as labels).
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A set of DICOM files that does not form one volume: several series, orientations or
    /// echoes, a missing or duplicate slice, uneven slice spacing. Users see DICOM_ERROR.
    #[error("{}: {reason}", dir.display())]
    DicomSeries {
        /// The folder (or first file) of the series.
        dir: PathBuf,
        /// What is wrong, in words a radiographer can act on.
        reason: String,
    },
    /// An in-memory volume or geometry is inconsistent (data length, spacing, direction,
    /// orientation code).
    #[error("{reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

impl VolumeError {
    /// The file this error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            VolumeError::Io { path, .. }
            | VolumeError::Truncated { path, .. }
            | VolumeError::Unsupported { path, .. }
            | VolumeError::Malformed { path, .. } => Some(path),
            VolumeError::DicomSeries { dir, .. } => Some(dir),
            VolumeError::Invalid { .. } => None,
        }
    }

    /// Whether the file does not exist (the job error `FILE_NOT_FOUND` rather than
    /// `INVALID_FORMAT`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, VolumeError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }

    pub(crate) fn io(path: &Path, error: io::Error) -> Self {
        VolumeError::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> Self {
        VolumeError::Malformed {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, what: impl Into<String>) -> Self {
        VolumeError::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn truncated(path: &Path, detail: impl Into<String>) -> Self {
        VolumeError::Truncated {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// Voxels on a grid: `data[i + nx * (j + ny * k)]` is voxel (i, j, k).
#[derive(Clone, PartialEq)]
pub struct Volume<T> {
    dims: [usize; 3],
    data: Vec<T>,
    geometry: Geometry,
}

/// Shows the grid, not the voxels: a volume holds millions, and a failed assertion or a log
/// line must stay readable.
impl<T> std::fmt::Debug for Volume<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("dims", &self.dims)
            .field("type", &std::any::type_name::<T>())
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

impl<T> Volume<T> {
    /// A volume from its voxels; fails unless `data.len()` is `nx · ny · nz`.
    pub fn from_vec(
        dims: [usize; 3],
        data: Vec<T>,
        geometry: Geometry,
    ) -> Result<Self, VolumeError> {
        match voxel_count(dims) {
            Some(n) if n == data.len() => Ok(Volume {
                dims,
                data,
                geometry,
            }),
            _ => Err(VolumeError::Invalid {
                reason: format!(
                    "{} voxels do not fill a {}×{}×{} grid",
                    data.len(),
                    dims[0],
                    dims[1],
                    dims[2]
                ),
            }),
        }
    }

    /// Voxels along i, j and k.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether any axis has size 0.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The voxels, i fastest.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The voxels, i fastest, for changing in place.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The voxels, giving up the volume.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }

    /// Where the grid sits in the patient.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Replaces the geometry (the voxels stay as they are).
    pub fn set_geometry(&mut self, geometry: Geometry) {
        self.geometry = geometry;
    }

    /// The position of voxel (i, j, k) in [`Volume::data`], or `None` outside the grid.
    pub fn offset(&self, i: usize, j: usize, k: usize) -> Option<usize> {
        let [nx, ny, nz] = self.dims;
        (i < nx && j < ny && k < nz).then(|| i + nx * (j + ny * k))
    }

    /// Voxel (i, j, k), or `None` outside the grid.
    pub fn get(&self, i: usize, j: usize, k: usize) -> Option<&T> {
        self.offset(i, j, k).map(|o| &self.data[o])
    }

    /// Voxel (i, j, k) for changing, or `None` outside the grid.
    pub fn get_mut(&mut self, i: usize, j: usize, k: usize) -> Option<&mut T> {
        self.offset(i, j, k).map(|o| &mut self.data[o])
    }

    /// Sets voxel (i, j, k).
    ///
    /// # Panics
    /// Outside the grid, like slice indexing.
    pub fn set(&mut self, i: usize, j: usize, k: usize, value: T) {
        self[[i, j, k]] = value;
    }

    /// A volume on the same grid with `f` applied to every voxel.
    pub fn map<U>(&self, f: impl FnMut(&T) -> U) -> Volume<U> {
        Volume {
            dims: self.dims,
            data: self.data.iter().map(f).collect(),
            geometry: self.geometry,
        }
    }

    /// A volume on the same grid with other voxels; fails if the length differs.
    pub fn with_data<U>(&self, data: Vec<U>) -> Result<Volume<U>, VolumeError> {
        Volume::from_vec(self.dims, data, self.geometry)
    }
}

impl<T: Clone> Volume<T> {
    /// A volume with every voxel set to `value`. Like `vec!`, it aborts if the grid cannot
    /// be allocated.
    pub fn filled(dims: [usize; 3], value: T, geometry: Geometry) -> Self {
        let n = dims[0].saturating_mul(dims[1]).saturating_mul(dims[2]);
        Volume {
            dims,
            data: vec![value; n],
            geometry,
        }
    }
}

impl<T> Index<[usize; 3]> for Volume<T> {
    type Output = T;

    fn index(&self, [i, j, k]: [usize; 3]) -> &T {
        match self.offset(i, j, k) {
            Some(o) => &self.data[o],
            None => panic!("voxel ({i}, {j}, {k}) is outside a {:?} volume", self.dims),
        }
    }
}

impl<T> IndexMut<[usize; 3]> for Volume<T> {
    fn index_mut(&mut self, [i, j, k]: [usize; 3]) -> &mut T {
        match self.offset(i, j, k) {
            Some(o) => &mut self.data[o],
            None => panic!("voxel ({i}, {j}, {k}) is outside a {:?} volume", self.dims),
        }
    }
}

/// `nx · ny · nz`, or `None` on overflow.
pub(crate) fn voxel_count(dims: [usize; 3]) -> Option<usize> {
    dims[0].checked_mul(dims[1])?.checked_mul(dims[2])
}

/// The voxel count of dimensions read from a file, refused above [`MAX_VOXELS`].
pub(crate) fn checked_voxel_count(path: &Path, dims: [usize; 3]) -> Result<usize, VolumeError> {
    match voxel_count(dims) {
        Some(n) if n <= MAX_VOXELS => Ok(n),
        _ => Err(VolumeError::unsupported(
            path,
            format!(
                "size {}×{}×{}: more than {MAX_VOXELS} voxels",
                dims[0], dims[1], dims[2]
            ),
        )),
    }
}

/// The file formats kneenode reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// NIfTI-1, `.nii` or `.nii.gz`.
    Nifti,
    /// NRRD with attached data, `.nrrd`.
    Nrrd,
}

impl Format {
    /// The format a file name implies (`.nii`, `.nii.gz`, `.nrrd`, `.nhdr`), case-insensitive.
    pub fn from_name(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".nii") || name.ends_with(".nii.gz") {
            Some(Format::Nifti)
        } else if name.ends_with(".nrrd") || name.ends_with(".nhdr") {
            Some(Format::Nrrd)
        } else {
            None
        }
    }

    /// The format of a file: by its name, or else by its first bytes (an upload may have any
    /// name). A gzip stream is taken to be NIfTI, since NRRD compresses only its data.
    pub fn detect(path: &Path) -> Result<Format, VolumeError> {
        if let Some(f) = Format::from_name(path) {
            return Ok(f);
        }
        let mut head = [0u8; 4];
        let mut file = File::open(path).map_err(|e| VolumeError::io(path, e))?;
        let n = read_up_to(&mut file, &mut head).map_err(|e| VolumeError::io(path, e))?;
        let head = &head[..n];
        if head.starts_with(b"NRRD") {
            Ok(Format::Nrrd)
        } else if head.starts_with(&[0x1f, 0x8b])
            || head == 348i32.to_le_bytes()
            || head == 348i32.to_be_bytes()
        {
            Ok(Format::Nifti)
        } else {
            Err(VolumeError::unsupported(
                path,
                "file format: supported formats are NIfTI (.nii, .nii.gz) and NRRD (.nrrd)",
            ))
        }
    }
}

/// Reads an image (NIfTI or NRRD, see [`Format::detect`]) as `f32`, with NIfTI scaling applied.
pub fn read_image(path: &Path) -> Result<Volume<f32>, VolumeError> {
    match Format::detect(path)? {
        Format::Nifti => read_nifti_f32(path),
        Format::Nrrd => read_nrrd_f32(path),
    }
}

/// Reads a label map (NIfTI or NRRD); every value must be a whole number in 0..=65535.
pub fn read_labels(path: &Path) -> Result<Volume<u16>, VolumeError> {
    match Format::detect(path)? {
        Format::Nifti => read_nifti_labels(path),
        Format::Nrrd => read_nrrd_labels(path),
    }
}

/// Writes a volume in the format its name asks for: `.nii`, `.nii.gz` or `.nrrd`.
pub fn write_volume<T: Voxel>(path: &Path, volume: &Volume<T>) -> Result<(), VolumeError> {
    match Format::from_name(path) {
        Some(Format::Nifti) => write_nifti(path, volume),
        Some(Format::Nrrd) => write_nrrd(path, volume),
        None => Err(VolumeError::unsupported(
            path,
            "file name: write to .nii, .nii.gz or .nrrd",
        )),
    }
}

/// Fills `buf` as far as the reader allows; returns how much was read.
pub(crate) fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes through a temporary file next to `path` and renames it into place, so a crash or
/// a full disk never leaves a half-written volume under the final name.
pub(crate) fn write_atomically(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), VolumeError> {
    let name = path
        .file_name()
        .ok_or_else(|| VolumeError::io(path, io::Error::other("not a file name")))?;
    // Unique per process and call, so concurrent writers of one name never share a file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}-{n}.part", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut writer = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        body(&mut writer)?;
        writer.into_inner().map_err(|e| e.into_error())?.flush()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        // Best effort: the error that matters is the one we return.
        let _ = std::fs::remove_file(&tmp);
        VolumeError::io(path, e)
    })
}
