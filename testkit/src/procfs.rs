//! Process facts from Linux `/proc`, for the overload tests and the load generator: the `kB`
//! fields of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …) and CPU time used (`utime + stime` in
//! `/proc/<pid>/stat`, in USER_HZ = 100 ticks per second, the fixed unit of that file). `None`
//! where `/proc`, the process or the field is missing; nothing here panics or samples on a timer.

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// User plus system CPU seconds used so far by every thread of `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: parse after its end.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file are utime and stime; `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        if !std::path::Path::new("/proc/self/status").exists() {
            return;
        }
        let pid = std::process::id();
        let rss = rss_kib(pid).unwrap_or(0);
        assert!(rss > 0);
        // The high-water mark, read after, is at least the resident size read before.
        assert!(status_kib(pid, "VmHWM").is_some_and(|hwm| hwm >= rss));
        assert!(cpu_seconds(pid).is_some_and(|s| s >= 0.0));
        assert_eq!(rss_kib(u32::MAX), None);
        assert_eq!(status_kib(pid, "NoSuchField"), None);
    }
}
