//! The client of the overlapped-event seed, grown into a load generator.
//!
//! By default it is the seed: one connection sending a 100-byte message
//! beginning with "Hello World" every second. Generalised:
//!
//! - **open loop** (`rate` messages per second per connection; the seed's
//!   one a second is `rate` 1): messages are sent on a fixed schedule
//!   whatever the server does, and latency is measured from the
//!   *scheduled* send time to the arrival of the message's last echoed
//!   byte, so a stalled server cannot hide its delay (no coordinated
//!   omission). The schedule is kept by a thread of its own with
//!   microsecond waits (the session layer's timers tick in milliseconds,
//!   which would add up to a millisecond to every latency): it hands each
//!   message to its session's worker through the client's handle, and
//!   reports how late each send left against its schedule;
//! - **closed loop** (`pipeline` k): k messages in flight per connection,
//!   the next sent when one comes back (k = 1 is ping-pong).
//!
//! With `verify` every echoed byte is checked against the byte sent at
//! that position: message `k` of connection `c` is "Hello World" followed
//! by bytes that depend on `c`, `k` and the position, so a dropped,
//! repeated, reordered or altered byte shows up as a mismatch.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{end_error, invalid, note_error, note_problem, HardEnd, Load};
use crate::report::{self, new_histogram, server_usage, write_outcome, Latency, ServerUsage};
use iocore::{ClientHandle, CloseReason, Handler, Session, SessionId};

const HELLO: &[u8] = b"Hello World";

/// How messages are paced.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A fixed schedule of `rate` messages per second per connection.
    OpenLoop {
        /// Messages per second per connection.
        rate: f64,
    },
    /// `pipeline` messages in flight per connection.
    ClosedLoop {
        /// Messages in flight per connection (1 = ping-pong).
        pipeline: usize,
    },
}

/// What the client does.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Server address.
    pub addr: SocketAddr,
    /// Engine, sessions, message size, count, duration, warmup, drain
    /// timeout, server to measure (the seed: one session, 100 bytes).
    pub load: Load,
    /// Pacing (the seed: open loop, one message a second).
    pub mode: Mode,
    /// Check every echoed byte.
    pub verify: bool,
    /// Print a progress line every second to stderr.
    pub progress: bool,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 7777)),
            load: Load::default(),
            mode: Mode::OpenLoop { rate: 1.0 },
            verify: false,
            progress: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Server address.
    pub addr: String,
    /// Pacing.
    pub mode: Option<Mode>,
    /// Bytes per message.
    pub size: usize,
    /// Sessions asked for.
    pub connections: usize,
    /// Sessions that connected.
    pub connected: u64,
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Round trips completed inside the measured window.
    pub round_trips: u64,
    /// Length of the measured window (after warmup), seconds.
    pub window_secs: f64,
    /// Measured round trips per second.
    pub round_trips_per_sec: f64,
    /// Payload megabytes per second echoed (one direction).
    pub mb_per_sec: f64,
    /// Latency of measured round trips.
    pub latency: Latency,
    /// Open loop: how late each measured send was handed to its session
    /// against its schedule (the client's own error, not the server's).
    pub schedule_error: Option<Latency>,
    /// Server usage, with `server_pid`.
    pub server: Option<ServerUsage>,
    /// Whether echoes were checked.
    pub verify: bool,
    /// Received bytes that differed from what was sent at that position,
    /// or arrived beyond what was sent.
    pub mismatches: u64,
    /// Sent bytes never echoed back (with `verify`).
    pub lost_bytes: u64,
    /// Messages sent whose echo never came back whole.
    pub unanswered: u64,
    /// Sessions that failed or ended other than by the client's own close.
    pub errors: u64,
    /// The first few error descriptions.
    pub error_lines: Vec<String>,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
}

impl Summary {
    /// Every session connected, no errors, and with `verify` no mismatched
    /// and no lost byte.
    pub fn ok(&self) -> bool {
        self.errors == 0
            && self.mismatches == 0
            && self.lost_bytes == 0
            && self.unanswered == 0
            && self.connected == self.connections as u64
    }

