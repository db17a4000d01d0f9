//! Session lifecycle: the seed's TODOs (remove the session on FD_CLOSE and
//! on error), exactly-once `on_disconnected` with the right reason, the
//! graceful stop, and outbound sessions through the `Client` service.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iocore::{Client, CloseKind, CloseReason, ConnectError, EngineKind, Handler, Session};
use iocore_testkit::*;

fn peer_fin_closes_once_as_peer_closed(engine: EngineKind) {
    let (events, factory) = recorded(|| Echo);
    let server = server(engine).start(factory).unwrap();
    let mut s = connect(server.local_addr());
    s.write_all(b"last words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    // The echo of data sent before FIN still arrives, then the server's FIN.
    let (back, err) = read_to_end(&mut s);
    assert_eq!(back, b"last words");
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events.wait_closed(1), [CloseKind::PeerClosed]);
    wait_until("no live sessions", || server.stats().live_sessions == 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(events.closed_count(), 1, "on_disconnected exactly once");
    assert_eq!(events.connected.load(Ordering::SeqCst), 1);
}

/// How a peer's RST is reported: as a reset — except that the Windows
/// build runs under Wine here, which may report a reset as end of stream
/// (FD_CLOSE with error 0, then recv returns 0); Windows itself reports
/// WSAECONNRESET.
fn reset_kinds(_engine: EngineKind) -> &'static [CloseKind] {
    if cfg!(windows) {
        &[CloseKind::PeerReset, CloseKind::PeerClosed]
    } else {
        &[CloseKind::PeerReset]
    }
}

fn peer_reset_closes_once_as_peer_reset(engine: EngineKind) {
    let (events, factory) = recorded(|| Echo);
    let server = server(engine).start(factory).unwrap();
    let mut s = connect(server.local_addr());
    s.write_all(b"ping").unwrap();
    assert_eq!(read_exact(&mut s, 4), b"ping");
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s); // RST
    let closed = events.wait_closed(1);
    assert!(reset_kinds(engine).contains(&closed[0]), "{closed:?}");
    wait_until("no live sessions", || server.stats().live_sessions == 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(events.closed_count(), 1, "on_disconnected exactly once");
}

