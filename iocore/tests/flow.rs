//! Flow control over real sockets, on every engine: a peer that does not
//! read cannot grow the server's memory (read backpressure between the
//! send watermarks), a handler can pause and resume its input, peers with
//! tiny receive windows get every byte, a slow but steady reader outlasts
//! the stall timeout (the kernel's acknowledged count decides), and a
//! handler can name why it closes a session. The stall rule's timing
//! itself is tested on the simulated engine (tests/policy.rs).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iocore::{CloseKind, CloseReason, EngineKind, Handler, Limits, Session};
use iocore_testkit::*;

/// A client writes 64 MiB to the echo server without reading for 5 s,
/// then reads: the server stops reading it (TCP pushes back on the
/// client) instead of queueing its replies, holds no more than the limits
/// for it, does not spin while it waits, and every byte comes back in
/// order.
fn backpressure_holds_a_non_reader_and_delivers_every_byte(engine: EngineKind) {
    const TOTAL: u64 = 64 << 20;
    const STALL: Duration = Duration::from_secs(5);
    let limits = Limits::default();
    let (events, factory) = recorded(|| Echo);
    let server = server(engine).limits(limits.clone()).start(factory).unwrap();
    let mut client = connect(server.local_addr());
    let mut writer = client.try_clone().unwrap();
    let w = std::thread::spawn(move || write_pattern(&mut writer, 1, TOTAL));

    // The server pauses the session and the writer blocks.
    wait_until("the session paused", || server.stats().paused_sessions == 1);
    let mut settled = server.stats();
    wait_until("input stopped", || {
        std::thread::sleep(Duration::from_millis(200));
        let now = server.stats();
        let quiet = now.bytes_received == settled.bytes_received;
        settled = now;
        quiet
    });
    let stall_start = Instant::now();
    let held = |s: &iocore::Stats| s.bytes_received - s.bytes_sent;
    let bound = (limits.max_send_queue + limits.max_recv_buffer) as u64;
    let mut most_held = held(&settled);
    while stall_start.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(100));
        let s = server.stats();
        assert_eq!(s.paused_sessions, 1, "paused for the whole stall");
        assert!(s.queued_bytes <= limits.max_send_queue as u64);
        most_held = most_held.max(held(&s));
    }
    let after = server.stats();
    assert!(
        most_held <= bound,
        "the server held {most_held} bytes of the session, over max_send_queue + max_recv_buffer ({bound})"
    );
    // No busy loop: no read attempts, and only the engine's own periodic
    // wake-ups (a loop that spun would turn thousands of times).
    let reads = after.reads - settled.reads;
    let turns = after.loop_turns - settled.loop_turns;
    assert!(reads <= 2, "{reads} reads while paused");
    let secs = STALL.as_secs();
    assert!(
        turns <= 25 * secs + 10,
        "{turns} loop turns in {secs} s while paused"
    );
    assert!(
        after.bytes_received < TOTAL / 2,
        "the client really was held back"
    );

    // Now read: everything comes back, in order, and nothing was closed.
    read_pattern(&mut client, 1, TOTAL);
    w.join().unwrap().expect("the writer finished");
    assert_eq!(events.closed_count(), 0);
    // The client can have every byte before the engine has handled the
    // last send's completion (and counted it).
    wait_until("the last send counted", || server.stats().bytes_sent == TOTAL);
    assert_eq!(server.stats().bytes_received, TOTAL);
    wait_until("resumed", || server.stats().paused_sessions == 0);
    drop(client);
    assert_eq!(events.wait_closed(1), [CloseKind::PeerClosed]);
}

