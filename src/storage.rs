//! The storage folder: how full its disk is, measured the way the watermark is configured
//! (`storage.max_disk_used_percent`; the SCP and uploads refuse new data past it), and the names
//! received instances are stored under.

use std::path::Path;

/// Space on the filesystem that holds a path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskUsage {
    /// Filesystem size, bytes.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer can still use.
    pub available_bytes: u64,
    /// Used share of the filesystem, 0–100, counting root-reserved blocks as used (what `df`
    /// shows, and what matters to a service that does not run as root).
    pub used_percent: f64,
}

impl DiskUsage {
    /// Whether writing more would go past a watermark of `max_used_percent`.
    pub fn above(&self, max_used_percent: f64) -> bool {
        self.used_percent >= max_used_percent
    }
}

/// Measures the filesystem of `path` (which must exist).
pub fn disk_usage(path: &Path) -> std::io::Result<DiskUsage> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = st.fragment_size() as u64;
    let total = st.blocks() as u64 * frag;
    let free = st.blocks_free() as u64 * frag;
    let avail = st.blocks_available() as u64 * frag;
    // df's formula: used / (used + available), so reserved blocks count as unavailable.
    let used = total.saturating_sub(free);
    let denom = used + avail;
    let used_percent = if denom == 0 {
        100.0
    } else {
        used as f64 * 100.0 / denom as f64
    };
    Ok(DiskUsage {
        total_bytes: total,
        available_bytes: avail,
        used_percent,
    })
}

/// The name an instance is stored under in its series folder: `<sop>.dcm`, or `<sop>.r<N>.dcm`
/// for revision N ≥ 2 (the same SOP Instance UID received again with other content).
pub fn instance_file_name(sop_instance: &str, revision: u32) -> String {
    if revision <= 1 {
        format!("{sop_instance}.dcm")
    } else {
        format!("{sop_instance}.r{revision}.dcm")
    }
}

/// The SOP Instance UID and revision a stored instance's name gives (the inverse of
/// [`instance_file_name`]); `None` for a name that does not end in `.dcm`.
pub fn parse_instance_file_name(name: &str) -> Option<(&str, u32)> {
    let stem = name.strip_suffix(".dcm")?;
    let revised = stem.rsplit_once('.').and_then(|(sop, r)| {
        let n = r.strip_prefix('r')?.parse::<u32>().ok()?;
        (n >= 2).then_some((sop, n))
    });
    Some(revised.unwrap_or((stem, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_round_trip() {
        for (sop, rev) in [("1.2.3", 1), ("1.2.3", 2), ("1.2.840.10008.9", 12)] {
            let name = instance_file_name(sop, rev);
            assert_eq!(parse_instance_file_name(&name), Some((sop, rev)));
        }
        assert_eq!(instance_file_name("1.2", 2), "1.2.r2.dcm");
        assert_eq!(
            parse_instance_file_name("1.2.3.rx.dcm"),
            Some(("1.2.3.rx", 1))
        );
        assert_eq!(parse_instance_file_name("IM0001"), None);
        assert_eq!(parse_instance_file_name("1.2.3.part"), None);
    }

    #[test]
    fn measures_a_real_filesystem() {
        let u = disk_usage(Path::new(".")).unwrap();
        assert!(u.total_bytes > 0);
        assert!((0.0..=100.0).contains(&u.used_percent));
        assert!(u.above(0.0));
        assert!(!u.above(100.1));
    }
}
