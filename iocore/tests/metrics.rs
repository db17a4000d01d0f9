//! The metrics (feature `metrics`): after known traffic — sessions of
//! every kind of close, bytes and packets both ways, a topic with a
//! publish and two subscribers closed at their cap — a scrape of the
//! `/metrics` endpoint over HTTP shows exactly those numbers, per worker
//! as `ServerHandle::worker_stats` has them, and passes `promtool check
//! metrics`. The endpoint answers garbage, a request cut into single
//! bytes, a 1 MiB header, a slow request, pipelined and 100 concurrent
//! scrapes as it should, while the main server serves on undisturbed.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iocore::metrics::Format;
use iocore::packet::{self, PacketHandler, Packets};
use iocore::room::{Room, RoomCx, Rooms, TickInfo};
use iocore::{Bytes, CloseReason, EngineKind, Server, ServerHandle, Session, SessionId};
use iocore_testkit::*;

const ECHO: u16 = 1;
const VIOLATE: u16 = 2;
const BYE: u16 = 3;
const SUB: u16 = 4;
const ACK: u16 = 5;
const PUB: u16 = 6;
const SAY: u16 = 7;
const PAUSE: u16 = 8;

/// A packet protocol with one request per way a session can go.
struct Game {
    paused: Arc<Mutex<Vec<SessionId>>>,
}

impl PacketHandler for Game {
    fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
        match id {
            ECHO => {
                let _ = s.send(packet::encode(ECHO, body).unwrap());
            }
            VIOLATE => s.close_with(CloseReason::protocol("asked to")),
            BYE => s.close(),
            SUB => {
                s.subscribe("room");
                let _ = s.send(packet::encode(ACK, b"").unwrap());
            }
            PUB => s.publish("room", packet::encode(SAY, body).unwrap()),
            PAUSE => {
                s.pause_recv();
                self.paused.lock().unwrap().push(s.id());
            }
            _ => {}
        }
    }
}

fn start(engine: EngineKind, paused: Arc<Mutex<Vec<SessionId>>>) -> ServerHandle {
    server(engine)
        .max_send_queue(64 * 1024)
        .send_watermarks(32 * 1024, 16 * 1024)
        .metrics("127.0.0.1:0".parse().unwrap())
        .start(move || {
            Packets::new(Game {
                paused: paused.clone(),
            })
        })
        .unwrap()
}

fn packet(id: u16, body: &[u8]) -> Vec<u8> {
    packet::encode(id, body).unwrap().to_vec()
}

/// Sends `bytes`, half-closes, and reads until the server closes.
fn send_and_finish(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut c = connect(addr);
    c.write_all(bytes).unwrap();
    let (got, _) = read_to_end(&mut c);
    got
}

fn scrape(server: &ServerHandle) -> String {
    let answer = http_get(server.metrics_addr().unwrap(), "/metrics", &[]);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    answer.body
}

fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

/// `promtool check metrics` (the Debian package `prometheus`; `.ci/run`
/// installs it) accepts `text`.
#[cfg(target_os = "linux")]
fn promtool_accepts(text: &str) {
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!(
            "promtool is missing ({e}): install the Debian package prometheus (`.ci/test` installs what the tests need)"
        )
    });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every per-worker series of `name` equals what `pick` reads from that
/// worker's counters.
fn per_worker_matches(text: &str, server: &ServerHandle, name: &str, pick: impl Fn(&iocore::Stats) -> u64) {
    for (w, stats) in server.worker_stats().iter().enumerate() {
        let label = format!("worker=\"{w}\"");
        assert_eq!(
            value(text, name, &[&label]),
            pick(stats) as f64,
            "{name} of worker {w}"
        );
    }
}

