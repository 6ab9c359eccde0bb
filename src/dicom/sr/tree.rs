//! The SR document: the TID 1500 content tree and the modules around it (patient and study
//! copied from the SEG, SR Document Series, equipment, SR Document General with the evidence
//! it rests on, SOP Common).

use dicom_core::value::Value as DicomValue;
use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::content::{put_content, put_seq, put_str, template_seq, Item, Rel, Value};
use super::reference::SegReference;
use super::{concepts, MeasurementGroup, SrError, SrRequest};
use crate::dicom::codes::Code;
use crate::dicom::uid::derived_uid;
use crate::dicom::uids;

/// The name kneenode gives itself as manufacturer, model and device observer.
const KNEENODE: &str = "kneenode";

/// Source SOP classes whose Image Library group is described as MR.
const MR_CLASSES: [&str; 2] = [uids::MR_IMAGE, uids::ENHANCED_MR_IMAGE];

fn check(req: &SrRequest, seg: &SegReference) -> Result<(), SrError> {
    let invalid = |s: String| Err(SrError::Invalid(s));
    if req.groups.is_empty() {
        return invalid("no measurement groups".into());
    }
    for g in req.groups {
        let name = &g.tracking_id;
        if name.trim().is_empty() {
            return invalid("a group has an empty tracking identifier".into());
        }
        if g.measurements.is_empty() {
            return invalid(format!("group \"{name}\" has no measurements"));
        }
        if let Some(m) = g.measurements.iter().find(|m| !m.value.is_finite()) {
            return invalid(format!(
                "group \"{name}\": {} is {}",
                m.concept.meaning, m.value
            ));
        }
        if let Some(n) = g.segment_number {
            let seg_error = |reason: String| SrError::Seg {
                path: seg.path.clone(),
                reason,
            };
            if !seg.segment_numbers.contains(&n) {
                return Err(seg_error(format!(
                    "group \"{name}\" measures segment {n}, which the SEG does not have"
                )));
            }
            if seg.source_series_uid.is_none() {
                return Err(seg_error(
                    "no Referenced Series Sequence: the source series is unknown".into(),
                ));
            }
        }
    }
    Ok(())
}

/// TID 1001 for a device observer (TID 1002, 1004): kneenode itself.
fn observer_context() -> Vec<Item> {
    let ctx = Rel::HasObsContext;
    vec![
        Item::code(ctx, concepts::observer_type(), &concepts::device()),
        Item::uid(
            ctx,
            concepts::device_observer_uid(),
            &derived_uid(&[KNEENODE, "device-observer"]),
        ),
        Item::text(ctx, concepts::device_observer_name(), KNEENODE),
        Item::text(ctx, concepts::device_observer_manufacturer(), KNEENODE),
        Item::text(ctx, concepts::device_observer_model_name(), KNEENODE),
    ]
}

/// TID 1600: one group holding the images the SEG was made from.
fn image_library(seg: &SegReference) -> Item {
    let library = Item::container(Rel::Contains, concepts::image_library(), None);
    if seg.source_instances.is_empty() {
        return library;
    }
    let mut group = Vec::with_capacity(seg.source_instances.len() + 2);
    let all_mr = seg
        .source_instances
        .iter()
        .all(|s| MR_CLASSES.contains(&s.sop_class_uid.as_str()));
    if all_mr {
        group.push(Item::code(
            Rel::HasAcqContext,
            concepts::modality(),
            &concepts::magnetic_resonance(),
        ));
    }
    if let Some(frame) = &seg.frame_of_reference_uid {
        group.push(Item::uid(
            Rel::HasAcqContext,
            concepts::frame_of_reference_uid(),
            frame,
        ));
    }
    group.extend(seg.source_instances.iter().map(|s| {
        Item::new(
            Rel::Contains,
            concepts::source(),
            Value::Image(s.sop_class_uid.clone(), s.sop_instance_uid.clone(), None),
        )
    }));
    library.with(vec![Item::container(
        Rel::Contains,
        concepts::image_library_group(),
        None,
    )
    .with(group)])
}

