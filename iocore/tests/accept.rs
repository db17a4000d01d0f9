//! Accept strategies on every engine: the hand-off (one listener dealing
//! connections out to all workers in turn) serves, limits and stops like
//! the per-worker listeners.

use std::time::Duration;

use iocore::{Accept, CloseKind, EngineKind};
use iocore_testkit::*;

/// Connections accepted one after another go to the workers in turn
/// (exactly), every session echoes on whichever worker it lives, and each
/// ends once.
fn hand_off_deals_connections_to_every_worker_in_turn(engine: EngineKind) {
    const WORKERS: usize = 3;
    const CONNS: usize = 30;
    let (events, factory) = recorded(|| Echo);
    let server = server(engine)
        .threads(WORKERS)
        .accept(Accept::HandOff)
        .start(factory)
        .unwrap();
    let mut rng = Rng::new(11);
    let mut streams = Vec::new();
    for i in 0..CONNS {
        let mut s = connect(server.local_addr());
        let data = rng.bytes(1 + i * 1000);
        write_all(&mut s, &data).unwrap();
        assert!(read_exact(&mut s, data.len()) == data, "connection {i}");
        streams.push(s);
    }
    let workers = events.workers.lock().unwrap().clone();
    let expected: Vec<usize> = (0..CONNS).map(|i| i % WORKERS).collect();
    assert_eq!(workers, expected, "dealt in turn, acceptor included");
    // All still open on their workers: talk to each again.
    for (i, s) in streams.iter_mut().enumerate() {
        write_all(s, &[i as u8; 100]).unwrap();
        assert_eq!(read_exact(s, 100), [i as u8; 100]);
    }
    assert_eq!(server.stats().live_sessions, CONNS as u64);
    drop(streams);
    let closed = events.wait_closed(CONNS);
    assert!(closed.iter().all(|k| *k == CloseKind::PeerClosed), "{closed:?}");
    wait_until("no live sessions", || server.stats().live_sessions == 0);
    assert_eq!(server.stats().accepted, CONNS as u64);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// `max_sessions` holds across workers with the hand-off, and a graceful
/// stop ends the sessions on every worker with `ServerShutdown` and closes
/// the one listener.
fn hand_off_enforces_limits_and_stops_every_worker(engine: EngineKind) {
    let (events, factory) = recorded(|| Echo);
    let server = server(engine)
        .threads(2)
        .accept(Accept::HandOff)
        .max_sessions(4)
        .start(factory)
        .unwrap();
    let addr = server.local_addr();
    let mut streams: Vec<_> = (0..4).map(|_| connect(addr)).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        write_all(s, &[i as u8; 10]).unwrap();
        assert_eq!(read_exact(s, 10), [i as u8; 10]);
    }
    let mut workers = events.workers.lock().unwrap().clone();
    workers.sort();
    assert_eq!(workers, [0, 0, 1, 1]);
    // The fifth is refused (reset or closed) wherever it was dealt.
    let mut extra = connect(addr);
    let _ = write_all(&mut extra, b"x");
    let (back, _) = read_to_end(&mut extra);
    assert!(back.is_empty(), "over the limit: no echo");
    wait_until("rejection counted", || server.stats().rejected == 1);
    assert_eq!(server.stats().live_sessions, 4);

    server.stop(Duration::from_secs(10));
    wait_until("listener closed", || std::net::TcpStream::connect(addr).is_err());
    for s in &mut streams {
        let (rest, err) = read_to_end(s);
        assert!(rest.is_empty() && err.is_none(), "clean FIN on stop");
    }
    server.join().unwrap();
    assert_eq!(events.closed(), [CloseKind::ServerShutdown; 4]);
}

/// Asking for per-worker listeners where the OS has no SO_REUSEPORT is a
/// clear error; where it has, the strategy serves.
fn reuse_port_is_refused_clearly_where_missing(engine: EngineKind) {
    let built = server(engine).threads(2).accept(Accept::ReusePort).start(|| Echo);
    if cfg!(windows) {
        let err = built.err().expect("no SO_REUSEPORT on Windows");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("hand-off"), "{err}");
    } else {
        let server = built.unwrap();
        let mut s = connect(server.local_addr());
        write_all(&mut s, b"ping").unwrap();
        assert_eq!(read_exact(&mut s, 4), b"ping");
        server.shutdown(Duration::from_secs(5)).unwrap();
    }
}

engine_suite!(
    hand_off_deals_connections_to_every_worker_in_turn,
    hand_off_enforces_limits_and_stops_every_worker,
    reuse_port_is_refused_clearly_where_missing,
);
