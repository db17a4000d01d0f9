//! Running `iocore serve` as an operator does: `--log-format json` writes
//! one JSON object per line (every line parses), with a debug line per
//! closed session (id, peer, reason, bytes both ways, lifetime) and
//! protocol-violation warnings rate-limited under a storm; `--metrics`
//! serves the scrape; and `iocore top`, in tmux, shows the live session
//! count of the running server, follows it as it changes, and quits on
//! `q` with the terminal restored. Unix: the servers are stopped with
//! SIGTERM and the terminal is tmux's.
#![cfg(unix)]

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use iocore::EngineKind;
use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

/// Sessions closed so far, by scraping the server's metrics.
fn closed(metrics: SocketAddr) -> f64 {
    let a = http_get(metrics, "/metrics", &[]);
    assert_eq!(a.status, 200);
    metric(&a.body, "iocore_sessions_closed_total", &[]).unwrap()
}

fn parse_all(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `iocore serve --app APP` on one worker with JSON logs at `level` and a
/// metrics endpoint.
fn json_server(engine: EngineKind, app: &str, level: &str) -> CliServer {
    let args = [
        "--app",
        app,
        "--engine",
        engine.name(),
        "--threads",
        "1",
        "--log-format",
        "json",
        "--log-level",
        level,
        "--metrics",
        "127.0.0.1:0",
    ];
    CliServer::start(BIN, &args, &[])
}

fn json_logs_one_object_per_line(engine: EngineKind) {
    let server = json_server(engine, "echo", "debug");
    let metrics = server.metrics.expect("the ready line names the metrics endpoint");
    let mut c = connect(server.addr);
    let local = c.local_addr().unwrap();
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    c.write_all(&data).unwrap();
    assert_eq!(read_exact(&mut c, 1000), data);
    c.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut c).0.is_empty());
    wait_until("the session's close", || closed(metrics) == 1.0);

    parse_all(&server.log);
    let (status, rest) = server.stop();
    assert!(status.success());
    let events = parse_all(&rest);
    // The metrics endpoint's own sessions (the scrapes above) close and
    // are logged too: ours is the one from our address.
    let close = events
        .iter()
        .find(|e| e["message"] == "session closed" && e["peer"] == local.to_string())
        .unwrap_or_else(|| panic!("no session-closed line for {local} in {rest:#?}"));
    assert_eq!(close["level"], "DEBUG");
    assert_eq!(close["kind"], "peer_closed");
    assert_eq!(close["bytes_in"], 1000);
    assert_eq!(close["bytes_out"], 1000);
    assert!(close["lifetime_ms"].is_u64(), "{close}");
    assert!(
        close["session"].as_str().is_some_and(|id| id.starts_with("w0#")),
        "{close}"
    );
    assert!(close["timestamp"].is_string());
}

fn protocol_violation_warnings_are_rate_limited(engine: EngineKind) {
    let server = json_server(engine, "chat", "info");
    let metrics = server.metrics.unwrap();
    // Every line of the start is JSON too.
    parse_all(&server.log);
    let storm = 200;
    let start = Instant::now();
    for _ in 0..storm {
        let mut c = connect(server.addr);
        c.write_all(&[1, 0, 0, 0]).unwrap(); // size 1: below the header
        read_to_end(&mut c);
    }
    wait_until("every violator closed", || closed(metrics) == storm as f64);
    let elapsed = start.elapsed();
    let (status, rest) = server.stop();
    assert!(status.success());
    let events = parse_all(&rest);
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "protocol violation: session closed")
        .collect();
    assert!(!warnings.is_empty(), "the first violation is logged: {rest:#?}");
    // One warning per second at most (one worker), each saying how many
    // were held back since the one before.
    let bound = 2 + elapsed.as_secs() as usize;
    assert!(
        warnings.len() <= bound,
        "{} warnings for {storm} violations in {elapsed:?}",
        warnings.len()
    );
    let told: u64 = warnings
        .iter()
        .map(|w| 1 + w["held_back"].as_u64().unwrap())
        .sum();
    assert!(told <= storm, "{told}");
    assert!(warnings[0]["reason"]
        .as_str()
        .unwrap()
        .contains("protocol violation"));
}

