//! The server's policy without sockets and without waiting: admission,
//! fan-out, flow control, the timeouts and the stop sequence, driven on
//! the simulated engine (`iocore::testing::Sim`) with a clock the test
//! moves. Real sockets and real time are for what the OS does (the
//! engine suites); here every deadline is checked to its millisecond.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iocore::room::{PostError, Room, RoomCx, Rooms, TickInfo};
use iocore::testing::{PeerState, Sim};
use iocore::{Bytes, CloseKind, Handler, Server, Session, SessionId};
use iocore_testkit::{pattern_byte, recorded, Echo, Pusher};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `max_sessions` counts across the workers: the connection beyond it is
/// reset before any handler hears of it, and a freed place is taken again.
#[test]
fn max_sessions_refuses_the_extra_connection_until_a_place_is_free() {
    let (events, factory) = recorded(|| Echo);
    let mut sim = Sim::start(Server::builder().threads(2).max_sessions(2), factory).unwrap();
    let (a, b) = (sim.connect(), sim.connect());
    let extra = sim.connect();
    assert_eq!(sim.state(extra), PeerState::Reset);
    assert_eq!(sim.session(extra), None, "no session for a refused connection");
    assert_eq!(events.connected.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(sim.stats().rejected, 1);
    sim.shutdown(a);
    assert_eq!(sim.state(a), PeerState::Finished);
    let again = sim.connect();
    assert_eq!(sim.state(again), PeerState::Open);
    sim.write(again, b"still served");
    assert_eq!(sim.read(again), b"still served");
    assert_eq!(sim.state(b), PeerState::Open);
}

/// `max_sessions_per_ip` refuses only the extra connection of one address.
#[test]
fn the_per_address_cap_refuses_only_that_address() {
    let mut sim = Sim::start(Server::builder().max_sessions_per_ip(Some(2)), || Echo).unwrap();
    let one = "127.0.0.7:1000".parse().unwrap();
    let other = "127.0.0.8:1000".parse().unwrap();
    let (a, _b) = (sim.connect_from(one), sim.connect_from(one));
    let third = sim.connect_from(one);
    assert_eq!(sim.state(third), PeerState::Reset);
    let elsewhere = sim.connect_from(other);
    assert_eq!(sim.state(elsewhere), PeerState::Open);
    assert_eq!(sim.stats().rejected_per_ip, 1);
    sim.reset(a);
    let again = sim.connect_from(one);
    assert_eq!(sim.state(again), PeerState::Open, "a freed place");
}

/// A handler that subscribes to "room" and, on a line, publishes it there
/// (prefixed with who said it).
struct Member;

impl Handler for Member {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        s.subscribe("room");
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        let line = format!("{}:{}", s.id().worker(), String::from_utf8_lossy(&data[..=nl]));
        s.publish("room", Bytes::from(line));
        nl + 1
    }
}

/// Fan-out: what one member publishes reaches every member on every
/// worker, in the order published, exactly once; a publish from outside
/// too. One buffer per publish (counted per topic as one publish).
#[test]
fn publishes_reach_every_subscriber_in_order_on_every_worker() {
    let mut sim = Sim::start(Server::builder().threads(3), || Member).unwrap();
    let members: Vec<_> = (0..6).map(|_| sim.connect()).collect();
    let workers: std::collections::BTreeSet<usize> = members
        .iter()
        .map(|&m| sim.session(m).unwrap().worker())
        .collect();
    assert_eq!(workers.len(), 3, "members on every worker");
    let talker = members[1];
    let w = sim.session(talker).unwrap().worker();
    let mut said = String::new();
    for i in 0..20 {
        sim.write(talker, format!("line {i}\n").as_bytes());
        said.push_str(&format!("{w}:line {i}\n"));
    }
    sim.publish("room", "news\n");
    said.push_str("news\n");
    for &m in &members {
        assert_eq!(String::from_utf8(sim.read(m)).unwrap(), said, "member {m:?}");
    }
    let topic = sim.topic("room").unwrap();
    assert_eq!((topic.subscribers, topic.publishes), (6, 21));
    assert_eq!(topic.deliveries, 21 * 6);
}

