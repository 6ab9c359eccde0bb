//! The coded concepts the measurement report uses: the DICOM (DCM), SNOMED CT (SCT) and UCUM
//! codes of TID 1500 and its sub-templates, and kneenode's own private codes for what no standard
//! code names (cartilage thickness, the femoral subregions, BScore).
//!
//! Private codes use the coding scheme designator [`PRIVATE_SCHEME`]; every SR that uses one
//! describes the scheme in its Coding Scheme Identification Sequence, so a reader can tell where
//! the codes come from.

use crate::dicom::codes::Code;

/// kneenode's private coding scheme designator (private designators start with "99").
pub const PRIVATE_SCHEME: &str = "99KNEENODE";

/// Coding Scheme Name written for [`PRIVATE_SCHEME`].
pub const PRIVATE_SCHEME_NAME: &str = "kneenode knee MRI analysis codes";

fn private(value: &str, meaning: &str) -> Code {
    Code::new(value, PRIVATE_SCHEME, meaning)
}

/// (126000, DCM, "Imaging Measurement Report"): the document title (CID 7021).
pub fn imaging_measurement_report() -> Code {
    Code::dcm("126000", "Imaging Measurement Report")
}

/// (121049, DCM, "Language of Content Item and Descendants") (TID 1204).
pub fn language_of_content() -> Code {
    Code::dcm("121049", "Language of Content Item and Descendants")
}

/// The report's language: English (United States), RFC 5646.
pub fn english_us() -> Code {
    Code::new("en-US", "RFC5646", "English (United States)")
}

/// (121005, DCM, "Observer Type") (TID 1002).
pub fn observer_type() -> Code {
    Code::dcm("121005", "Observer Type")
}

/// (121007, DCM, "Device"): the observer is a device, not a person.
pub fn device() -> Code {
    Code::dcm("121007", "Device")
}

/// (121012, DCM, "Device Observer UID") (TID 1004).
pub fn device_observer_uid() -> Code {
    Code::dcm("121012", "Device Observer UID")
}

/// (121013, DCM, "Device Observer Name").
pub fn device_observer_name() -> Code {
    Code::dcm("121013", "Device Observer Name")
}

/// (121014, DCM, "Device Observer Manufacturer").
pub fn device_observer_manufacturer() -> Code {
    Code::dcm("121014", "Device Observer Manufacturer")
}

/// (121015, DCM, "Device Observer Model Name").
pub fn device_observer_model_name() -> Code {
    Code::dcm("121015", "Device Observer Model Name")
}

/// (121058, DCM, "Procedure reported") (TID 1500 row 4).
pub fn procedure_reported() -> Code {
    Code::dcm("121058", "Procedure reported")
}

/// (25056-3, LN, "MRI unspecified body region"): the procedure, from CID 100. CID 100 has no
/// plain "MRI of knee" (only a dynamic one), and the Finding Sites name the anatomy.
pub fn mri_procedure() -> Code {
    Code::new("25056-3", "LN", "MRI unspecified body region")
}

/// (111028, DCM, "Image Library") (TID 1600).
pub fn image_library() -> Code {
    Code::dcm("111028", "Image Library")
}

/// (126200, DCM, "Image Library Group").
pub fn image_library_group() -> Code {
    Code::dcm("126200", "Image Library Group")
}

/// (121139, DCM, "Modality") (TID 1602).
pub fn modality() -> Code {
    Code::dcm("121139", "Modality")
}

/// (MR, DCM, "Magnetic Resonance") (CID 29).
pub fn magnetic_resonance() -> Code {
    Code::dcm("MR", "Magnetic Resonance")
}

/// (112227, DCM, "Frame of Reference UID") (TID 1602).
pub fn frame_of_reference_uid() -> Code {
    Code::dcm("112227", "Frame of Reference UID")
}

/// (260753009, SCT, "Source"): the concept name of an Image Library entry.
pub fn source() -> Code {
    Code::sct("260753009", "Source")
}

/// (126010, DCM, "Imaging Measurements") (TID 1500 row 6).
pub fn imaging_measurements() -> Code {
    Code::dcm("126010", "Imaging Measurements")
}

/// (125007, DCM, "Measurement Group") (TID 1411 / TID 1501 row 1).
pub fn measurement_group() -> Code {
    Code::dcm("125007", "Measurement Group")
}

/// (112039, DCM, "Tracking Identifier") (TID 4108).
pub fn tracking_identifier() -> Code {
    Code::dcm("112039", "Tracking Identifier")
}

/// (112040, DCM, "Tracking Unique Identifier") (TID 4108).
pub fn tracking_unique_identifier() -> Code {
    Code::dcm("112040", "Tracking Unique Identifier")
}

/// (121071, DCM, "Finding").
pub fn finding() -> Code {
    Code::dcm("121071", "Finding")
}

/// (121191, DCM, "Referenced Segment") (TID 1411 row 7).
pub fn referenced_segment() -> Code {
    Code::dcm("121191", "Referenced Segment")
}

/// (121232, DCM, "Source series for segmentation") (TID 1411 row 12).
pub fn source_series_for_segmentation() -> Code {
    Code::dcm("121232", "Source series for segmentation")
}

/// (363698007, SCT, "Finding Site").
pub fn finding_site() -> Code {
    Code::sct("363698007", "Finding Site")
}