engine_suite!(
    json_logs_one_object_per_line,
    protocol_violation_warnings_are_rate_limited
);

/// The session count in the `all` row of `iocore top`'s table.
fn open_in_top(screen: &str) -> Option<u64> {
    let row = screen
        .lines()
        .find(|l| l.trim_start_matches('│').starts_with("all "))?;
    row.trim_start_matches('│')
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn top_shows_the_live_session_count(engine: EngineKind) {
    let tmux = Tmux::new(&format!("top-{}", engine.name()));
    let server = CliServer::start(
        BIN,
        &[
            "--engine",
            engine.name(),
            "--threads",
            "2",
            "--metrics",
            "127.0.0.1:0",
        ],
        &[],
    );
    let metrics = server.metrics.unwrap();
    let mut clients: Vec<_> = (0..3).map(|_| connect(server.addr)).collect();
    tmux.start(
        "top",
        &format!("{BIN} top --metrics {metrics} --interval 200ms; echo EXIT=$?; sleep 60"),
    );
    tmux.wait_until("top", "3 open sessions", |s| open_in_top(s) == Some(3));
    let screen = tmux.screen("top");
    assert!(screen.contains(&format!("engine {}", engine.name())), "{screen}");
    assert!(screen.contains("sessions per worker"), "{screen}");
    // At 120 columns every header shows whole.
    let header = screen
        .lines()
        .find(|l| l.contains("worker") && l.contains("open"))
        .unwrap_or_else(|| panic!("no table header: {screen}"));
    for name in [
        "worker",
        "open",
        "paused",
        "accepts/s",
        "closes/s",
        "in/s",
        "out/s",
        "msgs in/s",
        "msgs out/s",
        "queued",
        "recv buf",
        "wakeups/s",
        "ev/wake",
    ] {
        assert!(header.contains(name), "header {name:?} cut: {header}");
    }

    clients.extend((0..2).map(|_| connect(server.addr)));
    tmux.wait_until("top", "5 open sessions", |s| open_in_top(s) == Some(5));
    clients.truncate(1);
    tmux.wait_until("top", "1 open session", |s| open_in_top(s) == Some(1));
    let screen = tmux.screen("top");
    assert!(screen.contains("peer_closed"), "closes by reason: {screen}");

    tmux.run(&["send-keys", "-t", "top", "q"]);
    tmux.wait_for("top", "EXIT=0");
    // Back from the alternate screen, cursor shown.
    let state = tmux.run(&[
        "display-message",
        "-p",
        "-t",
        "top",
        "#{alternate_on} #{cursor_flag}",
    ]);
    assert_eq!(state.trim(), "0 1");
    assert!(server.stop().0.success());
}

/// `iocore top` pointed at a port that is not a metrics endpoint (the
/// echo server, which keeps the request and never answers HTTP) says so
/// in its status line, and keeps trying.
#[test]
fn top_says_when_the_endpoint_is_not_http() {
    let tmux = Tmux::new("top-not-http");
    let server = CliServer::start(BIN, &["--threads", "1"], &[]);
    tmux.start(
        "top",
        &format!(
            "{BIN} top --metrics {} --interval 200ms; echo EXIT=$?; sleep 60",
            server.addr.port()
        ),
    );
    let screen = tmux.wait_for("top", "did not answer HTTP");
    assert!(screen.contains("metrics endpoint"), "{screen}");
    tmux.run(&["send-keys", "-t", "top", "q"]);
    tmux.wait_for("top", "EXIT=0");
    assert!(server.stop().0.success());
}

engine_suite!(@engine top_epoll, iocore::EngineKind::Epoll, top_shows_the_live_session_count);
engine_suite!(@engine top_uring, iocore::EngineKind::Uring, top_shows_the_live_session_count);

/// `iocore top` without a terminal says so instead of drawing garbage
/// (`--metrics` takes a bare port).
#[test]
fn top_needs_a_terminal() {
    let out = std::process::Command::new(BIN)
        .args(["top", "--metrics", "9"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("terminal"), "{err}");
}
