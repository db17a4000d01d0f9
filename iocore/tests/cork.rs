//! Replies copied with `Session::send_copy` (gathered in the worker's cork
//! on the readiness engines, queued elsewhere) keep their order with
//! everything else the session sends, are flushed before a graceful
//! close, are dropped by an abort, count in `queued_bytes`, and may be
//! larger than the cork. The same on every engine.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iocore::{Bytes, EngineKind, Handler, Session};
use iocore_testkit::*;

/// Replies to each input with copies, a shared buffer and a topic
/// message to itself, in a fixed order; `then` closes or aborts after.
struct Mixed {
    then: After,
    queued_seen: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
enum After {
    Nothing,
    Close,
    Abort,
}

impl Handler for Mixed {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        s.subscribe("self");
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        s.send_copy(b"a").unwrap();
        s.send_copy(data).unwrap();
        self.queued_seen.store(s.queued_bytes(), Ordering::SeqCst);
        s.send(Bytes::from_static(b"B")).unwrap();
        s.send_copy(b"c").unwrap();
        s.publish("self", Bytes::from_static(b"T"));
        s.send_copy(b"d").unwrap();
        match self.then {
            After::Nothing => {}
            After::Close => s.close(),
            After::Abort => s.abort(),
        }
        data.len()
    }
}

fn start(engine: EngineKind, then: After) -> (iocore::ServerHandle, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let server = server(engine)
        .start(move || Mixed {
            then,
            queued_seen: s.clone(),
        })
        .unwrap();
    (server, seen)
}

fn replies_keep_their_order(engine: EngineKind) {
    let (server, queued_seen) = start(engine, After::Nothing);
    let mut c = connect(server.local_addr());
    // Ping-pong, so that each reply answers one whole input.
    for i in 0..200u32 {
        let msg = format!("<{i}>");
        c.write_all(msg.as_bytes()).unwrap();
        // The topic's copy comes with the publishes of the loop turn: it
        // may arrive before or after "d", never before "c".
        let got = String::from_utf8(read_exact(&mut c, msg.len() + 5)).unwrap();
        let expected = [format!("a{msg}BcdT"), format!("a{msg}BcTd")];
        assert!(expected.contains(&got), "reply {i}: {got:?}");
        assert!(queued_seen.load(Ordering::SeqCst) > msg.len(), "the cork counts");
    }
    server.shutdown(Duration::from_secs(1)).unwrap();
}

fn a_close_sends_the_copies_first(engine: EngineKind) {
    let (server, _) = start(engine, After::Close);
    let mut c = connect(server.local_addr());
    c.write_all(b"xyz").unwrap();
    let (got, _) = read_to_end(&mut c);
    let got = String::from_utf8(got).unwrap();
    // The topic's copy comes after the close (dropped) or, if delivered at
    // once, before "d".
    assert!(got == "axyzBcd" || got == "axyzBcTd", "{got:?}");
    server.shutdown(Duration::from_secs(1)).unwrap();
}

fn an_abort_drops_the_copies(engine: EngineKind) {
    let (server, _) = start(engine, After::Abort);
    let mut c = connect(server.local_addr());
    c.write_all(b"xyz").unwrap();
    let (got, _) = read_to_end(&mut c);
    assert!(got.is_empty(), "{got:?}");
    server.shutdown(Duration::from_secs(1)).unwrap();
}

/// Echoes each read twice, copied, each time behind its length (4 bytes,
/// little-endian): replies beyond the cork's 64 KiB.
struct Twice;
impl Handler for Twice {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        for _ in 0..2 {
            s.send_copy(&(data.len() as u32).to_le_bytes()).unwrap();
            s.send_copy(data).unwrap();
        }
        data.len()
    }
}

fn large_copies_arrive_whole(engine: EngineKind) {
    let server = server(engine).start(|| Twice).unwrap();
    let mut c = connect(server.local_addr());
    let mut rng = Rng::new(11);
    for _ in 0..5 {
        let msg = rng.bytes(200_000);
        c.write_all(&msg).unwrap();
        let mut from = 0;
        while from < msg.len() {
            let len = u32::from_le_bytes(read_exact(&mut c, 4).try_into().unwrap()) as usize;
            assert!(len > 0 && from + len <= msg.len());
            assert!(read_exact(&mut c, len) == msg[from..from + len], "first copy");
            assert_eq!(read_exact(&mut c, 4), (len as u32).to_le_bytes());
            assert!(read_exact(&mut c, len) == msg[from..from + len], "second copy");
            from += len;
        }
    }
    server.shutdown(Duration::from_secs(1)).unwrap();
}

/// Copies once with a reply over the queue's cap, and says what
/// `send_copy` answered.
struct OverCap(Arc<std::sync::Mutex<Option<Result<(), iocore::SendError>>>>);
impl Handler for OverCap {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let r = s.send_copy(&vec![b'x'; 20 * 1024]);
        self.0.lock().unwrap().get_or_insert(r);
        data.len()
    }
}

/// The cap holds for copies as for queued buffers: with `max_send_queue`
/// below the cork's size, a copy over it fails at once and closes the
/// session (`SendQueueFull`), corked or not.
fn a_copy_over_the_cap_fails_as_queued(engine: EngineKind) {
    let limits = iocore::Limits {
        max_send_queue: 16 * 1024,
        send_high_watermark: 8 * 1024,
        send_low_watermark: 4 * 1024,
        ..iocore::Limits::default()
    };
    let answer = Arc::new(std::sync::Mutex::new(None));
    let a = answer.clone();
    let (events, factory) = recorded(move || OverCap(a.clone()));
    let server = server(engine).limits(limits).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    c.write_all(b"go").unwrap();
    assert_eq!(events.wait_closed(1), [iocore::CloseKind::SendQueueFull]);
    assert!(matches!(
        *answer.lock().unwrap(),
        Some(Err(iocore::SendError::QueueFull))
    ));
    server.shutdown(Duration::from_secs(1)).unwrap();
}

engine_suite!(
    a_copy_over_the_cap_fails_as_queued,
    replies_keep_their_order,
    a_close_sends_the_copies_first,
    an_abort_drops_the_copies,
    large_copies_arrive_whole
);
