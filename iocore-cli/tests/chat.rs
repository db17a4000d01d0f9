//! The chat app over real sockets, on every engine: the protocol (JOIN,
//! SAY, LEAVE; JOINED, MSG, LEFT, ERROR), every way a client breaks it
//! (each closes only that session, with a protocol-violation reason), and
//! the fan-out load client against it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use iocore::packet::{self, HEADER};
use iocore::{CloseKind, EngineKind, ServerHandle, SessionId};
use iocore_cli::chat::load::{self, ChatOptions};
use iocore_cli::chat::protocol::{self as chat, FromServer};
use iocore_cli::chat::server;
use iocore_cli::load::Load;
use iocore_testkit::*;

/// A chat server with 3 workers (rooms span them) and the recorded
/// close reasons of its sessions.
fn chat_server(engine: EngineKind) -> (ServerHandle, Arc<Events>) {
    let (events, factory) = recorded(|| server::handler(packet::DEFAULT_MAX_PACKET));
    let server = iocore_testkit::server(engine)
        .threads(3)
        .accept(iocore::Accept::HandOff)
        .start(factory)
        .unwrap();
    (server, events)
}

/// The same with coalesced rooms (`serve --app chat --coalesce 20ms`).
fn coalescing_chat_server(engine: EngineKind) -> (ServerHandle, Arc<Events>) {
    let rooms = server::rooms(packet::DEFAULT_MAX_PACKET, std::time::Duration::from_millis(20));
    let r = rooms.clone();
    let (events, factory) = recorded(move || server::coalesced_handler(packet::DEFAULT_MAX_PACKET, &r));
    let server = iocore_testkit::server(engine)
        .threads(3)
        .accept(iocore::Accept::HandOff)
        .rooms(&rooms)
        .start(factory)
        .unwrap();
    (server, events)
}

fn expect(s: &mut TcpStream) -> String {
    let (id, body) = read_packet(s);
    match chat::from_server(id, &body).unwrap() {
        FromServer::Joined { members, room, .. } => format!("joined {room} {members}"),
        FromServer::Msg { from, text } => format!("msg {} {text}", SessionId::from_u64(from).worker()),
        FromServer::Left => "left".into(),
        FromServer::Error(text) => format!("error {text}"),
    }
}

/// Reads a MSG: the sender's id and the text.
fn expect_msg(s: &mut TcpStream) -> (u64, String) {
    let (id, body) = read_packet(s);
    match chat::from_server(id, &body).unwrap() {
        FromServer::Msg { from, text } => (from, text.to_string()),
        other => panic!("expected MSG, got {other:?}"),
    }
}

/// Members join, say, change rooms and leave; every member of a room,
/// the sender included, gets each MSG with the sender's session id and
/// the text verbatim; other rooms do not.
fn members_of_a_room_hear_each_other_and_no_one_else(engine: EngineKind) {
    let (server, events) = chat_server(engine);
    conversation(&server, &events, |server| {
        assert_eq!(server.topic("room:lobby").unwrap().subscribers, 2);
        assert!(server.topic("room:kitchen").is_none(), "c left the kitchen");
    });
}

/// The same conversation with coalesced rooms: the protocol is the same,
/// the messages of a tick come together.
fn coalesced_rooms_speak_the_same_protocol(engine: EngineKind) {
    let (server, events) = coalescing_chat_server(engine);
    conversation(&server, &events, |server| {
        assert!(server.room_stats().ticks > 0);
    });
}

