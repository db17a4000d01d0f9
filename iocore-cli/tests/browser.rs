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

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chat-{engine}.png"));
    let pages = Pages::start(
        &python,
        &format!("http://{ws}/"),
        &[
            "--want",
            "hello from the terminal",
            "--screenshot",
            shot.to_str().unwrap(),
        ],
    );
    assert_eq!(pages.next_line("READY"), "READY");
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
    let seen = pages.finish();
    for page in ["ann", "ben"] {
        let lines = page_lines(&seen, page);
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
        assert!(lines.contains(&expected), "{page}: {expected:?} in {lines:?}");
    }
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 0),
        "a screenshot"
    );
    tmux.run(&["send-keys", "-t", "tty", "C-d"]);
    tmux.wait_for("tty", "EXIT=0");
    assert!(server.stop().0.success());
}

/// Over TLS (`serve --tls-cert`, a self-signed certificate the pages
/// accept): the server names the page's https URL, the page speaks wss
/// to the port it came from, and two pages chat. (The terminal client
/// speaks plain TCP, and with `--tls-cert` the TCP port speaks TLS too:
/// pages only.)
fn pages_chat_over_wss(engine: &str) {
    require_program("chromium", "chromium");
    let python = python_tools();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("browser-tls-{engine}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = iocore_cli::bench::certificate(&dir).unwrap();
    let server = CliServer::start(
        BIN,
        &[
            "--app",
            "chat",
            "--engine",
            engine,
            "--ws",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    let ws = server.logged_addr("serving WebSocket clients");
    let page_line = server
        .log
        .iter()
        .find(|l| l.contains("the chat page for a browser"))
        .expect("the server names the chat page");
    let url = log_field(page_line, "page").expect("page=URL").to_string();
    assert_eq!(url, format!("https://{ws}/"));
    let pages = Pages::start(&python, &url, &["--self-signed", "--others", "0"]);
    assert_eq!(pages.next_line("READY"), "READY");
    let seen = pages.finish();
    for page in ["ann", "ben"] {
        let lines = page_lines(&seen, page);
        for said in ["hello from ann in the browser", "hello from ben in the browser"] {
            assert!(
                lines.iter().any(|l| l.ends_with(said)),
                "{page} lacks {said:?}: {lines:?}"
            );
        }
    }
    assert!(server.stop().0.success());
}

/// The two browser pages of `browser_chat.py`, and what it prints.
struct Pages {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    start: Instant,
}

impl Pages {
    /// Opens the pages at `url` (the script's further `args` after).
    fn start(python: &std::path::Path, url: &str, args: &[&str]) -> Pages {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser_chat.py");
        let mut child = spawn(
            std::process::Command::new(python)
                .arg(script)
                .args(["--url", url, "--room", "lobby"])
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped()),
        );
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Pages {
            child,
            lines,
            start: Instant::now(),
        }
    }

    /// The script's next line of output (`what` it should be, for the
    /// failure).
    fn next_line(&self, what: &str) -> String {
        self.lines.recv_timeout(PATIENCE * 2).unwrap_or_else(|_| {
            panic!(
                "the browser script did not print {what} in {:?}",
                self.start.elapsed()
            )
        })
    }

    /// Every line the pages showed (the script's last output), once it
    /// ended well.
    fn finish(mut self) -> serde_json::Value {
        let seen = serde_json::from_str(&self.next_line("the pages' lines")).unwrap();
        let status = wait_bounded(&mut self.child, Duration::from_secs(30)).expect("the browser script ends");
        assert!(status.success(), "browser script: {status:?}");
        seen
    }
}

/// The lines page `name` showed.
fn page_lines(seen: &serde_json::Value, name: &str) -> Vec<String> {
    seen[name]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str().map(String::from))
        .collect()
}

#[test]
fn epoll() {
    browser_and_terminal_members_chat_in_one_room("epoll");
}

#[test]
fn uring() {
    browser_and_terminal_members_chat_in_one_room("uring");
}

#[test]
fn epoll_wss() {
    pages_chat_over_wss("epoll");
}

#[test]
fn uring_wss() {
    pages_chat_over_wss("uring");
}
