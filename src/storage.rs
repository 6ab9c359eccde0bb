//! The storage folder's disk: how full it is, measured the way the watermark is configured
//! (`storage.max_disk_used_percent`). The SCP and uploads refuse new data past the watermark.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_real_filesystem() {
        let u = disk_usage(Path::new(".")).unwrap();
        assert!(u.total_bytes > 0);
        assert!((0.0..=100.0).contains(&u.used_percent));
        assert!(u.above(0.0));
        assert!(!u.above(100.1));
    }
}
