//! The arena (`serve --app arena`) on every engine: bots play end to end;
//! a dropped player takes its place back with its token within the grace
//! period, and not after; a full room and broken packets are refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use iocore::{EngineKind, ServerHandle};
use iocore_cli::arena::bots::{self, ArenaOptions};
use iocore_cli::arena::server::{self as arena, ArenaConfig};
use iocore_cli::arena::wire::{self, Packet};
use iocore_cli::load::Load;
use iocore_testkit::*;

fn start(engine: EngineKind, cfg: ArenaConfig) -> ServerHandle {
    let rooms = arena::rooms(cfg);
    let r = rooms.clone();
    server(engine)
        .rooms(&rooms)
        .start(move || arena::handler(&r))
        .unwrap()
}

/// A player speaking the protocol over a plain socket.
struct Raw(TcpStream);

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        Raw(connect(addr))
    }

    fn send(&mut self, p: impl Into<Packet>) {
        self.0.write_all(&p.into().encode().unwrap()).unwrap();
    }

    /// The next packet, or `None` at the end of the stream.
    fn next(&mut self) -> Option<Packet> {
        let mut header = [0; 4];
        self.0.read_exact(&mut header).ok()?;
        let size = u16::from_le_bytes([header[0], header[1]]) as usize;
        let id = u16::from_le_bytes([header[2], header[3]]);
        let mut body = vec![0; size - 4];
        self.0.read_exact(&mut body).unwrap();
        Some(Packet::decode(id, &body).unwrap())
    }

    fn join(&mut self, room: &str, token: u64) -> Packet {
        self.send(wire::CJoin {
            room: room.into(),
            token,
        });
        loop {
            match self.next().expect("an answer to the join") {
                Packet::SSnapshot(_) => continue,
                other => return other,
            }
        }
    }

    fn welcome(&mut self, room: &str, token: u64) -> wire::SWelcome {
        match self.join(room, token) {
            Packet::SWelcome(w) => w,
            other => panic!("not welcomed: {other:?}"),
        }
    }

    /// Snapshots until one satisfies `f`.
    fn snapshot_where(&mut self, f: impl Fn(&wire::SSnapshot) -> bool) -> wire::SSnapshot {
        loop {
            match self.next().expect("snapshots") {
                Packet::SSnapshot(s) if f(&s) => return s,
                _ => {}
            }
        }
    }
}

fn bots_play_in_rooms(engine: EngineKind) {
    let server = start(engine, ArenaConfig::default());
    let opts = ArenaOptions {
        addr: server.local_addr(),
        load: Load {
            engine,
            connections: 40,
            duration: Some(Duration::from_secs(2)),
            warmup: Duration::from_millis(300),
            ..Load::default()
        },
        rooms: 2,
        input_rate: 30.0,
    };
    let summary = bots::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(summary.ok(), "{summary}");
    assert_eq!(summary.joined, 40);
    assert!(summary.ticks > 0 && summary.player_ticks > 0, "{summary}");
    assert!(summary.input_latency.samples > 0, "{summary}");
    assert!(summary.bytes_per_player_per_sec > 0.0, "{summary}");
    let rooms = server.room_stats();
    assert_eq!(rooms.rooms, 2);
    assert_eq!(rooms.posts_refused, 0);
}

