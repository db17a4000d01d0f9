//! Resource limits: each is enforced on the offending session only, with a
//! reason, and its memory is freed; everyone else keeps being served.

use std::io::Write;
use std::time::Duration;

use iocore::{CloseKind, EngineKind, Handler, Session};
use iocore_testkit::*;

/// A client that never reads is closed with `SendQueueFull` once its queue
/// reaches the cap; its queue memory is released.
fn send_queue_cap_closes_non_reader(engine: EngineKind) {
    const CAP: usize = 256 * 1024;
    let (events, factory) = recorded(|| Echo);
    let server = server(engine).max_send_queue(CAP).start(factory).unwrap();
    let mut s = connect(server.local_addr());
    let mut writer = s.try_clone().unwrap();
    // Never read; keep writing until the server cuts us off.
    let w = std::thread::spawn(move || {
        let chunk = vec![9u8; 64 * 1024];
        for _ in 0..4096 {
            if writer.write_all(&chunk).is_err() {
                return true;
            }
        }
        false
    });
    assert_eq!(events.wait_closed(1), [CloseKind::SendQueueFull]);
    assert!(w.join().unwrap(), "the writer was cut off by a reset");
    let stats = server.stats();
    assert_eq!(stats.closed(CloseKind::SendQueueFull), 1);
    assert_eq!(stats.live_sessions, 0);
    assert_eq!(stats.queued_bytes, 0, "the closed session's queue was freed");
    // The server still serves.
    let mut other = connect(server.local_addr());
    other.write_all(b"ok").unwrap();
    assert_eq!(read_exact(&mut other, 2), b"ok");
    let _ = s.flush();
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

engine_suite!(
    send_queue_cap_closes_non_reader,
    recv_buffer_limit_closes_only_offender,
    max_sessions_resets_extra_connections,
);
