//! Rooms on every engine: jobs in order per poster and never two at once,
//! a flooded or slow room taking its turn with the others, the tick on its
//! schedule, the inbox limit, disposal after the grace period, and what a
//! room sends reaching its members on every worker.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iocore::room::{PostError, Room, RoomCx, Rooms, TickInfo};
use iocore::{EngineKind, Handler, Session, SessionId};
use iocore_testkit::*;

/// Checks that each poster's messages arrive in order and that no two jobs
/// of the room ever run at once.
struct Ledger {
    inside: Arc<AtomicBool>,
    next: Vec<u32>,
    log: Arc<Mutex<LedgerLog>>,
}

#[derive(Default)]
struct LedgerLog {
    seen: usize,
    out_of_order: Vec<String>,
    overlaps: usize,
}

impl Room for Ledger {
    type Msg = (usize, u32);
    fn on_message(
        &mut self,
        _: &mut RoomCx<'_, Self::Msg>,
        _: Option<SessionId>,
        (poster, seq): (usize, u32),
    ) {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.log.lock().unwrap().overlaps += 1;
        }
        // Long enough for a second thread to run into the room, if one could.
        std::thread::yield_now();
        if self.next.len() <= poster {
            self.next.resize(poster + 1, 0);
        }
        let mut log = self.log.lock().unwrap();
        if self.next[poster] != seq {
            log.out_of_order
                .push(format!("poster {poster}: {seq} after {}", self.next[poster]));
        }
        self.next[poster] = seq + 1;
        log.seen += 1;
        drop(log);
        self.inside.store(false, Ordering::SeqCst);
    }
}

/// A session that, on each byte `g`, posts `count` numbered messages to
/// room "ledger" as poster `poster`.
struct Poster {
    rooms: Rooms<Ledger>,
    poster: usize,
    count: u32,
}

impl Handler for Poster {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let room = self.rooms.get("ledger").unwrap();
        for _ in data {
            for seq in 0..self.count {
                room.post(Some(s.id()), (self.poster, seq)).unwrap();
            }
        }
        let _ = s.send_copy(b"k");
        data.len()
    }
}

fn jobs_run_in_post_order_per_poster_and_never_at_once(engine: EngineKind) {
    let log = Arc::new(Mutex::new(LedgerLog::default()));
    let inside = Arc::new(AtomicBool::new(false));
    let (l, i) = (log.clone(), inside.clone());
    let rooms = Rooms::new(move |_| Ledger {
        inside: i.clone(),
        next: Vec::new(),
        log: l.clone(),
    })
    .inbox_limit(1_000_000);
    let posters = Arc::new(AtomicUsize::new(0));
    let (r, p) = (rooms.clone(), posters.clone());
    let server = server(engine)
        .threads(2)
        .rooms(&rooms)
        .start(move || Poster {
            rooms: r.clone(),
            poster: p.fetch_add(1, Ordering::SeqCst),
            count: 500,
        })
        .unwrap();
    // Sessions on both workers post, and so do four threads of our own.
    let mut peers: Vec<_> = (0..6).map(|_| connect(server.local_addr())).collect();
    for peer in &mut peers {
        peer.write_all(b"g").unwrap();
    }
    let outside: Vec<_> = (0..4)
        .map(|t| {
            let room = rooms.get("ledger").unwrap();
            std::thread::spawn(move || {
                for seq in 0..2_000 {
                    room.post(None, (100 + t, seq)).unwrap();
                }
            })
        })
        .collect();
    for t in outside {
        t.join().unwrap();
    }
    for peer in &mut peers {
        let mut k = [0; 1];
        peer.read_exact(&mut k).unwrap();
    }
    let total = 6 * 500 + 4 * 2_000;
    wait_until("every job ran", || log.lock().unwrap().seen == total);
    let log = log.lock().unwrap();
    assert!(
        log.out_of_order.is_empty(),
        "{:?}",
        &log.out_of_order[..log.out_of_order.len().min(5)]
    );
    assert_eq!(log.overlaps, 0, "two jobs of one room ran at once");
    assert_eq!(rooms.stats().jobs_run as usize, total);
}

/// Rooms of one worker that record when their jobs run; "slow" sleeps in
/// each job.
struct Recorder {
    key: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Room for Recorder {
    type Msg = u32;
    fn on_message(&mut self, _: &mut RoomCx<'_, u32>, _: Option<SessionId>, n: u32) {
        if self.key == "slow" {
            std::thread::sleep(Duration::from_millis(30));
        }
        self.log.lock().unwrap().push(format!("{}{n}", self.key));
    }
}

/// On its first byte, posts 5 jobs to "slow", 500 to "flood" and one to
/// "quick", all from the worker's thread within one callback (so the
/// worker takes them in together).
struct Burst(Rooms<Recorder>);

impl Handler for Burst {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let (slow, flood, quick) = (
            self.0.get("slow").unwrap(),
            self.0.get("flood").unwrap(),
            self.0.get("quick").unwrap(),
        );
        for n in 0..5 {
            slow.post(None, n).unwrap();
        }
        for n in 0..500 {
            flood.post(None, n).unwrap();
        }
        quick.post(None, 0).unwrap();
        let _ = s.send_copy(b"k");
        data.len()
    }
}