/// One measurement group: TID 1411 when it measures a segment, else TID 1501.
fn group(req: &SrRequest, seg: &SegReference, g: &MeasurementGroup) -> Item {
    let number = g.segment_number.map(|n| n.to_string()).unwrap_or_default();
    let tracking_uid = derived_uid(&[req.job_id, "sr-tracking", &g.tracking_id, &number]);
    let mut items = vec![
        Item::text(
            Rel::HasObsContext,
            concepts::tracking_identifier(),
            &g.tracking_id,
        ),
        Item::uid(
            Rel::HasObsContext,
            concepts::tracking_unique_identifier(),
            &tracking_uid,
        ),
        Item::code(Rel::Contains, concepts::finding(), &g.finding),
    ];
    let template = match (g.segment_number, &seg.source_series_uid) {
        (Some(n), Some(source_series)) => {
            items.push(Item::new(
                Rel::Contains,
                concepts::referenced_segment(),
                Value::Image(
                    seg.sop_class_uid.clone(),
                    seg.sop_instance_uid.clone(),
                    Some(n),
                ),
            ));
            items.push(Item::uid(
                Rel::Contains,
                concepts::source_series_for_segmentation(),
                source_series,
            ));
            "1411"
        }
        _ => "1501",
    };
    if let Some(site) = &g.finding_site {
        // TID 1419 rows 2–4: the site, its laterality (the knee's side), its modifier.
        let side = seg.laterality.as_deref().and_then(concepts::side);
        let laterality = side
            .iter()
            .map(|s| Item::code(Rel::HasConceptMod, concepts::laterality(), s));
        let modifier = g
            .finding_site_modifier
            .iter()
            .map(|m| Item::code(Rel::HasConceptMod, concepts::topographical_modifier(), m));
        items.push(
            Item::code(Rel::HasConceptMod, concepts::finding_site(), site)
                .with(laterality.chain(modifier).collect()),
        );
    }
    items.push(Item::text(
        Rel::HasConceptMod,
        concepts::algorithm_name(),
        req.algorithm_name,
    ));
    items.push(Item::text(
        Rel::HasConceptMod,
        concepts::algorithm_version(),
        req.algorithm_version,
    ));
    items.extend(g.measurements.iter().map(|m| {
        let qualifiers = m
            .qualifiers
            .iter()
            .map(|(name, value)| Item::code(Rel::HasConceptMod, name.clone(), value))
            .collect();
        Item::new(
            Rel::Contains,
            m.concept.clone(),
            Value::Num(m.value, m.unit.clone()),
        )
        .with(qualifiers)
    }));
    Item::container(Rel::Contains, concepts::measurement_group(), Some(template)).with(items)
}

/// The root container's children (TID 1500 rows 2–8).
pub(super) fn content(req: &SrRequest, seg: &SegReference) -> Vec<Item> {
    let mut root = vec![Item::code(
        Rel::HasConceptMod,
        concepts::language_of_content(),
        &concepts::english_us(),
    )];
    root.extend(observer_context());
    root.push(Item::code(
        Rel::HasConceptMod,
        concepts::procedure_reported(),
        &concepts::mri_procedure(),
    ));
    root.push(image_library(seg));
    let groups = req.groups.iter().map(|g| group(req, seg, g)).collect();
    root.push(Item::container(Rel::Contains, concepts::imaging_measurements(), None).with(groups));
    root
}

