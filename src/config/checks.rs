//! Checks of single values: each returns the reason a value is refused, and the caller adds the
//! key and origin.

use std::net::IpAddr;

use super::reader::Field;
use super::ConfigError;

/// Longest AE title DICOM allows (PS3.5, VR AE).
const AE_TITLE_MAX: usize = 16;
/// Smallest non-zero maximum PDU length we accept; smaller ones only slow transfers down.
const MIN_PDU: u32 = 4096;
/// Largest maximum PDU length we accept: far above what peers use, and a bound on the buffer a
/// single PDU can make us allocate.
const MAX_PDU: u32 = 16 * 1024 * 1024;

pub(super) fn ae_title(ae: &str) -> Result<(), String> {
    if ae.is_empty() {
        Err("must not be empty".to_owned())
    } else if ae.chars().count() > AE_TITLE_MAX {
        Err(format!("{ae:?} is longer than {AE_TITLE_MAX} characters"))
    } else if ae.chars().any(|c| c == '\\' || c.is_control()) {
        Err(format!(
            "{ae:?} contains a backslash or a control character"
        ))
    } else if !ae.is_ascii() {
        Err(format!(
            "{ae:?} is not ASCII (AE titles use DICOM's default character repertoire)"
        ))
    } else if ae.trim().is_empty() {
        Err(format!("{ae:?} is all spaces"))
    } else {
        Ok(())
    }
}

/// An IP address or a DNS host name.
pub(super) fn host(host: &str) -> Result<(), String> {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let is_name = host.len() <= 253 && host.split('.').all(label_ok);
    if host.parse::<IpAddr>().is_ok() || is_name {
        Ok(())
    } else {
        Err(format!("{host:?} is not an IP address or host name"))
    }
}

/// Names of destinations and rules end up in logs, URLs and the database.
pub(super) fn name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (use letters, digits, '-', '_' and '.')"
        ))
    }
}

pub(super) fn condition(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty (leave the key out to match any value)".to_owned());
    }
    Ok(())
}

pub(super) fn regex(pattern: &str) -> Result<(), String> {
    condition(pattern)?;
    regex::Regex::new(pattern).map(drop).map_err(|error| {
        // The syntax error is drawn over several lines with a caret; its last line says why.
        let text = error.to_string();
        let why = text
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .trim_start_matches("error: ");
        format!("{pattern:?} is not a valid regular expression: {why}")
    })
}

pub(super) fn not_empty(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(())
}

pub(super) fn percent(value: &f64) -> Result<(), String> {
    match *value {
        v if v > 0.0 && v <= 100.0 => Ok(()),
        0.0 => Err("0 must be greater than 0 (it would refuse every object)".to_owned()),
        v => Err(format!("{v} must be between 0 and 100")),
    }
}

pub(super) fn database_url(url: &str) -> Result<(), String> {
    let schemes = ["postgres://", "postgresql://", "sqlite://"];
    let ok = url.is_empty()
        || schemes.iter().any(|scheme| url.starts_with(scheme))
        || url.ends_with(".sqlite")
        || url.ends_with(".db");
    if ok {
        return Ok(());
    }
    Err(format!(
        "{:?} is not a PostgreSQL or SQLite URL (expected postgres://…, postgresql://…, \
         sqlite://… or a path ending in .sqlite or .db)",
        crate::db::redact_url(url)
    ))
}

pub(super) fn max_pdu(field: Field<i64>) -> Result<u32, ConfigError> {
    match u32::try_from(field.value) {
        Ok(v) if v == 0 || (MIN_PDU..=MAX_PDU).contains(&v) => Ok(v),
        _ => Err(field.invalid(format!(
            "{} must be 0 (no limit) or between {MIN_PDU} and {MAX_PDU} bytes",
            field.value
        ))),
    }
}

pub(super) fn is_device(device: &str) -> bool {
    match device.strip_prefix("cuda:") {
        Some(index) => !index.is_empty() && index.parse::<u32>().is_ok() && !index.starts_with('+'),
        None => matches!(device, "auto" | "cpu" | "cuda"),
    }
}
