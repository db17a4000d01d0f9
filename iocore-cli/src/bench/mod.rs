//! `iocore bench`: iocore's engines against the servers a user would pick
//! instead (tokio, monoio, compio, and a bare epoll loop as the floor), on
//! the same machine in the same run.
//!
//! Every measurement starts one server pinned to CPU 0 and the load client
//! (`iocore client --json`, epoll engine) pinned to CPU 1. Rounds are
//! interleaved and rotated (round r starts with server r), because this
//! machine's speed drifts between rounds. Per point and server it reports
//! the median and min–max over rounds of round trips/s, p99 latency and
//! server CPU µs per round trip (the figure that separates servers when
//! loopback throughput is client-bound), plus the ratio to tokio; then
//! idle memory per connection. Peer servers come from the `iocore-peers`
//! crate; this command builds them with cargo if they are missing.

mod svg;

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Interleaved rounds.
    pub rounds: usize,
    /// One round, short runs, fewer connections: for trying it out.
    pub quick: bool,
    /// Where results go.
    pub out: PathBuf,
    /// Servers to measure (names from [`SERVERS`]).
    pub servers: Vec<String>,
    /// Only the points whose name starts with one of these (all if
    /// empty), e.g. `chat`.
    pub points: Vec<String>,
    /// The window of the `-coalesce` servers (`serve --coalesce`).
    pub coalesce: Duration,
}

/// The servers `iocore bench` knows. `iocore-uring-basic` is the uring
/// engine with its optional kernel features off (`IOCORE_URING_OFF`, every
/// name): the A/B baseline for them, not in the default list. The
/// `-handoff` ones run the churn point only, with connections dealt out by
/// one listener (at the churn point every iocore server runs two workers,
/// so that the accept strategy matters). The `-coalesce` ones run the chat
/// points only, with `serve --app chat --coalesce` (`--coalesce` of the
/// bench: 50ms unless told).
/// `tokio-tungstenite` and `fastwebsockets` run the WebSocket points
/// (`ws-`) only, `tokio-rustls` the TLS points (`tls-`) only; at those, of
/// the iocore servers `iocore-epoll` and `iocore-uring` run (and at the
/// WebSocket pub/sub point the `-coalesce` ones).
pub const SERVERS: [&str; 14] = [
    "iocore-epoll",
    "iocore-uring",
    "iocore-epoll-handoff",
    "iocore-uring-handoff",
    "iocore-uring-basic",
    "iocore-epoll-coalesce",
    "iocore-uring-coalesce",
    "tokio",
    "monoio",
    "compio",
    "epoll-floor",
    "tokio-tungstenite",
    "fastwebsockets",
    "tokio-rustls",
];

/// What a load shape exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Echo servers: the unit of work is a round trip.
    Echo,
    /// Chat servers (fan-out): the unit of work is a delivered message.
    Chat,
    /// Echo servers under connection churn: the unit of work is a
    /// connection (connect, one echo, close).
    Churn,
    /// Arena servers (the sample game): the unit of work is a player-tick
    /// (a snapshot one player received); the latency is the tick's.
    Arena,
}

impl Scenario {
    /// The unit of work, for reports.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Echo => "round trip",
            Scenario::Chat => "delivery",
            Scenario::Churn => "connection",
            Scenario::Arena => "player-tick",
        }
    }

    /// The unit of work, plural.
    pub fn units(self) -> &'static str {
        match self {
            Scenario::Echo => "round trips",
            Scenario::Chat => "deliveries",
            Scenario::Churn => "connections",
            Scenario::Arena => "player-ticks",
        }
    }
}

