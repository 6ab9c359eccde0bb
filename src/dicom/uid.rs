//! UIDs kneenode makes: random ones for new objects and name-derived ones for objects that must
//! come out the same on every run (a resent SEG keeps its UIDs, so a PACS sees one object, not
//! two). Both live under the `2.25` root (UUID-derived), which needs no registered organisation.

/// A fresh, random UID.
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// A UID derived deterministically from `parts` (e.g. a job id and a role such as "seg-series").
pub fn derived_uid(parts: &[&str]) -> String {
    let name = parts.join("\u{1f}");
    format!(
        "2.25.{}",
        uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).as_u128()
    )
}

/// kneenode's UUID namespace for derived UIDs (itself a fixed random UUID).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b6e_6565_6e6f_4465_9a1c_57d2_03b4_e1f0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_derived_ones_are_stable() {
        let a = new_uid();
        assert!(
            a.len() <= 64 && a.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
            "{a}"
        );
        assert_ne!(a, new_uid());
        let d = derived_uid(&["job-1", "seg"]);
        assert_eq!(d, derived_uid(&["job-1", "seg"]));
        assert_ne!(d, derived_uid(&["job-1", "sr"]));
        assert!(d.len() <= 64);
    }
}
