//! The server under resource pressure, run as a user runs it (Linux): out
//! of file descriptors it neither spins nor leaves clients hanging and
//! recovers by itself; a client that writes without reading cannot grow
//! the server's memory (measured from its RSS), on every receive mode.
#![cfg(target_os = "linux")]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use iocore::EngineKind;
use iocore_cli::usage::usage;
use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

/// What became of a connection made while the server was out of
/// descriptors.
#[derive(Debug, PartialEq)]
enum Fate {
    /// It is a session: its bytes come back.
    Served,
    /// The server closed it at once (FIN or reset).
    Closed,
}

fn fate(s: &mut TcpStream) -> Fate {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = s.write_all(b"x");
    let mut b = [0; 1];
    loop {
        return match s.read(&mut b) {
            Ok(1) => Fate::Served,
            Ok(_) => Fate::Closed,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => Fate::Closed,
            Err(e) => panic!("the connection was left hanging: {e}"),
        };
    }
}

/// CPU time (user + system) of process `pid` in µs.
fn cpu_us(pid: u32) -> u64 {
    usage(pid).unwrap().cpu_us
}

/// With 64 descriptors and 200 clients: sessions up to the limit are
/// served, every other client sees its connection closed at once (the
/// spare-descriptor trick) instead of hanging in the backlog, the server
/// does not spin meanwhile, says so once, and serves again once the
/// clients are gone.
fn out_of_descriptors_closes_excess_clients_and_recovers(engine: EngineKind, env: &[(&str, &str)]) {
    let args = ["--engine", engine.name(), "--threads", "1"];
    let server = CliServer::start_with_nofile(BIN, 64, &args, env);
    let mut existing: Vec<TcpStream> = (0..5).map(|_| connect(server.addr)).collect();
    for s in &mut existing {
        s.write_all(b"hi").unwrap();
        assert_eq!(read_exact(s, 2), b"hi");
    }
    let cpu_before = cpu_us(server.pid());
    let wall = Instant::now();
    let mut excess: Vec<TcpStream> = (0..200).map(|_| connect(server.addr)).collect();
    let fates: Vec<Fate> = excess.iter_mut().map(fate).collect();
    let served = fates.iter().filter(|f| **f == Fate::Served).count();
    let closed = fates.len() - served;
    assert!(served > 0 && closed > 100, "{served} served, {closed} closed");
    // Hold the served ones (the server stays at its limit) for a second.
    std::thread::sleep(Duration::from_secs(1));
    let cpu = cpu_us(server.pid()) - cpu_before;
    let wall = wall.elapsed().as_micros() as u64;
    assert!(cpu * 2 < wall, "server CPU {cpu} µs over {wall} µs: spinning");
    // Existing sessions keep echoing, at the limit.
    for s in &mut existing {
        s.write_all(b"still").unwrap();
        assert_eq!(read_exact(s, 5), b"still");
    }
    drop(excess);
    // Once the clients are gone, new connections are served again. (Until
    // the server has seen them go, a new one may still be shed: counted.)
    let attempts = std::cell::Cell::new(0usize);
    assert!(
        try_wait(|| {
            attempts.set(attempts.get() + 1);
            let mut s = connect(server.addr);
            s.write_all(b"again").is_ok() && {
                let mut b = [0; 5];
                matches!(s.read(&mut b), Ok(5)) && &b == b"again"
            }
        }),
        "not served again after the shortage"
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}");
    let warnings = log.iter().filter(|l| l.contains("lack of resources")).count();
    assert_eq!(warnings, 1, "one warning per shortage: {log:?}");
    let recovered = log
        .iter()
        .find(|l| l.contains("accepting again"))
        .unwrap_or_else(|| panic!("no recovery line: {log:?}"));
    let shed: usize = recovered
        .split("closed_at_once=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // Every closed client was counted, and at most the attempts to come
    // back that were not served besides.
    let retries = attempts.get() - 1;
    assert!(
        (closed..=closed + retries).contains(&shed),
        "{shed} shed, {closed} clients closed, {retries} retries"
    );
}

/// A client writes 64 MiB without reading for 3 s, then reads it all:
/// every byte comes back, and meanwhile the server's resident memory grows
/// by no more than its high watermark plus a receive buffer (and a little
/// allocator slack) — not by the cap, 4 MiB, a queueing server would
/// reach.
fn a_non_reader_leaves_the_server_rss_bounded(engine: EngineKind, env: &[(&str, &str)]) {
    const TOTAL: u64 = 64 << 20;
    let args = [
        "--engine",
        engine.name(),
        "--threads",
        "1",
        "--max-send-queue",
        "4MiB",
        "--send-high-watermark",
        "64KiB",
        "--max-recv-buffer",
        "64KiB",
    ];
    let server = CliServer::start(BIN, &args, env);
    // Warm up: touch the engine's receive buffers (the whole provided
    // buffer ring on uring) with a reader that keeps up.
    let mut warm = connect(server.addr);
    let mut w = warm.try_clone().unwrap();
    let t = std::thread::spawn(move || write_pattern(&mut w, 5, 16 << 20));
    read_pattern(&mut warm, 5, 16 << 20);
    t.join().unwrap().unwrap();
    drop(warm);
    std::thread::sleep(Duration::from_millis(200));
    let before = usage(server.pid()).unwrap().rss_kib;

    let mut client = connect(server.addr);
    let mut writer = client.try_clone().unwrap();
    let w = std::thread::spawn(move || write_pattern(&mut writer, 6, TOTAL));
    let start = Instant::now();
    let mut most = before;
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        most = most.max(usage(server.pid()).unwrap().rss_kib);
    }
    read_pattern(&mut client, 6, TOTAL);
    w.join().unwrap().unwrap();
    let grown = most.saturating_sub(before);
    assert!(
        grown <= 64 + 64 + 1024,
        "the server's RSS grew by {grown} KiB while a client did not read"
    );
    drop(client);
    assert!(server.stop().0.success());
}

#[test]
fn epoll_out_of_descriptors() {
    require(EngineKind::Epoll);
    out_of_descriptors_closes_excess_clients_and_recovers(EngineKind::Epoll, &[]);
}

#[test]
fn uring_out_of_descriptors() {
    require(EngineKind::Uring);
    out_of_descriptors_closes_excess_clients_and_recovers(EngineKind::Uring, &[]);
}

#[test]
fn epoll_non_reader_rss() {
    require(EngineKind::Epoll);
    a_non_reader_leaves_the_server_rss_bounded(EngineKind::Epoll, &[]);
}

#[test]
fn uring_non_reader_rss() {
    require(EngineKind::Uring);
    a_non_reader_leaves_the_server_rss_bounded(EngineKind::Uring, &[]);
}

/// The fallback of kernels without capped multishot receives (forced).
#[test]
fn uring_single_shot_non_reader_rss() {
    require(EngineKind::Uring);
    a_non_reader_leaves_the_server_rss_bounded(EngineKind::Uring, &[("IOCORE_URING_SINGLESHOT", "1")]);
}
