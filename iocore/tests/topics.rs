//! Between sessions: sends and closes from other threads reach the right
//! session in order (a stale id is refused), and pub/sub topics deliver
//! every message to every subscriber exactly once, in publish order per
//! publisher, across workers; a subscriber that never reads is closed at
//! its cap without holding the others up.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iocore::{Accept, CloseKind, EngineKind, Handler, Session, SessionId};
use iocore_testkit::*;

/// Reports its session id when connected; echoes nothing.
struct Named(Arc<Mutex<Vec<SessionId>>>);

impl Handler for Named {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.0.lock().unwrap().push(s.id());
    }
    fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

/// Waits for the next session id reported.
fn next_id(ids: &Mutex<Vec<SessionId>>, n: usize) -> SessionId {
    wait_until("session connected", || ids.lock().unwrap().len() >= n);
    ids.lock().unwrap()[n - 1]
}

/// A thread that is no worker sends 200 numbered messages to a session and
/// closes it: all arrive in order, then FIN. The session's slot is reused
/// by the next one; a send to the old id is refused (counted) and never
/// reaches the new session.
fn cross_thread_send_and_close_reach_the_right_session(engine: EngineKind) {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let i = ids.clone();
    let (events, factory) = recorded(move || Named(i.clone()));
    let server = server(engine).threads(1).start(factory).unwrap();
    let mut a = connect(server.local_addr());
    let a_id = next_id(&ids, 1);
    let expected: Vec<u8> = (0..200).flat_map(|k| format!("{k:05}\n").into_bytes()).collect();
    std::thread::scope(|t| {
        t.spawn(|| {
            for k in 0..200 {
                server.send(a_id, format!("{k:05}\n")).unwrap();
            }
            server.close(a_id).unwrap();
        });
    });
    let (got, err) = read_to_end(&mut a);
    assert!(err.is_none(), "{err:?}");
    assert!(got == expected, "every message, in order, then FIN");
    assert_eq!(events.wait_closed(1), [CloseKind::LocalClose]);

    // The next session takes the freed slot, with a new generation.
    let mut b = connect(server.local_addr());
    let b_id = next_id(&ids, 2);
    assert_eq!(b_id.worker(), a_id.worker());
    assert_ne!(b_id, a_id);
    assert_eq!(
        b_id.to_string().split('.').next(),
        a_id.to_string().split('.').next(),
        "same slot: {a_id} then {b_id}"
    );
    server.send(a_id, "stale").unwrap();
    server.send(b_id, "fresh").unwrap();
    assert_eq!(read_exact(&mut b, 5), b"fresh", "only b's own message arrives");
    wait_until("stale request counted", || server.stats().stale_requests == 1);
    let mut other = SessionId::from_u64(b_id.as_u64() | (200u64 << 56));
    assert_eq!(
        server.send(other, "x").unwrap_err(),
        iocore::ToSessionError::NoSuchWorker
    );
    other = b_id;
    server.close(other).unwrap();
    let (rest, _) = read_to_end(&mut b);
    assert!(rest.is_empty(), "nothing but b's own message: {rest:?}");
}

/// Subscribes on connect to "news"; on "go N" publishes N numbered
/// messages (it is subscribed too, so it gets its own).
struct Newsroom;

impl Handler for Newsroom {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        assert!(s.subscribe("news"));
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        if let Some(n) = data.strip_prefix(b"go ") {
            let n: u32 = std::str::from_utf8(n).unwrap().trim().parse().unwrap();
            for k in 0..n {
                s.publish("news", format!("S{k:05}\n"));
            }
        }
        data.len()
    }
}

/// Splits a stream of 7-byte messages ("S00042\n", "T00007\n") into one
/// sequence per publisher and checks each counts up from 0 with no gap and
/// no repeat.
fn check_sequences(stream: &[u8], per_publisher: u32) {
    let mut next: HashMap<u8, u32> = HashMap::new();
    for m in stream.chunks(7) {
        let k: u32 = std::str::from_utf8(&m[1..6]).unwrap().parse().unwrap();
        let want = next.entry(m[0]).or_insert(0);
        assert_eq!(k, *want, "publisher {} out of order", m[0] as char);
        *want += 1;
    }
    assert_eq!(next.get(&b'S'), Some(&per_publisher));
    assert_eq!(next.get(&b'T'), Some(&per_publisher));
}

