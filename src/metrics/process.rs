//! The process's own resource use, from `/proc` (Linux).

/// Resident memory and open descriptors.
pub struct Usage {
    pub resident_bytes: u64,
    pub open_fds: u64,
}

/// `None` where `/proc/self` is not there to read.
pub fn read() -> Option<Usage> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    // The directory listing holds one descriptor itself while it is read.
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(Usage {
        resident_bytes: kib * 1024,
        open_fds: fds.saturating_sub(1),
    })
}
