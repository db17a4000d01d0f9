//! The arena load client (`iocore client --scenario arena`): `bots`
//! players, bot `i` in room `arena-{i % rooms}`. Once every bot is
//! welcomed, each sends `input_rate` inputs a second on a fixed schedule
//! (open loop) until the duration ends. Measured after the warmup:
//!
//! - tick lateness, as the server reports it in each snapshot (how late
//!   it ran the tick; one bot per room records its room's ticks), and
//!   ticks the server skipped;
//! - input-to-snapshot latency: from sending input `seq` to the first
//!   snapshot whose state has applied it (its `last_input`);
//! - bytes each player receives per second;
//! - with `--server-pid`, server CPU per player-tick (a snapshot one
//!   player received).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use iocore::packet::{PacketHandler, Packets};
use iocore::{CloseReason, Session};

use super::wire::{self, Dispatch};
use super::MAX_PACKET;
use crate::load::{end_error, invalid, note_error, HardEnd, Load};
use crate::report::{self, new_histogram, server_usage, write_outcome, Latency, ServerUsage};

/// What the arena load client does.
#[derive(Clone, Debug)]
pub struct ArenaOptions {
    /// The arena server.
    pub addr: SocketAddr,
    /// Bots (`connections`), duration (required), warmup, drain timeout
    /// (how long a bot may wait for its welcome), server to measure.
    pub load: Load,
    /// Rooms: bot `i` joins `arena-{i % rooms}`.
    pub rooms: usize,
    /// Inputs each bot sends per second.
    pub input_rate: f64,
}

impl Default for ArenaOptions {
    fn default() -> ArenaOptions {
        ArenaOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 7777)),
            load: Load {
                connections: 20,
                duration: Some(Duration::from_secs(5)),
                ..Load::default()
            },
            rooms: 1,
            input_rate: 30.0,
        }
    }
}

impl ArenaOptions {
    /// Checks the options without running anything.
    pub fn check(&self) -> io::Result<()> {
        if self.load.connections == 0 || self.rooms == 0 || self.rooms > self.load.connections {
            return Err(invalid("--rooms must be between 1 and --bots"));
        }
        if !(self.input_rate > 0.0 && self.input_rate <= 1000.0) {
            return Err(invalid(
                "--input-rate must be above 0 and at most 1000 inputs a second",
            ));
        }
        match self.load.duration {
            None => Err(invalid("give --duration: the arena load runs for a time")),
            Some(d) if d <= self.load.warmup => Err(invalid("--warmup must be shorter than --duration")),
            Some(_) => Ok(()),
        }
    }
}

/// What an arena run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArenaSummary {
    /// Server address.
    pub addr: String,
    /// Bots asked for.
    pub bots: usize,
    /// Bots the server welcomed.
    pub joined: u64,
    /// Rooms.
    pub rooms: usize,
    /// Length of the measured window (after warmup), seconds.
    pub window_secs: f64,
    /// Inputs sent (all of the run).
    pub inputs: u64,
    /// Snapshots the bots received in the window (player-ticks).
    pub player_ticks: u64,
    /// Room ticks seen in the window (one bot per room records).
    pub ticks: u64,
    /// Ticks the server skipped in the window (their time had passed).
    pub ticks_missed: u64,
    /// How late the server ran its ticks, microseconds.
    pub tick_lateness: Latency,
    /// From sending an input to the first snapshot that applied it.
    pub input_latency: Latency,
    /// Bytes each player received per second, on average.
    pub bytes_per_player_per_sec: f64,
    /// Server usage per player-tick, with `server_pid`.
    pub server: Option<ServerUsage>,
    /// Bots that failed, were refused or were closed by the server.
    pub errors: u64,
    /// The first few error descriptions.
    pub error_lines: Vec<String>,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
}

impl ArenaSummary {
    /// Every bot joined, nothing failed, and ticks were measured.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.joined == self.bots as u64 && self.ticks > 0
    }

    fn error(&mut self, line: String) {
        note_error(&mut self.errors, &mut self.error_lines, line);
    }
}

