//! The chat in a real browser: `iocore serve --app chat --ws` serves its
//! page at `/`; two pages in headless Chromium (Debian `chromium`, driven
//! by Playwright for Python, both installed by `.ci/test`) join the room
//! a terminal member (`iocore chat` in tmux) is in, and every line said
//! by any of the three reaches all three. A missing Chromium, Playwright
//! or tmux fails the test. Linux only (the browser is a Linux program;
//! the Windows engines serve WebSocket sessions in the library's
//! tests/websocket.rs).
#![cfg(target_os = "linux")]

use std::io::BufRead;
use std::time::{Duration, Instant};

use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

fn browser_and_terminal_members_chat_in_one_room(engine: &str) {
    require_program("chromium", "chromium");
    let python = python_tools();
    let tmux = Tmux::new(&format!("browser-{engine}"));
    let server = CliServer::start(
        BIN,
        &["--app", "chat", "--engine", engine, "--ws", "127.0.0.1:0"],
        &[],
    );
    let ws = server.logged_addr("serving WebSocket clients");
    tmux.start(
        "tty",
        &format!(
            "{BIN} chat --addr {} --room lobby --engine {engine}; echo EXIT=$?; sleep 60",
            server.addr
        ),
    );
    tmux.wait_for("tty", "joined lobby (1 members)");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser_chat.py");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chat-{engine}.png"));
    let mut child = spawn(
        std::process::Command::new(&python)
            .arg(script)
            .args(["--url", &format!("http://{ws}/"), "--room", "lobby"])
            .args(["--want", "hello from the terminal", "--screenshot"])
            .arg(&shot)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped()),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let next_line = |what: &str| {
        rx.recv_timeout(PATIENCE * 2)
            .unwrap_or_else(|_| panic!("the browser script did not print {what} in {:?}", start.elapsed()))
    };
    assert_eq!(next_line("READY"), "READY");
    // Both pages said their lines: the terminal sees them, and answers.
    tmux.wait_for("tty", "] hello from ann in the browser");
    tmux.wait_for("tty", "] hello from ben in the browser");
    tmux.run(&["send-keys", "-t", "tty", "hello from the terminal", "Enter"]);
    let screen = tmux.wait_for("tty", "] hello from the terminal");
    let own = screen
        .lines()
        .map(str::trim_end)
        .find(|l| l.starts_with('[') && l.ends_with("hello from the terminal"))
        .expect("the terminal's own line");
    let tty_id = own[1..own.find(']').unwrap()].to_string();
    let seen: serde_json::Value = serde_json::from_str(&next_line("the pages' lines")).unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(30)).expect("the browser script ends");
    assert!(status.success(), "browser script: {status:?}");
    for page in ["ann", "ben"] {
        let lines: Vec<&str> = seen[page]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l.as_str())
            .collect();
        for said in [
            "hello from ann in the browser",
            "hello from ben in the browser",
            "hello from the terminal",
        ] {
            assert!(
                lines.iter().any(|l| l.ends_with(said)),
                "{page} lacks {said:?}: {lines:?}"
            );
        }
        // The page names the sender as the terminal does.
        let expected = format!("{tty_id}hello from the terminal");
        assert!(
            lines.contains(&expected.as_str()),
            "{page}: {expected:?} in {lines:?}"
        );
    }
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 0),
        "a screenshot"
    );
    tmux.run(&["send-keys", "-t", "tty", "C-d"]);
    tmux.wait_for("tty", "EXIT=0");
    assert!(server.stop().0.success());
}

#[test]
fn epoll() {
    browser_and_terminal_members_chat_in_one_room("epoll");
}

#[test]
fn uring() {
    browser_and_terminal_members_chat_in_one_room("uring");
}
