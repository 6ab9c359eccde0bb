//! Which integer in a label volume is which tissue.
//!
//! kneenode's own segmentations follow DOMAIN.md (1 patellar cartilage … 9 patella), which is
//! [`LabelMap::default`]. A segmentation numbered another way (pymskt's, DOSMA's) is analysed
//! as it is with a map file (issue 5, item 7):
//!
//! ```toml
//! [labels]
//! femur = 5
//! tibia = 6
//! patella = 7
//! femoral_cartilage = 1
//! medial_tibial_cartilage = 2
//! lateral_tibial_cartilage = 3
//! patellar_cartilage = 4
//! medial_meniscus = 10
//! lateral_meniscus = 9
//! ```
//!
//! A tissue left out of the file is taken as absent from the volume (its meshes are skipped),
//! not as its DOMAIN.md number: the two numberings must never mix. Unknown keys are an error so
//! a typo does not silently drop a tissue.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The label of each tissue; `None` when the volume does not have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMap {
    /// Femur (bone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub femur: Option<u16>,
    /// Tibia (bone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tibia: Option<u16>,
    /// Patella (bone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patella: Option<u16>,
    /// Femoral cartilage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub femoral_cartilage: Option<u16>,
    /// Medial tibial cartilage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medial_tibial_cartilage: Option<u16>,
    /// Lateral tibial cartilage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateral_tibial_cartilage: Option<u16>,
    /// Patellar cartilage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patellar_cartilage: Option<u16>,
    /// Medial meniscus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medial_meniscus: Option<u16>,
    /// Lateral meniscus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateral_meniscus: Option<u16>,
}

impl Default for LabelMap {
    /// The DOMAIN.md map, which kneenode's segmentations use.
    fn default() -> Self {
        LabelMap {
            patellar_cartilage: Some(1),
            femoral_cartilage: Some(2),
            medial_tibial_cartilage: Some(3),
            lateral_tibial_cartilage: Some(4),
            medial_meniscus: Some(5),
            lateral_meniscus: Some(6),
            femur: Some(7),
            tibia: Some(8),
            patella: Some(9),
        }
    }
}

/// A label-map file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabelMapError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid label map.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file (or `<string>`).
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    labels: LabelMap,
}

impl LabelMap {
    /// The tissues as (key, label) pairs, in file order, present ones only.
    pub fn entries(&self) -> Vec<(&'static str, u16)> {
        self.slots()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }

    /// The map a model's manifest gives (`[labels] 7 = "femur"`, `2 = "femoral cartilage"`):
    /// tissue names are matched ignoring case, with spaces as underscores; other names
    /// (background, anything unknown) are ignored.
    pub fn from_manifest<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelMap {
        let mut map = LabelMap {
            femur: None,
            tibia: None,
            patella: None,
            femoral_cartilage: None,
            medial_tibial_cartilage: None,
            lateral_tibial_cartilage: None,
            patellar_cartilage: None,
            medial_meniscus: None,
            lateral_meniscus: None,
        };
        for (value, name) in labels {
            let Ok(value) = value.trim().parse::<u16>() else {
                continue;
            };
            let slot = match name.trim().to_ascii_lowercase().replace(' ', "_").as_str() {
                "femur" => &mut map.femur,
                "tibia" => &mut map.tibia,
                "patella" => &mut map.patella,
                "femoral_cartilage" => &mut map.femoral_cartilage,
                "medial_tibial_cartilage" => &mut map.medial_tibial_cartilage,
                "lateral_tibial_cartilage" => &mut map.lateral_tibial_cartilage,
                "patellar_cartilage" => &mut map.patellar_cartilage,
                "medial_meniscus" => &mut map.medial_meniscus,
                "lateral_meniscus" => &mut map.lateral_meniscus,
                _ => continue,
            };
            if value > 0 {
                *slot = Some(value);
            }
        }
        map
    }

