//! The apps and the CLI: the overlapped seed's sink server and client
//! (`--verify` passes against echo, fails against a corrupting or losing
//! server), and the `iocore` binary's behaviour as a user sees it.

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iocore::{CloseReason, EngineKind, Handler, Session};
use iocore_cli::client::{self, ClientOptions};
use iocore_cli::echo::Echo;
use iocore_cli::load::Load;
use iocore_cli::sink::Sink;
use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

/// The sink reads and discards: the bytes it counts are exactly the bytes
/// sent, over many sessions and uneven writes.
fn sink_counts_exactly_the_bytes_sent(engine: EngineKind) {
    struct Counted(Sink, Arc<AtomicU64>);
    impl Handler for Counted {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            self.0.on_recv(s, data)
        }
        fn on_disconnected(&mut self, _: CloseReason) {
            self.1.fetch_add(self.0.received, Ordering::SeqCst);
        }
    }
    let total = Arc::new(AtomicU64::new(0));
    let t = total.clone();
    let (events, factory) = recorded(move || Counted(Sink::default(), t.clone()));
    let server = server(engine).start(factory).unwrap();
    let mut rng = Rng::new(5);
    let mut sent = 0u64;
    for _ in 0..20 {
        let mut s = connect(server.local_addr());
        for _ in 0..rng.range(1, 30) {
            let len = rng.range(1, 100_000);
            s.write_all(&rng.bytes(len)).unwrap();
            sent += len as u64;
        }
    }
    events.wait_closed(20);
    assert_eq!(total.load(Ordering::SeqCst), sent);
    assert_eq!(server.stats().bytes_received, sent);
    assert_eq!(server.stats().bytes_sent, 0);
}

fn options(addr: std::net::SocketAddr, engine: EngineKind) -> ClientOptions {
    ClientOptions {
        addr,
        load: Load {
            engine,
            connections: 20,
            count: Some(50),
            drain_timeout: Duration::from_millis(500),
            ..Load::default()
        },
        mode: client::Mode::OpenLoop { rate: 1000.0 },
        verify: true,
        ..ClientOptions::default()
    }
}

fn client_verify_passes_against_echo(engine: EngineKind) {
    let server = server(engine).start(|| Echo).unwrap();
    let summary = client::run(
        &options(server.local_addr(), engine),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert!(summary.ok(), "{summary}");
    assert_eq!(summary.messages, 20 * 50);
    assert_eq!(summary.bytes_received, 20 * 50 * 100);
}

/// Echoes, but alters one byte in every 777.
struct Corrupting {
    seen: u64,
}
impl Handler for Corrupting {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut out = data.to_vec();
        for (i, b) in out.iter_mut().enumerate() {
            if (self.seen + i as u64) % 777 == 776 {
                *b ^= 0x20;
            }
        }
        self.seen += data.len() as u64;
        let _ = s.send(out);
        data.len()
    }
}

/// Echoes everything except the 10th byte of the stream.
struct Losing {
    seen: u64,
}
impl Handler for Losing {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut out = data.to_vec();
        if self.seen <= 9 && self.seen + data.len() as u64 > 9 {
            out.remove((9 - self.seen) as usize);
        }
        self.seen += data.len() as u64;
        let _ = s.send(out);
        data.len()
    }
}