/// Three workers, 300 subscribers spread over them; one subscriber session
/// and one outside thread publish 50 messages each: every subscriber gets
/// all 100 exactly once, each publisher's in order.
fn every_subscriber_on_every_worker_gets_every_message_in_order(engine: EngineKind) {
    const SUBSCRIBERS: usize = 300;
    const N: u32 = 50;
    let (_, factory) = recorded(|| Newsroom);
    let server = server(engine)
        .threads(3)
        .accept(Accept::HandOff)
        .max_sessions(1000)
        .start(factory)
        .unwrap();
    let mut clients: Vec<TcpStream> = (0..SUBSCRIBERS).map(|_| connect(server.local_addr())).collect();
    wait_until("all subscribed", || {
        server.topic("news").map(|t| t.subscribers) == Some(SUBSCRIBERS as u64)
    });
    std::thread::scope(|t| {
        t.spawn(|| {
            for k in 0..N {
                server.publish("news", format!("T{k:05}\n")).unwrap();
            }
        });
        clients[0].write_all(format!("go {N}").as_bytes()).unwrap();
    });
    for c in &mut clients {
        let stream = read_exact(c, 2 * N as usize * 7);
        check_sequences(&stream, N);
    }
    let topic = server.topic("news").unwrap();
    assert_eq!(topic.publishes, 2 * N as u64);
    assert_eq!(topic.deliveries, 2 * N as u64 * SUBSCRIBERS as u64);
    assert_eq!(topic.closed_at_cap, 0);
    let stats = server.stats();
    assert_eq!(stats.publishes, N as u64, "sessions' publishes");
    assert_eq!(
        stats.deliveries, topic.deliveries,
        "workers count what the topic counts"
    );
    // Nothing more comes: exactly once.
    clients[5]
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut extra = [0; 1];
    assert!(clients[5].read(&mut extra).is_err(), "no duplicate delivery");
    drop(clients);
    wait_until("subscriptions ended with the sessions", || {
        server.topic("news").is_none()
    });
}

/// Subscribes on connect to "feed".
struct Subscriber;

impl Handler for Subscriber {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        s.subscribe("feed");
    }
    fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

/// 300 subscribers, one of which never reads: an outside thread publishes
/// until the silent one is over its send-queue cap. It is closed with
/// `SendQueueFull` (counted for the topic) and the other 299 get every
/// message, in order.
fn a_subscriber_that_never_reads_is_closed_at_its_cap(engine: EngineKind) {
    const SUBSCRIBERS: usize = 300;
    const SIZE: usize = 1024;
    let (events, factory) = recorded(|| Subscriber);
    let server = server(engine)
        .threads(3)
        .accept(Accept::HandOff)
        .max_sessions(1000)
        .max_send_queue(64 * 1024)
        .send_watermarks(32 * 1024, 16 * 1024)
        .start(factory)
        .unwrap();
    // The silent one first, with a small receive window so that the
    // kernel holds little for it.
    let silent = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&server.local_addr().into()).unwrap();
        TcpStream::from(s)
    };
    let readers: Vec<TcpStream> = (1..SUBSCRIBERS).map(|_| connect(server.local_addr())).collect();
    wait_until("all subscribed", || {
        server.topic("feed").map(|t| t.subscribers) == Some(SUBSCRIBERS as u64)
    });
    const END: u64 = u64::MAX;
    // Each reader's progress: the publisher stays at most AHEAD messages
    // (16 KiB, well under the cap) in front of the slowest reader, so
    // only the silent subscriber goes over its cap.
    const AHEAD: u64 = 16;
    let progress: Arc<Vec<AtomicU64>> = Arc::new((1..SUBSCRIBERS).map(|_| AtomicU64::new(0)).collect());
    let readers: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0; SIZE];
                let mut k = 0u64;
                loop {
                    r.read_exact(&mut buf).expect("a reader is served to the end");
                    let got = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    if got == END {
                        return k;
                    }
                    assert_eq!(got, k, "message {k} out of order");
                    k += 1;
                    progress[i].store(k, Ordering::Release);
                }
            })
        })
        .collect();
    let publish = |k: u64| {
        let mut msg = vec![0u8; SIZE];
        msg[..8].copy_from_slice(&k.to_le_bytes());
        server.publish("feed", msg).unwrap();
    };
    let mut k = 0u64;
    while events.closed_count() == 0 {
        assert!(k < 200_000, "the silent subscriber was never closed");
        while k >= progress.iter().map(|p| p.load(Ordering::Acquire)).min().unwrap() + AHEAD {
            std::thread::sleep(Duration::from_micros(200));
        }
        publish(k);
        k += 1;
    }
    let topic = server.topic("feed").unwrap();
    assert_eq!(topic.closed_at_cap, 1);
    assert_eq!(topic.subscribers, SUBSCRIBERS as u64 - 1);
    publish(END);
    assert_eq!(events.closed(), [CloseKind::SendQueueFull]);
    for r in readers {
        assert_eq!(
            r.join().unwrap(),
            k,
            "every other subscriber got all {k} messages"
        );
    }
    drop(silent);
}

engine_suite!(
    cross_thread_send_and_close_reach_the_right_session,
    every_subscriber_on_every_worker_gets_every_message_in_order,
    a_subscriber_that_never_reads_is_closed_at_its_cap,
);