/// One load shape.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Short name.
    pub name: String,
    /// Echo or chat.
    pub scenario: Scenario,
    /// Connections.
    pub connections: usize,
    /// Chat and arena: rooms (connection i in room i % rooms).
    pub rooms: usize,
    /// Bytes per message.
    pub size: usize,
    /// `None`: ping-pong; `Some(rate)`: open loop at `rate` per connection.
    pub rate: Option<f64>,
    /// Run length, warmup included, seconds.
    pub duration_secs: f64,
    /// Warmup, seconds.
    pub warmup_secs: f64,
    /// Over WebSocket: the client sends with `--ws`, iocore serves with
    /// `--ws`, and only WebSocket servers take part.
    pub websocket: bool,
    /// Over TLS: the client trusts a certificate made for the run, iocore
    /// serves with it, and only TLS servers take part.
    pub tls: bool,
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// Round number.
    pub round: usize,
    /// Point name.
    pub point: String,
    /// Server name.
    pub server: String,
    /// Units of work per second: round trips (echo) or deliveries (chat).
    pub per_sec: f64,
    /// p99 latency (of a round trip, or of a delivery), µs.
    pub p99_us: u64,
    /// Server CPU µs per unit of work.
    pub cpu_us_per_unit: f64,
    /// The kernel's part of it (system time), µs per unit.
    pub kernel_us_per_unit: f64,
    /// Server CPU percent of one core.
    pub cpu_percent: f64,
    /// The client's verdict (all connected, no errors; chat: nothing lost
    /// or misdelivered).
    pub ok: bool,
}

/// Median and range over rounds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// One server at one point, over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    /// Point name.
    pub point: String,
    /// Server name.
    pub server: String,
    /// Rounds that completed without errors.
    pub good_rounds: usize,
    /// Units of work (round trips or deliveries) per second.
    pub per_sec: Spread,
    /// p99 latency, µs.
    pub p99_us: Spread,
    /// Server CPU µs per unit of work.
    pub cpu_us_per_unit: Spread,
    /// The kernel's part of it (system time), µs per unit.
    pub kernel_us_per_unit: Spread,
    /// Server CPU percent of one core.
    pub cpu_percent: Spread,
    /// Median CPU µs per unit over tokio's at the same point.
    pub cpu_ratio_to_tokio: Option<f64>,
}

/// Idle memory of one server.
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    /// Server name.
    pub server: String,
    /// Idle connections held.
    pub connections: usize,
    /// VmRSS before, KiB.
    pub rss_before_kib: u64,
    /// VmRSS with the connections open, KiB.
    pub rss_after_kib: u64,
    /// (after − before) / connections, bytes.
    pub bytes_per_connection: f64,
}

/// Everything a bench run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When (UTC), `YYYY-MM-DDTHH:MM`.
    pub date: String,
    /// CPUs and kernel.
    pub machine: String,
    /// The command line.
    pub command: String,
    /// Rounds run.
    pub rounds: usize,
    /// Quick mode.
    pub quick: bool,
    /// Load shapes.
    pub points: Vec<Point>,
    /// Every measurement.
    pub runs: Vec<Run>,
    /// Per point and server.
    pub aggregates: Vec<Aggregate>,
    /// Idle memory per connection.
    pub memory: Vec<Memory>,
}

fn points(quick: bool) -> Vec<Point> {
    let (d, w) = if quick { (1.5, 0.5) } else { (5.0, 1.0) };
    let pp = |name: &str, connections, size| Point {
        name: name.into(),
        scenario: Scenario::Echo,
        connections,
        rooms: 0,
        size,
        rate: None,
        duration_secs: d,
        warmup_secs: w,
        websocket: false,
        tls: false,
    };
    // Fan-out: members in rooms, each saying `rate` messages a second;
    // every message reaches every member of its room.
    let (cd, cw) = if quick { (3.0, 1.0) } else { (6.0, 2.0) };
    let chat = |connections: usize, rooms: usize, rate: f64| Point {
        name: format!("chat-{connections}c-{rooms}r-{rate}/s"),
        scenario: Scenario::Chat,
        connections,
        rooms,
        size: 32,
        rate: Some(rate),
        duration_secs: cd,
        warmup_secs: cw,
        websocket: false,
        tls: false,
    };
    let seed = if quick { 2_000 } else { 10_000 };
    let mut points = vec![
        pp("1c-100B", 1, 100),
        pp("100c-100B", 100, 100),
        pp("1000c-100B", 1000, 100),
        pp("100c-1000B", 100, 1000),
        Point {
            name: format!("{}kc-1msg/s", seed / 1000),
            scenario: Scenario::Echo,
            connections: seed,
            rooms: 0,
            size: 100,
            rate: Some(1.0),
            duration_secs: if quick { 4.0 } else { 12.0 },
            warmup_secs: if quick { 2.0 } else { 4.0 },
            websocket: false,
            tls: false,
        },
    ];
    match quick {
        true => points.extend([chat(100, 1, 10.0), chat(500, 5, 2.0)]),
        false => points.extend([chat(100, 1, 20.0), chat(1000, 10, 2.0), chat(1000, 10, 4.0)]),
    }
    // The arena: bots in rooms of 20 at 20 Hz, 30 inputs a second each.
    let arena = |bots: usize| Point {
        name: format!("arena-{bots}b-{}r", bots / 20),
        scenario: Scenario::Arena,
        connections: bots,
        rooms: bots / 20,
        size: 0,
        rate: Some(30.0),
        duration_secs: cd,
        warmup_secs: cw,
        websocket: false,
        tls: false,
    };
    match quick {
        true => points.push(arena(200)),
        false => points.extend([arena(1000), arena(2000)]),
    }
    // Churn: 50 lanes each connecting, echoing 100 B and closing, again.
    points.push(Point {
        name: "churn-50p".into(),
        scenario: Scenario::Churn,
        connections: 50,
        rooms: 0,
        size: 100,
        rate: None,
        duration_secs: d,
        warmup_secs: w,
        websocket: false,
        tls: false,
    });
    // WebSocket: echo of 100 B messages, and pub/sub (the chat over
    // WebSocket, one packet per message: every message said reaches every
    // member of its room).
    points.push(Point {
        name: "ws-100c-100B".into(),
        websocket: true,
        ..pp("", 100, 100)
    });
    let ws_chat = |connections, rooms, rate| Point {
        name: format!("ws-pubsub-{connections}c-{rooms}r-{rate}/s"),
        websocket: true,
        ..chat(connections, rooms, rate)
    };
    match quick {
        true => points.push(ws_chat(500, 5, 2.0)),
        false => points.push(ws_chat(1000, 10, 2.0)),
    }
    // TLS: echo of 100 B messages.
    points.push(Point {
        name: "tls-100c-100B".into(),
        tls: true,
        ..pp("", 100, 100)
    });
    points
}

