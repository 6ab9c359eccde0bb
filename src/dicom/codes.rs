//! Coded concepts (code value, scheme, meaning) and the segment catalogue: what each label of
//! the label map means in DICOM (`dicom_config/segments.toml`), shared by the SEG and SR writers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// One coded concept, e.g. (71341001, SCT, "Femur").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// Code Value (0008,0100).
    pub value: String,
    /// Coding Scheme Designator (0008,0102), e.g. `SCT`, `DCM`, `UCUM`.
    pub scheme: String,
    /// Code Meaning (0008,0104).
    pub meaning: String,
}

impl Code {
    /// A code from its three parts.
    pub fn new(value: &str, scheme: &str, meaning: &str) -> Self {
        Self {
            value: value.into(),
            scheme: scheme.into(),
            meaning: meaning.into(),
        }
    }

    /// A SNOMED CT code.
    pub fn sct(value: &str, meaning: &str) -> Self {
        Self::new(value, "SCT", meaning)
    }

    /// A DICOM (DCM) code.
    pub fn dcm(value: &str, meaning: &str) -> Self {
        Self::new(value, "DCM", meaning)
    }

    /// A UCUM unit, e.g. `mm3`.
    pub fn ucum(value: &str, meaning: &str) -> Self {
        Self::new(value, "UCUM", meaning)
    }
}

/// What one label means: the attributes of its SEG segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentDef {
    /// The label value in the label volume (1–255).
    pub label: u8,
    /// Segment Label, e.g. "Femoral cartilage".
    pub name: String,
    /// Segmented Property Category.
    pub category: Code,
    /// Segmented Property Type.
    pub property_type: Code,
    /// Segmented Property Type Modifier (Medial / Lateral), if any.
    pub type_modifier: Option<Code>,
    /// Anatomic Region (the bone a cartilage covers), if any.
    pub region: Option<Code>,
    /// Recommended Display CIELab Value (0–65535 each).
    pub colour: [u16; 3],
}

/// The catalogue: every label that becomes a segment, plus the examination's anatomy codes.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentCatalog {
    /// Segments by label, ascending.
    pub segments: BTreeMap<u8, SegmentDef>,
    /// Anatomic region of the whole examination (Knee).
    pub anatomy: Code,
    /// Laterality codes: left, right.
    pub laterality: (Code, Code),
}

/// A catalogue file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("segment catalogue {origin}: {reason}")]
pub struct CatalogError {
    /// The file (or "built-in").
    pub origin: String,
    /// What is wrong.
    pub reason: String,
}

/// The catalogue kneenode ships (the same text as `dicom_config/segments.toml`).
const BUILTIN: &str = include_str!("../../dicom_config/segments.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAnatomy {
    region: [String; 2],
    left: [String; 2],
    right: [String; 2],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSegment {
    label: String,
    category: [String; 2],
    #[serde(rename = "type")]
    property_type: [String; 2],
    type_modifier: Option<[String; 2]>,
    region: Option<[String; 2]>,
    colour: Option<[u16; 3]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    anatomy: FileAnatomy,
    segments: BTreeMap<String, FileSegment>,
}

fn sct(pair: &[String; 2]) -> Code {
    Code::sct(&pair[0], &pair[1])
}

impl SegmentCatalog {
    /// The built-in catalogue (DOMAIN.md's codes).
    pub fn builtin() -> Self {
        // The built-in text is tested below; parsing it cannot fail at run time.
        Self::parse(BUILTIN, "built-in").unwrap_or_else(|_| Self {
            segments: BTreeMap::new(),
            anatomy: Code::sct("72696002", "Knee"),
            laterality: (Code::sct("7771000", "Left"), Code::sct("24028007", "Right")),
        })
    }

    /// Reads a catalogue file.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError {
            origin: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses catalogue text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogError> {
        let err = |reason: String| CatalogError {
            origin: origin.into(),
            reason,
        };
        let file: File = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut segments = BTreeMap::new();
        for (key, s) in &file.segments {
            let label: u8 = key
                .parse()
                .ok()
                .filter(|l| *l > 0)
                .ok_or_else(|| err(format!("segments.{key}: the key must be a label 1–255")))?;
            if s.label.trim().is_empty() || s.label.len() > 64 {
                return Err(err(format!("segments.{key}.label must be 1–64 characters")));
            }
            segments.insert(
                label,
                SegmentDef {
                    label,
                    name: s.label.clone(),
                    category: sct(&s.category),
                    property_type: sct(&s.property_type),
                    type_modifier: s.type_modifier.as_ref().map(sct),
                    region: s.region.as_ref().map(sct),
                    colour: s.colour.unwrap_or([32768, 32768, 32768]),
                },
            );
        }
        Ok(Self {
            segments,
            anatomy: sct(&file.anatomy.region),
            laterality: (sct(&file.anatomy.left), sct(&file.anatomy.right)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalogue_parses_and_has_domain_codes() {
        let c = SegmentCatalog::parse(BUILTIN, "built-in").unwrap();
        assert_eq!(c.segments.len(), 9);
        assert_eq!(c.segments[&7].property_type, Code::sct("71341001", "Femur"));
        assert_eq!(
            c.segments[&3].type_modifier,
            Some(Code::sct("255561001", "Medial"))
        );
        assert_eq!(c.segments[&3].region, Some(Code::sct("12611008", "Tibia")));
        assert_eq!(c.anatomy.value, "72696002");
        assert_eq!(SegmentCatalog::builtin(), c);
    }

    #[test]
    fn bad_catalogues_name_the_key() {
        let e = SegmentCatalog::parse(
            "[anatomy]\nregion=['1','a']\nleft=['2','b']\nright=['3','c']\n[segments.0]\nlabel='x'\ncategory=['1','a']\ntype=['2','b']\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("segments.0"), "{e}");
    }
}
