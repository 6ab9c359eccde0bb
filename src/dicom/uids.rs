//! The UIDs kneenode speaks: SOP classes it accepts and transfer syntaxes it takes as sent.

/// Verification (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// MR Image Storage.
pub const MR_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
/// Enhanced MR Image Storage.
pub const ENHANCED_MR_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.4.1";
/// CT Image Storage.
pub const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Enhanced CT Image Storage.
pub const ENHANCED_CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";
/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
/// Segmentation Storage.
pub const SEGMENTATION: &str = "1.2.840.10008.5.1.4.1.1.66.4";
/// Basic Text SR.
pub const BASIC_TEXT_SR: &str = "1.2.840.10008.5.1.4.1.1.88.11";
/// Enhanced SR.
pub const ENHANCED_SR: &str = "1.2.840.10008.5.1.4.1.1.88.22";
/// Comprehensive SR.
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
/// Comprehensive 3D SR.
pub const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";

/// Storage SOP classes the SCP accepts. Only MR classes are routed into jobs; the rest are kept
/// so that a PACS pushing a whole study (with CT scouts, earlier SEGs and reports) does not fail.
pub const STORAGE_CLASSES: [&str; 10] = [
    MR_IMAGE,
    ENHANCED_MR_IMAGE,
    CT_IMAGE,
    ENHANCED_CT_IMAGE,
    SECONDARY_CAPTURE,
    SEGMENTATION,
    BASIC_TEXT_SR,
    ENHANCED_SR,
    COMPREHENSIVE_SR,
    COMPREHENSIVE_3D_SR,
];

/// Whether series of this SOP class can become jobs.
pub fn is_routed(sop_class: &str) -> bool {
    sop_class == MR_IMAGE || sop_class == ENHANCED_MR_IMAGE
}

/// Implicit VR Little Endian (the default every peer supports).
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Explicit VR Big Endian (retired, still sent by old modalities).
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
/// Deflated Explicit VR Little Endian.
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
/// JPEG Baseline (process 1).
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
/// JPEG Lossless, non-hierarchical (process 14).
pub const JPEG_LOSSLESS_P14: &str = "1.2.840.10008.1.2.4.57";
/// JPEG Lossless, process 14, selection value 1.
pub const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
/// JPEG-LS lossless.
pub const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
/// JPEG-LS near-lossless.
pub const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";
/// JPEG 2000 lossless only.
pub const JPEG_2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
/// JPEG 2000.
pub const JPEG_2000: &str = "1.2.840.10008.1.2.4.91";
/// RLE lossless.
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Transfer syntaxes accepted for storage. Exactly these: dicom-ul would otherwise accept any
/// syntax its registry knows, codec or not. When a peer proposes several in one presentation
/// context, the peer's first acceptable one wins. Data is stored as sent, never transcoded.
pub const STORAGE_TRANSFER_SYNTAXES: [&str; 12] = [
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    DEFLATED_EXPLICIT_VR_LE,
    JPEG_LOSSLESS_SV1,
    JPEG_LOSSLESS_P14,
    JPEG_LS_LOSSLESS,
    JPEG_2000_LOSSLESS,
    RLE_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000,
    JPEG_BASELINE,
];

/// kneenode's implementation class UID (written into every file meta header it creates). Under
/// the 2.25 root (a UUID-derived UID), so it needs no registered organisation root.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.178920370183458651238123412893017203941";
/// Implementation version name (≤ 16 characters).
pub const IMPLEMENTATION_VERSION: &str = concat!("KNEENODE_", env!("CARGO_PKG_VERSION"));