    fn error(&mut self, line: String) {
        note_error(&mut self.errors, &mut self.error_lines, line);
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "connections: {} requested, {} connected",
            self.connections, self.connected
        )?;
        writeln!(
            f,
            "messages:    {} sent, {} bytes each, {} never came back",
            self.messages, self.size, self.unanswered
        )?;
        writeln!(
            f,
            "bytes:       {} sent, {} received",
            self.bytes_sent, self.bytes_received
        )?;
        writeln!(
            f,
            "throughput:  {:.0} round trips/s, {:.2} MB/s over {:.2}s",
            self.round_trips_per_sec, self.mb_per_sec, self.window_secs
        )?;
        self.latency.write_sampled(f, "latency us: ")?;
        if let Some(e) = &self.schedule_error {
            e.write_line(f, "schedule us:", " late (the client's own error)")?;
        }
        if let Some(s) = &self.server {
            s.write_line(f, "round trip")?;
        }
        if self.verify {
            writeln!(
                f,
                "verify:      {} mismatched, {} lost",
                self.mismatches, self.lost_bytes
            )?;
        }
        write_outcome(f, self.errors, &self.error_lines, self.elapsed_secs, self.ok())
    }
}

/// The byte at `offset` of connection `conn`'s outgoing stream.
pub fn expected_byte(conn: usize, offset: u64, size: usize) -> u8 {
    let (k, j) = (offset / size as u64, (offset % size as u64) as usize);
    if j < HELLO.len() {
        return HELLO[j];
    }
    let x = (conn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ k.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (j as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    (x >> 56) as u8 ^ (x >> 24) as u8
}

/// Message `seq` of connection `conn`.
pub fn message(conn: usize, seq: u64, size: usize) -> Vec<u8> {
    let base = seq * size as u64;
    (0..size as u64)
        .map(|i| expected_byte(conn, base + i, size))
        .collect()
}

struct Shared {
    opts: ClientOptions,
    stop: Arc<AtomicBool>,
    start: Instant,
    measure_from: Instant,
    deadline: Option<Instant>,
    summary: Mutex<(Summary, usize)>,
    histogram: Mutex<Histogram<u64>>,
    done: Condvar,
    round_trips: AtomicU64,
    /// Open loop: the scheduler's side.
    schedule: Option<Schedule>,
    /// The run is past its hard end: sessions still open are closed.
    over: AtomicBool,
}

/// A connection for the scheduler: its session once connected (`None`: it
/// never connected) and its first due time.
type Registration = (usize, Option<SessionId>, Instant);

/// What the open-loop sessions and the scheduler thread share.
struct Schedule {
    /// A session, once connected, asks for its schedule: (connection,
    /// session, first due time).
    register: mpsc::Sender<Registration>,
    /// Messages handed to each connection's session so far (counted
    /// before the message is handed over, so an echo never arrives ahead
    /// of its count).
    sent: Vec<AtomicU64>,
    /// The scheduler has stopped: `sent` is final.
    over: AtomicBool,
    /// Each connection's session has ended: nothing more is sent to it.
    ended: Vec<AtomicBool>,
    /// How late the measured sends were, µs.
    error: Mutex<Histogram<u64>>,
}

impl Shared {
    fn should_stop(&self, now: Instant) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.over.load(Ordering::Relaxed)
            || self.deadline.is_some_and(|d| now >= d)
    }
}

/// How often a session checks whether sending is over (a stop, the
/// deadline, the scheduler done) or its server stopped answering.
const POLL: Duration = Duration::from_millis(100);

/// One client session.
struct LoadConn {
    index: usize,
    shared: Arc<Shared>,
    connected: bool,
    sent_msgs: u64,
    sent: u64,
    received: u64,
    completed: u64,
    /// Scheduled send time of each message in flight, oldest first.
    in_flight: VecDeque<Instant>,
    /// Open loop: when the next message is due.
    next_due: Instant,
    period: Duration,
    round_trips: u64,
    mismatches: u64,
    first_mismatch: Option<String>,
    sending_done: bool,
    /// When the last echo came (or the connection opened).
    last_reply: Instant,
    /// Closed because the server stopped answering.
    silent: bool,
}

impl LoadConn {
    fn new(index: usize, shared: Arc<Shared>) -> LoadConn {
        report::local_join();
        let period = match shared.opts.mode {
            Mode::OpenLoop { rate } => Duration::from_secs_f64(1.0 / rate),
            Mode::ClosedLoop { .. } => Duration::ZERO,
        };
        LoadConn {
            index,
            shared,
            connected: false,
            sent_msgs: 0,
            sent: 0,
            received: 0,
            completed: 0,
            in_flight: VecDeque::new(),
            next_due: Instant::now(),
            period,
            round_trips: 0,
            mismatches: 0,
            first_mismatch: None,
            sending_done: false,
            last_reply: Instant::now(),
            silent: false,
        }
    }

    fn count_reached(&self) -> bool {
        self.shared.opts.load.count.is_some_and(|c| self.sent_msgs >= c)
    }

    /// Sends one message scheduled at `at`; false when sending is over.
    fn send_one(&mut self, s: &mut Session<'_>, at: Instant) -> bool {
        if self.sending_done || self.count_reached() || self.shared.should_stop(at) {
            self.finish_sending(s);
            return false;
        }
        let size = self.shared.opts.load.size;
        if s.send(message(self.index, self.sent_msgs, size)).is_err() {
            return false;
        }
        self.in_flight.push_back(at);
        self.sent_msgs += 1;
        self.sent += size as u64;
        true
    }

    /// Open loop: takes the scheduler's count of messages sent.
    fn sync_sent(&mut self) {
        if let Some(sched) = &self.shared.schedule {
            self.sent_msgs = sched.sent[self.index].load(Ordering::Acquire);
            self.sent = self.sent_msgs * self.shared.opts.load.size as u64;
        }
    }

    /// Whether every message sent came back (or, without `verify`, every
    /// round trip completed).
    fn all_back(&self) -> bool {
        match self.shared.opts.mode {
            Mode::OpenLoop { .. } => self.received >= self.sent,
            Mode::ClosedLoop { .. } => {
                self.received >= self.sent || !self.shared.opts.verify && self.in_flight.is_empty()
            }
        }
    }

    fn finish_sending(&mut self, s: &mut Session<'_>) {
        if !self.sending_done {
            self.sending_done = true;
            s.set_timer(self.shared.opts.load.drain_timeout);
        }
        if self.all_back() {
            s.close();
        }
    }

    fn record(&mut self, sent_at: Instant, now: Instant) {
        if sent_at < self.shared.measure_from {
            return;
        }
        self.round_trips += 1;
        self.shared.round_trips.fetch_add(1, Ordering::Relaxed);
        report::local_record((now - sent_at).as_micros() as u64);
    }
}

impl Handler for LoadConn {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.connected = true;
        let now = Instant::now();
        self.last_reply = now;
        match self.shared.opts.mode {
            Mode::ClosedLoop { pipeline } => {
                for _ in 0..pipeline {
                    if !self.send_one(s, now) {
                        break;
                    }
                }
                if !self.sending_done {
                    s.set_timer(POLL);
                }
            }
            Mode::OpenLoop { .. } => {
                // Spread the connections' schedules over one period so they
                // do not all send at the same instant; the scheduler thread
                // sends, this session checks now and then whether it is done.
                let n = self.shared.opts.load.connections.max(1) as u32;
                self.next_due = now + self.period * (self.index as u32 % n) / n;
                let sched = self.shared.schedule.as_ref().expect("open loop has a scheduler");
                let _ = sched.register.send((self.index, Some(s.id()), self.next_due));
                s.set_timer(POLL);
            }
        }
    }

    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        self.sync_sent();
        let opts = &self.shared.opts;
        if opts.verify {
            for (i, &b) in data.iter().enumerate() {
                let at = self.received + i as u64;
                let want = (at < self.sent).then(|| expected_byte(self.index, at, opts.load.size));
                if want != Some(b) {
                    self.mismatches += 1;
                    if self.first_mismatch.is_none() {
                        self.first_mismatch = Some(match want {
                            Some(w) => {
                                format!("connection {}: byte {at} is {b:#04x}, sent {w:#04x}", self.index)
                            }
                            None => format!("connection {}: byte {at} was never sent", self.index),
                        });
                    }
                }
            }
        }
        self.received += data.len() as u64;
        let size = opts.load.size as u64;
        let closed_loop = matches!(opts.mode, Mode::ClosedLoop { .. });
        let mut now = None;
        while self.received >= (self.completed + 1) * size {
            self.completed += 1;
            let t = *now.get_or_insert_with(Instant::now);
            self.last_reply = t;
            let sent_at = match closed_loop {
                true => self.in_flight.pop_front(),
                // Message k was due at the first due time plus k periods.
                false => Some(self.next_due + self.period * (self.completed - 1) as u32),
            };
            if let Some(sent_at) = sent_at {
                self.record(sent_at, t);
            }
            if closed_loop && !self.sending_done {
                self.send_one(s, t);
            }
        }
        if self.sending_done && self.all_back() {
            s.close();
        }
        data.len()
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        if self.sending_done {
            // The drain timeout: what has not come back is lost.
            return s.close();
        }
        let now = Instant::now();
        match &self.shared.schedule {
            Some(sched) if sched.over.load(Ordering::Acquire) => {
                self.sync_sent();
                return self.finish_sending(s);
            }
            Some(_) => {}
            None if self.shared.should_stop(now) => return self.finish_sending(s),
            None => {
                // Closed loop: a server that takes messages and never
                // answers would keep every one in flight for ever.
                let waited = now - self.last_reply;
                if !self.in_flight.is_empty() && waited >= self.shared.opts.load.drain_timeout {
                    self.silent = true;
                    return s.close();
                }
            }
        }
        s.set_timer(POLL);
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        self.sync_sent();
        if let Some(sched) = &self.shared.schedule {
            sched.ended[self.index].store(true, Ordering::Release);
            if !self.connected {
                // Never connected: the scheduler is not to wait for it.
                let _ = sched.register.send((self.index, None, Instant::now()));
            }
        }
        report::local_leave(&self.shared.histogram);
        let mut guard = self.shared.summary.lock().unwrap_or_else(|p| p.into_inner());
        let (sum, done) = &mut *guard;
        if self.connected {
            sum.connected += 1;
        }
        sum.messages += self.sent_msgs;
        sum.bytes_sent += self.sent;
        sum.bytes_received += self.received;
        sum.round_trips += self.round_trips;
        sum.mismatches += self.mismatches;
        if let Some(m) = self.first_mismatch.take() {
            note_problem(&mut sum.error_lines, m);
        }
        if self.shared.opts.verify {
            sum.lost_bytes += self.sent.saturating_sub(self.received);
        }
        sum.unanswered += self.sent_msgs.saturating_sub(self.completed);
        let silent = self.silent.then(|| {
            let waited = self.shared.opts.load.drain_timeout;
            format!(
                "connection {}: no echo for {waited:?} with {} messages in flight: the server stopped answering",
                self.index,
                self.in_flight.len()
            )
        });
        let over = self.shared.over.load(Ordering::Relaxed);
        if let Some(line) = end_error(&format!("connection {}", self.index), silent, over, &reason) {
            sum.error(line);
        }
        *done += 1;
        self.shared.done.notify_all();
    }
}

