//! Resource limits: each is enforced on the offending session only, with a
//! reason, and its memory is freed; everyone else keeps being served.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use iocore::{Accept, CloseKind, EngineKind, Handler, Session};
use iocore_testkit::*;

/// A handler that keeps queueing without heeding backpressure (a broadcast
/// to a subscriber that never reads) is stopped by the hard cap: the
/// session is closed with `SendQueueFull` and its queue memory released.
fn send_queue_cap_closes_a_producer_that_ignores_backpressure(engine: EngineKind) {
    const CAP: usize = 256 * 1024;
    // The first session pushes; later ones echo.
    let made = std::sync::atomic::AtomicUsize::new(0);
    let (events, factory) = recorded(move || -> Box<dyn Handler> {
        match made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Box::new(Pusher::new(3, 1 << 30, 64 * 1024, false)),
            _ => Box::new(Echo),
        }
    });
    let server = server(engine)
        .max_send_queue(CAP)
        .send_watermarks(64 * 1024, 32 * 1024)
        .start(factory)
        .unwrap();
    let s = connect(server.local_addr()); // never reads
    assert_eq!(events.wait_closed(1), [CloseKind::SendQueueFull]);
    let stats = server.stats();
    assert_eq!(stats.closed(CloseKind::SendQueueFull), 1);
    assert_eq!(stats.live_sessions, 0);
    assert_eq!(stats.queued_bytes, 0, "the closed session's queue was freed");
    // The server still serves.
    let mut other = connect(server.local_addr());
    other.write_all(b"ok").unwrap();
    assert_eq!(read_exact(&mut other, 2), b"ok");
    drop(s);
}

/// A handler waiting for a newline, fed by a peer that never sends one,
/// hits the receive-buffer limit: that session is closed with
/// `RecvBufferFull`, a well-behaved session beside it is unaffected.
fn recv_buffer_limit_closes_only_offender(engine: EngineKind) {
    struct Lines;
    impl Handler for Lines {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    s.send_copy(&data[..=i]).unwrap();
                    i + 1
                }
                None => 0,
            }
        }
    }
    let (events, factory) = recorded(|| Lines);
    let server = server(engine).max_recv_buffer(4096).start(factory).unwrap();
    let mut good = connect(server.local_addr());
    let mut bad = connect(server.local_addr());
    good.write_all(b"line one\n").unwrap();
    assert_eq!(read_exact(&mut good, 9), b"line one\n");
    // No newline, ever: 1 byte over the limit.
    let _ = bad.write_all(&[b'x'; 4097]);
    assert_eq!(events.wait_closed(1), [CloseKind::RecvBufferFull]);
    let (_, err) = read_to_end(&mut bad);
    // Wine reports a peer's RST as end of stream.
    let reset = err.map(|e| e.kind()) == Some(std::io::ErrorKind::ConnectionReset);
    assert!(reset || cfg!(windows), "the offender is reset");
    // Partial lines across writes still work for the good session.
    good.write_all(b"line ").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    good.write_all(b"two\n").unwrap();
    assert_eq!(read_exact(&mut good, 9), b"line two\n");
    assert_eq!(server.stats().live_sessions, 1);
}

/// With `max_sessions` live, further connections are reset at once and
/// counted; the admitted ones are served; places free up on close.
fn max_sessions_resets_extra_connections(engine: EngineKind) {
    let (events, factory) = recorded(|| Echo);
    let server = server(engine).max_sessions(3).start(factory).unwrap();
    let addr = server.local_addr();
    let mut admitted: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    for s in &mut admitted {
        s.write_all(b"in").unwrap();
        assert_eq!(read_exact(s, 2), b"in");
    }
    let mut extra = connect(addr);
    let (data, err) = read_to_end(&mut extra);
    assert!(data.is_empty());
    // Reset (Wine, which runs the Windows build here, may report a reset
    // as end of stream).
    let reset = err.map(|e| e.kind()) == Some(std::io::ErrorKind::ConnectionReset);
    assert!(reset || cfg!(windows), "the extra connection is reset");
    assert_eq!(server.stats().rejected, 1);
    assert_eq!(events.connected.load(std::sync::atomic::Ordering::SeqCst), 3);
    drop(admitted.pop());
    events.wait_closed(1);
    wait_until("place freed", || server.stats().live_sessions == 2);
    let mut late = connect(addr);
    late.write_all(b"now").unwrap();
    assert_eq!(read_exact(&mut late, 3), b"now");
}

/// A client socket bound to `from` (another loopback address) connected to
/// `to`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// With `max_sessions_per_ip` 3, a fourth connection from 127.0.0.1 is
/// reset at once and counted, while a client from 127.0.0.2 is served;
/// across both workers and with either accept strategy. A place frees up
/// when one of the three closes.
fn per_ip_cap_resets_only_the_extra_connection(engine: EngineKind) {
    let strategies: &[Accept] = match cfg!(windows) {
        true => &[Accept::HandOff],
        false => &[Accept::ReusePort, Accept::HandOff],
    };
    for &accept in strategies {
        let (events, factory) = recorded(|| Echo);
        let server = server(engine)
            .accept(accept)
            .max_sessions_per_ip(Some(3))
            .start(factory)
            .unwrap();
        let addr = server.local_addr();
        let mut three: Vec<_> = (0..3).map(|_| connect(addr)).collect();
        for s in &mut three {
            s.write_all(b"in").unwrap();
            assert_eq!(read_exact(s, 2), b"in", "{accept}");
        }
        let mut fourth = connect(addr);
        let (data, err) = read_to_end(&mut fourth);
        assert!(data.is_empty());
        let reset = err.map(|e| e.kind()) == Some(std::io::ErrorKind::ConnectionReset);
        assert!(
            reset || cfg!(windows),
            "the fourth connection is reset ({accept})"
        );
        let mut other = connect_from([127, 0, 0, 2], addr);
        other.write_all(b"other").unwrap();
        assert_eq!(
            read_exact(&mut other, 5),
            b"other",
            "127.0.0.2 is served ({accept})"
        );
        let stats = server.stats();
        assert_eq!((stats.rejected_per_ip, stats.rejected), (1, 0), "{accept}");
        assert_eq!(events.connected.load(std::sync::atomic::Ordering::SeqCst), 4);
        drop(three.pop());
        events.wait_closed(1);
        let mut again = connect(addr);
        again.write_all(b"again").unwrap();
        assert_eq!(
            read_exact(&mut again, 5),
            b"again",
            "a freed place is taken ({accept})"
        );
        server.shutdown(Duration::from_secs(1)).unwrap();
    }
}

engine_suite!(
    send_queue_cap_closes_a_producer_that_ignores_backpressure,
    recv_buffer_limit_closes_only_offender,
    max_sessions_resets_extra_connections,
    per_ip_cap_resets_only_the_extra_connection,
);