/// Many sessions end in both ways at once; each is reported exactly once.
fn mixed_fin_and_reset_each_reported_once(engine: EngineKind) {
    let (events, factory) = recorded(|| Echo);
    let server = server(engine).start(factory).unwrap();
    let mut streams: Vec<_> = (0..100).map(|_| connect(server.local_addr())).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(&[i as u8; 100]).unwrap();
    }
    for (i, mut s) in streams.into_iter().enumerate() {
        assert_eq!(read_exact(&mut s, 100), [i as u8; 100]);
        if i % 2 == 0 {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
    let closed = events.wait_closed(100);
    if reset_kinds(engine).len() == 1 {
        let resets = closed.iter().filter(|k| **k == CloseKind::PeerReset).count();
        let fins = closed.iter().filter(|k| **k == CloseKind::PeerClosed).count();
        assert_eq!((resets, fins), (50, 50), "{closed:?}");
    } else {
        assert!(
            closed.iter().all(|k| reset_kinds(engine).contains(k)),
            "{closed:?}"
        );
    }
    wait_until("no live sessions", || server.stats().live_sessions == 0);
    assert_eq!(server.stats().closed_total(), 100);
}

/// Stop: no new connections; queued data is delivered in full, then FIN;
/// every session ends with `ServerShutdown`.
fn graceful_stop_delivers_queued_data(engine: EngineKind) {
    const SIZE: usize = 16 * 1024 * 1024;
    let (events, factory) = recorded(|| Echo);
    let server = server(engine)
        .max_send_queue(64 * 1024 * 1024)
        // Let the echo queue grow (no backpressure): the stop must flush it.
        .send_watermarks(64 * 1024 * 1024, 32 * 1024 * 1024)
        .start(factory)
        .unwrap();
    let addr = server.local_addr();
    let mut idle = connect(addr);
    let mut busy = connect(addr);
    let data = Rng::new(3).bytes(SIZE);
    busy.write_all(&data).unwrap();
    wait_until("all received", || server.stats().bytes_received == SIZE as u64);
    assert!(server.stats().queued_bytes > 0, "echo should be backed up");

    server.stop(Duration::from_secs(60));
    wait_until("listener closed", || std::net::TcpStream::connect(addr).is_err());

    let (back, err) = read_to_end(&mut busy);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(back.len(), SIZE, "all queued bytes delivered before FIN");
    assert!(back == data);
    let (rest, err) = read_to_end(&mut idle);
    assert!(rest.is_empty() && err.is_none(), "idle session gets a clean FIN");
    drop((busy, idle));
    server.join().unwrap();
    assert_eq!(
        events.closed(),
        [CloseKind::ServerShutdown, CloseKind::ServerShutdown]
    );
}

/// A stop whose grace runs out resets what is left instead of hanging.
fn stop_deadline_resets_stuck_sessions(engine: EngineKind) {
    let (events, factory) = recorded(|| Echo);
    let server = server(engine)
        .max_send_queue(64 * 1024 * 1024)
        // Let the echo queue grow (no backpressure): the stop must flush it.
        .send_watermarks(64 * 1024 * 1024, 32 * 1024 * 1024)
        .start(factory)
        .unwrap();
    let mut stuck = connect(server.local_addr());
    stuck.write_all(&vec![1; 16 * 1024 * 1024]).unwrap();
    wait_until("all received", || {
        server.stats().bytes_received == 16 * 1024 * 1024
    });
    server.shutdown(Duration::from_millis(100)).unwrap();
    assert_eq!(events.closed(), [CloseKind::ServerShutdown]);
    let (back, _) = read_to_end(&mut stuck);
    assert!(
        back.len() < 16 * 1024 * 1024,
        "never read, so it cannot all have arrived"
    );
}

/// Outbound sessions: the same Handler API through `Client`; a failed
/// connect reports only `on_disconnected(ConnectFailed)`.
fn client_service_connects_and_reports_failures(engine: EngineKind) {
    struct Ping {
        log: Arc<Mutex<Vec<String>>>,
    }
    impl Handler for Ping {
        fn on_connected(&mut self, s: &mut Session<'_>) {
            self.log.lock().unwrap().push(format!("connected {}", s.id()));
            s.send_copy(b"ping").unwrap();
        }
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            if data.len() < 4 {
                return 0;
            }
            self.log
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&data[..4]).into_owned());
            s.close();
            4
        }
        fn on_disconnected(&mut self, reason: CloseReason) {
            self.log.lock().unwrap().push(format!("{:?}", reason.kind()));
        }
    }
    let echo = server(engine).start(|| Echo).unwrap();
    // Bound but not listening, and kept: connections are refused, and no
    // other socket can take the port meanwhile.
    let unlistened = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    unlistened
        .bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    let closed_port = unlistened.local_addr().unwrap().as_socket().unwrap();
    let client = Client::builder().engine(engine).start::<Ping>().unwrap();
    let ok = Arc::new(Mutex::new(Vec::new()));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let (o, b) = (ok.clone(), bad.clone());
    // connect() returns the id the session then has.
    let id = client
        .connect(echo.local_addr(), move || Ping { log: o })
        .unwrap();
    let failing = client.connect(closed_port, move || Ping { log: b }).unwrap();
    assert_ne!(id, failing);
    wait_until("both finished", || {
        ok.lock().unwrap().len() == 3 && bad.lock().unwrap().len() == 1
    });
    assert_eq!(
        *ok.lock().unwrap(),
        [format!("connected {id}"), "ping".into(), "LocalClose".into()]
    );
    assert_eq!(*bad.lock().unwrap(), ["ConnectFailed"]);
    let stats = client.stats();
    assert_eq!((stats.connected, stats.closed(CloseKind::ConnectFailed)), (1, 1));
    // Once stopped, a connect is refused with an error, not lost.
    client.stop(Duration::from_secs(1));
    wait_until("client stopped", || client.is_finished());
    let o = ok.clone();
    let err = client
        .connect(echo.local_addr(), move || Ping { log: o })
        .expect_err("a stopped client cannot connect");
    assert_eq!(err, ConnectError::Stopped);
    assert!(err.to_string().contains("stopped"), "{err}");
    let refused = client.connect_later(echo.local_addr(), || unreachable!("never made"));
    assert_eq!(refused, Err(ConnectError::Stopped));
    client.join().unwrap();
}

