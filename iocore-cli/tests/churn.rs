//! The churn client (a login storm): every connection of a run connects,
//! gets its one message back byte for byte and ends; the server saw each
//! one open and close; a server that corrupts, or one that never answers,
//! fails the run with the reason. On every engine, client and server.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use iocore::{EngineKind, Handler, Session};
use iocore_cli::churn::{self, ChurnOptions};
use iocore_cli::echo::Echo;
use iocore_cli::load::Load;
use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

fn options(addr: std::net::SocketAddr, engine: EngineKind) -> ChurnOptions {
    ChurnOptions {
        addr,
        load: Load {
            engine,
            connections: 20,
            size: 300,
            count: Some(400),
            drain_timeout: Duration::from_secs(10),
            ..Load::default()
        },
        ..ChurnOptions::default()
    }
}

fn every_connection_completes_byte_exact(engine: EngineKind) {
    for graceful in [false, true] {
        let echo = server(engine).threads(2).start(|| Echo).unwrap();
        let opts = ChurnOptions {
            graceful,
            ..options(echo.local_addr(), engine)
        };
        let summary = churn::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
        assert!(summary.ok(), "{summary}");
        assert_eq!((summary.started, summary.completed), (400, 400), "{summary}");
        assert_eq!(summary.measured, 400, "no warmup: all measured");
        assert_eq!(summary.latency.samples, 400);
        wait_until("the server saw every session end", || {
            let st = echo.stats();
            st.live_sessions == 0 && st.accepted == 400
        });
        assert_eq!(echo.stats().bytes_received, 400 * 300);
        echo.shutdown(Duration::from_secs(1)).unwrap();
    }
}

/// Echoes with one byte in every 100 flipped.
struct Flipping(u64);
impl Handler for Flipping {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut out = data.to_vec();
        for (i, b) in out.iter_mut().enumerate() {
            if (self.0 + i as u64) % 100 == 99 {
                *b ^= 1;
            }
        }
        self.0 += data.len() as u64;
        let _ = s.send(out);
        data.len()
    }
}

/// Reads and never answers.
struct Mute;
impl Handler for Mute {
    fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

fn failures_are_reported(engine: EngineKind) {
    let flipping = server(engine).start(|| Flipping(0)).unwrap();
    let mut opts = options(flipping.local_addr(), engine);
    opts.load.count = Some(50);
    let summary = churn::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(!summary.ok());
    assert_eq!(summary.mismatches, 50 * 3, "{summary}");

    let mute = server(engine).start(|| Mute).unwrap();
    let mut opts = options(mute.local_addr(), engine);
    opts.load.count = Some(5);
    opts.load.connections = 5;
    opts.load.drain_timeout = Duration::from_millis(300);
    let summary = churn::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(!summary.ok());
    assert_eq!((summary.completed, summary.errors), (0, 5), "{summary}");
    assert!(
        summary.error_lines[0].contains("timed out") && summary.error_lines[0].contains("0 of 300 bytes"),
        "{summary}"
    );
}

/// `iocore client --scenario churn --json` as the bench runs it.
fn the_cli_reports_connections_per_second(engine: EngineKind) {
    let echo = server(engine).start(|| Echo).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["client", "--scenario", "churn", "--engine", engine.name()])
        .args(["--addr", &echo.local_addr().to_string()])
        .args(["--connections", "10", "--count", "100", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["completed"], 100);
    assert_eq!(v["errors"], 0);
    assert!(v["connections_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["latency"]["p50_us"].as_u64().unwrap() > 0);
}

engine_suite!(
    every_connection_completes_byte_exact,
    failures_are_reported,
    the_cli_reports_connections_per_second
);