/// Rooms of recorders, and the log they share.
fn recorders() -> (Rooms<Recorder>, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let rooms = Rooms::new(move |key| Recorder {
        key: key.to_string(),
        log: l.clone(),
    });
    (rooms, log)
}

fn a_flooded_or_slow_room_takes_its_turn_with_the_others(engine: EngineKind) {
    let (rooms, log) = recorders();
    let rooms = rooms.jobs_per_turn(64).turn_budget(Duration::from_millis(2));
    let r = rooms.clone();
    let server = server(engine)
        .threads(1)
        .rooms(&rooms)
        .start(move || Burst(r.clone()))
        .unwrap();
    let mut peer = connect(server.local_addr());
    peer.write_all(b"g").unwrap();
    wait_until("every job ran", || log.lock().unwrap().len() == 506);
    let log = log.lock().unwrap();
    let at = |job: &str| log.iter().position(|j| j == job).unwrap();
    // The quick room's one job waits for at most one turn of each of the
    // others: one slow job (its 30 ms are over the 2 ms budget) and 64 of
    // the flood's.
    let slow_before = log[..at("quick0")]
        .iter()
        .filter(|j| j.starts_with("slow"))
        .count();
    let flood_before = log[..at("quick0")]
        .iter()
        .filter(|j| j.starts_with("flood"))
        .count();
    assert!(
        slow_before <= 1,
        "{slow_before} slow jobs ran before the quick room's"
    );
    assert!(
        flood_before <= 64,
        "{flood_before} flood jobs ran before the quick room's"
    );
    // And the slow room yields after each job: the flood runs between any
    // two of them.
    for n in 0..4 {
        let between = &log[at(&format!("slow{n}"))..at(&format!("slow{}", n + 1))];
        assert!(
            between.iter().any(|j| j.starts_with("flood")),
            "slow{n} and slow{} ran back to back",
            n + 1
        );
    }
}

/// Ticks every 5 ms once joined, recording each tick and when the tick
/// was set.
struct Ticker {
    ticks: Arc<Mutex<(Duration, Vec<TickInfo>)>>,
}

impl Room for Ticker {
    type Msg = ();
    fn on_join(&mut self, cx: &mut RoomCx<'_, ()>, _: SessionId) {
        cx.set_tick(Duration::from_millis(5));
        self.ticks.lock().unwrap().0 = cx.now();
    }
    fn on_message(&mut self, _: &mut RoomCx<'_, ()>, _: Option<SessionId>, _: ()) {}
    fn on_tick(&mut self, cx: &mut RoomCx<'_, ()>, tick: TickInfo) {
        let mut t = self.ticks.lock().unwrap();
        t.1.push(tick);
        if tick.n >= 200 {
            cx.stop_tick();
        }
    }
}

/// 200 ticks of 5 ms on the real clock: each is due exactly `n` periods
/// after the start (no drift, however late the ones before ran), and every
/// index up to the last (the 200th, or the first due after it) either ran
/// or was counted missed. (How late ticks run
/// depends on the machine; `iocore bench` measures it. The simulated
/// engine's test checks lateness to the millisecond.)
fn the_tick_keeps_its_schedule(engine: EngineKind) {
    let ticks = Arc::new(Mutex::new((Duration::ZERO, Vec::new())));
    let t = ticks.clone();
    let rooms = Rooms::new(move |_| Ticker { ticks: t.clone() });
    let server = server(engine).rooms(&rooms).start(|| Echo).unwrap();
    let room = rooms.get("clock").unwrap();
    room.join(SessionId::from_u64(u64::MAX)).unwrap();
    wait_until("200 ticks", || {
        ticks.lock().unwrap().1.last().is_some_and(|t| t.n >= 200)
    });
    let (start, ticks) = ticks.lock().unwrap().clone();
    let period = Duration::from_millis(5);
    let mut accounted = 0;
    let mut previous = 0;
    for t in &ticks {
        assert_eq!(t.due, start + period * t.n as u32, "tick {} off its grid", t.n);
        assert_eq!(t.n, previous + 1 + t.missed, "tick {} after {previous}", t.n);
        assert!(t.lateness >= period * t.missed as u32, "{t:?}");
        accounted += 1 + t.missed;
        previous = t.n;
    }
    // The last tick is the first due at or after the 200th: later when the
    // worker was late and skipped some (how late is timing's, not ours).
    let last = ticks.last().unwrap().n;
    assert!(last >= 200);
    assert_eq!(accounted, last);
    wait_until("the stats count the last tick", || {
        let s = rooms.stats();
        s.ticks + s.ticks_missed == last
    });
    let stats = rooms.stats();
    assert_eq!(stats.ticks, ticks.len() as u64);
    assert_eq!(stats.tick_lateness.iter().sum::<u64>(), stats.ticks);
    assert_eq!(server.room_stats(), stats);
}

/// Posts from the worker's own thread, before the room has run: the
/// inbox takes four, refuses the rest as full; a leave is never refused.
struct Filler {
    room: iocore::room::RoomRef<u32>,
    answers: Arc<Mutex<Vec<Result<(), PostError>>>>,
}

impl Handler for Filler {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut answers = self.answers.lock().unwrap();
        for n in 0..6 {
            answers.push(self.room.post(Some(s.id()), n));
        }
        answers.push(self.room.leave(s.id()));
        let _ = s.send_copy(b"k");
        data.len()
    }
}