/// Three members join, say, change rooms and leave; `check` looks at the
/// server before they go.
fn conversation(server: &ServerHandle, events: &Events, check: impl Fn(&ServerHandle)) {
    let mut a = connect(server.local_addr());
    let mut b = connect(server.local_addr());
    let mut c = connect(server.local_addr());
    a.write_all(&chat::join("lobby")).unwrap();
    assert_eq!(expect(&mut a), "joined lobby 1");
    b.write_all(&chat::join("lobby")).unwrap();
    assert_eq!(expect(&mut b), "joined lobby 2");
    c.write_all(&chat::join("kitchen")).unwrap();
    assert_eq!(expect(&mut c), "joined kitchen 1");

    let text = "héllo, wörld — 你好";
    a.write_all(&chat::say(text)).unwrap();
    let (from_a, got) = expect_msg(&mut a);
    assert_eq!(got, text, "the sender hears itself");
    assert_eq!(expect_msg(&mut b), (from_a, text.to_string()), "relayed verbatim");
    b.write_all(&chat::say("hi a")).unwrap();
    let (from_b, _) = expect_msg(&mut a);
    assert_ne!(from_a, from_b, "each member has its own id");
    assert_eq!(expect_msg(&mut b).0, from_b);

    // c moves to the lobby: it hears the lobby from now on, not before.
    c.write_all(&chat::join("lobby")).unwrap();
    assert_eq!(expect(&mut c), "joined lobby 3");
    c.write_all(&chat::say("c here")).unwrap();
    for s in [&mut a, &mut b, &mut c] {
        assert_eq!(expect_msg(s).1, "c here");
    }
    // b leaves: it hears no more, and gets LEFT.
    b.write_all(&chat::leave()).unwrap();
    assert_eq!(expect(&mut b), "left");
    a.write_all(&chat::say("after b left")).unwrap();
    assert_eq!(expect_msg(&mut a).1, "after b left");
    assert_eq!(expect_msg(&mut c).1, "after b left");
    b.write_all(&chat::say("to nobody")).unwrap();
    assert_eq!(expect(&mut b), "error join a room first");
    b.write_all(&chat::leave()).unwrap();
    assert_eq!(expect(&mut b), "error not in a room");
    check(server);
    drop((a, b, c));
    let closed = events.wait_closed(3);
    assert!(closed.iter().all(|k| *k == CloseKind::PeerClosed), "{closed:?}");
}

/// Each way a client breaks the protocol closes only its session, with a
/// protocol-violation reason that an ERROR tells the client first; a
/// well-behaved member beside it goes on.
fn protocol_violations_close_only_the_offender(engine: EngineKind) {
    let (server, events) = chat_server(engine);
    let mut good = connect(server.local_addr());
    good.write_all(&chat::join("lobby")).unwrap();
    assert_eq!(expect(&mut good), "joined lobby 1");
    let max_text = packet::DEFAULT_MAX_PACKET - HEADER - chat::MSG_OVERHEAD;
    let long_room = "r".repeat(chat::MAX_ROOM + 1);
    let offences: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown id",
            packet::encode(42, b"?").unwrap().to_vec(),
            "unknown packet id 42",
        ),
        (
            "JOIN not UTF-8",
            packet::encode(chat::JOIN, b"\xff\xfe").unwrap().to_vec(),
            "not UTF-8",
        ),
        (
            "room name too long",
            chat::join(&long_room).to_vec(),
            "room name of 65 bytes",
        ),
        ("empty room name", chat::join("").to_vec(), "room name of 0 bytes"),
        (
            "SAY not UTF-8",
            [
                chat::join("lobby").to_vec(),
                packet::encode(chat::SAY, b"\xc3\x28").unwrap().to_vec(),
            ]
            .concat(),
            "SAY: text is not UTF-8",
        ),
        (
            "text too long to relay",
            [
                chat::join("lobby").to_vec(),
                chat::say(&"t".repeat(max_text + 1)).to_vec(),
            ]
            .concat(),
            "at most 4084 fit a MSG",
        ),
        (
            "packet over the limit",
            packet::encode(chat::SAY, &vec![b'x'; 5000]).unwrap().to_vec(),
            "packet size 5004 is over the limit of 4096",
        ),
        (
            "size below the header",
            vec![3, 0, 2, 0],
            "packet size 3 is smaller than its 4-byte header",
        ),
    ];
    for (i, (what, bytes, reason)) in offences.iter().enumerate() {
        let mut bad = connect(server.local_addr());
        bad.write_all(bytes).unwrap();
        // Packets until the close (a JOIN before the offence is answered
        // first): the last one is an ERROR saying why.
        let mut last = None;
        loop {
            let mut h = [0; HEADER];
            if bad.read_exact(&mut h).is_err() {
                break; // the close
            }
            let size = u16::from_le_bytes([h[0], h[1]]) as usize;
            let id = u16::from_le_bytes([h[2], h[3]]);
            last = Some((
                id,
                String::from_utf8_lossy(&read_exact(&mut bad, size - HEADER)).into_owned(),
            ));
        }
        match &last {
            Some((chat::ERROR, text)) => assert!(text.contains(reason), "{what}: ERROR {text:?}"),
            other => panic!("{what}: the close came after {other:?}, not an ERROR"),
        }
        drop(bad); // hang up, as a client told to go would
        let kinds = events.wait_closed(i + 1);
        assert_eq!(kinds[i], CloseKind::ProtocolViolation, "{what}");
        let got = events.reasons.lock().unwrap()[i].clone();
        assert!(got.contains(reason), "{what}: {got}");
        // The good member is still served, and the offender's half-joined
        // room does not linger.
        good.write_all(&chat::say(what)).unwrap();
        assert_eq!(expect_msg(&mut good).1, *what);
    }
    assert_eq!(
        server.stats().closed(CloseKind::ProtocolViolation),
        offences.len() as u64
    );
    assert_eq!(server.topic("room:lobby").unwrap().subscribers, 1);
}