/// The open-loop schedule, on a thread of its own: each connected
/// session's messages are handed to it at their due times (waits of
/// microsecond resolution, not the session layer's millisecond ticks),
/// until the count, the deadline or a stop; then `over` is set.
fn run_schedule(
    shared: &Shared,
    client: &ClientHandle<LoadConn>,
    registrations: mpsc::Receiver<Registration>,
) {
    let sched = shared.schedule.as_ref().expect("open loop has a scheduler");
    let opts = &shared.opts;
    let Mode::OpenLoop { rate } = opts.mode else {
        unreachable!("only the open loop is scheduled")
    };
    let period = Duration::from_secs_f64(1.0 / rate);
    let n = opts.load.connections;
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut ids: Vec<Option<SessionId>> = vec![None; n];
    let mut seq = vec![0u64; n];
    let mut heard = 0usize;
    let mut late = new_histogram();
    loop {
        let mut next_registration = registrations.try_recv().ok();
        let now = Instant::now();
        if next_registration.is_none() && !shared.should_stop(now) {
            let wait = match due.peek() {
                None if heard >= n => break, // every connection's schedule is done
                None => Some(Duration::from_millis(10)),
                Some(Reverse((at, _))) if *at > now => Some(*at - now),
                Some(_) => None,
            };
            if let Some(wait) = wait {
                next_registration = registrations.recv_timeout(wait).ok();
                if next_registration.is_none() {
                    continue;
                }
            }
        }
        if let Some((i, id, first)) = next_registration {
            heard += 1;
            if let Some(id) = id {
                ids[i] = Some(id);
                due.push(Reverse((first, i)));
            }
            continue;
        }
        if shared.should_stop(Instant::now()) {
            break;
        }
        let now = Instant::now();
        let Some(Reverse((at, i))) = due.pop() else {
            continue;
        };
        if shared.deadline.is_some_and(|d| at >= d) {
            continue; // due after the end: that connection is done
        }
        let Some(id) = ids[i] else { continue };
        if sched.ended[i].load(Ordering::Acquire) {
            continue; // its session is gone (the server closed it, say)
        }
        sched.sent[i].fetch_add(1, Ordering::AcqRel);
        if client.send(id, message(i, seq[i], opts.load.size)).is_err() {
            // The session is gone: nothing more for it.
            sched.sent[i].fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        if at >= shared.measure_from {
            let _ = late.record((now - at).as_micros() as u64);
        }
        seq[i] += 1;
        if opts.load.count.is_none_or(|c| seq[i] < c) {
            due.push(Reverse((at + period, i)));
        }
    }
    *sched.error.lock().unwrap_or_else(|p| p.into_inner()) = late;
    sched.over.store(true, Ordering::Release);
}

/// Runs the client until every session is done (count or duration reached
/// and, with `verify`, all echoes back) or `stop` is set; returns what
/// happened. Fails only if the client cannot start.
pub fn run(opts: &ClientOptions, stop: Arc<AtomicBool>) -> io::Result<Summary> {
    if opts.load.size == 0 {
        return Err(invalid("message size must be at least 1 byte"));
    }
    if opts.load.connections == 0 {
        return Err(invalid("connections must be at least 1"));
    }
    match opts.mode {
        Mode::OpenLoop { rate } if !(rate > 0.0 && rate.is_finite()) => {
            return Err(invalid("rate must be a positive number of messages per second"))
        }
        Mode::ClosedLoop { pipeline: 0 } => return Err(invalid("pipeline must be at least 1")),
        _ => {}
    }
    let client = opts.load.start_client::<LoadConn>()?;
    let (register, registrations) = mpsc::channel();
    let schedule = matches!(opts.mode, Mode::OpenLoop { .. }).then(|| Schedule {
        register,
        sent: (0..opts.load.connections).map(|_| AtomicU64::new(0)).collect(),
        over: AtomicBool::new(false),
        ended: (0..opts.load.connections)
            .map(|_| AtomicBool::new(false))
            .collect(),
        error: Mutex::new(new_histogram()),
    });
    let start = Instant::now();
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        stop,
        start,
        measure_from: start + opts.load.warmup,
        deadline: opts.load.duration.map(|d| start + d),
        summary: Mutex::new((Summary::default(), 0)),
        histogram: Mutex::new(new_histogram()),
        done: Condvar::new(),
        round_trips: AtomicU64::new(0),
        schedule,
        over: AtomicBool::new(false),
    });
    let client = Arc::new(client);
    let scheduler = shared.schedule.is_some().then(|| {
        let (shared, client) = (shared.clone(), client.clone());
        std::thread::Builder::new()
            .name("iocore-schedule".into())
            .spawn(move || run_schedule(&shared, &client, registrations))
    });
    let scheduler = scheduler.transpose()?;
    for index in 0..opts.load.connections {
        let shared = shared.clone();
        client.connect_later(opts.addr, move || LoadConn::new(index, shared))?;
    }
    // Wait, sampling the server at the window's edges, until every session
    // is done or the run is past its hard end.
    let mut hard_end = HardEnd::new(&opts.load, start);
    let mut usage_from = None;
    let mut window = (None, None);
    let mut last_progress = (Instant::now(), 0);
    let mut guard = shared.summary.lock().unwrap_or_else(|p| p.into_inner());
    while guard.1 < opts.load.connections {
        guard = shared
            .done
            .wait_timeout(guard, Duration::from_millis(20))
            .unwrap_or_else(|p| p.into_inner())
            .0;
        let now = Instant::now();
        if window.0.is_none() && now >= shared.measure_from {
            window.0 = Some(now);
            usage_from = server_usage(opts.load.server_pid);
        }
        if window.1.is_none() && shared.should_stop(now) {
            window.1 = Some(now);
        }
        if hard_end.passed(now, shared.stop.load(Ordering::Relaxed)) {
            // Sessions still open (a server that keeps them and does not
            // answer) are closed below; they report as they end.
            shared.over.store(true, Ordering::Relaxed);
            break;
        }
        if opts.progress && now - last_progress.0 >= Duration::from_secs(1) {
            let rt = shared.round_trips.load(Ordering::Relaxed);
            let rate = (rt - last_progress.1) as f64 / (now - last_progress.0).as_secs_f64();
            eprint!(
                "\r{:>6.1}s  {:>10.0} round trips/s  {:>6}/{} sessions done ",
                (now - start).as_secs_f64(),
                rate,
                guard.1,
                opts.load.connections
            );
            last_progress = (now, rt);
        }
    }
    drop(guard);
    if opts.progress {
        eprintln!();
    }
    let end = window.1.unwrap_or_else(Instant::now);
    let usage_to = server_usage(opts.load.server_pid);
    if let Some(t) = scheduler {
        let _ = t.join();
    }
    let client =
        Arc::try_unwrap(client).map_err(|_| io::Error::other("the scheduler still holds the client"))?;
    // Every session has ended, or is closed now (past the hard end).
    client.shutdown(Duration::ZERO)?;
    let mut summary = shared.summary.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
    let from = window.0.unwrap_or(shared.measure_from).min(end);
    summary.addr = opts.addr.to_string();
    summary.mode = Some(opts.mode);
    summary.size = opts.load.size;
    summary.connections = opts.load.connections;
    summary.verify = opts.verify;
    summary.window_secs = (end - from).as_secs_f64();
    let secs = summary.window_secs.max(1e-9);
    summary.round_trips_per_sec = summary.round_trips as f64 / secs;
    summary.mb_per_sec = summary.round_trips_per_sec * opts.load.size as f64 / 1e6;
    summary.latency = Latency::from_histogram(&shared.histogram.lock().unwrap_or_else(|p| p.into_inner()));
    summary.schedule_error = shared
        .schedule
        .as_ref()
        .map(|s| Latency::from_histogram(&s.error.lock().unwrap_or_else(|p| p.into_inner())));
    if let (Some(a), Some(b)) = (usage_from, usage_to) {
        summary.server = Some(ServerUsage::between(a, b, summary.round_trips, secs));
    }
    summary.elapsed_secs = shared.start.elapsed().as_secs_f64();
    if !opts.load.warmup.is_zero() && summary.round_trips == 0 && summary.messages > 0 {
        summary.error(format!(
            "the warmup ({:?}) covered the whole run: nothing was measured",
            opts.load.warmup
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_start_with_hello_world_and_differ() {
        let a = message(0, 0, 100);
        assert_eq!(&a[..11], b"Hello World");
        assert_ne!(a, message(0, 1, 100), "messages differ by sequence");
        assert_ne!(a, message(1, 0, 100), "and by connection");
        assert_eq!(message(3, 2, 5), b"Hello");
    }

    #[test]
    fn expected_byte_follows_the_message_stream() {
        let stream: Vec<u8> = (0..3).flat_map(|k| message(7, k, 40)).collect();
        for (i, &b) in stream.iter().enumerate() {
            assert_eq!(expected_byte(7, i as u64, 40), b);
        }
    }
}