fn scrape_shows_exactly_the_traffic(engine: EngineKind) {
    let paused = Arc::new(Mutex::new(Vec::new()));
    let server = start(engine, paused.clone());
    let addr = server.local_addr();

    // Three sessions echo five packets each, then the client closes.
    for _ in 0..3 {
        let mut c = connect(addr);
        let five: Vec<u8> = (0..5).flat_map(|_| packet(ECHO, b"0123456789")).collect();
        c.write_all(&five).unwrap();
        assert_eq!(read_exact(&mut c, 70), five);
        c.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_end(&mut c).0.is_empty());
    }
    // Three protocol violations: two asked for, one bad header (size 1).
    send_and_finish(addr, &packet(VIOLATE, b""));
    send_and_finish(addr, &packet(VIOLATE, b""));
    send_and_finish(addr, &[1, 0, 0, 0]);
    // One session the server closes.
    send_and_finish(addr, &packet(BYE, b""));
    // A client sees the close before the server has counted it (it may
    // still linger for the peer's FIN).
    wait_until("the first seven sessions finished", || {
        server.stats().closed_total() == 7
    });

    // Two subscribers, a partial packet, a paused session: open now.
    let mut subs: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    for s in &mut subs {
        s.write_all(&packet(SUB, b"")).unwrap();
        assert_eq!(read_exact(s, 4), packet(ACK, b""));
    }
    let mut partial = connect(addr);
    partial
        .write_all(&[100, 0, ECHO as u8, 0, 1, 2, 3, 4, 5, 6])
        .unwrap();
    let mut pauser = connect(addr);
    pauser.write_all(&packet(PAUSE, b"")).unwrap();
    wait_until("the pause and the partial packet", || {
        paused.lock().unwrap().len() == 1 && server.stats().recv_buffer_bytes > 0
    });

    let mid = scrape(&server);
    assert_eq!(value(&mid, "iocore_sessions_open", &[]), 4.0);
    assert_eq!(value(&mid, "iocore_sessions_paused", &[]), 1.0);
    assert_eq!(value(&mid, "iocore_topics", &[]), 1.0);
    assert_eq!(value(&mid, "iocore_topic_subscriptions", &[]), 2.0);
    assert!(value(&mid, "iocore_recv_buffer_bytes", &[]) >= 10.0);
    per_worker_matches(&mid, &server, "iocore_sessions_open", |s| s.live_sessions);
    per_worker_matches(&mid, &server, "iocore_recv_buffer_bytes", |s| s.recv_buffer_bytes);

    // A publish reaches both subscribers (the publisher's own copy too).
    subs[0].write_all(&packet(PUB, b"hello!")).unwrap();
    for s in &mut subs {
        assert_eq!(read_exact(s, 10), packet(SAY, b"hello!"));
    }
    partial.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut partial).0.is_empty());
    server.close(paused.lock().unwrap()[0]).unwrap();
    assert!(read_to_end(&mut pauser).0.is_empty());
    // One message over both subscribers' cap (64 KiB): both are closed.
    server
        .publish("room", Bytes::from(vec![0u8; 100 * 1024]))
        .unwrap();
    for s in &mut subs {
        read_to_end(s);
    }
    wait_until("every session finished", || {
        let st = server.stats();
        st.closed_total() == 11 && st.live_sessions == 0
    });

    let before = server.worker_stats();
    let text = scrape(&server);
    let after = server.worker_stats();
    let engine_label = format!("engine=\"{}\"", engine.name());
    let exact = [
        ("iocore_workers", &[][..], 2.0),
        ("iocore_build_info", &[engine_label.as_str()][..], 1.0),
        ("iocore_sessions_open", &[], 0.0),
        ("iocore_sessions_accepted_total", &[], 11.0),
        ("iocore_sessions_connected_total", &[], 0.0),
        ("iocore_sessions_closed_total", &[], 11.0),
        ("iocore_sessions_closed_total", &["reason=\"peer_closed\""], 4.0),
        (
            "iocore_sessions_closed_total",
            &["reason=\"protocol_violation\""],
            3.0,
        ),
        ("iocore_sessions_closed_total", &["reason=\"local_close\""], 2.0),
        (
            "iocore_sessions_closed_total",
            &["reason=\"send_queue_full\""],
            2.0,
        ),
        ("iocore_sessions_rejected_total", &[], 0.0),
        ("iocore_sessions_paused", &[], 0.0),
        ("iocore_send_queue_bytes", &[], 0.0),
        ("iocore_recv_buffer_bytes", &[], 0.0),
        // 3×70 echoed + 3×4 violations + 4 bye + 2×4 sub + 10 pub + 10
        // partial + 4 pause.
        ("iocore_received_bytes_total", &[], 258.0),
        ("iocore_received_messages_total", &[], 22.0),
        // 3×70 echoes + 2×4 acks + 2×10 deliveries.
        ("iocore_sent_bytes_total", &[], 238.0),
        ("iocore_sent_messages_total", &[], 19.0),
        ("iocore_accept_errors_total", &[], 0.0),
        ("iocore_accept_shed_total", &[], 0.0),
        ("iocore_accept_shortage", &[], 0.0),
        ("iocore_stale_requests_total", &[], 0.0),
        ("iocore_topic_publishes_total", &[], 1.0),
        ("iocore_topic_deliveries_total", &[], 2.0),
        ("iocore_topic_closed_at_cap_total", &[], 2.0),
        ("iocore_topics", &[], 0.0),
        ("iocore_topic_subscriptions", &[], 0.0),
    ];
    for (name, labels, want) in exact {
        assert_eq!(value(&text, name, labels), want, "{name}{labels:?}");
    }
    assert!(value(&text, "iocore_loop_wakeups_total", &[]) > 0.0);
    assert!(value(&text, "iocore_loop_events_total", &[]) > 0.0);
    per_worker_matches(&text, &server, "iocore_sessions_accepted_total", |s| s.accepted);
    per_worker_matches(&text, &server, "iocore_received_bytes_total", |s| {
        s.bytes_received
    });
    per_worker_matches(&text, &server, "iocore_sent_messages_total", |s| s.messages_sent);
    // A worker may wake up (a timer, the scrape's own command) while the
    // scrape runs: its count lies between the counters before and after.
    for (w, (b, a)) in before.iter().zip(&after).enumerate() {
        let label = format!("worker=\"{w}\"");
        let seen = value(&text, "iocore_loop_wakeups_total", &[&label]);
        assert!(
            (b.loop_turns as f64..=a.loop_turns as f64).contains(&seen),
            "iocore_loop_wakeups_total of worker {w}: {seen}, not within {}..={}",
            b.loop_turns,
            a.loop_turns
        );
    }
    match engine {
        EngineKind::Uring => {
            assert!(value(&text, "iocore_uring_submissions_total", &[]) > 0.0);
            assert!(value(&text, "iocore_uring_completions_total", &[]) > 0.0);
        }
        _ => assert_eq!(metric(&text, "iocore_uring_submissions_total", &[]), None),
    }
    #[cfg(target_os = "linux")]
    promtool_accepts(&text);

    // Without HTTP, the same text (but for the loop's own counters, which
    // move whenever a worker wakes); OpenMetrics on request.
    assert_eq!(
        without_live_counters(&server.metrics_text(Format::Prometheus)),
        without_live_counters(&text)
    );
    let om = server.metrics_text(Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# UNIT iocore_received_bytes bytes"));
    server.shutdown(Duration::from_secs(1)).unwrap();
}