/// The fan-out load client against the chat server: 40 members in 4
/// rooms, 20 messages each; every delivery arrives exactly once, in
/// order.
fn chat_load_delivers_every_message_exactly_once(engine: EngineKind) {
    let (server, _) = chat_server(engine);
    chat_load(&server, engine);
    assert_eq!(server.stats().publishes, 800);
}

/// The same load on coalesced rooms: nothing lost, nothing twice, each
/// sender's in order.
fn coalesced_chat_load_delivers_every_message_exactly_once(engine: EngineKind) {
    let (server, _) = coalescing_chat_server(engine);
    chat_load(&server, engine);
    assert_eq!(server.stats().publishes, 0, "rooms, not topics");
}

/// 40 members in 4 rooms say 20 messages each; every one arrives.
fn chat_load(server: &ServerHandle, engine: EngineKind) {
    let opts = ChatOptions {
        addrs: vec![server.local_addr()],
        load: Load {
            engine,
            connections: 40,
            size: 48,
            count: Some(20),
            ..Load::default()
        },
        rooms: 4,
        rate: 100.0,
    };
    let summary = load::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(summary.ok(), "{summary}");
    assert_eq!(summary.messages, 40 * 20);
    assert_eq!(
        summary.deliveries,
        40 * 20 * 10,
        "each message to its room's 10 members"
    );
    assert_eq!(summary.expected_deliveries, summary.deliveries);
}

/// The binary: `client --scenario chat --json` reports the deliveries and
/// exits 0 when every one arrived.
fn cli_chat_load_reports_json(engine: EngineKind) {
    let (server, _) = chat_server(engine);
    let out = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_iocore"))
            .args(["client", "--scenario", "chat", "--engine", engine.name()])
            .args(["--addr", &server.local_addr().to_string()])
            .args([
                "--connections",
                "10",
                "--rooms",
                "2",
                "--rate",
                "50",
                "--count",
                "5",
                "--json",
            ]),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", out.output());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["messages"], 50);
    assert_eq!(v["deliveries"], 250, "5 messages × 10 members × 5 in each room");
    assert_eq!(
        (v["lost"].as_u64(), v["misdelivered"].as_u64()),
        (Some(0), Some(0))
    );
    for key in ["deliveries_per_sec", "latency", "window_secs", "joined"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

engine_suite!(
    cli_chat_load_reports_json,
    members_of_a_room_hear_each_other_and_no_one_else,
    protocol_violations_close_only_the_offender,
    chat_load_delivers_every_message_exactly_once,
    coalesced_rooms_speak_the_same_protocol,
    coalesced_chat_load_delivers_every_message_exactly_once,
);