impl fmt::Display for ArenaSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bots:        {} requested, {} joined, {} rooms",
            self.bots, self.joined, self.rooms
        )?;
        writeln!(
            f,
            "ticks:       {} over {:.2}s, {} missed; {} snapshots to players, {} inputs sent",
            self.ticks, self.window_secs, self.ticks_missed, self.player_ticks, self.inputs
        )?;
        self.tick_lateness.write_sampled(f, "tick late us:")?;
        self.input_latency.write_sampled(f, "input->snap us:")?;
        writeln!(
            f,
            "bandwidth:   {:.0} bytes per player per second",
            self.bytes_per_player_per_sec
        )?;
        if let Some(s) = &self.server {
            s.write_line(f, "player-tick")?;
        }
        write_outcome(f, self.errors, &self.error_lines, self.elapsed_secs, self.ok())
    }
}

struct Shared {
    opts: ArenaOptions,
    stop: Arc<AtomicBool>,
    start: Instant,
    /// When inputs start (once every bot is welcomed), µs after `start`.
    go_us: AtomicU64,
    welcomed: AtomicUsize,
    /// The window: bots count only what arrives within it.
    window: Mutex<(Option<Instant>, Option<Instant>)>,
    measuring: AtomicBool,
    player_ticks: AtomicU64,
    bytes: AtomicU64,
    ticks: AtomicU64,
    ticks_missed: AtomicU64,
    lateness: Mutex<Histogram<u64>>,
    input_latency: Mutex<Histogram<u64>>,
    summary: Mutex<(ArenaSummary, usize)>,
    done: Condvar,
    never_joined: AtomicUsize,
    over: AtomicBool,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn sending_over(&self, at_us: u64) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.over.load(Ordering::Relaxed)
            || self
                .opts
                .load
                .duration
                .is_some_and(|d| at_us >= d.as_micros() as u64)
    }
}

/// One bot.
struct Bot {
    index: usize,
    shared: Arc<Shared>,
    player: Option<u32>,
    /// Records its room's ticks (the first bot of each room).
    reporter: bool,
    seq: u32,
    inputs: u64,
    /// Inputs sent and not yet seen applied: number and when sent.
    in_flight: VecDeque<(u32, Instant)>,
    due_us: u64,
    period_us: f64,
    last_tick: Option<u64>,
    failure: Option<String>,
    started: bool,
}

impl Bot {
    fn new(index: usize, shared: Arc<Shared>) -> Bot {
        report::local_join();
        let period_us = 1e6 / shared.opts.input_rate;
        let reporter = index < shared.opts.rooms;
        Bot {
            index,
            shared,
            player: None,
            reporter,
            seq: 0,
            inputs: 0,
            in_flight: VecDeque::new(),
            due_us: 0,
            period_us,
            last_tick: None,
            failure: None,
            started: false,
        }
    }

    fn offset_us(&self) -> u64 {
        (self.period_us * self.index as f64 / self.shared.opts.load.connections as f64) as u64
    }

    fn fail(&mut self, s: &mut Session<'_>, why: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("bot {}: {why}", self.index));
        }
        s.close();
    }

    /// Sends every input due, then sleeps until the next.
    fn send_due(&mut self, s: &mut Session<'_>) {
        let now = self.shared.now_us();
        while self.due_us <= now {
            if self.shared.sending_over(self.due_us) {
                return s.close();
            }
            self.seq += 1;
            // A wandering walk: each bot its own direction, turning slowly.
            let phase = (self.seq / 30 + self.index as u32) % 4;
            let (dx, dy) = [(3, 1), (-1, 3), (-3, -1), (1, -3)][phase as usize];
            let input = wire::CInput {
                seq: self.seq,
                dx,
                dy,
            };
            let Ok(buf) = iocore_proto::encode(&input) else {
                return;
            };
            if s.send(buf).is_err() {
                return;
            }
            self.inputs += 1;
            self.in_flight.push_back((self.seq, Instant::now()));
            // A server that never applies inputs must not grow this.
            if self.in_flight.len() > 10_000 {
                self.in_flight.pop_front();
            }
            self.due_us = self.shared.go_us.load(Ordering::Relaxed)
                + ((self.seq as f64) * self.period_us) as u64
                + self.offset_us();
        }
        s.set_timer(Duration::from_micros(self.due_us - now));
    }
}