/// A subscriber that takes nothing is closed when a delivery would take
/// its queue over `max_send_queue`; the others get every message.
#[test]
fn a_subscriber_over_its_cap_is_closed_and_the_others_go_on() {
    let (events, factory) = recorded(|| Member);
    let builder = Server::builder()
        .max_send_queue(64 * 1024)
        .send_watermarks(32 * 1024, 16 * 1024);
    let mut sim = Sim::start(builder, factory).unwrap();
    let (stuck, fine) = (sim.connect(), sim.connect());
    sim.set_window(stuck, 0);
    let chunk = Bytes::from(vec![b'x'; 8 * 1024]);
    for _ in 0..20 {
        sim.publish("room", chunk.clone());
        sim.read(fine);
    }
    assert_eq!(sim.state(stuck), PeerState::Reset);
    assert_eq!(events.closed(), [CloseKind::SendQueueFull]);
    assert_eq!(sim.topic("room").unwrap().closed_at_cap, 1);
    sim.publish("room", "after\n");
    assert_eq!(sim.read(fine), b"after\n");
}

/// A request from outside naming a session that has ended is dropped and
/// counted: never delivered to the session that took the slot next.
#[test]
fn a_stale_session_id_is_never_delivered_to_its_slots_next_session() {
    let mut sim = Sim::start(Server::builder(), || Echo).unwrap();
    let first = sim.connect();
    let old: SessionId = sim.session(first).unwrap();
    sim.shutdown(first);
    let second = sim.connect();
    let new = sim.session(second).unwrap();
    assert_ne!(old, new, "the reused slot has a new generation");
    sim.send(old, "for the old session").unwrap();
    assert!(sim.read(second).is_empty());
    assert_eq!(sim.stats().stale_requests, 1);
    sim.send(new, "for the new one").unwrap();
    assert_eq!(sim.read(second), b"for the new one");
}

/// The stall timeout, judged by what the peer acknowledges (every quarter
/// of the timeout without progress): a peer that reads a little every
/// 300 ms is kept for as long as it reads, however full its socket; one
/// that reads nothing is closed one to one and a quarter timeouts after
/// its last acknowledgment.
#[test]
fn the_stall_timeout_closes_a_non_reader_not_a_slow_reader() {
    const TOTAL: u64 = 4 << 20;
    let (events, factory) = recorded(|| Pusher::new(5, TOTAL, 16 * 1024, true));
    let mut sim = Sim::start(Server::builder().send_stall_timeout(Some(ms(2000))), factory).unwrap();
    let (silent, slow) = (sim.connect(), sim.connect());
    sim.set_window(silent, 4096);
    sim.set_window(slow, 4096);
    // The silent peer's kernel took 4 KiB, then nothing: closed at 2000 ms
    // (its count last moved before the first check), and reset.
    let mut got = Vec::new();
    let mut closed_at = None;
    for _ in 0..40 {
        sim.advance(ms(300));
        got.extend(sim.read_some(slow, 1024));
        if closed_at.is_none() && sim.state(silent) == PeerState::Reset {
            closed_at = Some(sim.now());
        }
    }
    let closed_at = closed_at.expect("the silent peer was closed");
    assert!(
        (ms(2000)..=ms(2500)).contains(&closed_at),
        "closed at {closed_at:?}"
    );
    assert_eq!(events.closed(), [CloseKind::SendStalled]);
    assert_eq!(
        sim.state(slow),
        PeerState::Open,
        "12 s at 1 KiB per 300 ms, never stalled"
    );
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(5, i as u64)));
    // The slow one reads fast now: everything, then the pusher's FIN.
    while sim.state(slow) == PeerState::Open {
        got.extend(sim.read(slow));
        sim.advance(ms(1));
    }
    assert_eq!(got.len() as u64, TOTAL);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(5, i as u64)));
}

/// The idle timeout closes a session that received nothing for that long
/// (FIN after what is queued), to the millisecond; input resets it.
#[test]
fn the_idle_timeout_closes_at_its_deadline_and_input_restarts_it() {
    let (events, factory) = recorded(|| Echo);
    let mut sim = Sim::start(Server::builder().idle_timeout(Some(ms(200))), factory).unwrap();
    let peer = sim.connect();
    sim.advance(ms(150));
    sim.write(peer, b"hi");
    assert_eq!(sim.read(peer), b"hi");
    sim.advance(ms(199));
    assert_eq!(sim.state(peer), PeerState::Open, "199 ms since the input");
    sim.advance(ms(1));
    assert_eq!(sim.state(peer), PeerState::Finished, "200 ms: FIN");
    sim.shutdown(peer);
    assert_eq!(events.closed(), [CloseKind::IdleTimeout]);
}