/// (106233006, SCT, "Topographical modifier"): Medial / Lateral under a Finding Site.
pub fn topographical_modifier() -> Code {
    Code::sct("106233006", "Topographical modifier")
}

/// (272741003, SCT, "Laterality"): the knee's side, under a Finding Site.
pub fn laterality() -> Code {
    Code::sct("272741003", "Laterality")
}

/// The side named by a DICOM Laterality value: `L` (7771000, Left) or `R` (24028007, Right).
pub fn side(laterality: &str) -> Option<Code> {
    match laterality {
        "L" => Some(Code::sct("7771000", "Left")),
        "R" => Some(Code::sct("24028007", "Right")),
        _ => None,
    }
}

/// (370129005, SCT, "Measurement Method").
pub fn measurement_method() -> Code {
    Code::sct("370129005", "Measurement Method")
}

/// (121401, DCM, "Derivation"): how a value summarises many (CID 7464 values below).
pub fn derivation() -> Code {
    Code::dcm("121401", "Derivation")
}

/// (373098007, SCT, "Mean").
pub fn mean() -> Code {
    Code::sct("373098007", "Mean")
}

/// (56851009, SCT, "Maximum").
pub fn maximum() -> Code {
    Code::sct("56851009", "Maximum")
}

/// (373099004, SCT, "Median").
pub fn median() -> Code {
    Code::sct("373099004", "Median")
}

/// (386136009, SCT, "Standard Deviation").
pub fn standard_deviation() -> Code {
    Code::sct("386136009", "Standard Deviation")
}

/// (111001, DCM, "Algorithm Name") (TID 4019).
pub fn algorithm_name() -> Code {
    Code::dcm("111001", "Algorithm Name")
}

/// (111003, DCM, "Algorithm Version") (TID 4019).
pub fn algorithm_version() -> Code {
    Code::dcm("111003", "Algorithm Version")
}

/// (118565006, SCT, "Volume") (CID 7469 / 7472).
pub fn volume() -> Code {
    Code::sct("118565006", "Volume")
}

/// (THICKNESS, 99KNEENODE, "Cartilage thickness"): the bone-normal cartilage thickness of
/// DOMAIN.md. Private because DICOM has no general thickness concept (its thickness codes are
/// ophthalmic, cardiac or X-ray ones, and LOINC's is "ROI Thickness by US").
pub fn cartilage_thickness() -> Code {
    private("THICKNESS", "Cartilage thickness")
}

/// (BSCORE, 99KNEENODE, "BScore"): the NSM femur shape score of DOMAIN.md (0 is an average
/// healthy knee, above 2 is not healthy). Private: no standard code exists.
pub fn bscore() -> Code {
    private("BSCORE", "BScore")
}

/// Which NSM a BScore comes from, as a Measurement Method (`bone_and_cart`, `bone_only`, the
/// `nsm_type` job option's values); `None` for other names.
pub fn nsm_method(nsm_type: &str) -> Option<Code> {
    match nsm_type {
        "bone_and_cart" => Some(private(
            "NSM-BONE-CART",
            "Neural shape model of femur and femoral cartilage",
        )),
        "bone_only" => Some(private("NSM-BONE", "Neural shape model of femur bone")),
        _ => None,
    }
}

/// (mm, UCUM, "millimeter").
pub fn mm() -> Code {
    Code::ucum("mm", "millimeter")
}

/// (mm3, UCUM, "cubic millimeter").
pub fn mm3() -> Code {
    Code::ucum("mm3", "cubic millimeter")
}

/// (1, UCUM, "no units"): BScore's unit. BScore is a standardised distance (a z-score along
/// the healthy-to-OA axis), dimensionless; "1" is CID 7181's code for that, which every UCUM
/// reader knows (an annotation such as `{z-score}` would mean the same but is less common).
pub fn no_units() -> Code {
    Code::ucum("1", "no units")
}

/// The thickness region named by a DOMAIN.md results key (`ant_fem_cart`, `med_wb_fem_cart`,
/// `lat_wb_fem_cart`, `med_post_fem_cart`, `lat_post_fem_cart`, `med_tib_cart`, `lat_tib_cart`,
/// `pat_cart`), as a private code to put in a Finding Site qualifier. `None` for other keys.
pub fn thickness_region(key: &str) -> Option<Code> {
    let (value, meaning) = match key {
        "ant_fem_cart" => ("FC-ANT", "Anterior femoral cartilage (trochlea)"),
        "med_wb_fem_cart" => ("FC-MED-WB", "Medial weight-bearing femoral cartilage"),
        "lat_wb_fem_cart" => ("FC-LAT-WB", "Lateral weight-bearing femoral cartilage"),
        "med_post_fem_cart" => ("FC-MED-POST", "Medial posterior femoral cartilage"),
        "lat_post_fem_cart" => ("FC-LAT-POST", "Lateral posterior femoral cartilage"),
        "med_tib_cart" => ("TC-MED", "Medial tibial cartilage"),
        "lat_tib_cart" => ("TC-LAT", "Lateral tibial cartilage"),
        "pat_cart" => ("PC", "Patellar cartilage"),
        _ => return None,
    };
    Some(private(value, meaning))
}