/// The exposition without the series that count the workers' own
/// activity (wake-ups, events, io_uring submissions and completions): a
/// worker may wake between two scrapes of an idle server (a timer, the
/// scrape's own request), so only the rest can be compared.
fn without_live_counters(text: &str) -> String {
    const LIVE: [&str; 4] = [
        "iocore_loop_wakeups_total",
        "iocore_loop_events_total",
        "iocore_uring_submissions_total",
        "iocore_uring_completions_total",
    ];
    text.lines()
        .filter(|l| !LIVE.iter().any(|name| l.starts_with(&format!("{name}{{"))))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Reads what comes until EOF; the status line of the first answer.
fn status_of(mut s: TcpStream) -> String {
    let (got, _) = read_to_end(&mut s);
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or("").to_string()
}

fn endpoint_survives_hostile_and_busy_clients(engine: EngineKind) {
    let server = start(engine, Arc::default());
    let metrics = server.metrics_addr().unwrap();
    // A session of the main server, in use before, during and after.
    let mut player = connect(server.local_addr());
    let mut round_trip = |tag: &[u8]| {
        player.write_all(&packet(ECHO, tag)).unwrap();
        assert_eq!(read_exact(&mut player, 4 + tag.len()), packet(ECHO, tag));
    };
    round_trip(b"before");

    std::thread::scope(|t| {
        // A request that never completes: 408 after the request timeout.
        let slow = t.spawn(move || {
            let mut s = connect(metrics);
            s.write_all(b"GET /metr").unwrap();
            status_of(s)
        });

        // Garbage: 400, closed.
        let mut s = connect(metrics);
        s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
        assert_eq!(status_of(s), "HTTP/1.1 400 Bad Request");

        // A 1 MiB header: 431, closed, without reading it all.
        let mut s = connect(metrics);
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(big.len() + (1 << 20), b'a');
        big.extend_from_slice(b"\r\n\r\n");
        let _ = s.write_all(&big); // the server may close before it is all sent
        assert_eq!(status_of(s), "HTTP/1.1 431 Request Header Fields Too Large");

        // A request cut into single bytes, then pipelined requests on the
        // same kept-alive connection.
        let mut s = connect(metrics);
        s.set_nodelay(true).unwrap();
        for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" {
            s.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let a = read_http_answer(&mut s);
        assert_eq!(a.status, 200);
        assert!(a.body.contains("iocore_sessions_open"));
        s.write_all(b"GET /nope HTTP/1.1\r\n\r\nHEAD /metrics HTTP/1.1\r\n\r\nPOST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
            .unwrap();
        assert_eq!(read_http_answer(&mut s).status, 404);
        let head = read_http_answer_head_only(&mut s);
        assert_eq!(head, 200, "HEAD answers the headers only");
        let post = read_http_answer(&mut s);
        assert_eq!(post.status, 400, "a body is refused: {post:?}");
        assert_eq!(post.header("connection"), Some("close"));

        // 100 concurrent scrapes, all answered whole.
        round_trip(b"during");
        let scrapes: Vec<_> = (0..100)
            .map(|_| {
                t.spawn(move || http_get(metrics, "/metrics", &["Accept: application/openmetrics-text"]))
            })
            .collect();
        for s in scrapes {
            let a = s.join().unwrap();
            assert_eq!(a.status, 200);
            assert!(a.body.ends_with("# EOF\n"), "an OpenMetrics scrape, whole");
        }

        assert_eq!(slow.join().unwrap(), "HTTP/1.1 408 Request Timeout");
    });
    round_trip(b"after");
    // The main server saw only its player.
    let stats = server.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.closed_total(), 0);
    server.shutdown(Duration::from_secs(1)).unwrap();
}

/// Reads the head of an answer to HEAD (no body follows); its status.
fn read_http_answer_head_only(s: &mut TcpStream) -> u16 {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// An application's own metrics are served beside the server's; a taken
/// metrics port fails the start with a clear error and leaves nothing
/// running.
fn app_metrics_and_a_taken_port(engine: EngineKind) {
    use iocore::metrics::prometheus_client::metrics::counter::Counter;
    use iocore::metrics::prometheus_client::registry::Registry;
    let mut registry = Registry::default();
    let players: Counter = Counter::default();
    registry.register("game_players_joined", "Players who joined", players.clone());
    let server = server(engine)
        .metrics("127.0.0.1:0".parse().unwrap())
        .metrics_registry(registry)
        .start(|| {
            Packets::new(Game {
                paused: Arc::default(),
            })
        })
        .unwrap();
    players.inc_by(3);
    let text = scrape(&server);
    assert_eq!(metric(&text, "game_players_joined_total", &[]), Some(3.0));
    assert_eq!(metric(&text, "iocore_workers", &[]), Some(2.0));

    let taken = server.metrics_addr().unwrap();
    let err = match Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .engine(engine)
        .threads(1)
        .metrics(taken)
        .start(|| {
            Packets::new(Game {
                paused: Arc::default(),
            })
        }) {
        Ok(_) => panic!("a taken metrics port must fail the start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("metrics endpoint") && err.contains(&taken.to_string()),
        "{err}"
    );
    server.shutdown(Duration::from_secs(1)).unwrap();
}

/// Ticks every 2 ms until its tenth tick (or the first due after it, if
/// the worker was late: ticks passed meanwhile are skipped), and notes
/// the number of the tick it stopped at.
struct TenTicks(Arc<AtomicU64>);

impl Room for TenTicks {
    type Msg = ();
    fn on_message(&mut self, cx: &mut RoomCx<'_, ()>, _: Option<SessionId>, _: ()) {
        if cx.members().is_empty() {
            cx.set_tick(Duration::from_millis(2));
        }
    }
    fn on_tick(&mut self, cx: &mut RoomCx<'_, ()>, tick: TickInfo) {
        if tick.n >= 10 {
            self.0.store(tick.n, Ordering::SeqCst);
            cx.stop_tick();
        }
    }
}

/// The rooms' counters and tick lateness histogram, once they have
/// settled, in the scrape exactly as `room_stats` has them.
fn rooms_show_in_the_scrape(engine: EngineKind) {
    let last = Arc::new(AtomicU64::new(0));
    let l = last.clone();
    let rooms = Rooms::new(move |_| TenTicks(l.clone())).dispose_after(Duration::from_secs(3600));
    let server = server(engine)
        .rooms(&rooms)
        .metrics("127.0.0.1:0".parse().unwrap())
        .start(|| Echo)
        .unwrap();
    let room = rooms.get("ten").unwrap();
    for _ in 0..3 {
        room.post(None, ()).unwrap();
    }
    wait_until("ten ticks and the jobs", || {
        let s = rooms.stats();
        last.load(Ordering::SeqCst) >= 10
            && s.ticks + s.ticks_missed == last.load(Ordering::SeqCst)
            && s.jobs_run == 3
    });
    let stats = server.room_stats();
    let text = scrape(&server);
    assert_eq!(value(&text, "iocore_rooms", &[]), 1.0);
    assert_eq!(value(&text, "iocore_room_jobs_total", &[]), 3.0);
    assert_eq!(value(&text, "iocore_room_jobs_queued", &[]), 0.0);
    assert_eq!(value(&text, "iocore_room_ticks_total", &[]), stats.ticks as f64);
    assert_eq!(
        value(&text, "iocore_room_ticks_missed_total", &[]),
        stats.ticks_missed as f64
    );
    // Every tick up to the last was run or counted as missed (a late
    // worker skips some: how many is timing's, not the test's).
    assert_eq!(stats.ticks + stats.ticks_missed, last.load(Ordering::SeqCst));
    assert_eq!(
        value(&text, "iocore_room_tick_lateness_seconds_count", &[]),
        stats.ticks as f64
    );
    assert_eq!(
        value(
            &text,
            "iocore_room_tick_lateness_seconds_bucket",
            &["le=\"+Inf\""]
        ),
        stats.ticks as f64
    );
    #[cfg(target_os = "linux")]
    promtool_accepts(&text);
}

engine_suite!(
    scrape_shows_exactly_the_traffic,
    endpoint_survives_hostile_and_busy_clients,
    app_metrics_and_a_taken_port,
    rooms_show_in_the_scrape,
);