/// A handler's timer fires at its millisecond, once; set again it fires
/// again.
#[test]
fn a_handlers_timer_fires_at_its_millisecond() {
    struct Ticker(Arc<Mutex<Vec<Duration>>>, Duration);
    impl Handler for Ticker {
        fn on_connected(&mut self, s: &mut Session<'_>) {
            s.set_timer(ms(25));
        }
        fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
            data.len()
        }
        fn on_timer(&mut self, s: &mut Session<'_>) {
            self.1 += ms(25);
            self.0.lock().unwrap().push(self.1);
            if self.1 < ms(100) {
                s.set_timer(ms(25));
            }
        }
    }
    let fired = Arc::new(Mutex::new(Vec::new()));
    let f = fired.clone();
    let mut sim = Sim::start(Server::builder(), move || Ticker(f.clone(), Duration::ZERO)).unwrap();
    sim.connect();
    sim.advance(ms(24));
    assert!(fired.lock().unwrap().is_empty());
    sim.advance(ms(1000));
    assert_eq!(*fired.lock().unwrap(), [ms(25), ms(50), ms(75), ms(100)]);
}

/// A close flushes, sends FIN, and waits for the peer's FIN for the
/// linger time (2 s): a peer that never sends it is done at the linger
/// deadline; one that does is done at once.
#[test]
fn a_closed_session_lingers_for_the_peers_fin_until_the_deadline() {
    struct Bye;
    impl Handler for Bye {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            let _ = s.send_copy(b"bye\n");
            s.close();
            data.len()
        }
    }
    let (events, factory) = recorded(|| Bye);
    let mut sim = Sim::start(Server::builder(), factory).unwrap();
    let (quiet, polite) = (sim.connect(), sim.connect());
    sim.write(quiet, b"x");
    sim.write(polite, b"x");
    assert_eq!(sim.read(quiet), b"bye\n");
    assert_eq!(sim.state(quiet), PeerState::Finished, "FIN after the flush");
    assert_eq!(sim.stats().live_sessions, 2, "both linger for their peer's FIN");
    sim.shutdown(polite);
    assert_eq!(sim.stats().live_sessions, 1, "the polite one is done at its FIN");
    sim.advance(ms(1999));
    assert_eq!(sim.stats().live_sessions, 1);
    sim.advance(ms(1));
    assert_eq!(
        sim.stats().live_sessions,
        0,
        "the quiet one at the linger deadline"
    );
    assert_eq!(events.closed(), [CloseKind::LocalClose, CloseKind::LocalClose]);
}

/// The stop: no new sessions; each session flushes what is queued and
/// ends with FIN; one whose peer takes nothing is reset at the grace's
/// end, to the millisecond; then the workers are finished.
#[test]
fn the_stop_flushes_then_resets_what_is_left_at_the_deadline() {
    let (events, factory) = recorded(|| Echo);
    let builder = Server::builder()
        .max_send_queue(1 << 20)
        .send_watermarks(1 << 20, 1 << 19);
    let mut sim = Sim::start(builder, factory).unwrap();
    let (ok, stuck) = (sim.connect(), sim.connect());
    sim.set_window(stuck, 0);
    sim.write(ok, b"queued before the stop");
    sim.write(stuck, &[7; 1000]);
    sim.set_window(ok, 0);
    sim.write(ok, b"!");
    sim.stop(ms(500));
    let late = sim.connect();
    assert_eq!(sim.state(late), PeerState::Reset, "no new sessions");
    sim.set_window(ok, 1 << 20);
    assert_eq!(sim.read(ok), b"queued before the stop!");
    assert_eq!(sim.state(ok), PeerState::Finished, "flushed, then FIN");
    sim.shutdown(ok);
    sim.advance(ms(499));
    assert_eq!(sim.state(stuck), PeerState::Open, "still within the grace");
    sim.advance(ms(1));
    assert_eq!(sim.state(stuck), PeerState::Reset, "reset at the deadline");
    assert!(sim.is_finished());
    assert!(events.closed().iter().all(|k| *k == CloseKind::ServerShutdown));
}