/// A Referenced Series Sequence item: the series and its instances.
fn evidence_series(series_uid: &str, instances: &[(&str, &str)]) -> InMemDicomObject {
    let mut series = InMemDicomObject::new_empty();
    let sops = instances
        .iter()
        .map(|(class, instance)| {
            let mut sop = InMemDicomObject::new_empty();
            put_str(&mut sop, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
            put_str(
                &mut sop,
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                instance,
            );
            sop
        })
        .collect();
    put_seq(&mut series, tags::REFERENCED_SOP_SEQUENCE, sops);
    put_str(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    series
}

/// Current Requested Procedure Evidence: the SEG, and the images it was made from (the Image
/// Library references them too).
fn evidence(seg: &SegReference) -> InMemDicomObject {
    let mut series = Vec::with_capacity(2);
    if let (Some(source), false) = (&seg.source_series_uid, seg.source_instances.is_empty()) {
        let sources: Vec<(&str, &str)> = seg
            .source_instances
            .iter()
            .map(|s| (s.sop_class_uid.as_str(), s.sop_instance_uid.as_str()))
            .collect();
        series.push(evidence_series(source, &sources));
    }
    series.push(evidence_series(
        &seg.series_instance_uid,
        &[(&seg.sop_class_uid, &seg.sop_instance_uid)],
    ));
    let mut study = InMemDicomObject::new_empty();
    put_seq(&mut study, tags::REFERENCED_SERIES_SEQUENCE, series);
    put_str(
        &mut study,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &seg.study_instance_uid,
    );
    study
}

/// The whole SR dataset (without the file meta group).
pub(super) fn document(
    req: &SrRequest,
    seg: &SegReference,
    sop_instance_uid: &str,
    series_instance_uid: &str,
) -> Result<InMemDicomObject, SrError> {
    check(req, seg)?;
    let date = req.created.format("%Y%m%d").to_string();
    let time = req.created.format("%H%M%S").to_string();
    let mut obj = InMemDicomObject::new_empty();
    for element in &seg.copied {
        obj.put(element.clone());
    }
    put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    put_str(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::COMPREHENSIVE_3D_SR,
    );
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop_instance_uid);
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut obj, tags::MODALITY, VR::CS, "SR");
    put_str(&mut obj, tags::MANUFACTURER, VR::LO, KNEENODE);
    put_str(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "Knee MRI measurements (kneenode)",
    );
    put_str(&mut obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, KNEENODE);
    put_str(&mut obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(
        &mut obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    put_str(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        series_instance_uid,
    );
    put_str(
        &mut obj,
        tags::SERIES_NUMBER,
        VR::IS,
        &req.series_number.to_string(),
    );
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_seq(
        &mut obj,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        Vec::new(),
    );
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_seq(
        &mut obj,
        tags::PERFORMED_PROCEDURE_CODE_SEQUENCE,
        Vec::new(),
    );
    put_seq(
        &mut obj,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![evidence(seg)],
    );
    let children = content(req, seg);
    put_content(
        &mut obj,
        &concepts::imaging_measurement_report(),
        &Value::Container(None),
        &children,
    );
    template_seq(&mut obj, "1500");
    let mut codes: Vec<&Code> = Vec::new();
    for child in &children {
        child.codes(&mut codes);
    }
    if codes.iter().any(|c| c.scheme == concepts::PRIVATE_SCHEME) {
        let mut scheme = InMemDicomObject::new_empty();
        put_str(
            &mut scheme,
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            concepts::PRIVATE_SCHEME,
        );
        put_str(
            &mut scheme,
            tags::CODING_SCHEME_NAME,
            VR::ST,
            concepts::PRIVATE_SCHEME_NAME,
        );
        put_str(
            &mut scheme,
            tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
            VR::ST,
            KNEENODE,
        );
        put_seq(
            &mut obj,
            tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
            vec![scheme],
        );
    }
    // Text beyond ASCII is written as UTF-8 (copied names were decoded from the SEG's character
    // set, whatever it was); plain ASCII needs no Specific Character Set, and leaving it out
    // keeps readers without UTF-8 support (dcmtk's VR checker) quiet.
    if has_non_ascii(&obj) {
        put_str(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    }
    Ok(obj)
}

/// Whether any text value in `obj` or its sequences is not ASCII.
fn has_non_ascii(obj: &InMemDicomObject) -> bool {
    obj.iter().any(|e| match e.value() {
        DicomValue::Primitive(p) => match p {
            PrimitiveValue::Str(s) => !s.is_ascii(),
            PrimitiveValue::Strs(v) => v.iter().any(|s| !s.is_ascii()),
            _ => false,
        },
        DicomValue::Sequence(seq) => seq.items().iter().any(has_non_ascii),
        DicomValue::PixelSequence(_) => false,
    })
}
