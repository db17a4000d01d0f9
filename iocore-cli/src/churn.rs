//! Connection churn: a login storm. `parallel` lanes each connect, send
//! one message, wait for its whole echo (checked byte by byte), close, and
//! connect again, until `count` connections are done or `duration` is
//! over. Reports connections per second and the latency from the connect
//! call to the first echoed byte (the part of a login a server's accept
//! path decides).
//!
//! By default a connection ends with a reset once its echo is whole, so no
//! TIME_WAIT piles up on the client: tens of thousands of them would make
//! each later `connect` search for a free port, and one bench round would
//! slow the next. `graceful` closes with FIN instead.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{expected_byte, message};
use crate::load::{invalid, note_error, Load};
use crate::report::{new_histogram, server_usage, write_outcome, Latency, ServerUsage};
use iocore::{CloseReason, Handler, Session};

/// What the churn client does.
#[derive(Clone, Debug)]
pub struct ChurnOptions {
    /// Server address.
    pub addr: SocketAddr,
    /// Lanes (`connections`: connections in progress at once), bytes of
    /// the one message each sends (`size`), connections in all (`count`),
    /// duration, warmup (connections started in it are not measured),
    /// how long one connection may take in all (`drain_timeout`), server
    /// to measure (CPU per connection).
    pub load: Load,
    /// Close each connection with FIN (leaving TIME_WAIT on the client)
    /// instead of a reset.
    pub graceful: bool,
}

impl Default for ChurnOptions {
    fn default() -> ChurnOptions {
        ChurnOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 7777)),
            load: Load {
                connections: 50,
                count: Some(1000),
                ..Load::default()
            },
            graceful: false,
        }
    }
}

/// What a churn run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnSummary {
    /// Server address.
    pub addr: String,
    /// Lanes.
    pub parallel: usize,
    /// Bytes per message.
    pub size: usize,
    /// Connections started.
    pub started: u64,
    /// Connections that connected, echoed their message whole and closed.
    pub completed: u64,
    /// Completed connections inside the measured window.
    pub measured: u64,
    /// Length of the measured window (after warmup), seconds.
    pub window_secs: f64,
    /// Measured connections per second.
    pub connections_per_sec: f64,
    /// From the connect call to the first echoed byte.
    pub latency: Latency,
    /// Server usage (CPU per connection), with `server_pid`.
    pub server: Option<ServerUsage>,
    /// Echoed bytes that differed from what was sent.
    pub mismatches: u64,
    /// Connections that failed (refused, reset, timed out, short echo).
    pub errors: u64,
    /// The first few error descriptions.
    pub error_lines: Vec<String>,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
}

impl ChurnSummary {
    /// Every connection started completed, byte-exact.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.mismatches == 0 && self.completed == self.started && self.started > 0
    }

    fn error(&mut self, line: String) {
        note_error(&mut self.errors, &mut self.error_lines, line);
    }
}

impl fmt::Display for ChurnSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "connections: {} started, {} completed ({} in parallel), {} bytes echoed each",
            self.started, self.completed, self.parallel, self.size
        )?;
        writeln!(
            f,
            "rate:        {:.0} connections/s over {:.2}s ({} measured)",
            self.connections_per_sec, self.window_secs, self.measured
        )?;
        self.latency.write_sampled(f, "connect to first byte us:")?;
        if let Some(s) = &self.server {
            s.write_line(f, "connection")?;
        }
        writeln!(f, "verify:      {} mismatched", self.mismatches)?;
        write_outcome(f, self.errors, &self.error_lines, self.elapsed_secs, self.ok())
    }
}

/// How one connection ended, sent to the driving thread.
struct Done {
    lane: usize,
    started: Instant,
    /// Connect call to first echoed byte, if one came.
    first_byte: Option<Duration>,
    /// Whole echo received, byte-exact, and closed by us.
    completed: bool,
    mismatches: u64,
    error: Option<String>,
}

/// One connection of a lane.
struct ChurnConn {
    lane: usize,
    /// The connection's number (its message depends on it).
    seq: u64,
    size: usize,
    started: Instant,
    timeout: Duration,
    graceful: bool,
    received: usize,
    first_byte: Option<Duration>,
    mismatches: u64,
    done: mpsc::Sender<Done>,
}

impl Handler for ChurnConn {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        let _ = s.send(message(self.lane, self.seq, self.size));
        s.set_timer(self.timeout.saturating_sub(self.started.elapsed()));
    }

    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.started.elapsed());
        }
        let base = self.seq * self.size as u64;
        for (i, &b) in data.iter().enumerate() {
            let at = self.received + i;
            if at >= self.size || b != expected_byte(self.lane, base + at as u64, self.size) {
                self.mismatches += 1;
            }
        }
        self.received += data.len();
        if self.received >= self.size {
            match self.graceful {
                true => s.close(),
                false => s.abort(),
            }
        }
        data.len()
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        s.abort_with(CloseReason::custom("churn: connection timed out"));
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        let completed =
            self.received == self.size && matches!(reason, CloseReason::LocalClose | CloseReason::LocalAbort);
        let error = (!completed).then(|| {
            format!(
                "lane {} connection {}: {reason} after {} of {} bytes",
                self.lane, self.seq, self.received, self.size
            )
        });
        let _ = self.done.send(Done {
            lane: self.lane,
            started: self.started,
            first_byte: self.first_byte,
            completed,
            mismatches: self.mismatches,
            error,
        });
    }
}

