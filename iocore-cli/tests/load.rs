//! The load client's accounting: latencies reflect a known server delay in
//! both closed and open loop, and the JSON report carries every field.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use iocore::{EngineKind, Handler, Session};
use iocore_cli::client::{self, ClientOptions, Mode};
use iocore_cli::echo::Echo;
use iocore_cli::load::Load;
use iocore_testkit::*;

const DELAY: Duration = Duration::from_millis(40);

/// Echoes every chunk of bytes `DELAY` after it arrived.
#[derive(Default)]
struct Delayed {
    held: std::collections::VecDeque<(std::time::Instant, Vec<u8>)>,
}

impl Handler for Delayed {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        if self.held.is_empty() {
            s.set_timer(DELAY);
        }
        self.held
            .push_back((std::time::Instant::now() + DELAY, data.to_vec()));
        data.len()
    }
    fn on_timer(&mut self, s: &mut Session<'_>) {
        let now = std::time::Instant::now();
        while self.held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, data) = self.held.pop_front().unwrap();
            let _ = s.send(data);
        }
        if let Some((due, _)) = self.held.front() {
            // Round up: the timer has millisecond resolution.
            s.set_timer(*due - now + Duration::from_millis(1));
        }
    }
}

fn run_against(addr: std::net::SocketAddr, mode: Mode, engine: EngineKind) -> client::Summary {
    let opts = ClientOptions {
        addr,
        load: Load {
            engine,
            connections: 4,
            count: Some(10),
            ..Load::default()
        },
        mode,
        verify: true,
        ..ClientOptions::default()
    };
    client::run(&opts, Arc::new(AtomicBool::new(false))).unwrap()
}

fn latency_includes_server_delay_closed_loop(engine: EngineKind) {
    let server = server(engine).start(Delayed::default).unwrap();
    let s = run_against(server.local_addr(), Mode::ClosedLoop { pipeline: 1 }, engine);
    assert!(s.ok(), "{s}");
    assert_eq!(s.latency.samples, 40);
    let delay_us = DELAY.as_micros() as u64;
    assert!(
        s.latency.p50_us >= delay_us,
        "p50 {} < delay {delay_us}",
        s.latency.p50_us
    );
    assert!(s.latency.max_us >= delay_us);
}

/// Open loop at 100 messages/s against a 40 ms server: every latency is
/// at least the delay, measured from the scheduled send time.
fn latency_includes_server_delay_open_loop(engine: EngineKind) {
    let server = server(engine).start(Delayed::default).unwrap();
    let s = run_against(server.local_addr(), Mode::OpenLoop { rate: 100.0 }, engine);
    assert!(s.ok(), "{s}");
    assert_eq!(s.latency.samples, 40);
    let delay_us = DELAY.as_micros() as u64;
    let min = s.latency.p50_us.min(s.latency.p90_us);
    assert!(min >= delay_us, "latency {min} < delay {delay_us}");
}

/// A server that stalls is not hidden: sends keep their schedule, so the
/// wait counts in the latency (no coordinated omission).
fn open_loop_counts_a_stall_from_the_schedule(engine: EngineKind) {
    /// Holds everything for the first 300 ms, then echoes it all at once
    /// and echoes directly from then on.
    #[derive(Default)]
    struct Stall {
        held: Vec<u8>,
        stalling: bool,
        stalled: bool,
    }
    impl Handler for Stall {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            if self.stalled {
                let _ = s.send_copy(data);
            } else {
                if !self.stalling {
                    self.stalling = true;
                    s.set_timer(Duration::from_millis(300));
                }
                self.held.extend_from_slice(data);
            }
            data.len()
        }
        fn on_timer(&mut self, s: &mut Session<'_>) {
            let _ = s.send(std::mem::take(&mut self.held));
            self.stalled = true;
        }
    }
    let server = server(engine).start(Stall::default).unwrap();
    let opts = ClientOptions {
        addr: server.local_addr(),
        load: Load {
            engine,
            count: Some(20),
            ..Load::default()
        },
        mode: Mode::OpenLoop { rate: 100.0 },
        ..ClientOptions::default()
    };
    let s = client::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(s.ok(), "{s}");
    // The first message waited the whole stall.
    assert!(s.latency.max_us >= 250_000, "max {} us", s.latency.max_us);
}

/// `--json` prints one object with every field a benchmark reads.
fn json_report_carries_every_field(engine: EngineKind) {
    let server = server(engine).start(|| Echo).unwrap();
    let mut client = std::process::Command::new(env!("CARGO_BIN_EXE_iocore"));
    client
        .args([
            "client",
            "--engine",
            engine.name(),
            "--addr",
            &server.local_addr().to_string(),
        ])
        .args([
            "--connections",
            "3",
            "--pipeline",
            "2",
            "--count",
            "50",
            "--verify",
            "--json",
        ]);
    // Server CPU and memory readings: Linux only (elsewhere the flag is
    // refused, and the report says so).
    let pid = std::process::id().to_string();
    if cfg!(target_os = "linux") {
        client.args(["--server-pid", &pid]);
    }
    let out = client.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    for key in [
        "addr",
        "mode",
        "size",
        "connections",
        "connected",
        "messages",
        "bytes_sent",
        "bytes_received",
        "round_trips",
        "window_secs",
        "round_trips_per_sec",
        "mb_per_sec",
        "latency",
        "server",
        "verify",
        "mismatches",
        "lost_bytes",
        "errors",
        "error_lines",
        "elapsed_secs",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    for key in [
        "samples", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
    ] {
        assert!(v["latency"].get(key).is_some(), "missing latency.{key}");
    }
    if cfg!(target_os = "linux") {
        for key in [
            "cpu_us_per_round_trip",
            "kernel_us_per_round_trip",
            "cpu_percent",
            "rss_kib",
        ] {
            assert!(v["server"].get(key).is_some(), "missing server.{key}");
        }
        // The kernel's part is a part: read from the same two readings.
        let cpu = v["server"]["cpu_us_per_round_trip"].as_f64().unwrap();
        let kernel = v["server"]["kernel_us_per_round_trip"].as_f64().unwrap();
        assert!((0.0..=cpu).contains(&kernel), "kernel {kernel} of {cpu}");
    }
    assert_eq!(v["messages"], 150);
    assert_eq!(v["round_trips"], 150);
    assert_eq!(v["mode"]["closed_loop"]["pipeline"], 2);
    assert_eq!(v["mismatches"], 0);
}

engine_suite!(
    latency_includes_server_delay_closed_loop,
    latency_includes_server_delay_open_loop,
    open_loop_counts_a_stall_from_the_schedule,
    json_report_carries_every_field,
);
