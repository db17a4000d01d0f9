//! `iocore chat`, the terminal client, end to end as a person uses it: two
//! clients in tmux against `iocore serve --app chat`, one line typed each
//! way, each shown in the other's terminal with its sender's id; Ctrl-D
//! leaves with exit status 0. Needs tmux (`.ci/run` installs it; in CI a
//! missing tmux fails the test).
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