fn client_verify_catches_corruption_and_loss(engine: EngineKind) {
    let corrupt = server(engine).start(|| Corrupting { seen: 0 }).unwrap();
    let summary = client::run(
        &options(corrupt.local_addr(), engine),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert!(!summary.ok());
    assert_eq!(summary.mismatches, 20 * (5000 / 777), "{summary}");

    let losing = server(engine).start(|| Losing { seen: 0 }).unwrap();
    let summary = client::run(
        &options(losing.local_addr(), engine),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert!(!summary.ok());
    assert_eq!(summary.lost_bytes, 20, "{summary}");
    assert!(summary.mismatches > 0, "a dropped byte shifts the rest");
}

/// The binary: `client --verify` exits 0 against echo and non-zero
/// against a corrupting server.
fn cli_client_exit_code_reflects_verification(engine: EngineKind) {
    let run = |addr: std::net::SocketAddr| {
        run_bounded(
            Command::new(BIN)
                .args(["client", "--engine", engine.name(), "--addr", &addr.to_string()])
                .args([
                    "--connections",
                    "5",
                    "--interval",
                    "1ms",
                    "--count",
                    "20",
                    "--verify",
                ]),
            Duration::from_secs(120),
        )
    };
    let echo = server(engine).start(|| Echo).unwrap();
    let out = run(echo.local_addr());
    assert!(out.status.success(), "{}", out.output());
    assert!(out.stdout.contains("0 mismatched, 0 lost"), "{}", out.output());

    let corrupt = server(engine).start(|| Corrupting { seen: 0 }).unwrap();
    let out = run(corrupt.local_addr());
    assert_eq!(out.status.code(), Some(1), "{}", out.output());
    assert!(out.stdout.contains("FAILED"), "{}", out.output());
}

/// `client --ws` against `serve --ws`: echo (closed loop, pipelined),
/// the chat scenario and churn, every byte checked, on WebSocket sessions
/// on both sides; the server names its WebSocket port.
fn cli_client_speaks_websocket_to_serve_ws(engine: EngineKind) {
    let run = |args: &[&str]| {
        run_bounded(
            Command::new(BIN)
                .args(["client", "--ws", "--engine", engine.name()])
                .args(args),
            Duration::from_secs(120),
        )
    };
    for app in ["echo", "chat"] {
        let server = CliServer::start(
            BIN,
            &["--engine", engine.name(), "--app", app, "--ws", "127.0.0.1:0"],
            &[],
        );
        let ws = server.logged_addr("serving WebSocket clients").to_string();
        let outs = match app {
            "echo" => vec![
                run(&[
                    "--addr",
                    &ws,
                    "--connections",
                    "8",
                    "--pipeline",
                    "4",
                    "--count",
                    "200",
                    "--size",
                    "3000",
                    "--verify",
                ]),
                run(&[
                    "--addr",
                    &ws,
                    "--scenario",
                    "churn",
                    "--connections",
                    "2",
                    "--count",
                    "40",
                    "--verify",
                ]),
            ],
            _ => vec![run(&[
                "--addr",
                &ws,
                "--scenario",
                "chat",
                "--connections",
                "12",
                "--rooms",
                "3",
                "--count",
                "20",
                "--interval",
                "10ms",
                "--verify",
            ])],
        };
        for out in outs {
            assert!(out.status.success(), "{app}: {}", out.output());
            assert!(out.stdout.contains("errors:      0"), "{app}: {}", out.output());
        }
        server.end();
    }
}

/// A certificate for 127.0.0.1 as PEM files: (certificate, key).
fn certificate(tag: &str) -> (String, String) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    iocore_cli::bench::certificate(&dir).unwrap()
}

/// `serve --tls-cert --tls-key` speaks TLS on both its ports;
/// `client --tls-ca` echoes every byte over TLS and over wss; a client
/// that does not trust the certificate fails its handshakes, says why,
/// and exits non-zero.
fn cli_client_speaks_tls_to_serve_tls(engine: EngineKind) {
    let (cert, key) = certificate(engine.name());
    let (other, _) = certificate(&format!("other-{}", engine.name()));
    let server = CliServer::start(
        BIN,
        &[
            "--engine",
            engine.name(),
            "--ws",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    let ws = server.logged_addr("serving WebSocket clients").to_string();
    let tcp = server.addr.to_string();
    let run = |args: &[&str]| {
        run_bounded(
            Command::new(BIN)
                .args([
                    "client",
                    "--engine",
                    engine.name(),
                    "--connections",
                    "6",
                    "--pipeline",
                    "4",
                ])
                .args(["--count", "100", "--size", "5000", "--verify"])
                .args(args),
            Duration::from_secs(120),
        )
    };
    for args in [
        &["--addr", &tcp, "--tls-ca", &cert][..],
        &["--addr", &ws, "--ws", "--tls-ca", &cert],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {}", out.output());
        assert!(out.stdout.contains("0 mismatched, 0 lost"), "{}", out.output());
    }
    let out = run(&["--addr", &tcp, "--tls-ca", &other]);
    assert_eq!(out.status.code(), Some(1), "{}", out.output());
    assert!(
        out.stdout.contains("invalid peer certificate"),
        "{}",
        out.output()
    );
    server.end();
}

/// The binary serves echo until SIGTERM, then stops gracefully, exit 0.
fn cli_serve_echoes_and_stops_on_sigterm(engine: EngineKind) {
    let args = [
        "--engine",
        engine.name(),
        "--threads",
        "2",
        "--accept",
        "hand-off",
    ];
    let server = CliServer::start(BIN, &args, &[]);
    for want in [format!("engine={engine}"), "accept=hand-off".to_string()] {
        assert!(
            server.log.iter().any(|l| l.contains(&want)),
            "{want}: {:?}",
            server.log
        );
    }
    // Three sessions: dealt to both workers in turn.
    let mut streams: Vec<_> = (0..3).map(|_| connect(server.addr)).collect();
    for s in &mut streams {
        s.write_all(b"typed line\n").unwrap();
        assert_eq!(read_exact(s, 11), b"typed line\n");
    }
    if cfg!(windows) {
        // No SIGTERM on Windows; the graceful stop itself is covered by the
        // library tests (graceful_stop_delivers_queued_data).
        return;
    }
    let (status, log) = server.stop();
    for s in &mut streams {
        let (rest, err) = read_to_end(s);
        assert!(rest.is_empty() && err.is_none(), "clean FIN on stop");
    }
    assert!(status.success(), "{status:?}");
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:?}");
}

engine_suite!(
    cli_client_speaks_tls_to_serve_tls,
    cli_client_speaks_websocket_to_serve_ws,
    open_loop_keeps_its_schedule_and_reports_its_error,
    sink_counts_exactly_the_bytes_sent,
    client_verify_passes_against_echo,
    client_verify_catches_corruption_and_loss,
    cli_client_exit_code_reflects_verification,
    cli_serve_echoes_and_stops_on_sigterm,
);

/// Asking for an engine that is unknown or cannot run fails clearly.
#[test]
fn cli_rejects_unknown_and_unavailable_engines() {
    let out = run_bounded(
        Command::new(BIN).args(["serve", "--engine", "iocp-please"]),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("unknown engine 'iocp-please'"),
        "{}",
        out.output()
    );
    for engine in EngineKind::ALL {
        if let Err(why) = engine.resolve() {
            let out = run_bounded(
                Command::new(BIN).args(["serve", "--engine", engine.name(), "--addr", "127.0.0.1:0"]),
                Duration::from_secs(60),
            );
            assert!(
                !out.status.success(),
                "{engine} cannot run here, yet serve started"
            );
            assert!(out.stderr.contains(&why.to_string()), "{}", out.output());
        }
    }
}

/// Listening on an address in use is a clear error, not a silent share.
#[test]
fn serve_on_a_busy_port_fails_clearly() {
    require(EngineKind::Auto);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = iocore::Server::builder()
        .addr(taken.local_addr().unwrap())
        .start(|| Echo)
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("cannot listen on"), "{err}");

    // A port held by listeners that share it (SO_REUSEPORT) is refused
    // too, rather than joined: a second server would silently take half
    // of the first one's connections.
    if cfg!(target_os = "linux") {
        let first = iocore::Server::builder()
            .addr("127.0.0.1:0".parse().unwrap())
            .threads(2)
            .accept(iocore::Accept::ReusePort)
            .start(|| Echo)
            .unwrap();
        let err = iocore::Server::builder()
            .addr(first.local_addr())
            .threads(2)
            .accept(iocore::Accept::ReusePort)
            .start(|| Echo)
            .err()
            .expect("the port is taken");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
        first.shutdown(std::time::Duration::from_secs(1)).unwrap();
    }
}

/// When io_uring is unusable (forced here), `auto` says why and serves on
/// epoll, and an explicit `--engine uring` fails with the reason.
#[test]
#[cfg(target_os = "linux")]
fn auto_falls_back_to_epoll_when_uring_is_unusable() {
    require(EngineKind::Epoll);
    let env = [("IOCORE_DISABLE_URING", "1")];
    let server = CliServer::start(BIN, &["--engine", "auto", "--threads", "1"], &env);
    let log = server.log.join("\n");
    assert!(
        log.contains("falling back to epoll") && log.contains("IOCORE_DISABLE_URING"),
        "{log}"
    );
    assert!(log.contains("engine=epoll"), "{log}");
    let mut s = connect(server.addr);
    s.write_all(b"fallback").unwrap();
    assert_eq!(read_exact(&mut s, 8), b"fallback");
    drop(s);
    assert!(server.stop().0.success());

    let out = Command::new(BIN)
        .args(["serve", "--engine", "uring", "--addr", "127.0.0.1:0"])
        .envs(env)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("engine 'uring' cannot run on this system"),
        "{stderr}"
    );
}

