//! The client of the overlapped-event seed, grown up: it connects (without
//! blocking) to `addr` and sends a `size`-byte message beginning with
//! "Hello World" every `interval`, over `connections` sessions, for `count`
//! messages each or for `duration`. With `verify` it checks that every
//! byte echoed back is the byte it sent at that position, and reports
//! mismatched and lost bytes.
//!
//! Message `k` of connection `c` is "Hello World" followed by bytes that
//! depend on `c`, `k` and the position, so a dropped, repeated, reordered
//! or altered byte shows up as a mismatch, not just a wrong count.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::engine::EngineKind;
use crate::service::Client;
use crate::session::{CloseReason, Handler, Session};

const HELLO: &[u8] = b"Hello World";
/// Most error lines kept in a [`Summary`].
const MAX_ERRORS: usize = 20;

/// What the client does.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Server address.
    pub addr: SocketAddr,
    /// I/O model.
    pub engine: EngineKind,
    /// Worker threads.
    pub threads: usize,
    /// Sessions opened at once.
    pub connections: usize,
    /// Bytes per message (the seed's 100).
    pub size: usize,
    /// Pause between messages on one session (the seed's 1 s).
    pub interval: Duration,
    /// Messages per session; `None`: until `duration` or a stop.
    pub count: Option<u64>,
    /// Stop sending after this long; `None`: until `count` or a stop.
    pub duration: Option<Duration>,
    /// Check every echoed byte.
    pub verify: bool,
    /// With `verify`: how long to wait for the last echoes after sending
    /// stopped before counting the missing bytes as lost.
    pub drain_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 7777)),
            engine: EngineKind::Auto,
            threads: 1,
            connections: 1,
            size: 100,
            interval: Duration::from_secs(1),
            count: None,
            duration: None,
            verify: false,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
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
    /// Whether echoes were checked.
    pub verify: bool,
    /// Received bytes that differed from what was sent at that position,
    /// or arrived beyond what was sent.
    pub mismatches: u64,
    /// Sent bytes never echoed back (with `verify`).
    pub lost_bytes: u64,
    /// Sessions that failed or ended other than by the client's own close.
    pub errors: u64,
    /// The first few error descriptions.
    pub error_lines: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// No errors, and with `verify` no mismatched and no lost byte.
    pub fn ok(&self) -> bool {
        self.errors == 0
            && self.mismatches == 0
            && self.lost_bytes == 0
            && self.connected == self.connections as u64
    }

    fn error(&mut self, line: String) {
        self.errors += 1;
        if self.error_lines.len() < MAX_ERRORS {
            self.error_lines.push(line);
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "connections: {} requested, {} connected",
            self.connections, self.connected
        )?;
        writeln!(
            f,
            "messages:    {} sent ({:.0}/s)",
            self.messages,
            self.messages as f64 / secs
        )?;
        writeln!(
            f,
            "bytes:       {} sent, {} received",
            self.bytes_sent, self.bytes_received
        )?;
        if self.verify {
            writeln!(
                f,
                "verify:      {} mismatched, {} lost",
                self.mismatches, self.lost_bytes
            )?;
        }
        writeln!(f, "errors:      {}", self.errors)?;
        for line in &self.error_lines {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "elapsed:     {:.3}s — {}",
            secs,
            if self.ok() { "OK" } else { "FAILED" }
        )
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
    deadline: Option<Instant>,
    summary: Mutex<(Summary, usize)>,
    done: Condvar,
}

impl Shared {
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// One seed-client session.
struct SeedClient {
    index: usize,
    shared: Arc<Shared>,
    connected: bool,
    sent_msgs: u64,
    sent: u64,
    received: u64,
    mismatches: u64,
    first_mismatch: Option<String>,
    sending_done: bool,
}

impl SeedClient {
    fn send_next(&mut self, s: &mut Session<'_>) {
        let opts = &self.shared.opts;
        if self.shared.should_stop() || opts.count.is_some_and(|c| self.sent_msgs >= c) {
            return self.finish_sending(s);
        }
        if s.send(message(self.index, self.sent_msgs, opts.size)).is_err() {
            return;
        }
        self.sent_msgs += 1;
        self.sent += opts.size as u64;
        if opts.count.is_some_and(|c| self.sent_msgs >= c) {
            self.finish_sending(s);
        } else {
            s.set_timer(opts.interval);
        }
    }

    fn finish_sending(&mut self, s: &mut Session<'_>) {
        self.sending_done = true;
        if !self.shared.opts.verify || self.received >= self.sent {
            s.close();
        } else {
            s.set_timer(self.shared.opts.drain_timeout);
        }
    }
}

impl Handler for SeedClient {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.connected = true;
        self.send_next(s);
    }

    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        if self.shared.opts.verify {
            let size = self.shared.opts.size;
            for (i, &b) in data.iter().enumerate() {
                let at = self.received + i as u64;
                let want = (at < self.sent).then(|| expected_byte(self.index, at, size));
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
        if self.sending_done && self.received >= self.sent {
            s.close();
        }
        data.len()
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        if self.sending_done {
            // The drain timeout: what has not come back is lost.
            s.close();
        } else {
            self.send_next(s);
        }
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        let mut guard = self.shared.summary.lock().unwrap_or_else(|p| p.into_inner());
        let (sum, done) = &mut *guard;
        if self.connected {
            sum.connected += 1;
        }
        sum.messages += self.sent_msgs;
        sum.bytes_sent += self.sent;
        sum.bytes_received += self.received;
        sum.mismatches += self.mismatches;
        if let Some(m) = self.first_mismatch.take() {
            sum.error_lines.truncate(MAX_ERRORS - 1);
            sum.error_lines.push(m);
        }
        if self.shared.opts.verify {
            sum.lost_bytes += self.sent.saturating_sub(self.received);
        }
        if !matches!(reason, CloseReason::LocalClose) {
            sum.error(format!("connection {}: {reason}", self.index));
        }
        *done += 1;
        self.shared.done.notify_all();
    }
}

/// Runs the client until every session is done (count or duration reached
/// and, with `verify`, all echoes back) or `stop` is set; returns what
/// happened. Fails only if the client cannot start.
pub fn run(opts: &ClientOptions, stop: Arc<AtomicBool>) -> io::Result<Summary> {
    if opts.size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message size must be at least 1 byte",
        ));
    }
    if opts.connections == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connections must be at least 1",
        ));
    }
    let client = Client::builder()
        .engine(opts.engine)
        .threads(opts.threads)
        .start::<Box<dyn Handler>>()?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        stop,
        deadline: opts.duration.map(|d| start + d),
        summary: Mutex::new((
            Summary {
                connections: opts.connections,
                verify: opts.verify,
                ..Summary::default()
            },
            0,
        )),
        done: Condvar::new(),
    });
    for index in 0..opts.connections {
        let shared = shared.clone();
        client.connect(opts.addr, move || {
            Box::new(SeedClient {
                index,
                shared,
                connected: false,
                sent_msgs: 0,
                sent: 0,
                received: 0,
                mismatches: 0,
                first_mismatch: None,
                sending_done: false,
            }) as Box<dyn Handler>
        })?;
    }
    let mut guard = shared.summary.lock().unwrap_or_else(|p| p.into_inner());
    while guard.1 < opts.connections {
        guard = shared
            .done
            .wait_timeout(guard, Duration::from_millis(100))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    let mut summary = guard.0.clone();
    drop(guard);
    client.shutdown(Duration::from_secs(1))?;
    summary.elapsed = start.elapsed();
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
