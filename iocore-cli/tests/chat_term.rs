//! `iocore chat`, the terminal client, end to end as a person uses it: two
//! clients in tmux against `iocore serve --app chat`, one line typed each
//! way, each shown in the other's terminal with its sender's id; Ctrl-D
//! leaves with exit status 0. Lines the server would refuse are refused
//! in the client with the reason, and when the server ends the chat its
//! ERROR says why. Needs tmux (`.ci/test` installs it; a missing tmux
//! fails the test).
#![cfg(unix)]

use iocore::EngineKind;
use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

/// The id shown in `[w0#3.0] text` lines.
fn sender_of<'a>(screen: &'a str, text: &str) -> &'a str {
    let line = screen
        .lines()
        .map(str::trim_end)
        .find(|l| l.starts_with('[') && l.ends_with(text))
        .unwrap_or_else(|| panic!("no [id] {text} line in:\n{screen}"));
    &line[1..line.find(']').unwrap()]
}

fn two_people_chat_in_the_terminal(engine: EngineKind) {
    let tmux = Tmux::new(engine.name());
    let server = CliServer::start(BIN, &["--app", "chat", "--engine", engine.name()], &[]);
    // The exit status stays on screen after the client ends.
    let chat = format!(
        "{BIN} chat --addr {} --room lobby --engine {}; echo EXIT=$?; sleep 60",
        server.addr,
        engine.name()
    );
    tmux.start("ada", &chat);
    tmux.wait_for("ada", "joined lobby (1 members)");
    tmux.start("bob", &chat);
    tmux.wait_for("bob", "joined lobby (2 members)");

    tmux.run(&["send-keys", "-t", "ada", "hello from ada", "Enter"]);
    let bob_sees = tmux.wait_for("bob", "] hello from ada");
    let ada_sees = tmux.wait_for("ada", "] hello from ada");
    tmux.run(&["send-keys", "-t", "bob", "hi back from bob", "Enter"]);
    let ada_sees_bob = tmux.wait_for("ada", "] hi back from bob");
    let ada_id = sender_of(&bob_sees, "hello from ada");
    assert_eq!(ada_id, sender_of(&ada_sees, "hello from ada"), "one id for ada");
    let bob_id = sender_of(&ada_sees_bob, "hi back from bob");
    assert_ne!(ada_id, bob_id);
    assert!(
        ada_id.starts_with('w') && ada_id.contains('#'),
        "a session id: {ada_id}"
    );

    // Ctrl-D: ada leaves cleanly.
    tmux.run(&["send-keys", "-t", "ada", "C-d"]);
    tmux.wait_for("ada", "EXIT=0");
    tmux.run(&["send-keys", "-t", "bob", "/quit", "Enter"]);
    tmux.wait_for("bob", "EXIT=0");
    assert!(server.stop().0.success());
}

engine_suite!(two_people_chat_in_the_terminal);

/// What the server would refuse is refused in the client, with the reason,
/// and the chat goes on: a /join without a room, an unknown command, a
/// room name over 64 bytes, a line longer than the server takes (its
/// JOINED says how long: 8 bytes with `--max-packet 20`).
#[test]
fn the_terminal_client_refuses_what_the_server_would() {
    let tmux = Tmux::new("refuse");
    let server = CliServer::start(BIN, &["--app", "chat", "--max-packet", "20"], &[]);
    tmux.start(
        "ada",
        &format!("{BIN} chat --addr {}; echo EXIT=$?; sleep 60", server.addr),
    );
    tmux.wait_for("ada", "joined lobby (1 members)");
    let typed = [
        ("/join", "usage: /join ROOM"),
        ("/jion kitchen", "unknown command /jion"),
        (
            &*format!("/join {}", "r".repeat(65)),
            "a room name is at most 64 bytes",
        ),
        ("123456789", "not sent: 9 bytes, and the server takes at most 8"),
    ];
    for (line, answer) in typed {
        tmux.run(&["send-keys", "-t", "ada", "-l", line]);
        tmux.run(&["send-keys", "-t", "ada", "Enter"]);
        tmux.wait_for("ada", answer);
    }
    // Still in the chat: a line that fits is said.
    tmux.run(&["send-keys", "-t", "ada", "12345678", "Enter"]);
    let screen = tmux.wait_for("ada", "] 12345678");
    // The engine's log lines stay out of the chat (warnings only).
    assert!(!screen.contains(" INFO "), "log lines in the chat: {screen}");
    tmux.run(&["send-keys", "-t", "ada", "/quit", "Enter"]);
    tmux.wait_for("ada", "EXIT=0");
    assert!(server.stop().0.success());
}

/// When the server ends the chat with an ERROR saying why, the client
/// shows that reason (not just "peer closed") and exits non-zero. A plain
/// socket stands in for a server that kicks its client.
#[test]
fn the_terminal_client_shows_why_the_server_ended_the_chat() {
    use std::io::{Read, Write};
    let tmux = Tmux::new("kicked");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    tmux.start(
        "ada",
        &format!("{BIN} chat --addr {addr}; echo EXIT=$?; sleep 60"),
    );
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut join = [0; 4 + 5];
    s.read_exact(&mut join).unwrap();
    assert_eq!(&join[2..], b"\x01\x00lobby", "a JOIN lobby first");
    s.write_all(&iocore_cli::chat::protocol::error(
        "kicked out: the room is closed",
    ))
    .unwrap();
    drop(s);
    let screen = tmux.wait_for("ada", "EXIT=");
    assert!(
        screen.contains("the server ended the chat: kicked out: the room is closed"),
        "{screen}"
    );
    assert!(screen.contains("EXIT=1"), "{screen}");
}