/// `connect` says why it returned no session: the session limit (the
/// handler hears it too), or a call on a worker thread, where waiting for
/// a worker could wait forever (`connect_later` works there).
fn client_connect_says_why_no_session(engine: EngineKind) {
    struct Held(Arc<Mutex<Vec<String>>>);
    impl Handler for Held {
        fn on_connected(&mut self, s: &mut Session<'_>) {
            self.0.lock().unwrap().push(format!("connected {}", s.id()));
        }
        fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
            data.len()
        }
        fn on_disconnected(&mut self, reason: CloseReason) {
            self.0.lock().unwrap().push(format!("{:?}", reason.kind()));
        }
    }
    let echo = server(engine).start(|| Echo).unwrap();
    let client = Arc::new(
        Client::builder()
            .engine(engine)
            .max_sessions(1)
            .start::<Held>()
            .unwrap(),
    );
    let (first, second) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let f = first.clone();
    let id = client.connect(echo.local_addr(), move || Held(f)).unwrap();
    let s = second.clone();
    let refused = client.connect(echo.local_addr(), move || Held(s));
    assert_eq!(refused, Err(ConnectError::NotOpened));
    assert_eq!(
        *second.lock().unwrap(),
        ["ConnectFailed"],
        "the handler heard it too"
    );
    wait_until("the first connected", || first.lock().unwrap().len() == 1);
    assert_eq!(*first.lock().unwrap(), [format!("connected {id}")]);

    // A server's handler asks the client from its worker thread.
    struct Asks {
        client: Arc<iocore::ClientHandle<Held>>,
        to: std::net::SocketAddr,
        answers: Arc<Mutex<Vec<String>>>,
        log: Arc<Mutex<Vec<String>>>,
    }
    impl Handler for Asks {
        fn on_connected(&mut self, _: &mut Session<'_>) {
            let blocking = self.client.connect(self.to, || unreachable!("never made"));
            let log = self.log.clone();
            let later = self.client.connect_later(self.to, move || Held(log));
            self.answers
                .lock()
                .unwrap()
                .push(format!("{blocking:?} {later:?}"));
        }
        fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
            data.len()
        }
    }
    client.close(id).unwrap();
    wait_until("the first closed", || first.lock().unwrap().len() == 2);
    let (answers, log) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (a, l, c, to) = (answers.clone(), log.clone(), client.clone(), echo.local_addr());
    let asking = server(engine)
        .start(move || Asks {
            client: c.clone(),
            to,
            answers: a.clone(),
            log: l.clone(),
        })
        .unwrap();
    let _peer = connect(asking.local_addr());
    wait_until("the handler asked", || answers.lock().unwrap().len() == 1);
    assert_eq!(*answers.lock().unwrap(), ["Err(OnWorkerThread) Ok(())"]);
    wait_until("the later connect connected", || log.lock().unwrap().len() == 1);
    assert!(
        log.lock().unwrap()[0].starts_with("connected "),
        "{:?}",
        log.lock().unwrap()
    );
}

/// A client-side echo: bytes read by a `Client` session equal bytes sent,
/// through partial messages (the handler consumes one byte at a time).
fn client_sessions_consume_partially(engine: EngineKind) {
    struct Slow {
        got: Arc<Mutex<Vec<u8>>>,
        want: usize,
    }
    impl Handler for Slow {
        fn on_connected(&mut self, s: &mut Session<'_>) {
            let data: Vec<u8> = (0..self.want).map(|i| (i % 251) as u8).collect();
            s.send(data).unwrap();
        }
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            let mut got = self.got.lock().unwrap();
            got.push(data[0]);
            if got.len() == self.want {
                s.close();
            }
            1
        }
    }
    let echo = server(engine).start(|| Echo).unwrap();
    let client = Client::builder().engine(engine).start::<Slow>().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    client
        .connect(echo.local_addr(), move || Slow { got: g, want: 50_000 })
        .unwrap();
    wait_until("all bytes consumed", || got.lock().unwrap().len() == 50_000);
    let expected: Vec<u8> = (0..50_000).map(|i| (i % 251) as u8).collect();
    assert!(*got.lock().unwrap() == expected);
    client.shutdown(Duration::from_secs(1)).unwrap();
}

/// A panic in a callback ends only its session: the handler hears
/// `HandlerPanicked` with the message, and the other session on the same
/// worker is still served; a panicking factory refuses one connection.
fn a_panicking_handler_ends_only_its_session(engine: EngineKind) {
    struct Fragile;
    impl Handler for Fragile {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            if data.starts_with(b"boom") {
                panic!("asked to panic");
            }
            let _ = s.send_copy(data);
            data.len()
        }
    }
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let (events, factory) = recorded(move || {
        if m.fetch_add(1, Ordering::SeqCst) == 2 {
            panic!("the third handler cannot be made");
        }
        Fragile
    });
    let server = server(engine).threads(1).start(factory).unwrap();
    let (mut calm, mut fragile) = (connect(server.local_addr()), connect(server.local_addr()));
    for (s, msg) in [(&mut calm, b"calm"), (&mut fragile, b"frag")] {
        s.write_all(msg).unwrap();
        let mut back = [0; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, msg);
    }
    fragile.write_all(b"boom").unwrap();
    let (back, _) = read_to_end(&mut fragile);
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(events.wait_closed(1), [CloseKind::HandlerPanicked]);
    assert_eq!(
        *events.reasons.lock().unwrap(),
        ["the handler panicked: asked to panic"]
    );
    assert_eq!(server.stats().closed(CloseKind::HandlerPanicked), 1);

    // The factory's panic: that connection is refused, the next served.
    let mut refused = connect(server.local_addr());
    let (back, _) = read_to_end(&mut refused);
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(server.stats().rejected, 1);
    let mut next = connect(server.local_addr());
    for s in [&mut calm, &mut next] {
        s.write_all(b"more").unwrap();
        let mut back = [0; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"more");
    }
    assert_eq!(made.load(Ordering::SeqCst), 4);
}

engine_suite!(
    peer_fin_closes_once_as_peer_closed,
    peer_reset_closes_once_as_peer_reset,
    mixed_fin_and_reset_each_reported_once,
    graceful_stop_delivers_queued_data,
    stop_deadline_resets_stuck_sessions,
    client_service_connects_and_reports_failures,
    client_sessions_consume_partially,
    client_connect_says_why_no_session,
    a_panicking_handler_ends_only_its_session,
);