/// Where and how the servers under test are started.
struct Site {
    /// The binaries' directory.
    dir: PathBuf,
    /// The `-coalesce` servers' window (`serve --coalesce`).
    coalesce: Duration,
}

/// Where the binaries are: next to this executable.
fn bin_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().unwrap_or(Path::new(".")).to_path_buf())
}

/// How to start `server` for `scenario`; `None` if it has no such app.
fn program(
    server: &str,
    scenario: Scenario,
    (websocket, tls): (bool, bool),
    site: &Site,
) -> io::Result<Option<(PathBuf, Vec<String>)>> {
    let dir = site.dir.as_path();
    let window = format!("{}ms", site.coalesce.as_millis());
    let iocore = std::env::current_exe()?;
    let app = match scenario {
        Scenario::Echo | Scenario::Churn => "echo",
        Scenario::Chat => "chat",
        Scenario::Arena => "arena",
    };
    // At the churn point two workers, so that how connections are spread
    // over them (reuse-port or hand-off) matters; one elsewhere.
    let coalesce = |engine: &str| {
        let args = [
            "serve",
            "--app",
            "chat",
            "--coalesce",
            &window,
            "--engine",
            engine,
            "--threads",
            "1",
            "--max-sessions",
            "30000",
            "--log-level",
            "warn",
        ];
        Some((iocore.clone(), args.iter().map(|s| s.to_string()).collect()))
    };
    let serve = |engine: &str, accept: &str| {
        let threads = if scenario == Scenario::Churn { "2" } else { "1" };
        let args = [
            "serve",
            "--app",
            app,
            "--engine",
            engine,
            "--threads",
            threads,
            "--accept",
            accept,
            "--max-sessions",
            "30000",
            "--log-level",
            "warn",
        ];
        Some((iocore.clone(), args.iter().map(|s| s.to_string()).collect()))
    };
    let peer = |name: &str| Some((dir.join(format!("peer-{name}")), vec![]));
    let tls_peer = server == "tokio-rustls";
    if tls || tls_peer {
        return Ok(match (server, scenario, tls, websocket) {
            ("iocore-epoll", Scenario::Echo, true, false) => serve("epoll", "reuse-port"),
            ("iocore-uring", Scenario::Echo, true, false) => serve("uring", "reuse-port"),
            ("tokio-rustls", Scenario::Echo, true, false) => peer(server),
            _ => None,
        });
    }
    let ws_peer = matches!(server, "tokio-tungstenite" | "fastwebsockets");
    if websocket || ws_peer {
        return Ok(match (server, scenario, websocket) {
            ("iocore-epoll", Scenario::Echo | Scenario::Chat, true) => serve("epoll", "reuse-port"),
            ("iocore-uring", Scenario::Echo | Scenario::Chat, true) => serve("uring", "reuse-port"),
            ("iocore-epoll-coalesce", Scenario::Chat, true) => coalesce("epoll"),
            ("iocore-uring-coalesce", Scenario::Chat, true) => coalesce("uring"),
            (_, Scenario::Echo, true) if ws_peer => peer(server),
            (_, Scenario::Chat, true) if ws_peer => peer(&format!("{server}-chat")),
            _ => None,
        });
    }
    Ok(match (server, scenario) {
        ("iocore-epoll", _) => serve("epoll", "reuse-port"),
        ("iocore-uring" | "iocore-uring-basic", _) => serve("uring", "reuse-port"),
        ("iocore-epoll-handoff", Scenario::Churn) => serve("epoll", "hand-off"),
        ("iocore-uring-handoff", Scenario::Churn) => serve("uring", "hand-off"),
        ("iocore-epoll-handoff" | "iocore-uring-handoff", _) => None,
        ("iocore-epoll-coalesce", Scenario::Chat) => coalesce("epoll"),
        ("iocore-uring-coalesce", Scenario::Chat) => coalesce("uring"),
        ("iocore-epoll-coalesce" | "iocore-uring-coalesce", _) => None,
        ("tokio", Scenario::Chat) => peer("tokio-chat"),
        ("tokio", Scenario::Arena) => peer("tokio-arena"),
        ("tokio", Scenario::Churn) => peer("tokio"),
        ("tokio" | "monoio" | "compio", Scenario::Echo) => peer(server),
        ("epoll-floor", Scenario::Echo) => peer("epoll"),
        ("monoio" | "compio" | "epoll-floor", Scenario::Chat | Scenario::Churn | Scenario::Arena) => None,
        (other, _) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown server '{other}' (known: {})", SERVERS.join(", ")),
            ))
        }
    })
}