fn a_full_inbox_refuses_posts_until_the_room_catches_up(engine: EngineKind) {
    let (rooms, log) = recorders();
    let rooms = rooms.inbox_limit(4);
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (r, a) = (rooms.clone(), answers.clone());
    let server = server(engine)
        .threads(1)
        .rooms(&rooms)
        .start(move || Filler {
            room: r.get("small").unwrap(),
            answers: a.clone(),
        })
        .unwrap();
    // Let the room open (its first job) before the burst.
    rooms.get("small").unwrap();
    wait_until("the room is open", || rooms.stats().rooms == 1);
    let mut peer = connect(server.local_addr());
    peer.write_all(b"g").unwrap();
    let mut k = [0; 1];
    peer.read_exact(&mut k).unwrap();
    let full = Err(PostError::Full);
    assert_eq!(
        *answers.lock().unwrap(),
        [Ok(()), Ok(()), Ok(()), Ok(()), full, full, Ok(())]
    );
    wait_until("the four ran", || log.lock().unwrap().len() == 4);
    assert_eq!(*log.lock().unwrap(), ["small0", "small1", "small2", "small3"]);
    assert_eq!(rooms.stats().posts_refused, 2);
    // Caught up: posts are taken again.
    peer.write_all(b"g").unwrap();
    peer.read_exact(&mut k).unwrap();
    assert_eq!(answers.lock().unwrap()[7..11], [Ok(()), Ok(()), Ok(()), Ok(())]);
}

/// Keeps its members; says what it sends to them in `on_message`.
struct Echoes;

impl Room for Echoes {
    type Msg = Vec<u8>;
    fn on_join(&mut self, cx: &mut RoomCx<'_, Vec<u8>>, member: SessionId) {
        cx.send(member, &b"welcome\n"[..]);
    }
    fn on_message(&mut self, cx: &mut RoomCx<'_, Vec<u8>>, _: Option<SessionId>, line: Vec<u8>) {
        cx.broadcast(line);
    }
}

/// Joins room "hall" on connect, posts each line to it, leaves on
/// disconnect.
struct Member(Rooms<Echoes>, Option<(iocore::room::RoomRef<Vec<u8>>, SessionId)>);

impl Handler for Member {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        let room = self.0.get("hall").unwrap();
        room.join(s.id()).unwrap();
        self.1 = Some((room, s.id()));
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        let _ = self
            .1
            .as_ref()
            .unwrap()
            .0
            .post(Some(s.id()), data[..=nl].to_vec());
        nl + 1
    }
    fn on_disconnected(&mut self, _: iocore::CloseReason) {
        if let Some((room, id)) = self.1.take() {
            room.leave(id).unwrap();
        }
    }
}

/// What a room broadcasts reaches every member, on every worker; when they
/// have all gone, the room is disposed after its grace period, a post to
/// it is refused as gone, and a lookup by key makes a new one.
fn members_on_every_worker_hear_the_room_and_an_empty_room_is_disposed(engine: EngineKind) {
    let rooms = Rooms::new(|_| Echoes).dispose_after(Duration::from_millis(100));
    let r = rooms.clone();
    let server = server(engine)
        .threads(3)
        .rooms(&rooms)
        .start(move || Member(r.clone(), None))
        .unwrap();
    let mut peers: Vec<_> = (0..6).map(|_| connect(server.local_addr())).collect();
    for p in &mut peers {
        let mut w = [0; 8];
        p.read_exact(&mut w).unwrap();
        assert_eq!(&w, b"welcome\n");
    }
    peers[0].write_all(b"hello all\n").unwrap();
    for p in &mut peers {
        let mut line = [0; 10];
        p.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"hello all\n");
    }
    let hall = rooms.get("hall").unwrap();
    assert_eq!(rooms.stats().rooms, 1);
    // The members go: their handlers leave the room.
    drop(peers);
    wait_until("the room is disposed", || rooms.stats().rooms == 0);
    assert_eq!(hall.post(None, b"late\n".to_vec()), Err(PostError::Gone));
    let again = rooms.get("hall").unwrap();
    wait_until("a new room", || rooms.stats().rooms == 1);
    again.post(None, b"new\n".to_vec()).unwrap();
}

engine_suite!(
    jobs_run_in_post_order_per_poster_and_never_at_once,
    a_flooded_or_slow_room_takes_its_turn_with_the_others,
    the_tick_keeps_its_schedule,
    a_full_inbox_refuses_posts_until_the_room_catches_up,
    members_on_every_worker_hear_the_room_and_an_empty_room_is_disposed,
);
