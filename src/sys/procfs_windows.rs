//! Another process's resource use: not read on Windows yet.

use std::io;

/// CPU time (user + system) and resident memory of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User plus system CPU time, in microseconds.
    pub cpu_us: u64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

/// Not available on Windows yet: the load client reports no server usage.
pub fn usage(_pid: u32) -> io::Result<ProcessUsage> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "server CPU and memory readings are Linux-only",
    ))
}

/// Windows has no per-process descriptor limit to raise.
pub fn raise_fd_limit() -> io::Result<u64> {
    Ok(u64::MAX)
}