/// A self-signed certificate for 127.0.0.1 in `dir` (made once, then
/// reused; the TLS points keep theirs beside the binaries): the paths of
/// its PEM certificate and key files.
pub fn certificate(dir: &Path) -> io::Result<(String, String)> {
    let (cert, key) = (dir.join("bench-tls-cert.pem"), dir.join("bench-tls-key.pem"));
    if !cert.exists() || !key.exists() {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])
            .map_err(|e| io::Error::other(format!("making the bench's certificate: {e}")))?;
        std::fs::write(&key, made.signing_key.serialize_pem())?;
        std::fs::write(&cert, made.cert.pem())?;
    }
    Ok((cert.display().to_string(), key.display().to_string()))
}

/// Builds the peer servers if any is missing.
fn ensure_peers(dir: &Path, servers: &[String]) -> io::Result<()> {
    let needed = servers.iter().any(|s| !s.starts_with("iocore-"));
    let missing = [
        "tokio",
        "tokio-chat",
        "tokio-arena",
        "monoio",
        "compio",
        "epoll",
        "tokio-tungstenite",
        "tokio-tungstenite-chat",
        "fastwebsockets",
        "fastwebsockets-chat",
        "tokio-rustls",
    ]
    .iter()
    .any(|p| !dir.join(format!("peer-{p}")).exists());
    if !needed || !missing {
        return Ok(());
    }
    eprintln!("building the peer servers: cargo build --release -p iocore-peers");
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "iocore-peers"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run cargo to build the peer servers: {e}"),
            )
        })?;
    if !status.success() {
        return Err(io::Error::other(
            "building the peer servers failed (cargo build --release -p iocore-peers)",
        ));
    }
    Ok(())
}

fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A server under test, killed on drop.
struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Running {
    /// Starts `server` for `scenario` (it must have that app).
    fn start(
        server: &str,
        scenario: Scenario,
        (websocket, tls): (bool, bool),
        site: &Site,
    ) -> io::Result<Running> {
        let dir = site.dir.as_path();
        let (prog, mut args) = program(server, scenario, (websocket, tls), site)?
            .ok_or_else(|| io::Error::other(format!("{server} has no {scenario:?} server")))?;
        let addr = free_port()?;
        let cert = tls.then(|| certificate(dir)).transpose()?;
        if server.starts_with("iocore-") && websocket {
            // The load connects to the WebSocket port.
            args.extend(["--addr".to_string(), free_port()?.to_string()]);
            args.extend(["--ws".to_string(), addr.to_string()]);
        } else if server.starts_with("iocore-") {
            args.extend(["--addr".to_string(), addr.to_string()]);
        } else {
            args.push(addr.to_string());
        }
        if let Some((cert, key)) = &cert {
            match server.starts_with("iocore-") {
                true => args.extend(["--tls-cert".into(), cert.clone(), "--tls-key".into(), key.clone()]),
                false => args.extend([cert.clone(), key.clone()]),
            }
        }
        let mut cmd = Command::new("taskset");
        #[cfg(target_os = "linux")]
        if server == "iocore-uring-basic" {
            cmd.env(
                iocore::URING_FEATURES_OFF_VAR,
                iocore::UringFeatures::NAMES.join(","),
            );
        }
        let child = cmd
            .args(["-c", "0"])
            .arg(&prog)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", prog.display())))?;
        let mut running = Running { child, addr };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = running.child.try_wait()? {
                return Err(io::Error::other(format!("{server} exited at start: {status}")));
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::other(format!("{server} did not listen within 10 s")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load client against `server` at `point` and reads its report.
fn measure(point: &Point, server: &str, site: &Site, round: usize) -> io::Result<Run> {
    let running = Running::start(server, point.scenario, (point.websocket, point.tls), site)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"]).arg(std::env::current_exe()?).arg("client");
    cmd.args([
        "--engine",
        "epoll",
        "--log-level",
        "error",
        "--json",
        "--drain-timeout",
        "2s",
    ]);
    cmd.args(["--addr", &running.addr.to_string()]);
    cmd.args(["--connections", &point.connections.to_string()]);
    if point.websocket {
        cmd.arg("--ws");
    }
    if point.tls {
        cmd.args(["--tls-ca", &certificate(&site.dir)?.0]);
    }
    if point.scenario != Scenario::Arena {
        cmd.args(["--size", &point.size.to_string()]);
    }
    match (point.scenario, point.rate) {
        (Scenario::Churn, _) => cmd.args(["--scenario", "churn"]),
        (Scenario::Arena, rate) => cmd.args([
            "--scenario",
            "arena",
            "--rooms",
            &point.rooms.to_string(),
            "--input-rate",
            &rate.unwrap_or(30.0).to_string(),
        ]),
        (_, Some(rate)) => cmd.args(["--rate", &rate.to_string()]),
        (_, None) => cmd.args(["--pipeline", "1"]),
    };
    if point.scenario == Scenario::Chat {
        cmd.args(["--scenario", "chat", "--rooms", &point.rooms.to_string()]);
    }
    cmd.args([
        "--duration",
        &format!("{}s", point.duration_secs),
        "--warmup",
        &format!("{}s", point.warmup_secs),
    ]);
    cmd.args(["--server-pid", &running.child.id().to_string()]);
    let out = cmd.stderr(Stdio::null()).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        io::Error::other(format!(
            "{server} at {}: client printed no report ({e})",
            point.name
        ))
    })?;
    let (per_sec, ok) = match point.scenario {
        Scenario::Echo => (
            v["round_trips_per_sec"].as_f64(),
            v["errors"] == 0 && v["connected"] == point.connections,
        ),
        Scenario::Churn => (
            v["connections_per_sec"].as_f64(),
            v["errors"] == 0 && v["mismatches"] == 0,
        ),
        Scenario::Chat => (
            v["deliveries_per_sec"].as_f64(),
            v["errors"] == 0 && v["lost"] == 0 && v["misdelivered"] == 0 && v["joined"] == point.connections,
        ),
        Scenario::Arena => (
            v["player_ticks"]
                .as_f64()
                .zip(v["window_secs"].as_f64())
                .map(|(n, secs)| n / secs.max(1e-9)),
            v["errors"] == 0 && v["joined"] == point.connections,
        ),
    };
    // The arena's latency is its ticks': how late the server ran them.
    let latency = match point.scenario {
        Scenario::Arena => &v["tick_lateness"],
        _ => &v["latency"],
    };
    Ok(Run {
        round,
        point: point.name.clone(),
        server: server.to_string(),
        per_sec: per_sec.unwrap_or(0.0),
        p99_us: latency["p99_us"].as_u64().unwrap_or(0),
        cpu_us_per_unit: v["server"]["cpu_us_per_round_trip"].as_f64().unwrap_or(0.0),
        kernel_us_per_unit: v["server"]["kernel_us_per_round_trip"].as_f64().unwrap_or(0.0),
        cpu_percent: v["server"]["cpu_percent"].as_f64().unwrap_or(0.0),
        ok,
    })
}

fn idle_memory(server: &str, site: &Site, connections: usize) -> io::Result<Memory> {
    let running = Running::start(server, Scenario::Echo, (false, false), site)?;
    let pid = running.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let before = crate::usage::usage(pid)?.rss_kib;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(TcpStream::connect(running.addr)?);
    }
    // Wait until the server has taken them all (RSS stops moving).
    let mut last = 0;
    let mut same = 0;
    let start = Instant::now();
    while same < 3 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        let now = crate::usage::usage(pid)?.rss_kib;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    drop(conns);
    Ok(Memory {
        server: server.into(),
        connections,
        rss_before_kib: before,
        rss_after_kib: last,
        bytes_per_connection: (last as f64 - before as f64) * 1024.0 / connections as f64,
    })
}

fn stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}

