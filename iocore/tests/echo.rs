//! The WSAEventSelect seed's echo server, at scale: integrity under many
//! concurrent sessions, and partial sends when a peer stops reading.

use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use iocore::{CloseKind, EngineKind};
use iocore_testkit::*;

/// ≥ 200 concurrent clients send random-size chunks (1 B – 64 KiB), ≥ 20 MiB
/// in all; every echoed byte is checked in order.
fn echo_integrity_many_clients(engine: EngineKind) {
    const CLIENTS: usize = 200;
    const TOTAL: usize = 20 * 1024 * 1024;
    let (events, factory) = recorded(|| Echo);
    let server = server(engine).max_send_queue(256 * 1024).start(factory).unwrap();
    let addr = server.local_addr();
    // The clients and this thread: traffic starts once the server holds
    // every session at once (beyond one wait's 64 handles on the Windows
    // event engines).
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut s = connect(addr);
                    barrier.wait(); // all live at once
                    let mut rng = Rng::new(i as u64 + 1);
                    let mut sent = 0;
                    while sent < TOTAL / CLIENTS + 1 {
                        let len = rng.range(1, 64 * 1024);
                        let chunk = rng.bytes(len);
                        s.write_all(&chunk).unwrap();
                        let back = read_exact(&mut s, chunk.len());
                        assert!(back == chunk, "client {i}: echo differs at offset {sent}");
                        sent += chunk.len();
                    }
                    sent
                })
                .unwrap()
        })
        .collect();
    wait_until("every client is a live session", || {
        server.stats().live_sessions == CLIENTS as u64
    });
    barrier.wait();
    let total: usize = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    assert!(total >= TOTAL, "sent {total} bytes");
    let closed = events.wait_closed(CLIENTS);
    assert!(closed.iter().all(|k| *k == CloseKind::PeerClosed), "{closed:?}");
    let stats = server.stats();
    assert_eq!(stats.accepted, CLIENTS as u64);
    assert_eq!(stats.bytes_received, total as u64);
    assert_eq!(stats.bytes_sent, total as u64);
    wait_until("no live sessions", || server.stats().live_sessions == 0);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// A client stops reading while the server has several MiB queued for it
/// (watermarks raised so that backpressure lets the queue grow): the server
/// keeps serving others, does not spin on the full socket, and when the
/// client reads again every byte arrives in order.
fn partial_sends_resume_without_busy_loop(engine: EngineKind) {
    const STALLED: usize = 16 * 1024 * 1024;
    let (events, factory) = recorded(|| Echo);
    let server = server(engine)
        .max_send_queue(32 * 1024 * 1024)
        .send_watermarks(32 * 1024 * 1024, 16 * 1024 * 1024)
        .start(factory)
        .unwrap();
    let addr = server.local_addr();
    let mut stalled = connect(addr);
    let data = Rng::new(7).bytes(STALLED);
    // Write everything without reading: the echo backs up into the
    // server's queue.
    let mut writer = stalled.try_clone().unwrap();
    let payload = data.clone();
    let w = std::thread::spawn(move || writer.write_all(&payload).unwrap());
    w.join().unwrap();
    wait_until("server received everything", || {
        server.stats().bytes_received == STALLED as u64
    });
    let queued = server.stats().queued_bytes;
    assert!(
        queued >= 4 * 1024 * 1024,
        "only {queued} bytes queued: the stall did not happen"
    );

    // While stalled, the server must wait for writability, not retry.
    let before = server.stats().writes;
    std::thread::sleep(Duration::from_millis(300));
    let during = server.stats().writes - before;
    assert!(during <= 2, "{during} write attempts during the stall: busy loop");

    // Others are still served.
    let mut other = connect(addr);
    other.write_all(b"still serving").unwrap();
    assert_eq!(read_exact(&mut other, 13), b"still serving");
    drop(other);

    // Resume: everything arrives, in order.
    let mut back = vec![0; STALLED];
    stalled.read_exact(&mut back).unwrap();
    assert!(back == data, "stalled client's echo differs");
    wait_until("queue drained", || server.stats().queued_bytes == 0);
    drop(stalled);
    events.wait_closed(2);
    assert!(events.closed().iter().all(|k| *k == CloseKind::PeerClosed));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

engine_suite!(
    echo_integrity_many_clients,
    partial_sends_resume_without_busy_loop
);
