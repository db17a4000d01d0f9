//! What the load clients (echo, chat, churn) share: the shape of a load
//! ([`Load`]), how a client for it starts, and how their summaries keep
//! error lines.

use std::io;
use std::time::{Duration, Instant};

use iocore::{Client, ClientHandle, EngineKind, Handler};

/// Most error lines a summary keeps.
pub const MAX_ERRORS: usize = 20;

/// The shape of a load, whatever the scenario.
#[derive(Clone, Debug)]
pub struct Load {
    /// The client's I/O model.
    pub engine: EngineKind,
    /// Client worker threads.
    pub threads: usize,
    /// Sessions at once (echo: connections; chat: members; churn: lanes).
    pub connections: usize,
    /// Bytes per message.
    pub size: usize,
    /// Messages per session (churn: connections in all); `None`: until
    /// `duration` or a stop.
    pub count: Option<u64>,
    /// Stop sending after this long, warmup included; `None`: until
    /// `count` or a stop.
    pub duration: Option<Duration>,
    /// What happens in this first stretch is not measured.
    pub warmup: Duration,
    /// After sending stopped, how long to wait for the last replies before
    /// counting them lost (churn: how long one connection may take in all).
    pub drain_timeout: Duration,
    /// Measure this process's (the server's) CPU time and memory.
    pub server_pid: Option<u32>,
    /// Most bytes a session queues for sending (what is in flight, with
    /// room): over it the session is closed, as the server not reading.
    pub max_send_queue: usize,
    /// Sessions speak WebSocket (as clients): a message is one WebSocket
    /// message.
    pub websocket: bool,
    /// Sessions speak TLS (as clients) with this configuration.
    pub tls: Option<iocore::tls::TlsConfig>,
}

impl Default for Load {
    /// The seed's: one session, 100-byte messages, no end but a stop.
    fn default() -> Load {
        Load {
            engine: EngineKind::Auto,
            threads: 1,
            connections: 1,
            size: 100,
            count: None,
            duration: None,
            warmup: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            server_pid: None,
            max_send_queue: 1 << 20,
            websocket: false,
            tls: None,
        }
    }
}

impl Load {
    /// Starts the client workers for this load: its engine and threads,
    /// room for `connections` sessions, each queueing up to
    /// `max_send_queue` bytes. A client never pauses its own input (the
    /// echoes it waits for would stall behind its sends): its watermarks
    /// sit at the cap.
    pub fn start_client<H: Handler>(&self) -> io::Result<ClientHandle<H>> {
        let limits = iocore::Limits {
            max_send_queue: self.max_send_queue,
            send_high_watermark: self.max_send_queue,
            send_low_watermark: self.max_send_queue / 2,
            ..iocore::Limits::default()
        };
        let websocket = self.websocket.then(|| {
            // Echoes as long as the messages sent.
            iocore::websocket::WebSocketConfig::new().max_message(self.size.max(16 * 1024))
        });
        Client::builder()
            .engine(self.engine)
            .threads(self.threads)
            .max_sessions(self.connections)
            .limits(limits)
            .websocket(websocket)
            .tls(self.tls.clone())
            .start::<H>()
    }
}

/// The time the workers get, past a run's hard end, to report how its
/// sessions ended (see [`HardEnd`]).
pub const REPORT_GRACE: Duration = Duration::from_secs(1);

/// When a run must be over whatever the server does: sending ends at
/// `duration` or at a stop (Ctrl-C), and what did not come back
/// `drain_timeout` later is lost; the workers get [`REPORT_GRACE`] more
/// to say so. The load clients' driving loops ask [`HardEnd::passed`]
/// and, once it has, close every session still open and report.
#[derive(Clone, Copy, Debug)]
pub struct HardEnd {
    sending_ends: Option<Instant>,
    drain: Duration,
}

impl HardEnd {
    /// For a run of `load` that started at `start`.
    pub fn new(load: &Load, start: Instant) -> HardEnd {
        HardEnd {
            sending_ends: load.duration.and_then(|d| start.checked_add(d)),
            drain: load.drain_timeout,
        }
    }

    /// Whether the run is past its hard end at `now`; `stopped`: it was
    /// told to stop (sending ends now, if not before).
    pub fn passed(&mut self, now: Instant, stopped: bool) -> bool {
        if stopped && self.sending_ends.is_none_or(|t| now < t) {
            self.sending_ends = Some(now);
        }
        self.sending_ends
            .and_then(|t| t.checked_add(self.drain + REPORT_GRACE))
            .is_some_and(|end| now >= end)
    }
}

/// Counts an error and keeps its line, up to [`MAX_ERRORS`] lines.
pub fn note_error(errors: &mut u64, lines: &mut Vec<String>, line: String) {
    *errors += 1;
    if lines.len() < MAX_ERRORS {
        lines.push(line);
    }
}

/// Why a load session's end is an error, if it is: the failure it noted
/// itself, or still open at the run's hard end (`over`), or closed other
/// than by the client. `who` names it ("bot 3").
pub fn end_error(
    who: &str,
    failure: Option<String>,
    over: bool,
    reason: &iocore::CloseReason,
) -> Option<String> {
    let by_client = matches!(reason, iocore::CloseReason::LocalClose);
    match failure {
        Some(f) => Some(f),
        None if over && !by_client => Some(format!(
            "{who}: still open at the end of the run (--duration or the stop, then --drain-timeout): closed"
        )),
        None if !by_client => Some(format!("{who}: {reason}")),
        None => None,
    }
}

/// Keeps a session's first problem (a mismatch, a loss) as a line, even
/// when the lines are full (the last one gives way).
pub fn note_problem(lines: &mut Vec<String>, line: String) {
    lines.truncate(MAX_ERRORS - 1);
    lines.push(line);
}

/// Parses a byte count: "65536", "64KiB", "64k", "1MiB", "1m", "2GiB".
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: usize = num
        .parse()
        .map_err(|_| format!("invalid size '{s}' (bytes, or with a unit: 64KiB, 1MiB)"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in '{s}' (use KiB, MiB or GiB)")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// An invalid option, as an error.
pub fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}