fn aggregate(points: &[Point], servers: &[String], runs: &[Run]) -> Vec<Aggregate> {
    let mut out = Vec::new();
    for p in points {
        let mut medians = BTreeMap::new();
        for s in servers {
            let good: Vec<&Run> = runs
                .iter()
                .filter(|r| r.point == p.name && &r.server == s && r.ok)
                .collect();
            let spread = |f: &dyn Fn(&Run) -> f64| Spread::of(good.iter().map(|r| f(r)).collect());
            let (Some(rt), Some(p99), Some(cpu), Some(kernel), Some(pct)) = (
                spread(&|r| r.per_sec),
                spread(&|r| r.p99_us as f64),
                spread(&|r| r.cpu_us_per_unit),
                spread(&|r| r.kernel_us_per_unit),
                spread(&|r| r.cpu_percent),
            ) else {
                continue;
            };
            medians.insert(s.clone(), cpu.median);
            out.push(Aggregate {
                point: p.name.clone(),
                server: s.clone(),
                good_rounds: good.len(),
                per_sec: rt,
                p99_us: p99,
                cpu_us_per_unit: cpu,
                kernel_us_per_unit: kernel,
                cpu_percent: pct,
                cpu_ratio_to_tokio: None,
            });
        }
        if let Some(tokio) = medians.get("tokio").copied() {
            for a in out.iter_mut().filter(|a| a.point == p.name) {
                a.cpu_ratio_to_tokio = Some(a.cpu_us_per_unit.median / tokio);
            }
        }
    }
    out
}

impl BenchOptions {
    /// Checks the options without running anything: known servers and
    /// points, at least one round.
    pub fn check(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.rounds == 0 {
            return bad("--rounds must be at least 1".into());
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&self.coalesce) {
            return bad("--coalesce must be between 1ms and 1s".into());
        }
        if let Some(s) = self.servers.iter().find(|s| !SERVERS.contains(&s.as_str())) {
            return bad(format!("unknown server '{s}' (known: {})", SERVERS.join(", ")));
        }
        let all = points(false);
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        if let Some(p) = self
            .points
            .iter()
            .find(|p| !names.iter().any(|n| n.starts_with(p.as_str())))
        {
            return bad(format!(
                "no bench point is named '{p}' or starts so (known: {})",
                names.join(", ")
            ));
        }
        Ok(())
    }
}

