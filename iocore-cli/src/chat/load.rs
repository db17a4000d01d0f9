//! The fan-out load client (`iocore client --scenario chat`): `connections`
//! chat members, member `i` in room `i % rooms`. Once every member has
//! joined, each says `rate` messages a second on a fixed schedule (open
//! loop). Every text carries its sender, its number and its scheduled
//! time, so each member checks that it receives every message of its room
//! exactly once, each sender's in order, and nothing from other rooms; the
//! delivery latency is counted from the *scheduled* send time.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use iocore::packet::{PacketHandler, Packets, MAX_PACKET};
use iocore::{CloseReason, Session};

use super::protocol::{self, FromServer};
use crate::load::{end_error, invalid, note_error, note_problem, HardEnd, Load};
use crate::report::{self, new_histogram, server_usage, write_outcome, Latency, ServerUsage};

/// Bytes of the stamp that starts every text: sender, number, time.
const STAMP: usize = 6 + 1 + 10 + 1 + 13;
/// The longest text: a MSG must fit the largest packet.
const MAX_TEXT: usize = MAX_PACKET - 64;

/// What the chat load client does.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    /// The chat server, or the instances of one (member `i` connects to
    /// `addrs[i % addrs.len()]`).
    pub addrs: Vec<SocketAddr>,
    /// Members (`connections`), bytes of text per message (`size`, at
    /// least the 31-byte stamp), messages per member, duration, warmup
    /// (deliveries of messages scheduled in it are not measured), drain
    /// timeout, server to measure.
    pub load: Load,
    /// Rooms (member `i` joins room `i % rooms`).
    pub rooms: usize,
    /// Messages each member says per second.
    pub rate: f64,
}

impl ChatOptions {
    /// Checks the options without running anything.
    pub fn check(&self) -> io::Result<()> {
        if self.load.connections == 0 || self.rooms == 0 || self.rooms > self.load.connections {
            return Err(invalid("need at least one member per room and one room"));
        }
        if self.addrs.is_empty() {
            return Err(invalid("need a server address"));
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return Err(invalid("rate must be a positive number of messages per second"));
        }
        if self.load.size < STAMP || self.load.size > MAX_TEXT {
            return Err(invalid(&format!(
                "--size must be between {STAMP} and {MAX_TEXT} bytes for the chat scenario (a text's stamp, and within a packet)"
            )));
        }
        if self.load.count.is_none() && self.load.duration.is_none() {
            return Err(invalid("give --count or --duration: the chat load needs an end"));
        }
        Ok(())
    }
}

impl Default for ChatOptions {
    fn default() -> ChatOptions {
        ChatOptions {
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 7777))],
            load: Load {
                connections: 10,
                size: 32,
                ..Load::default()
            },
            rooms: 1,
            rate: 1.0,
        }
    }
}

/// What a chat run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChatSummary {
    /// Server address.
    pub addr: String,
    /// Members asked for.
    pub connections: usize,
    /// Members that joined their room.
    pub joined: u64,
    /// Rooms.
    pub rooms: usize,
    /// Messages said.
    pub messages: u64,
    /// Messages received (every member gets every message of its room,
    /// its own included).
    pub deliveries: u64,
    /// Deliveries the messages said called for.
    pub expected_deliveries: u64,
    /// Deliveries that never came.
    pub lost: u64,
    /// Messages received twice, out of their sender's order, or from
    /// another room.
    pub misdelivered: u64,
    /// Deliveries inside the measured window.
    pub measured_deliveries: u64,
    /// Length of the measured window (after warmup), seconds.
    pub window_secs: f64,
    /// Measured deliveries per second.
    pub deliveries_per_sec: f64,
    /// Delivery latency, from the scheduled send time.
    pub latency: Latency,
    /// Server usage per measured delivery, with `server_pid`.
    pub server: Option<ServerUsage>,
    /// Members that failed or were closed other than by the client.
    pub errors: u64,
    /// The first few error descriptions.
    pub error_lines: Vec<String>,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
}

impl ChatSummary {
    /// Every member joined, no errors, nothing lost or misdelivered.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.lost == 0 && self.misdelivered == 0 && self.joined == self.connections as u64
    }

    fn error(&mut self, line: String) {
        note_error(&mut self.errors, &mut self.error_lines, line);
    }
}