    /// Parses the `[labels]` table of a map file; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<LabelMap, LabelMapError> {
        let invalid = |reason: String| LabelMapError::Invalid {
            path: origin.to_path_buf(),
            reason,
        };
        let file: MapFile = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        file.labels.check().map_err(invalid)?;
        Ok(file.labels)
    }

    /// Checks what the types cannot: at least one tissue, no tissue on the background (0), no
    /// two tissues on one integer. The message names the key.
    pub fn check(&self) -> Result<(), String> {
        let entries = self.entries();
        if entries.is_empty() {
            return Err("labels: no tissue is given".into());
        }
        for (i, (key, value)) in entries.iter().enumerate() {
            if *value == 0 {
                return Err(format!("labels.{key}: 0 is the background"));
            }
            if let Some((other, _)) = entries[..i].iter().find(|(_, v)| v == value) {
                return Err(format!("labels.{key}: {value} is already labels.{other}"));
            }
        }
        Ok(())
    }

    /// The label (DOMAIN.md numbering) each value of a volume numbered by this map stands for:
    /// `table[value]`, 0 for values the map does not name. Long enough for every value in
    /// the map.
    pub fn to_domain_table(&self) -> Vec<u8> {
        let domain = LabelMap::default();
        let max = self.entries().iter().map(|(_, v)| *v).max().unwrap_or(0);
        let mut table = vec![0u8; usize::from(max) + 1];
        for ((_, ours), (_, theirs)) in domain.entries().iter().zip(self.slots()) {
            if let Some(theirs) = theirs {
                table[usize::from(theirs)] = u8::try_from(*ours).unwrap_or(0);
            }
        }
        table
    }

    /// Every tissue in [`LabelMap::entries`] order, present or not.
    fn slots(&self) -> [(&'static str, Option<u16>); 9] {
        [
            ("femur", self.femur),
            ("tibia", self.tibia),
            ("patella", self.patella),
            ("femoral_cartilage", self.femoral_cartilage),
            ("medial_tibial_cartilage", self.medial_tibial_cartilage),
            ("lateral_tibial_cartilage", self.lateral_tibial_cartilage),
            ("patellar_cartilage", self.patellar_cartilage),
            ("medial_meniscus", self.medial_meniscus),
            ("lateral_meniscus", self.lateral_meniscus),
        ]
    }

    /// Relabels a volume numbered by this map into DOMAIN.md's numbering (what kneenode's own
    /// segmentations use). Values the map does not name become background; how many voxels
    /// that were is returned with the volume.
    pub fn to_domain(
        &self,
        labels: &crate::volume::Volume<u16>,
    ) -> (crate::volume::Volume<u8>, u64) {
        let table = self.to_domain_table();
        let mut dropped = 0u64;
        let out = labels.map(|&v| match table.get(usize::from(v)) {
            Some(&l) if l > 0 || v == 0 => l,
            _ => {
                dropped += 1;
                0
            }
        });
        (out, dropped)
    }

    /// Reads a map file.
    pub fn load(path: &Path) -> Result<LabelMap, LabelMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabelMapError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        LabelMap::from_toml_str(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_gives_the_domain_map() {
        let manifest = [
            ("0", "background"),
            ("1", "patellar cartilage"),
            ("2", "femoral cartilage"),
            ("3", "medial tibial cartilage"),
            ("4", "lateral tibial cartilage"),
            ("5", "medial meniscus"),
            ("6", "lateral meniscus"),
            ("7", "femur"),
            ("8", "tibia"),
            ("9", "patella"),
        ];
        assert_eq!(LabelMap::from_manifest(manifest), LabelMap::default());
        let renumbered = LabelMap::from_manifest([("5", "Femur"), ("1", "Femoral cartilage")]);
        assert_eq!(
            renumbered.entries(),
            [("femur", 5), ("femoral_cartilage", 1)]
        );
    }

    #[test]
    fn parses_the_issue_example_and_rejects_mistakes() {
        let text = "[labels]\nfemur = 5\ntibia = 6\npatella = 7\nfemoral_cartilage = 1\n\
                    medial_tibial_cartilage = 2\nlateral_tibial_cartilage = 3\n\
                    patellar_cartilage = 4\nmedial_meniscus = 10\nlateral_meniscus = 9\n";
        let m = LabelMap::from_toml_str(text, Path::new("map.toml")).unwrap();
        assert_eq!(m.femur, Some(5));
        assert_eq!(m.lateral_meniscus, Some(9));
        let partial = LabelMap::from_toml_str("[labels]\nfemur = 3\n", Path::new("m")).unwrap();
        assert_eq!(partial.tibia, None);
        for bad in [
            "[labels]\nfemur = 5\ntibia = 5\n",
            "[labels]\nfemurr = 5\n",
            "[labels]\nfemur = 0\n",
            "[labels]\nfemur = -1\n",
            "[labels]\n",
            "femur = 5\n",
        ] {
            let e = LabelMap::from_toml_str(bad, Path::new("map.toml")).unwrap_err();
            assert!(e.to_string().starts_with("map.toml: "), "{e}");
        }
        assert_eq!(LabelMap::default().entries().len(), 9);
    }
}