/// Runs the benchmark, writes `<out>/<date>.{json,md}` and SVG charts, and
/// returns the report.
pub fn run(opts: &BenchOptions) -> io::Result<Report> {
    opts.check()?;
    // Server CPU and memory come from the OS (/proc on Linux).
    crate::usage::usage(std::process::id())
        .map_err(|e| io::Error::new(e.kind(), format!("iocore bench cannot measure servers here: {e}")))?;
    let site = Site {
        dir: bin_dir()?,
        coalesce: opts.coalesce,
    };
    ensure_peers(&site.dir, &opts.servers)?;
    for s in &opts.servers {
        program(s, Scenario::Echo, (false, false), &site)?;
    }
    crate::usage::raise_fd_limit()?;
    let mut points = points(opts.quick);
    if !opts.points.is_empty() {
        points.retain(|p| opts.points.iter().any(|want| p.name.starts_with(want.as_str())));
        if points.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no bench point has such a name",
            ));
        }
    }
    let rounds = if opts.quick { 1 } else { opts.rounds.max(1) };
    let mut runs = Vec::new();
    for round in 0..rounds {
        for point in &points {
            let n = opts.servers.len();
            for k in 0..n {
                let server = &opts.servers[(k + round) % n];
                if program(server, point.scenario, (point.websocket, point.tls), &site)?.is_none() {
                    continue; // no such app (a chat point for an echo-only peer)
                }
                eprint!("round {}/{rounds} {:<20} {:<13} ", round + 1, point.name, server);
                let run = match measure(point, server, &site, round) {
                    Ok(run) => run,
                    Err(e) => {
                        eprintln!("failed: {e}");
                        continue;
                    }
                };
                let unit = match point.scenario {
                    Scenario::Echo => "rt",
                    Scenario::Chat => "dlv",
                    Scenario::Churn => "conn",
                    Scenario::Arena => "ptick",
                };
                eprintln!(
                    "{:>9.0} {unit}/s  p99 {:>7} us  {:>5.2} us CPU/{unit} ({:.2} kernel){}",
                    run.per_sec,
                    run.p99_us,
                    run.cpu_us_per_unit,
                    run.kernel_us_per_unit,
                    if run.ok { "" } else { "  (errors)" }
                );
                runs.push(run);
            }
        }
    }
    let idle = if opts.quick { 2_000 } else { 10_000 };
    let mut memory = Vec::new();
    // Idle memory belongs to a full run, not to a run of chosen points.
    let servers = match opts.points.is_empty() {
        true => &opts.servers[..],
        false => &[],
    };
    for s in servers {
        if program(s, Scenario::Echo, (false, false), &site)?.is_none() {
            continue; // a churn-only or WebSocket server
        }
        eprint!("idle memory {s:<13} ");
        match idle_memory(s, &site, idle) {
            Ok(m) => {
                eprintln!("{:.0} bytes per connection", m.bytes_per_connection);
                memory.push(m);
            }
            Err(e) => eprintln!("failed: {e}"),
        }
    }
    let report = Report {
        date: stamp(),
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rounds,
        quick: opts.quick,
        aggregates: aggregate(&points, &opts.servers, &runs),
        points,
        runs,
        memory,
    };
    write(&report, &opts.out, &opts.servers)?;
    Ok(report)
}

fn write(report: &Report, out: &Path, servers: &[String]) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    let base = out.join(report.date.replace(':', ""));
    let name = |suffix: &str| PathBuf::from(format!("{}{suffix}", base.display()));
    std::fs::write(
        name(".json"),
        serde_json::to_string_pretty(report).map_err(io::Error::other)?,
    )?;
    std::fs::write(name(".md"), markdown(report))?;
    // One set of charts per kind of point: echo (per round trip) and chat
    // (per delivery) do not share a scale, nor all servers.
    for (scenario, suffix, what) in [
        (Scenario::Echo, "", "round trip"),
        (Scenario::Chat, "-fanout", "delivered message"),
        (Scenario::Arena, "-arena", "player-tick"),
    ] {
        let points: Vec<&Point> = report.points.iter().filter(|p| p.scenario == scenario).collect();
        let names: Vec<String> = servers
            .iter()
            .filter(|s| {
                report
                    .aggregates
                    .iter()
                    .any(|a| &a.server == *s && points.iter().any(|p| p.name == a.point))
            })
            .cloned()
            .collect();
        if points.is_empty() || names.is_empty() {
            continue;
        }
        let groups: Vec<String> = points.iter().map(|p| p.name.clone()).collect();
        let bars = |f: &dyn Fn(&Aggregate) -> Spread| -> Vec<Vec<Option<svg::Bar>>> {
            points
                .iter()
                .map(|p| {
                    names
                        .iter()
                        .map(|s| {
                            let a = report
                                .aggregates
                                .iter()
                                .find(|a| a.point == p.name && &a.server == s)?;
                            let v = f(a);
                            Some(svg::Bar {
                                value: v.median,
                                min: v.min,
                                max: v.max,
                            })
                        })
                        .collect()
                })
                .collect()
        };
        let title = format!("Server CPU per {what} (lower is better)");
        let chart = svg::grouped_bars(&title, "µs", &groups, &names, &bars(&|a| a.cpu_us_per_unit));
        std::fs::write(name(&format!("{suffix}-cpu.svg")), chart)?;
        let chart = svg::grouped_bars(
            "p99 latency (lower is better)",
            "µs",
            &groups,
            &names,
            &bars(&|a| a.p99_us),
        );
        std::fs::write(name(&format!("{suffix}-p99.svg")), chart)?;
    }
    if report.memory.is_empty() {
        eprintln!("wrote {}.json, .md and SVG charts", base.display());
        return Ok(());
    }
    let mem: Vec<Vec<Option<svg::Bar>>> = vec![servers
        .iter()
        .map(|s| {
            report.memory.iter().find(|m| &m.server == s).map(|m| svg::Bar {
                value: m.bytes_per_connection,
                min: m.bytes_per_connection,
                max: m.bytes_per_connection,
            })
        })
        .collect()];
    let label = format!(
        "{} idle connections",
        report.memory.first().map_or(0, |m| m.connections)
    );
    let chart = svg::grouped_bars(
        "Memory per idle connection (lower is better)",
        "bytes",
        &[label],
        servers,
        &mem,
    );
    std::fs::write(name("-memory.svg"), chart)?;
    eprintln!(
        "wrote {}.json, .md and -cpu/-p99/-fanout-cpu/-fanout-p99/-memory.svg",
        base.display()
    );
    Ok(())
}