/// Where io_uring is usable, `auto` picks it and says so.
#[test]
#[cfg(target_os = "linux")]
fn auto_prefers_uring_when_usable() {
    require(EngineKind::Uring);
    let server = CliServer::start(BIN, &["--engine", "auto", "--threads", "1"], &[]);
    let log = server.log.join("\n");
    assert!(
        log.contains("chose uring") && log.contains("engine=uring"),
        "{log}"
    );
    assert!(server.stop().0.success());
}

/// The uring engine's single-shot fallback (for kernels without multishot
/// accept/receive) passes the verified seed client.
#[test]
#[cfg(target_os = "linux")]
fn uring_single_shot_mode_passes_verification() {
    require(EngineKind::Uring);
    let server = CliServer::start(
        BIN,
        &["--engine", "uring", "--threads", "2"],
        &[("IOCORE_URING_SINGLESHOT", "1")],
    );
    let summary = client::run(
        &options(server.addr, EngineKind::Epoll),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert!(summary.ok(), "{summary}");
    assert_eq!(summary.bytes_received, 20 * 50 * 100);
    assert!(server.stop().0.success());
}

/// Each optional io_uring feature turned off (`IOCORE_URING_OFF`, the
/// fallback a kernel without it takes), and all of them at once: the ring
/// says which it uses, and the verified seed client passes.
#[test]
#[cfg(target_os = "linux")]
fn uring_fallbacks_pass_verification() {
    require(EngineKind::Uring);
    let all = iocore::UringFeatures::NAMES.join(",");
    let mut cases: Vec<&str> = iocore::UringFeatures::NAMES.to_vec();
    cases.push(&all);
    for off in cases {
        let server = CliServer::start(
            BIN,
            &["--engine", "uring", "--threads", "2"],
            &[("IOCORE_URING_OFF", off)],
        );
        let ring_line = server
            .log
            .iter()
            .find(|l| l.contains("io_uring ring set up"))
            .cloned()
            .unwrap_or_else(|| panic!("no ring line: {:?}", server.log));
        for name in off.split(',') {
            assert!(ring_line.contains(&format!("{name}=off")), "{off}: {ring_line}");
        }
        let summary = client::run(
            &options(server.addr, EngineKind::Epoll),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        assert!(summary.ok(), "{off}: {summary}");
        assert_eq!(summary.bytes_received, 20 * 50 * 100, "{off}");
        assert!(server.stop().0.success(), "{off}");
    }
}

/// A feature name `IOCORE_URING_OFF` does not know is refused with the
/// names it knows.
#[test]
#[cfg(target_os = "linux")]
fn an_unknown_uring_feature_is_refused() {
    require(EngineKind::Uring);
    let out = Command::new(BIN)
        .args(["serve", "--engine", "uring", "--addr", "127.0.0.1:0"])
        .env("IOCORE_URING_OFF", "ring-fd,warp-drive")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown io_uring feature 'warp-drive'") && stderr.contains("plain-send"),
        "{stderr}"
    );
}

/// The open loop keeps its schedule on its own thread: every message is
/// sent (none early: the run takes at least the schedule's length), each
/// measured send's lateness is reported, and every echo is checked.
fn open_loop_keeps_its_schedule_and_reports_its_error(engine: EngineKind) {
    let echo = server(engine).start(|| Echo).unwrap();
    let mut opts = ClientOptions {
        mode: client::Mode::OpenLoop { rate: 200.0 },
        ..options(echo.local_addr(), engine)
    };
    opts.load.connections = 10;
    opts.load.count = Some(40);
    let summary = client::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(summary.ok(), "{summary}");
    assert_eq!(summary.messages, 400);
    assert_eq!(summary.round_trips, 400);
    assert_eq!(summary.latency.samples, 400);
    let error = summary
        .schedule_error
        .as_ref()
        .expect("open loop reports its error");
    assert_eq!(error.samples, 400, "{summary}");
    assert!(
        summary.elapsed_secs >= 39.0 / 200.0,
        "40 messages at 200/s take 195 ms at least: {summary}"
    );
    // Closed loop has no schedule.
    let closed = ClientOptions {
        mode: client::Mode::ClosedLoop { pipeline: 1 },
        ..opts
    };
    let summary = client::run(&closed, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(summary.ok() && summary.schedule_error.is_none(), "{summary}");
}
