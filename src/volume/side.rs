//! The knee's side: which knee an image shows, as DICOM states it (Frame Laterality, Image
//! Laterality, Laterality) and as the `--side` flag and the `side` job option name it. A model
//! trained on one side only needs it to mirror the other side's knees.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which knee (or other paired body part) an image shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The patient's left.
    Left,
    /// The patient's right.
    Right,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }

    /// The side a DICOM laterality code names: `L` or `R`. `U` (unpaired), `B` (both), an
    /// empty value or anything else names none.
    pub fn from_dicom(code: &str) -> Option<Side> {
        match code.trim_matches(|c: char| c == '\0' || c.is_whitespace()) {
            "L" => Some(Side::Left),
            "R" => Some(Side::Right),
            _ => None,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Left => "left",
            Side::Right => "right",
        })
    }
}

impl FromStr for Side {
    type Err = String;

    /// `left` or `right` (any case), as the `--side` flag and the `side` job option take it.
    fn from_str(s: &str) -> Result<Side, String> {
        match s.to_ascii_lowercase().as_str() {
            "left" => Ok(Side::Left),
            "right" => Ok(Side::Right),
            _ => Err(format!("side {s:?}: want left or right")),
        }
    }
}

/// The first of `tags` in `obj` that names a side (see [`Side::from_dicom`]).
pub(super) fn stated_side(
    obj: &dicom_object::InMemDicomObject,
    tags: &[dicom_core::Tag],
) -> Option<Side> {
    tags.iter().find_map(|&t| {
        obj.get(t)
            .and_then(|e| e.to_str().ok())
            .and_then(|v| Side::from_dicom(&v))
    })
}