/// Runs the churn until `count` connections are done, `duration` is over
/// or `stop` is set, and every connection started has ended. Fails only if
/// the client cannot start.
pub fn run(opts: &ChurnOptions, stop: Arc<AtomicBool>) -> io::Result<ChurnSummary> {
    if opts.load.size == 0 {
        return Err(invalid("message size must be at least 1 byte"));
    }
    if opts.load.connections == 0 {
        return Err(invalid("connections (in parallel) must be at least 1"));
    }
    if opts.load.count.is_none() && opts.load.duration.is_none() {
        return Err(invalid("churn needs --count or --duration"));
    }
    let client = opts.load.start_client::<ChurnConn>()?;
    let start = Instant::now();
    let measure_from = start + opts.load.warmup;
    let deadline = opts.load.duration.map(|d| start + d);
    let (tx, rx) = mpsc::channel::<Done>();
    let mut summary = ChurnSummary::default();
    let mut histogram: Histogram<u64> = new_histogram();
    let mut next_seq = 0u64;
    let mut in_progress = 0usize;
    let should_start = |started: u64| {
        !stop.load(Ordering::Relaxed)
            && opts.load.count.is_none_or(|c| started < c)
            && deadline.is_none_or(|d| Instant::now() < d)
    };
    let connect = |lane: usize, seq: u64| {
        let mut conn = ChurnConn {
            lane,
            seq,
            size: opts.load.size,
            started: Instant::now(),
            timeout: opts.load.drain_timeout,
            graceful: opts.graceful,
            received: 0,
            first_byte: None,
            mismatches: 0,
            done: tx.clone(),
        };
        // Timed from when the worker starts the connect (not from this
        // thread's request).
        client.connect_later(opts.addr, move || {
            conn.started = Instant::now();
            conn
        })
    };
    for lane in 0..opts.load.connections {
        if !should_start(next_seq) {
            break;
        }
        connect(lane, next_seq)?;
        next_seq += 1;
        in_progress += 1;
    }
    let mut window: (Option<Instant>, Option<Instant>) = (None, None);
    let mut usage_from = None;
    // When starting stopped and the wait for the last ones began.
    let mut last_start: Option<Instant> = None;
    // Every connection ends by itself (echo, failure or its timeout); the
    // extra second is for the worker to report it.
    let patience = opts.load.drain_timeout + Duration::from_secs(1);
    while in_progress > 0 {
        let now = Instant::now();
        if window.0.is_none() && now >= measure_from {
            window.0 = Some(now);
            usage_from = server_usage(opts.load.server_pid);
        }
        let done = match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(done) => done,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if window.1.is_none() && deadline.is_some_and(|d| now >= d) {
                    window.1 = Some(now);
                }
                if !should_start(next_seq) && last_start.get_or_insert(now).elapsed() > patience {
                    summary.error(format!("{in_progress} connections never reported their end"));
                    break;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        in_progress -= 1;
        summary.mismatches += done.mismatches;
        if done.completed {
            summary.completed += 1;
            if done.started >= measure_from && window.1.is_none() {
                summary.measured += 1;
                if let Some(t) = done.first_byte {
                    let _ = histogram.record((t.as_micros() as u64).max(1));
                }
            }
        }
        if let Some(e) = done.error {
            summary.error(e);
        }
        // A run bounded by its duration is measured up to the deadline; one
        // bounded by its count (or stopped) until its last connection ends.
        if window.1.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
            window.1 = Some(Instant::now());
        }
        if should_start(next_seq) {
            connect(done.lane, next_seq)?;
            next_seq += 1;
            in_progress += 1;
        }
    }
    let end = window.1.unwrap_or_else(Instant::now);
    let usage_to = server_usage(opts.load.server_pid);
    client.shutdown(Duration::from_secs(1))?;
    let from = window.0.unwrap_or(measure_from).min(end);
    summary.addr = opts.addr.to_string();
    summary.parallel = opts.load.connections;
    summary.size = opts.load.size;
    summary.started = next_seq;
    summary.window_secs = (end - from).as_secs_f64();
    summary.connections_per_sec = summary.measured as f64 / summary.window_secs.max(1e-9);
    summary.latency = Latency::from_histogram(&histogram);
    if let (Some(a), Some(b)) = (usage_from, usage_to) {
        summary.server = Some(ServerUsage::between(a, b, summary.measured, summary.window_secs));
    }
    summary.elapsed_secs = start.elapsed().as_secs_f64();
    Ok(summary)
}
