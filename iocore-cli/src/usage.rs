//! Another process's CPU time and memory (the server's, for load reports),
//! and this process's open-file limit (for opening many connections).
//!
//! Linux reads `/proc/PID/stat` through the `procfs` crate; elsewhere the
//! readings are unsupported and reports leave them out.

use std::io;

/// CPU time (user + system) and resident memory of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User plus system CPU time, in microseconds.
    pub cpu_us: u64,
    /// The system (kernel) part of `cpu_us`, in microseconds.
    pub sys_us: u64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

/// Reads process `pid`'s CPU time and resident memory.
#[cfg(target_os = "linux")]
pub fn usage(pid: u32) -> io::Result<ProcessUsage> {
    let to_io = |e: procfs::ProcError| io::Error::other(format!("reading /proc/{pid}: {e}"));
    let stat = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_err(to_io)?;
    let us = |ticks: u64| ticks * 1_000_000 / procfs::ticks_per_second();
    Ok(ProcessUsage {
        cpu_us: us(stat.utime + stat.stime),
        sys_us: us(stat.stime),
        rss_kib: stat.rss * procfs::page_size() / 1024,
    })
}

/// Reads process `pid`'s CPU time and resident memory.
#[cfg(not(target_os = "linux"))]
pub fn usage(pid: u32) -> io::Result<ProcessUsage> {
    let _ = pid;
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "process CPU and memory readings are implemented for Linux only",
    ))
}

/// Raises this process's open-file soft limit as far as the hard limit
/// allows and returns the new limit.
#[cfg(unix)]
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Windows has no per-process descriptor limit to raise.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> io::Result<u64> {
    Ok(u64::MAX)
}