/// The report as Markdown tables.
pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Bench {} on {}: {} round(s){}; server on CPU 0, client on CPU 1.\n\nCommand: `{}`\n\n",
        r.date,
        r.machine,
        r.rounds,
        if r.quick { " (quick)" } else { "" },
        r.command
    );
    for p in &r.points {
        let shape = match (p.scenario, p.rate) {
            (Scenario::Chat, rate) => format!(
                "fan-out, {} room(s) of {}, each member saying {} msg/s",
                p.rooms,
                p.connections / p.rooms.max(1),
                rate.unwrap_or(0.0)
            ),
            (Scenario::Echo, Some(rate)) => format!("open loop, {rate} msg/s per connection"),
            (Scenario::Echo, None) => "ping-pong".into(),
            (Scenario::Churn, _) => {
                "churn: each lane connects, echoes one message, resets, again; iocore with 2 workers".into()
            }
            (Scenario::Arena, rate) => format!(
                "arena: {} rooms of {} bots at 20 Hz, each sending {} inputs/s; p99 is the server's tick lateness",
                p.rooms,
                p.connections / p.rooms.max(1),
                rate.unwrap_or(0.0)
            ),
        };
        let load = match p.scenario {
            Scenario::Arena => format!("{} bots", p.connections),
            _ => format!("{} connections × {} B", p.connections, p.size),
        };
        s += &format!(
            "### {}: {load}, {shape}, {}s (warmup {}s)\n\n",
            p.name, p.duration_secs, p.warmup_secs
        );
        let (unit, units) = (p.scenario.unit(), p.scenario.units());
        s += &format!(
            "| server | {units}/s | p99 µs | server CPU µs/{unit} | of which kernel | CPU % | CPU vs tokio |\n"
        );
        s += "|---|---|---|---|---|---|---|\n";
        for a in r.aggregates.iter().filter(|a| a.point == p.name) {
            let f = |x: Spread, d: usize| format!("{:.d$} ({:.d$}–{:.d$})", x.median, x.min, x.max);
            s += &format!(
                "| {} | {} | {} | {} | {:.2} | {:.0} | {} |\n",
                a.server,
                f(a.per_sec, 0),
                f(a.p99_us, 0),
                f(a.cpu_us_per_unit, 2),
                a.kernel_us_per_unit.median,
                a.cpu_percent.median,
                a.cpu_ratio_to_tokio.map_or("–".into(), |x| format!("{x:.2}")),
            );
        }
        s += "\n";
    }
    if !r.memory.is_empty() {
        s += "### Idle memory\n\n| server | connections | VmRSS before KiB | VmRSS after KiB | bytes per connection |\n|---|---|---|---|---|\n";
        for m in &r.memory {
            s += &format!(
                "| {} | {} | {} | {} | {:.0} |\n",
                m.server, m.connections, m.rss_before_kib, m.rss_after_kib, m.bytes_per_connection
            );
        }
    }
    s
}