impl Dispatch for Bot {
    fn on_s_welcome(&mut self, s: &mut Session<'_>, msg: wire::SWelcome) {
        if self.player.is_some() {
            return self.fail(s, "a second welcome".into());
        }
        self.player = Some(msg.player);
        if self.shared.welcomed.fetch_add(1, Ordering::AcqRel) + 1 == self.shared.opts.load.connections {
            self.shared
                .go_us
                .store(self.shared.now_us() + 10_000, Ordering::Release);
        }
        s.set_timer(Duration::from_millis(1));
    }

    fn on_s_snapshot(&mut self, s: &mut Session<'_>, snap: wire::SSnapshot) {
        // A tick may run between the join and the welcome.
        let Some(me) = self.player else {
            return;
        };
        let measuring = self.shared.measuring.load(Ordering::Relaxed);
        if measuring {
            self.shared.player_ticks.fetch_add(1, Ordering::Relaxed);
        }
        if self.reporter {
            if let Some(last) = self.last_tick {
                if snap.tick != last + 1 + snap.missed as u64 {
                    let why = format!("tick {} after {last} with {} missed", snap.tick, snap.missed);
                    self.last_tick = Some(snap.tick);
                    return self.fail(s, why);
                }
            }
            self.last_tick = Some(snap.tick);
            if measuring {
                self.shared.ticks.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .ticks_missed
                    .fetch_add(snap.missed as u64, Ordering::Relaxed);
                let _ = self
                    .shared
                    .lateness
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record((snap.lateness_us as u64).clamp(1, report::MAX_LATENCY_US));
            }
        }
        let Some(mine) = snap.players.iter().find(|p| p.id == me) else {
            return self.fail(s, format!("player {me} missing from tick {}", snap.tick));
        };
        let now = Instant::now();
        while let Some(&(seq, at)) = self.in_flight.front() {
            if seq > mine.last_input {
                break;
            }
            self.in_flight.pop_front();
            if measuring {
                report::local_record((now - at).as_micros() as u64);
            }
        }
    }

    fn on_s_refused(&mut self, s: &mut Session<'_>, msg: wire::SRefused) {
        self.fail(s, format!("refused: {}", msg.reason));
    }
}

impl PacketHandler for Bot {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        let join = wire::CJoin {
            room: format!("arena-{}", self.index % self.shared.opts.rooms),
            token: 0,
        };
        if let Ok(buf) = iocore_proto::encode(&join) {
            let _ = s.send(buf);
        }
        // A server that is not an arena never welcomes.
        s.set_timer(self.shared.opts.load.drain_timeout);
    }

    fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
        if self.shared.measuring.load(Ordering::Relaxed) {
            self.shared
                .bytes
                .fetch_add((body.len() + iocore::packet::HEADER) as u64, Ordering::Relaxed);
        }
        wire::dispatch(self, s, id, body);
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        if self.player.is_none() {
            let waited = self.shared.opts.load.drain_timeout;
            return self.fail(
                s,
                format!("no welcome from the server within {waited:?} (is it `serve --app arena`?)"),
            );
        }
        if !self.started {
            if self.shared.welcomed.load(Ordering::Acquire) < self.shared.opts.load.connections {
                if self.shared.sending_over(self.shared.now_us())
                    || self.shared.never_joined.load(Ordering::Acquire) > 0
                {
                    return s.close();
                }
                return s.set_timer(Duration::from_millis(1));
            }
            self.started = true;
            self.due_us = self.shared.go_us.load(Ordering::Acquire) + self.offset_us();
        }
        self.send_due(s);
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        report::local_leave(&self.shared.input_latency);
        if self.player.is_none() {
            self.shared.never_joined.fetch_add(1, Ordering::AcqRel);
        }
        let mut guard = self.shared.summary.lock().unwrap_or_else(|p| p.into_inner());
        let (sum, done) = &mut *guard;
        sum.joined += self.player.is_some() as u64;
        sum.inputs += self.inputs;
        let over = self.shared.over.load(Ordering::Relaxed);
        if let Some(line) = end_error(&format!("bot {}", self.index), self.failure.take(), over, &reason) {
            sum.error(line);
        }
        *done += 1;
        self.shared.done.notify_all();
    }
}