fn a_dropped_player_takes_its_place_back_with_its_token(engine: EngineKind) {
    let server = start(
        engine,
        ArenaConfig {
            grace: Duration::from_secs(3600),
            ..ArenaConfig::default()
        },
    );
    let mut a = Raw::connect(server.local_addr());
    let first = a.welcome("r", 0);
    assert!(!first.rejoined);
    a.send(wire::CInput {
        seq: 1,
        dx: 5,
        dy: -5,
    });
    let moved = a.snapshot_where(|s| {
        s.players
            .iter()
            .any(|p| p.id == first.player && p.last_input == 1)
    });
    let before = *moved.players.iter().find(|p| p.id == first.player).unwrap();
    drop(a);

    // Someone else watches the player drop.
    let mut other = Raw::connect(server.local_addr());
    let second = other.welcome("r", 0);
    assert_ne!(second.player, first.player);
    other.snapshot_where(|s| s.players.iter().any(|p| p.id == first.player && !p.connected));

    let mut back = Raw::connect(server.local_addr());
    let again = back.welcome("r", first.token);
    assert!(again.rejoined);
    assert_eq!(again.player, first.player);
    let s = back.snapshot_where(|s| s.players.iter().any(|p| p.id == first.player && p.connected));
    let now = s.players.iter().find(|p| p.id == first.player).unwrap();
    assert_eq!(
        (now.x, now.y, now.last_input),
        (before.x, before.y, 1),
        "its place kept"
    );
    // A token works once at a time: the player is connected now.
    let mut thief = Raw::connect(server.local_addr());
    match thief.join("r", first.token) {
        Packet::SRefused(r) => assert_eq!(r.reason, "that player is connected"),
        other => panic!("{other:?}"),
    }
    assert!(thief.next().is_none(), "refused, then closed");
}

fn after_the_grace_the_place_is_freed(engine: EngineKind) {
    let server = start(
        engine,
        ArenaConfig {
            grace: Duration::from_millis(100),
            ..ArenaConfig::default()
        },
    );
    let mut a = Raw::connect(server.local_addr());
    let first = a.welcome("r", 0);
    let mut watcher = Raw::connect(server.local_addr());
    watcher.welcome("r", 0);
    drop(a);
    // The place goes once the grace has passed.
    watcher.snapshot_where(|s| !s.players.iter().any(|p| p.id == first.player));
    let mut late = Raw::connect(server.local_addr());
    match late.join("r", first.token) {
        Packet::SRefused(r) => assert_eq!(r.reason, "unknown or expired token"),
        other => panic!("{other:?}"),
    }
    assert!(late.next().is_none(), "refused, then closed");
}

fn a_full_room_and_broken_packets_are_refused(engine: EngineKind) {
    let server = start(
        engine,
        ArenaConfig {
            room_size: 1,
            ..ArenaConfig::default()
        },
    );
    let mut one = Raw::connect(server.local_addr());
    one.welcome("small", 0);
    let mut two = Raw::connect(server.local_addr());
    match two.join("small", 0) {
        Packet::SRefused(r) => assert_eq!(r.reason, "the room is full"),
        other => panic!("{other:?}"),
    }
    assert!(two.next().is_none());
    // Input before joining, an unknown id, a body that is not its message:
    // each closes only its own session.
    let mut early = Raw::connect(server.local_addr());
    early.send(wire::CInput { seq: 1, dx: 0, dy: 0 });
    assert_eq!(read_to_end(&mut early.0).0, b"");
    let mut unknown = Raw::connect(server.local_addr());
    unknown
        .0
        .write_all(&iocore::packet::encode(999, b"?").unwrap())
        .unwrap();
    assert_eq!(read_to_end(&mut unknown.0).0, b"");
    let mut garbage = Raw::connect(server.local_addr());
    garbage
        .0
        .write_all(&iocore::packet::encode(1, &[0xff, 0xff, 0xff]).unwrap())
        .unwrap();
    assert_eq!(read_to_end(&mut garbage.0).0, b"");
    // Each session ends once its peer has closed too.
    drop((early, unknown, garbage));
    let violations = || server.stats().closed(iocore::CloseKind::ProtocolViolation);
    wait_until("three protocol violations", || violations() >= 3);
    assert_eq!(violations(), 3);
    // The player in the room is still served.
    one.send(wire::CInput { seq: 7, dx: 1, dy: 1 });
    one.snapshot_where(|s| s.players.iter().any(|p| p.last_input == 7));
}

engine_suite!(
    bots_play_in_rooms,
    a_dropped_player_takes_its_place_back_with_its_token,
    after_the_grace_the_place_is_freed,
    a_full_room_and_broken_packets_are_refused,
);
