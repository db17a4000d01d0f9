//! What the load clients report, whatever the scenario: latency
//! percentiles from an HDR histogram (kept per worker thread, merged when
//! the thread's last session ends), and the server's CPU and memory over
//! the measured window.

use std::cell::RefCell;
use std::fmt;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::usage::ProcessUsage;

/// Latencies are recorded in microseconds up to this.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Samples measured.
    pub samples: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl Latency {
    /// The percentiles of `h`.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            samples: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl Latency {
    /// Writes one summary line: `label`, the percentiles, then `tail`
    /// (e.g. the sample count).
    pub fn write_line(&self, f: &mut fmt::Formatter<'_>, label: &str, tail: &str) -> fmt::Result {
        writeln!(
            f,
            "{label} p50 {} p90 {} p99 {} p99.9 {} max {}{tail}",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        )
    }

    /// [`Latency::write_line`] ending with the sample count.
    pub fn write_sampled(&self, f: &mut fmt::Formatter<'_>, label: &str) -> fmt::Result {
        self.write_line(f, label, &format!(" ({} samples)", self.samples))
    }
}

/// An empty histogram of microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

thread_local! {
    /// Latencies recorded by this worker's sessions, and how many of them
    /// are alive: the last to end merges them into the shared histogram.
    static LOCAL: RefCell<(Option<Histogram<u64>>, usize)> = const { RefCell::new((None, 0)) };
}

/// A session on this worker thread will record latencies.
pub fn local_join() {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.0.get_or_insert_with(new_histogram);
        l.1 += 1;
    });
}

/// Records one latency in this thread's histogram.
pub fn local_record(us: u64) {
    let us = us.clamp(1, MAX_LATENCY_US);
    LOCAL.with(|l| {
        if let Some(h) = l.borrow_mut().0.as_mut() {
            let _ = h.record(us);
        }
    });
}

/// A session of this thread ended; the last one merges the thread's
/// latencies into `into`.
pub fn local_leave(into: &Mutex<Histogram<u64>>) {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.1 -= 1;
        if l.1 == 0 {
            if let Some(h) = l.0.take() {
                let _ = into.lock().unwrap_or_else(|p| p.into_inner()).add(&h);
            }
        }
    });
}

/// The server's resource use over the measured window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ServerUsage {
    /// Server CPU time (user + system) per measured unit of work (a round
    /// trip, or a delivered message), µs.
    pub cpu_us_per_round_trip: f64,
    /// The part of it spent in the kernel (system time: the system calls,
    /// and on loopback the TCP receive path they run), µs.
    pub kernel_us_per_round_trip: f64,
    /// Server CPU time over wall time, percent of one core.
    pub cpu_percent: f64,
    /// Server resident memory at the end, KiB.
    pub rss_kib: u64,
}

impl ServerUsage {
    /// From the readings at the window's edges, `units` of work done and
    /// the window's length.
    pub fn between(from: ProcessUsage, to: ProcessUsage, units: u64, secs: f64) -> ServerUsage {
        let cpu = to.cpu_us.saturating_sub(from.cpu_us) as f64;
        let sys = to.sys_us.saturating_sub(from.sys_us) as f64;
        ServerUsage {
            cpu_us_per_round_trip: cpu / units.max(1) as f64,
            kernel_us_per_round_trip: sys / units.max(1) as f64,
            cpu_percent: cpu / 1e4 / secs.max(1e-9),
            rss_kib: to.rss_kib,
        }
    }
}

impl ServerUsage {
    /// Writes the summary's `server:` line, CPU counted per `unit`.
    pub fn write_line(&self, f: &mut fmt::Formatter<'_>, unit: &str) -> fmt::Result {
        writeln!(
            f,
            "server:      {:.2} us CPU per {unit} ({:.2} in the kernel), {:.1}% CPU, {} KiB RSS",
            self.cpu_us_per_round_trip, self.kernel_us_per_round_trip, self.cpu_percent, self.rss_kib
        )
    }
}

/// Writes the end every summary shares: the error count and lines, then
/// the elapsed time with OK or FAILED.
pub fn write_outcome(
    f: &mut fmt::Formatter<'_>,
    errors: u64,
    error_lines: &[String],
    elapsed_secs: f64,
    ok: bool,
) -> fmt::Result {
    writeln!(f, "errors:      {errors}")?;
    for line in error_lines {
        writeln!(f, "  {line}")?;
    }
    write!(
        f,
        "elapsed:     {elapsed_secs:.3}s — {}",
        if ok { "OK" } else { "FAILED" }
    )
}

/// Reads the server's usage, if a pid was given and the OS tells.
pub fn server_usage(pid: Option<u32>) -> Option<ProcessUsage> {
    pid.and_then(|p| crate::usage::usage(p).ok())
}