/// Runs the arena load until every bot is done (the duration, a stop, or
/// a failure). Fails only if the client cannot start.
pub fn run(opts: &ArenaOptions, stop: Arc<AtomicBool>) -> io::Result<ArenaSummary> {
    opts.check()?;
    let client = opts.load.start_client::<Packets<Bot>>()?;
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        stop,
        start: Instant::now(),
        go_us: AtomicU64::new(0),
        welcomed: AtomicUsize::new(0),
        window: Mutex::new((None, None)),
        measuring: AtomicBool::new(false),
        player_ticks: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        ticks: AtomicU64::new(0),
        ticks_missed: AtomicU64::new(0),
        lateness: Mutex::new(new_histogram()),
        input_latency: Mutex::new(new_histogram()),
        summary: Mutex::new((ArenaSummary::default(), 0)),
        done: Condvar::new(),
        never_joined: AtomicUsize::new(0),
        over: AtomicBool::new(false),
    });
    for index in 0..opts.load.connections {
        let shared = shared.clone();
        client.connect_later(opts.addr, move || {
            Packets::new(Bot::new(index, shared)).max_packet(MAX_PACKET)
        })?;
    }
    let mut hard_end = HardEnd::new(&opts.load, shared.start);
    let (mut usage_from, mut usage_to) = (None, None);
    let mut guard = shared.summary.lock().unwrap_or_else(|p| p.into_inner());
    while guard.1 < opts.load.connections {
        guard = shared
            .done
            .wait_timeout(guard, Duration::from_millis(10))
            .unwrap_or_else(|p| p.into_inner())
            .0;
        let now = Instant::now();
        if hard_end.passed(now, shared.stop.load(Ordering::Relaxed)) {
            shared.over.store(true, Ordering::Relaxed);
            break;
        }
        let go = shared.go_us.load(Ordering::Acquire);
        if go == 0 {
            continue;
        }
        let mut window = shared.window.lock().unwrap_or_else(|p| p.into_inner());
        let at = shared.now_us();
        if window.0.is_none() && at >= go + opts.load.warmup.as_micros() as u64 {
            window.0 = Some(now);
            usage_from = server_usage(opts.load.server_pid);
            shared.measuring.store(true, Ordering::Relaxed);
        }
        if window.0.is_some() && window.1.is_none() && shared.sending_over(at) {
            shared.measuring.store(false, Ordering::Relaxed);
            window.1 = Some(now);
            usage_to = server_usage(opts.load.server_pid);
        }
    }
    drop(guard);
    client.shutdown(Duration::ZERO)?;
    let mut summary = shared.summary.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
    summary.addr = opts.addr.to_string();
    summary.bots = opts.load.connections;
    summary.rooms = opts.rooms;
    let window = *shared.window.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(from), Some(to)) = window {
        summary.window_secs = (to - from).as_secs_f64();
        summary.player_ticks = shared.player_ticks.load(Ordering::Relaxed);
        summary.ticks = shared.ticks.load(Ordering::Relaxed);
        summary.ticks_missed = shared.ticks_missed.load(Ordering::Relaxed);
        summary.bytes_per_player_per_sec = shared.bytes.load(Ordering::Relaxed) as f64
            / opts.load.connections as f64
            / summary.window_secs.max(1e-9);
        if let (Some(a), Some(b)) = (usage_from, usage_to) {
            summary.server = Some(ServerUsage::between(
                a,
                b,
                summary.player_ticks,
                summary.window_secs,
            ));
        }
    } else if summary.errors == 0 {
        summary
            .error("the run ended before its measured window (every bot welcomed, then the warmup)".into());
    }
    summary.tick_lateness =
        Latency::from_histogram(&shared.lateness.lock().unwrap_or_else(|p| p.into_inner()));
    summary.input_latency =
        Latency::from_histogram(&shared.input_latency.lock().unwrap_or_else(|p| p.into_inner()));
    summary.elapsed_secs = shared.start.elapsed().as_secs_f64();
    Ok(summary)
}
