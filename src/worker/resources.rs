//! What a job's process uses, read from outside it: peak resident memory from `/proc`, and GPU
//! memory from `nvidia-smi` (sampled; libtorch's allocator statistics are not exposed by tch).

use std::process::{Command, Stdio};

/// Peak resident set size (VmHWM) of a live process, bytes.
pub fn peak_rss_of(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kb(&status, "VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size (VmRSS) of a live process, bytes.
pub fn rss_of(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kb(&status, "VmRSS:").map(|kb| kb * 1024)
}

fn status_kb(status: &str, key: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// GPU memory held by `pid` now, bytes, as `nvidia-smi` reports it; `None` without a GPU or
/// driver tools.
pub fn gpu_memory_of(pid: u32) -> Option<i64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_compute_apps(&String::from_utf8_lossy(&out.stdout), pid)
}

fn parse_compute_apps(text: &str, pid: u32) -> Option<i64> {
    let mib: i64 = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(',').map(str::trim);
            let p: u32 = parts.next()?.parse().ok()?;
            let used: i64 = parts.next()?.parse().ok()?;
            (p == pid).then_some(used)
        })
        .sum();
    (mib > 0).then_some(mib * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_parses_nvidia_smi() {
        let me = std::process::id();
        let peak = peak_rss_of(me).unwrap();
        let now = rss_of(me).unwrap();
        assert!(peak >= now && now > 1 << 20, "{peak} {now}");
        assert_eq!(
            parse_compute_apps("12, 300\n13, 5\n12, 100\n", 12),
            Some(400 << 20)
        );
        assert_eq!(parse_compute_apps("No running processes found\n", 12), None);
    }
}
