//! Which part of a DICOM series becomes the volume when the series holds several echoes or
//! orientations (a multi-echo DESS, a localiser stored in the same series): a routing rule says
//! "echo 1", "root sum of squares of the echoes", or "the sagittal slices".

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An anatomical plane, told apart by the slice normal's dominant patient axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plane {
    /// Normal along left–right.
    Sagittal,
    /// Normal along anterior–posterior.
    Coronal,
    /// Normal along superior–inferior.
    Axial,
}

impl Plane {
    /// The plane of slices with `normal` (LPS).
    pub fn of_normal(normal: [f64; 3]) -> Plane {
        let a = normal.map(f64::abs);
        if a[0] >= a[1] && a[0] >= a[2] {
            Plane::Sagittal
        } else if a[1] >= a[2] {
            Plane::Coronal
        } else {
            Plane::Axial
        }
    }
}

impl fmt::Display for Plane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plane::Sagittal => "sagittal",
            Plane::Coronal => "coronal",
            Plane::Axial => "axial",
        })
    }
}

/// Which echo(es) make the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// The echo with this Echo Number (0018,0086).
    Number(i32),
    /// The root sum of squares of all echoes, voxel by voxel (they must share one grid).
    RootSumOfSquares,
}

impl Serialize for Echo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Echo::Number(n) => s.serialize_i32(*n),
            Echo::RootSumOfSquares => s.serialize_str("rss"),
        }
    }
}

impl<'de> Deserialize<'de> for Echo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) if (1..=i64::from(i32::MAX)).contains(&n) => Ok(Echo::Number(n as i32)),
            Raw::Text(t) if matches!(t.as_str(), "rss" | "root_sum_of_squares") => {
                Ok(Echo::RootSumOfSquares)
            }
            _ => Err(serde::de::Error::custom(
                "echo must be an echo number (1, 2, …) or \"rss\" (root sum of squares)",
            )),
        }
    }
}

impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Echo::Number(n) => write!(f, "echo {n}"),
            Echo::RootSumOfSquares => f.write_str("the root sum of squares of the echoes"),
        }
    }
}

/// The part of a series to read; empty = the series must be one orientation and one echo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selection {
    /// Keep only slices in this plane.
    pub plane: Option<Plane>,
    /// Keep this echo, or combine them.
    pub echo: Option<Echo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_reads_numbers_and_rss_and_refuses_the_rest() {
        #[derive(Deserialize, Serialize)]
        struct T {
            echo: Echo,
        }
        let t: T = toml::from_str("echo = 2").unwrap();
        assert_eq!(t.echo, Echo::Number(2));
        let t: T = toml::from_str("echo = \"rss\"").unwrap();
        assert_eq!(t.echo, Echo::RootSumOfSquares);
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"echo":"rss"}"#);
        for bad in ["echo = 0", "echo = \"first\"", "echo = 1.5"] {
            let e = toml::from_str::<T>(bad).err().unwrap().to_string();
            assert!(e.contains("echo must be"), "{bad}: {e}");
        }
        assert_eq!(Plane::of_normal([0.1, -0.2, 0.97]), Plane::Axial);
        assert_eq!(Plane::of_normal([-1.0, 0.0, 0.0]), Plane::Sagittal);
    }
}