/// Twelve peers with a 4 KiB receive buffer (a phone on a bad link) each
/// write 4 MiB to the echo server and read nothing until the server holds
/// them back (or 3 s), then read while they write the rest, half-close
/// and read to the end: every byte comes back in order, and every session
/// ends because its peer closed it. Three rounds. (The io_uring engine
/// closed such sessions as an I/O error when the kernel gave a send back
/// with EAGAIN: a round met it about four times in five.)
fn small_window_peers_get_every_byte_echoed(engine: EngineKind) {
    const PEERS: u64 = 12;
    const TOTAL: u64 = 4 << 20;
    const ROUNDS: u64 = 3;
    let (events, factory) = recorded(|| Echo);
    let server = server(engine).start(factory).unwrap();
    for round in 0..ROUNDS {
        let clients: Vec<_> = (0..PEERS)
            .map(|peer| {
                let seed = round * PEERS + peer;
                let client = connect_with_rcvbuf(server.local_addr(), 4096);
                let mut writer = client.try_clone().unwrap();
                let w = std::thread::spawn(move || {
                    write_pattern(&mut writer, seed, TOTAL)?;
                    writer.shutdown(std::net::Shutdown::Write)
                });
                (seed, client, w)
            })
            .collect();
        let start = Instant::now();
        while server.stats().paused_sessions < PEERS && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let readers: Vec<_> = clients
            .into_iter()
            .map(|(seed, mut client, w)| {
                std::thread::spawn(move || {
                    read_pattern(&mut client, seed, TOTAL);
                    let (rest, err) = read_to_end(&mut client);
                    assert!(err.is_none(), "stream {seed}: a clean end, not {err:?}");
                    assert!(
                        rest.is_empty(),
                        "stream {seed}: {} bytes past the end",
                        rest.len()
                    );
                    w.join().unwrap().expect("the writer finished");
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        let closed = events.wait_closed(((round + 1) * PEERS) as usize);
        let reasons = events.reasons.lock().unwrap().clone();
        assert!(
            closed.iter().all(|k| *k == CloseKind::PeerClosed),
            "every session ends as its peer closed it: {reasons:?}"
        );
    }
}

/// Echoes lines; "pause" pauses its input for 300 ms (resumed by a timer).
/// Counts any `on_recv` while paused.
struct Pausing {
    paused_at: Arc<Mutex<Option<Instant>>>,
    recv_while_paused: Arc<AtomicUsize>,
}

impl Handler for Pausing {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        if s.is_recv_paused() {
            self.recv_while_paused.fetch_add(1, Ordering::SeqCst);
        }
        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        if &data[..nl] == b"pause" {
            s.pause_recv();
            s.set_timer(Duration::from_millis(300));
            *self.paused_at.lock().unwrap() = Some(Instant::now());
        }
        let _ = s.send_copy(&data[..=nl]);
        nl + 1
    }
    fn on_timer(&mut self, s: &mut Session<'_>) {
        s.resume_recv();
    }
}

/// The handler pauses its input in the middle of a read and resumes it
/// later: no `on_recv` comes in between, the engine stops reading (bytes
/// wait in the kernel), and after the resume every byte arrives in order.
fn pause_and_resume_from_the_handler(engine: EngineKind) {
    let paused_at = Arc::new(Mutex::new(None));
    let recv_while_paused = Arc::new(AtomicUsize::new(0));
    let (p, r) = (paused_at.clone(), recv_while_paused.clone());
    let (events, factory) = recorded(move || Pausing {
        paused_at: p.clone(),
        recv_while_paused: r.clone(),
    });
    let server = server(engine).start(factory).unwrap();
    let mut client = connect(server.local_addr());
    // "pause" and the first lines in one write: the rest of that read is
    // kept while paused.
    let mut text = b"first\npause\n".to_vec();
    for i in 0..20_000 {
        text.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    let mut writer = client.try_clone().unwrap();
    let sent = text.clone();
    let w = std::thread::spawn(move || writer.write_all(&sent));
    wait_until("paused", || paused_at.lock().unwrap().is_some());
    let echoed = read_exact(&mut client, text.len());
    w.join().unwrap().unwrap();
    assert!(echoed == text, "every line echoed, in order");
    let waited = paused_at.lock().unwrap().unwrap().elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the rest came after the resume"
    );
    assert_eq!(recv_while_paused.load(Ordering::SeqCst), 0);
    drop(client);
    assert_eq!(events.wait_closed(1), [CloseKind::PeerClosed]);
}

/// A peer that reads steadily but slowly (4 KiB every 10 ms) from an
/// echo that holds megabytes for it: the kernel makes room in the
/// session's socket all along, but wakes a writer only once a good part of
/// its buffer is free, which at this rate takes longer than the 2 s stall
/// timeout. The session is not closed: the stall is judged from what the
/// peer acknowledged, not from the engine's writable reports. After three
/// timeouts the peer reads at full speed and gets every byte in order.
fn a_slow_steady_reader_outlasts_the_stall_timeout(engine: EngineKind) {
    const TOTAL: u64 = 16 << 20;
    const STALL: Duration = Duration::from_secs(2);
    let (events, factory) = recorded(|| Echo);
    let server = server(engine)
        .send_stall_timeout(Some(STALL))
        .start(factory)
        .unwrap();
    let mut client = connect(server.local_addr());
    let mut writer = client.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        write_pattern(&mut writer, 3, TOTAL)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut buf = vec![0; 64 * 1024];
    let mut got = 0u64;
    let slow_until = Instant::now() + 3 * STALL;
    while got < TOTAL {
        let slow = Instant::now() < slow_until;
        let want = if slow { 4096 } else { buf.len() };
        let n = match std::io::Read::read(&mut client, &mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "read failed after {got} of {TOTAL} bytes: {e} ({:?})",
                events.reasons.lock().unwrap()
            ),
        };
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, pattern_byte(3, got + i as u64), "byte {}", got + i as u64);
        }
        got += n as u64;
        if slow {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let reasons = events.reasons.lock().unwrap().clone();
    assert_eq!(got, TOTAL, "every byte came back; closes: {reasons:?}");
    w.join().unwrap().expect("the writer finished");
    let (rest, err) = read_to_end(&mut client);
    assert!(err.is_none() && rest.is_empty(), "a clean end: {err:?}");
    assert_eq!(events.wait_closed(1), [CloseKind::PeerClosed]);
}

/// `close_with` and `abort_with`: the handler's reason reaches
/// `on_disconnected` exactly once and the counters by kind; close_with
/// flushes what was queued then sends FIN, abort_with resets.
fn close_with_and_abort_with_name_the_reason(engine: EngineKind) {
    struct Strict;
    impl Handler for Strict {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            let _ = s.send_copy(b"seen\n");
            match data {
                b"bad" => s.close_with(CloseReason::protocol("'bad' is not a command")),
                _ => s.abort_with(CloseReason::custom("banned")),
            }
            data.len()
        }
    }
    let (events, factory) = recorded(|| Strict);
    let server = server(engine).start(factory).unwrap();
    let mut bad = connect(server.local_addr());
    bad.write_all(b"bad").unwrap();
    let (data, err) = read_to_end(&mut bad);
    assert_eq!(data, b"seen\n", "queued reply flushed before FIN");
    assert!(err.is_none(), "FIN, not reset: {err:?}");
    assert_eq!(events.wait_closed(1), [CloseKind::ProtocolViolation]);
    let mut banned = connect(server.local_addr());
    banned.write_all(b"other").unwrap();
    let (_, err) = read_to_end(&mut banned);
    let reset = err.map(|e| e.kind()) == Some(std::io::ErrorKind::ConnectionReset);
    assert!(reset || cfg!(windows), "abort_with resets");
    assert_eq!(events.wait_closed(2)[1], CloseKind::Custom);
    let reasons = events.reasons.lock().unwrap().clone();
    assert_eq!(
        reasons,
        [
            "protocol violation: 'bad' is not a command",
            "closed by the handler: banned"
        ]
    );
    drop(bad);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(events.closed_count(), 2, "each reason reported once");
    let stats = server.stats();
    assert_eq!(stats.closed(CloseKind::ProtocolViolation), 1);
    assert_eq!(stats.closed(CloseKind::Custom), 1);
}

engine_suite!(
    backpressure_holds_a_non_reader_and_delivers_every_byte,
    small_window_peers_get_every_byte_echoed,
    pause_and_resume_from_the_handler,
    a_slow_steady_reader_outlasts_the_stall_timeout,
    close_with_and_abort_with_name_the_reason,
);