impl fmt::Display for ChatSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "members:     {} requested, {} joined, {} rooms",
            self.connections, self.joined, self.rooms
        )?;
        writeln!(
            f,
            "messages:    {} said, {} delivered of {} due",
            self.messages, self.deliveries, self.expected_deliveries
        )?;
        writeln!(
            f,
            "throughput:  {:.0} deliveries/s over {:.2}s",
            self.deliveries_per_sec, self.window_secs
        )?;
        self.latency.write_sampled(f, "latency us: ")?;
        if let Some(s) = &self.server {
            s.write_line(f, "delivery")?;
        }
        writeln!(
            f,
            "verify:      {} lost, {} misdelivered",
            self.lost, self.misdelivered
        )?;
        write_outcome(f, self.errors, &self.error_lines, self.elapsed_secs, self.ok())
    }
}

/// The text of message `seq` from member `sender`, scheduled `at_us` after
/// the run's start, `size` bytes.
pub fn text(sender: usize, seq: u64, at_us: u64, size: usize) -> String {
    let mut t = format!("{sender:06}.{seq:010}.{at_us:013}");
    let pad = size.saturating_sub(t.len());
    t.extend(std::iter::repeat_n('.', pad));
    t
}

/// Sender, number and scheduled time of a text made by [`text`].
pub fn parse(text: &str) -> Option<(usize, u64, u64)> {
    let stamp = text.get(..STAMP)?;
    let mut parts = stamp.split('.');
    let sender = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    Some((sender, seq, at))
}

struct Shared {
    opts: ChatOptions,
    stop: Arc<AtomicBool>,
    start: Instant,
    /// When saying starts (once every member joined), µs after `start`.
    go_us: AtomicU64,
    joined: AtomicUsize,
    /// Messages each member said (read once everyone stopped).
    said: Vec<AtomicU64>,
    /// Members that stopped saying.
    done_saying: AtomicUsize,
    measured: AtomicU64,
    summary: Mutex<(ChatSummary, usize)>,
    histogram: Mutex<Histogram<u64>>,
    done: Condvar,
    /// Members that ended before they joined: the others cannot all start.
    never_joined: AtomicUsize,
    /// The run is past its hard end: members still open are closed.
    over: AtomicBool,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn all_said(&self) -> bool {
        self.done_saying.load(Ordering::Acquire) == self.opts.load.connections
    }

    /// Saying stops: by count, the duration, or a stop.
    fn should_stop(&self, seq: u64, at_us: u64) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.over.load(Ordering::Relaxed)
            || self.opts.load.count.is_some_and(|c| seq >= c)
            || self
                .opts
                .load
                .duration
                .is_some_and(|d| at_us >= d.as_micros() as u64)
    }
}

/// One member.
struct Member {
    index: usize,
    room: usize,
    shared: Arc<Shared>,
    joined: bool,
    saying: bool,
    /// Its count of messages said is final and published.
    said_final: bool,
    said: u64,
    /// Next number expected from each member of the room (by `sender /
    /// rooms`).
    next: Vec<u64>,
    received: u64,
    misdelivered: u64,
    first_problem: Option<String>,
    /// µs after start of this member's next message.
    due_us: u64,
    period_us: f64,
    drain_until: Option<Instant>,
    /// Why it gave up, if it did (no JOINED in time).
    failure: Option<String>,
}

impl Member {
    fn new(index: usize, shared: Arc<Shared>) -> Member {
        report::local_join();
        let rooms = shared.opts.rooms;
        let room = index % rooms;
        let members = (shared.opts.load.connections - room).div_ceil(rooms);
        let period_us = 1e6 / shared.opts.rate;
        Member {
            index,
            room,
            joined: false,
            saying: false,
            said_final: false,
            said: 0,
            next: vec![0; members],
            received: 0,
            misdelivered: 0,
            first_problem: None,
            due_us: 0,
            period_us,
            drain_until: None,
            failure: None,
            shared,
        }
    }

    fn problem(&mut self, what: String) {
        self.misdelivered += 1;
        if self.first_problem.is_none() {
            self.first_problem = Some(format!("member {}: {what}", self.index));
        }
    }

    /// Says every message due, then sleeps until the next one.
    fn say_due(&mut self, s: &mut Session<'_>) {
        let now = self.shared.now_us();
        while self.due_us <= now {
            if self.shared.should_stop(self.said, self.due_us) {
                return self.stop_saying(s);
            }
            let t = text(self.index, self.said, self.due_us, self.shared.opts.load.size);
            if s.send(protocol::say(&t)).is_err() {
                return;
            }
            self.said += 1;
            self.due_us = self.shared.go_us.load(Ordering::Relaxed)
                + (self.said as f64 * self.period_us) as u64
                + self.offset_us();
        }
        s.set_timer(Duration::from_micros(self.due_us - now));
    }