/// A PROXY header that does not arrive whole within its timeout closes the
/// connection then, to the millisecond, before any handler hears of it.
#[cfg(feature = "proxy-protocol")]
#[test]
fn a_proxy_header_not_whole_in_time_closes_at_its_deadline() {
    let proxy = iocore::proxy::ProxyProtocol {
        header_timeout: ms(300),
        ..Default::default()
    };
    let (events, factory) = recorded(|| Echo);
    let mut sim = Sim::start(Server::builder().proxy_protocol(Some(proxy)), factory).unwrap();
    let (slow, good) = (sim.connect(), sim.connect());
    sim.write(slow, b"PROXY TCP4 203.0.");
    sim.write(good, b"PROXY TCP4 203.0.113.1 10.0.0.1 1000 7777\r\nhello");
    assert_eq!(sim.read(good), b"hello");
    sim.advance(ms(299));
    assert_eq!(sim.state(slow), PeerState::Open);
    sim.advance(ms(1));
    assert_eq!(sim.state(slow), PeerState::Finished);
    assert_eq!(events.closed(), [CloseKind::ProxyTimeout]);
    assert_eq!(events.connected.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A handler that panics in `on_timer` ends only its session (reset, and
/// told why), not its worker: the other session on the worker is served.
#[test]
fn a_panic_in_a_timer_ends_only_that_session() {
    struct Ticking;
    impl Handler for Ticking {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            if data == b"arm" {
                s.set_timer(ms(50));
            } else {
                let _ = s.send_copy(data);
            }
            data.len()
        }
        fn on_timer(&mut self, _: &mut Session<'_>) {
            panic!("the timer went off");
        }
    }
    let (events, factory) = recorded(|| Ticking);
    let mut sim = Sim::start(Server::builder().threads(1), factory).unwrap();
    let (doomed, calm) = (sim.connect(), sim.connect());
    sim.write(doomed, b"arm");
    sim.advance(ms(49));
    assert_eq!(sim.state(doomed), PeerState::Open);
    sim.advance(ms(1));
    assert_eq!(sim.state(doomed), PeerState::Reset);
    assert_eq!(events.closed(), [CloseKind::HandlerPanicked]);
    assert_eq!(
        *events.reasons.lock().unwrap(),
        ["the handler panicked: the timer went off"]
    );
    assert_eq!(sim.stats().closed(CloseKind::HandlerPanicked), 1);
    sim.write(calm, b"still here");
    assert_eq!(sim.read(calm), b"still here");
}

/// A room that starts a 50 ms tick when told, records its ticks, and
/// posts itself a reminder when asked.
struct Clockwork {
    ticks: Arc<Mutex<Vec<TickInfo>>>,
}

impl Room for Clockwork {
    type Msg = &'static str;
    fn on_message(&mut self, cx: &mut RoomCx<'_, &'static str>, from: Option<SessionId>, msg: &'static str) {
        match (from, msg) {
            (_, "start") => cx.set_tick(ms(50)),
            (_, "remind") => {
                cx.after(ms(30), "reminded");
            }
            (None, "reminded") => cx.set_tick(ms(1000)),
            _ => {}
        }
    }
    fn on_tick(&mut self, _: &mut RoomCx<'_, &'static str>, tick: TickInfo) {
        self.ticks.lock().unwrap().push(tick);
    }
}

/// The tick runs at its millisecond; a tick held up by a busy worker runs
/// once, late by exactly how long it waited, with the ticks whose time
/// passed counted as missed; the schedule after it stays on its grid.
#[test]
fn a_late_tick_runs_once_and_the_missed_ones_are_counted() {
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let t = ticks.clone();
    let rooms = Rooms::new(move |_| Clockwork { ticks: t.clone() });
    let mut sim = Sim::start(Server::builder().threads(1).rooms(&rooms), || Echo).unwrap();
    let room = rooms.get("clock").unwrap();
    room.post(None, "start").unwrap();
    sim.run();
    sim.advance(ms(49));
    assert!(ticks.lock().unwrap().is_empty());
    sim.advance(ms(101));
    // (n, due, missed, lateness)
    let seen = |i: usize| {
        let t = ticks.lock().unwrap()[i];
        (t.n, t.due, t.missed, t.lateness)
    };
    let on_time = |n: u64| (n, ms(50) * n as u32, 0, Duration::ZERO);
    assert_eq!(ticks.lock().unwrap().len(), 3);
    assert_eq!([seen(0), seen(1), seen(2)], [on_time(1), on_time(2), on_time(3)]);
    // Busy for 120 ms from 150: ticks 4 (200) and 5 (250) fell due.
    sim.stall(ms(120));
    assert_eq!(seen(3), (5, ms(250), 1, ms(70)));
    sim.advance(ms(30));
    assert_eq!(seen(4), on_time(6));
    let stats = rooms.stats();
    assert_eq!((stats.ticks, stats.ticks_missed), (5, 1));
    // A reminder the room posts itself comes at its millisecond.
    room.post(None, "remind").unwrap();
    sim.run();
    sim.advance(ms(29));
    assert_eq!(ticks.lock().unwrap().len(), 5);
    sim.advance(ms(1));
    // "reminded" at 330 restarted the tick at 1 s: nothing at 350.
    sim.advance(ms(50));
    assert_eq!(ticks.lock().unwrap().len(), 5);
}

/// An empty room goes after exactly its grace period; a member, a queued
/// job or a timer keeps it.
#[test]
fn an_empty_room_is_disposed_at_the_end_of_its_grace() {
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let t = ticks.clone();
    let rooms = Rooms::new(move |_| Clockwork { ticks: t.clone() }).dispose_after(ms(100));
    let mut sim = Sim::start(Server::builder().threads(1).rooms(&rooms), || Echo).unwrap();
    let peer = sim.connect();
    let member = sim.session(peer).unwrap();
    let room = rooms.get("short").unwrap();
    sim.run();
    assert_eq!(rooms.stats().rooms, 1);
    sim.advance(ms(99));
    assert_eq!(rooms.stats().rooms, 1);
    room.join(member).unwrap();
    sim.run();
    sim.advance(ms(500));
    assert_eq!(rooms.stats().rooms, 1, "a member keeps it");
    room.leave(member).unwrap();
    room.post(None, "remind").unwrap();
    sim.run();
    sim.advance(ms(129));
    assert_eq!(
        rooms.stats().rooms,
        1,
        "its timer (30 ms) kept it, then 99 ms of grace"
    );
    sim.advance(ms(1));
    assert_eq!(rooms.stats().rooms, 0);
    assert_eq!(room.post(None, "start"), Err(PostError::Gone));
}

/// Gathers what it is told into its coalesced broadcast (50 ms tick).
struct Gatherer;

impl Room for Gatherer {
    type Msg = &'static str;
    fn on_join(&mut self, cx: &mut RoomCx<'_, &'static str>, _: SessionId) {
        if cx.members().len() == 1 {
            cx.set_tick(ms(50));
        }
    }
    fn on_message(&mut self, cx: &mut RoomCx<'_, &'static str>, _: Option<SessionId>, text: &'static str) {
        cx.broadcast_at_tick(text.as_bytes());
    }
}

/// A handler that only listens.
struct Listener;

impl Handler for Listener {
    fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

/// What a room gathers in a tick reaches its members together at the
/// tick's end, and only those who were members when it was said: a join
/// or a leave sends what was gathered before it.
#[test]
fn a_coalesced_broadcast_goes_at_the_tick_to_who_was_there() {
    let rooms = Rooms::new(|_| Gatherer);
    let mut sim = Sim::start(Server::builder().threads(2).rooms(&rooms), || Listener).unwrap();
    let (a, b, c) = (sim.connect(), sim.connect(), sim.connect());
    let id = |sim: &Sim<Listener>, p| sim.session(p).unwrap();
    let room = rooms.get("hall").unwrap();
    room.join(id(&sim, a)).unwrap();
    room.join(id(&sim, c)).unwrap();
    room.post(None, "one,").unwrap();
    room.post(None, "two,").unwrap();
    sim.run();
    assert_eq!(sim.read(a), b"", "gathered, not sent yet");
    room.join(id(&sim, b)).unwrap();
    sim.run();
    assert_eq!(sim.read(a), b"one,two,", "sent before b joined");
    assert_eq!(sim.read(b), b"");
    room.post(None, "three,").unwrap();
    room.leave(id(&sim, c)).unwrap();
    room.post(None, "four,").unwrap();
    sim.run();
    assert_eq!(
        sim.read(c),
        b"one,two,three,",
        "c heard what was said while it was there"
    );
    sim.advance(ms(50));
    assert_eq!(sim.read(a), b"three,four,");
    assert_eq!(sim.read(b), b"three,four,");
    assert_eq!(sim.read(c), b"");
}
