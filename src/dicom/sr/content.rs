//! SR content items as plain values, and their encoding as DICOM items of a Content Sequence
//! (PS3.3 C.17.3): relationship, value type, concept name, the value attributes of each value
//! type, and the children.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::dicom::codes::Code;
use crate::dicom::write::ds;

/// How a child relates to its parent (Relationship Type, (0040,A010)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rel {
    Contains,
    HasObsContext,
    HasConceptMod,
    HasAcqContext,
}

impl Rel {
    fn as_str(self) -> &'static str {
        match self {
            Rel::Contains => "CONTAINS",
            Rel::HasObsContext => "HAS OBS CONTEXT",
            Rel::HasConceptMod => "HAS CONCEPT MOD",
            Rel::HasAcqContext => "HAS ACQ CONTEXT",
        }
    }
}

/// The value of a content item, by value type.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    /// CONTAINER, optionally declaring the DCMR template it follows.
    Container(Option<&'static str>),
    /// TEXT.
    Text(String),
    /// CODE.
    Code(Code),
    /// NUM: a value and its UCUM unit.
    Num(f64, Code),
    /// UIDREF.
    UidRef(String),
    /// IMAGE: SOP class, SOP instance, and the referenced segment of a SEG.
    Image(String, String, Option<u16>),
}

/// One content item and its children.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Item {
    pub rel: Rel,
    pub concept: Code,
    pub value: Value,
    pub children: Vec<Item>,
}

impl Item {
    pub fn new(rel: Rel, concept: Code, value: Value) -> Self {
        Self {
            rel,
            concept,
            value,
            children: Vec::new(),
        }
    }

    pub fn container(rel: Rel, concept: Code, template: Option<&'static str>) -> Self {
        Self::new(rel, concept, Value::Container(template))
    }

    pub fn text(rel: Rel, concept: Code, text: &str) -> Self {
        Self::new(rel, concept, Value::Text(text.to_owned()))
    }

    pub fn code(rel: Rel, concept: Code, code: &Code) -> Self {
        Self::new(rel, concept, Value::Code(code.clone()))
    }

    pub fn uid(rel: Rel, concept: Code, uid: &str) -> Self {
        Self::new(rel, concept, Value::UidRef(uid.to_owned()))
    }

    pub fn with(mut self, children: Vec<Item>) -> Self {
        self.children = children;
        self
    }

    /// Every code in this item and below (concept names, coded values, units).
    pub fn codes<'a>(&'a self, out: &mut Vec<&'a Code>) {
        out.push(&self.concept);
        match &self.value {
            Value::Code(c) | Value::Num(_, c) => out.push(c),
            _ => {}
        }
        for child in &self.children {
            child.codes(out);
        }
    }

    /// This item as an item of a Content Sequence.
    pub fn to_dataset(&self) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        put_str(&mut obj, tags::RELATIONSHIP_TYPE, VR::CS, self.rel.as_str());
        put_content(&mut obj, &self.concept, &self.value, &self.children);
        obj
    }
}

/// Puts a string element.
pub(super) fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

/// Puts a sequence element.
pub(super) fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    let seq = if items.is_empty() {
        DataSetSequence::empty()
    } else {
        DataSetSequence::from(items)
    };
    obj.put(DataElement::new(tag, VR::SQ, seq));
}

/// A code as a sequence item (Code Sequence Macro). Values longer than SH allows go into Long
/// Code Value.
pub(super) fn code_item(code: &Code) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    if code.value.len() > 16 {
        put_str(&mut obj, tags::LONG_CODE_VALUE, VR::UC, &code.value);
    } else {
        put_str(&mut obj, tags::CODE_VALUE, VR::SH, &code.value);
    }
    put_str(
        &mut obj,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        &code.scheme,
    );
    put_str(&mut obj, tags::CODE_MEANING, VR::LO, &code.meaning);
    obj
}

/// The Content Template Sequence declaring DCMR template `tid`.
pub(super) fn template_seq(obj: &mut InMemDicomObject, tid: &str) {
    let mut t = InMemDicomObject::new_empty();
    put_str(&mut t, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut t, tags::TEMPLATE_IDENTIFIER, VR::CS, tid);
    put_seq(obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![t]);
}

/// Writes value type, concept name, value and children into `obj` (a content item, or the
/// dataset itself for the root container).
pub(super) fn put_content(
    obj: &mut InMemDicomObject,
    concept: &Code,
    value: &Value,
    children: &[Item],
) {
    put_seq(
        obj,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(concept)],
    );
    let value_type = match value {
        Value::Container(template) => {
            put_str(obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
            if let Some(tid) = template {
                template_seq(obj, tid);
            }
            "CONTAINER"
        }
        Value::Text(text) => {
            put_str(obj, tags::TEXT_VALUE, VR::UT, text);
            "TEXT"
        }
        Value::Code(code) => {
            put_seq(obj, tags::CONCEPT_CODE_SEQUENCE, vec![code_item(code)]);
            "CODE"
        }
        Value::Num(v, unit) => {
            let mut m = InMemDicomObject::new_empty();
            put_seq(
                &mut m,
                tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                vec![code_item(unit)],
            );
            let text = ds(*v);
            put_str(&mut m, tags::NUMERIC_VALUE, VR::DS, &text);
            // Floating Point Value is required when the 16-character decimal string cannot hold
            // the value exactly (PS3.3 C.18.1); it carries the full double.
            if text.parse::<f64>().ok() != Some(*v) {
                m.put(DataElement::new(
                    tags::FLOATING_POINT_VALUE,
                    VR::FD,
                    PrimitiveValue::from(*v),
                ));
            }
            put_seq(obj, tags::MEASURED_VALUE_SEQUENCE, vec![m]);
            "NUM"
        }
        Value::UidRef(uid) => {
            put_str(obj, tags::UID, VR::UI, uid);
            "UIDREF"
        }
        Value::Image(class, instance, segment) => {
            let mut r = InMemDicomObject::new_empty();
            put_str(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
            put_str(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
            if let Some(n) = segment {
                r.put(DataElement::new(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    VR::US,
                    PrimitiveValue::from(*n),
                ));
            }
            put_seq(obj, tags::REFERENCED_SOP_SEQUENCE, vec![r]);
            "IMAGE"
        }
    };
    put_str(obj, tags::VALUE_TYPE, VR::CS, value_type);
    if !children.is_empty() {
        let items = children.iter().map(Item::to_dataset).collect();
        put_seq(obj, tags::CONTENT_SEQUENCE, items);
    }
}