    /// This member's place in the schedule: members are spread over one
    /// period so that they do not all say at once.
    fn offset_us(&self) -> u64 {
        (self.period_us * self.index as f64 / self.shared.opts.load.connections as f64) as u64
    }

    fn stop_saying(&mut self, s: &mut Session<'_>) {
        self.saying = false;
        self.publish_said();
        self.drain_until = Some(Instant::now() + self.shared.opts.load.drain_timeout);
        s.set_timer(Duration::from_millis(5));
    }

    /// This member says no more: its count is final (once).
    fn publish_said(&mut self) {
        if !self.said_final {
            self.said_final = true;
            self.shared.said[self.index].store(self.said, Ordering::Release);
            self.shared.done_saying.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Everything the room's members said has arrived.
    fn complete(&self) -> bool {
        let rooms = self.shared.opts.rooms;
        self.shared.all_said()
            && self
                .next
                .iter()
                .enumerate()
                .all(|(k, &n)| n == self.shared.said[self.room + k * rooms].load(Ordering::Acquire))
    }

    fn delivered(&mut self, text: &str) {
        let Some((sender, seq, at_us)) = parse(text) else {
            return self.problem(format!("a message without a stamp: {text:?}"));
        };
        let rooms = self.shared.opts.rooms;
        if sender >= self.shared.opts.load.connections || sender % rooms != self.room {
            return self.problem(format!("message from member {sender}, not of room {}", self.room));
        }
        let want = &mut self.next[sender / rooms];
        if seq != *want {
            let what = format!("message {seq} of member {sender} where {want} was due");
            *want = (*want).max(seq + 1);
            return self.problem(what);
        }
        *want += 1;
        self.received += 1;
        if at_us >= self.shared.opts.load.warmup.as_micros() as u64 {
            self.shared.measured.fetch_add(1, Ordering::Relaxed);
            report::local_record(self.shared.now_us().saturating_sub(at_us));
        }
    }
}

impl PacketHandler for Member {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        let _ = s.send(protocol::join(&format!("room-{}", self.room)));
        // A server that is not a chat server never says JOINED.
        s.set_timer(self.shared.opts.load.drain_timeout);
    }

    fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
        match protocol::from_server(id, body) {
            Ok(FromServer::Joined { .. }) if !self.joined => {
                self.joined = true;
                if self.shared.joined.fetch_add(1, Ordering::AcqRel) + 1 == self.shared.opts.load.connections
                {
                    self.shared
                        .go_us
                        .store(self.shared.now_us() + 10_000, Ordering::Release);
                }
                s.set_timer(Duration::from_millis(1));
            }
            Ok(FromServer::Msg { text, .. }) => {
                self.delivered(text);
                if self.drain_until.is_some() && self.complete() {
                    s.close();
                }
            }
            Ok(other) => self.problem(format!("unexpected {other:?}")),
            Err(e) => self.problem(e),
        }
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        if let Some(until) = self.drain_until {
            if self.complete() || Instant::now() >= until {
                s.close();
            } else {
                s.set_timer(Duration::from_millis(5));
            }
            return;
        }
        if !self.joined {
            let waited = self.shared.opts.load.drain_timeout;
            self.failure = Some(format!(
                "member {}: no JOINED from the server within {waited:?} (is it a chat server, `serve --app chat`?)",
                self.index
            ));
            return s.close();
        }
        if !self.saying {
            // Waiting for every member to join; a member that ended
            // without joining never will, and then nobody starts.
            if self.shared.joined.load(Ordering::Acquire) < self.shared.opts.load.connections {
                if self.shared.should_stop(0, self.shared.now_us())
                    || self.shared.never_joined.load(Ordering::Acquire) > 0
                {
                    return self.stop_saying(s);
                }
                s.set_timer(Duration::from_millis(1));
                return;
            }
            self.saying = true;
            self.due_us = self.shared.go_us.load(Ordering::Acquire) + self.offset_us();
        }
        self.say_due(s);
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        report::local_leave(&self.shared.histogram);
        if !self.joined {
            self.shared.never_joined.fetch_add(1, Ordering::AcqRel);
        }
        self.publish_said();
        let mut guard = self.shared.summary.lock().unwrap_or_else(|p| p.into_inner());
        let (sum, done) = &mut *guard;
        sum.joined += self.joined as u64;
        sum.messages += self.said;
        sum.deliveries += self.received;
        sum.misdelivered += self.misdelivered;
        if let Some(p) = self.first_problem.take() {
            note_problem(&mut sum.error_lines, p);
        }
        let over = self.shared.over.load(Ordering::Relaxed);
        if let Some(line) = end_error(
            &format!("member {}", self.index),
            self.failure.take(),
            over,
            &reason,
        ) {
            sum.error(line);
        }
        *done += 1;
        self.shared.done.notify_all();
    }
}

