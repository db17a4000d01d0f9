//! One publish to 300 subscribers on 3 workers allocates its payload once:
//! every worker and every subscriber's send queue holds the same buffer.
//! To WebSocket subscribers it is framed once per worker: the frame (header
//! and payload in one buffer) is shared by the worker's subscribers.
//! Counted with a tracking global allocator that notes allocations of the
//! payload's (odd) size, on every thread; its own test binary, one engine
//! at a time, so nothing else allocates that size meanwhile.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use iocore::{Accept, EngineKind, Handler, Session};
use iocore_testkit::*;
use tracking_allocator::{AllocationGroupId, AllocationRegistry, AllocationTracker, Allocator};

/// An odd size nothing else allocates.
const PAYLOAD: usize = 7919;
/// Its WebSocket frame: a 4-byte header (16-bit length), then the payload.
const FRAME: usize = PAYLOAD + 4;

static PAYLOAD_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static FRAME_ALLOCS: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static GLOBAL: Allocator<std::alloc::System> = Allocator::system();

/// Counts allocations of exactly the payload's size, on every thread.
struct PayloadCounter;

impl AllocationTracker for PayloadCounter {
    fn allocated(&self, _addr: usize, object_size: usize, _wrapped_size: usize, _group: AllocationGroupId) {
        if object_size == PAYLOAD {
            PAYLOAD_ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        if object_size == FRAME {
            FRAME_ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn deallocated(
        &self,
        _addr: usize,
        _object_size: usize,
        _wrapped_size: usize,
        _source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
    }
}

/// The count is process-wide: one engine at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes this binary's turn and starts counting (a second test finds the
/// tracker set: fine); counting goes on while the guard is held.
fn counting() -> MutexGuard<'static, ()> {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let _ = AllocationRegistry::set_global_tracker(PayloadCounter);
    AllocationRegistry::enable_tracking();
    serial
}

/// Subscribes on connect; on any input publishes one payload.
struct Member;

impl Handler for Member {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        s.subscribe("all");
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        s.publish("all", vec![b's'; PAYLOAD]);
        data.len()
    }
}

fn one_publish_allocates_its_payload_once(engine: EngineKind) {
    let _serial = counting();
    let server = server(engine)
        .threads(3)
        .accept(Accept::HandOff)
        .start(|| Member)
        .unwrap();
    let mut clients: Vec<_> = (0..300).map(|_| connect(server.local_addr())).collect();
    wait_until("all subscribed", || {
        server.topic("all").map(|t| t.subscribers) == Some(300)
    });
    let mut buf = vec![0; 8192];
    let before = PAYLOAD_ALLOCS.load(Ordering::SeqCst);
    server.publish("all", vec![b't'; PAYLOAD]).unwrap();
    for c in &mut clients {
        c.read_exact(&mut buf[..PAYLOAD]).unwrap();
        assert!(buf[..PAYLOAD].iter().all(|&b| b == b't'));
    }
    assert_eq!(PAYLOAD_ALLOCS.load(Ordering::SeqCst) - before, 1, "from a thread");
    clients[0].write_all(b"go").unwrap();
    for c in &mut clients {
        c.read_exact(&mut buf[..PAYLOAD]).unwrap();
        assert!(buf[..PAYLOAD].iter().all(|&b| b == b's'));
    }
    assert_eq!(
        PAYLOAD_ALLOCS.load(Ordering::SeqCst) - before,
        2,
        "from a session"
    );
    assert_eq!(server.topic("all").unwrap().deliveries, 600);
}

#[cfg(feature = "websocket")]
fn websocket_subscribers_share_one_frame_per_worker(engine: EngineKind) {
    use tungstenite::Message;
    let _serial = counting();
    let server = server(engine)
        .threads(3)
        .accept(Accept::HandOff)
        .websocket(Some(iocore::websocket::WebSocketConfig::new()))
        .start(|| Member)
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let mut clients: Vec<_> = (0..300)
        .map(|_| {
            tungstenite::client(url.as_str(), connect(server.local_addr()))
                .unwrap()
                .0
        })
        .collect();
    wait_until("all subscribed", || {
        server.topic("all").map(|t| t.subscribers) == Some(300)
    });
    // Frames are read raw into one buffer: the clients allocate nothing
    // of the sizes counted.
    let mut buf = vec![0; FRAME];
    let mut read_frame = |c: &mut tungstenite::WebSocket<std::net::TcpStream>, fill: u8| {
        c.get_mut().read_exact(&mut buf).unwrap();
        assert_eq!(buf[..4], [0x82, 126, (PAYLOAD >> 8) as u8, PAYLOAD as u8]);
        assert!(buf[4..].iter().all(|&b| b == fill));
    };
    let (payloads, frames) = (
        PAYLOAD_ALLOCS.load(Ordering::SeqCst),
        FRAME_ALLOCS.load(Ordering::SeqCst),
    );
    server.publish("all", vec![b't'; PAYLOAD]).unwrap();
    for c in &mut clients {
        read_frame(c, b't');
    }
    assert_eq!(
        PAYLOAD_ALLOCS.load(Ordering::SeqCst) - payloads,
        1,
        "the payload, once"
    );
    assert_eq!(
        FRAME_ALLOCS.load(Ordering::SeqCst) - frames,
        3,
        "a frame per worker, not per subscriber"
    );
    // From a session: its own copy is framed for it alone (a header and
    // the payload, no copy of it); the fan-outs share a frame per worker.
    clients[0].send(Message::binary(&b"go"[..])).unwrap();
    for c in &mut clients {
        read_frame(c, b's');
    }
    assert_eq!(PAYLOAD_ALLOCS.load(Ordering::SeqCst) - payloads, 2);
    assert_eq!(FRAME_ALLOCS.load(Ordering::SeqCst) - frames, 6);
    assert_eq!(server.topic("all").unwrap().deliveries, 600);
}

engine_suite!(one_publish_allocates_its_payload_once);
#[cfg(feature = "websocket")]
mod websocket {
    use super::*;
    engine_suite!(websocket_subscribers_share_one_frame_per_worker);
}