/// Runs the chat load until every member is done (said its count or the
/// duration, and received what its room said, or the drain timeout), or
/// `stop` is set. Fails only if the client cannot start.
pub fn run(opts: &ChatOptions, stop: Arc<AtomicBool>) -> io::Result<ChatSummary> {
    opts.check()?;
    let client = opts.load.start_client::<Packets<Member>>()?;
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        stop,
        start: Instant::now(),
        go_us: AtomicU64::new(0),
        joined: AtomicUsize::new(0),
        said: (0..opts.load.connections).map(|_| AtomicU64::new(0)).collect(),
        done_saying: AtomicUsize::new(0),
        measured: AtomicU64::new(0),
        summary: Mutex::new((ChatSummary::default(), 0)),
        histogram: Mutex::new(new_histogram()),
        done: Condvar::new(),
        never_joined: AtomicUsize::new(0),
        over: AtomicBool::new(false),
    });
    for index in 0..opts.load.connections {
        let shared = shared.clone();
        let addr = opts.addrs[index % opts.addrs.len()];
        client.connect_later(addr, move || {
            Packets::new(Member::new(index, shared)).max_packet(MAX_PACKET)
        })?;
    }
    // Measure between the warmup's end and the end of saying; stop at the
    // run's hard end whatever the server does.
    let mut hard_end = HardEnd::new(&opts.load, shared.start);
    let (mut window, mut usage_from, mut measured_from) = ((None, None), None, 0);
    let mut guard = shared.summary.lock().unwrap_or_else(|p| p.into_inner());
    while guard.1 < opts.load.connections {
        guard = shared
            .done
            .wait_timeout(guard, Duration::from_millis(20))
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if hard_end.passed(Instant::now(), shared.stop.load(Ordering::Relaxed)) {
            shared.over.store(true, Ordering::Relaxed);
            break;
        }
        let go = shared.go_us.load(Ordering::Acquire);
        if go == 0 {
            continue;
        }
        let now = Instant::now();
        if window.0.is_none() && shared.now_us() >= go + opts.load.warmup.as_micros() as u64 {
            window.0 = Some(now);
            usage_from = server_usage(opts.load.server_pid);
            measured_from = shared.measured.load(Ordering::Relaxed);
        }
        if window.0.is_some() && window.1.is_none() && shared.all_said() {
            window.1 = Some((
                now,
                shared.measured.load(Ordering::Relaxed),
                server_usage(opts.load.server_pid),
            ));
        }
    }
    drop(guard);
    // Every member has ended, or is closed now (past the hard end).
    client.shutdown(Duration::ZERO)?;
    let mut summary = shared.summary.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
    summary.addr = opts
        .addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    summary.connections = opts.load.connections;
    summary.rooms = opts.rooms;
    let said: Vec<u64> = shared.said.iter().map(|s| s.load(Ordering::Acquire)).collect();
    summary.expected_deliveries = (0..opts.rooms)
        .map(|r| {
            let members = (opts.load.connections - r).div_ceil(opts.rooms) as u64;
            let room_said: u64 = said.iter().skip(r).step_by(opts.rooms).sum();
            room_said * members
        })
        .sum();
    summary.lost = summary.expected_deliveries.saturating_sub(summary.deliveries);
    if let (Some(from), Some((to, measured_to, usage_to))) = (window.0, window.1) {
        summary.window_secs = (to - from).as_secs_f64();
        summary.measured_deliveries = measured_to - measured_from;
        summary.deliveries_per_sec = summary.measured_deliveries as f64 / summary.window_secs.max(1e-9);
        if let (Some(a), Some(b)) = (usage_from, usage_to) {
            summary.server = Some(ServerUsage::between(
                a,
                b,
                summary.measured_deliveries,
                summary.window_secs,
            ));
        }
    }
    summary.latency = Latency::from_histogram(&shared.histogram.lock().unwrap_or_else(|p| p.into_inner()));
    summary.elapsed_secs = shared.start.elapsed().as_secs_f64();
    if !opts.load.warmup.is_zero() && summary.measured_deliveries == 0 && summary.deliveries > 0 {
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
    fn texts_carry_sender_number_and_time() {
        let t = text(42, 7, 1_234_567, 40);
        assert_eq!(t.len(), 40);
        assert_eq!(parse(&t), Some((42, 7, 1_234_567)));
        assert_eq!(text(1, 2, 3, 10).len(), STAMP, "never shorter than the stamp");
        assert_eq!(parse("hello"), None);
    }
}
