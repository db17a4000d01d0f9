//! `iocore`: a thin command-line front end over the library's apps.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::{Parser, Subcommand};
use iocore::{Accept, ConfigError, EngineKind, Keepalive, Server, ServerBuilder, ServerHandle, Setting};
use iocore_cli::client::{self, ClientOptions, Mode};
use iocore_cli::{arena, chat, echo::Echo, sink::Sink, App};

#[derive(Parser)]
#[command(
    name = "iocore",
    version,
    about = "TCP session servers and clients on epoll and io_uring"
)]
struct Cli {
    /// Log filter: error, warn, info, debug, trace or off, or
    /// target=level directives (iocore=debug,warn). Default: info; for
    /// chat and top, warn (their screen is the terminal).
    #[arg(long, global = true, value_parser = parse_log_level)]
    log_level: Option<String>,
    /// Log lines as `human` text or `json` (one object per line, for log
    /// shippers).
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Check the arguments (ranges, addresses, limits, files) and exit
    /// without running anything.
    #[arg(long, global = true)]
    check: bool,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Text for people (colored on a terminal).
    Human,
    /// One JSON object per line: timestamp, level, target, fields.
    Json,
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a server (echo by default) until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Run the seed client / load generator (echo), or the chat load.
    Client(ClientArgs),
    /// Chat in a room of a chat server (`serve --app chat`): lines typed
    /// are said; /join ROOM, /leave, /quit.
    Chat(ChatArgs),
    /// Measure iocore against tokio, monoio, compio and an epoll floor.
    Bench(BenchArgs),
    /// A live view of a server's metrics endpoint (`serve --metrics`):
    /// sessions, rates, queues and closes, per worker. q or Ctrl-C quits.
    Top(TopArgs),
    /// The fault soak (needs root): the echo server in a network
    /// namespace of its own behind a lossy veth link, a client outside
    /// echoing random bytes in random write sizes, every byte checked.
    Soak(SoakArgs),
}

#[derive(clap::Args)]
struct SoakArgs {
    /// The server's engine: epoll, uring, or under Wine iocp, wsa-event,
    /// overlapped (with --server-binary the Windows build's iocore.exe).
    #[arg(long)]
    engine: EngineKind,
    /// loss (every byte back through random loss), blackhole (a connection
    /// cut mid transfer is closed by the server), stop (SIGTERM mid
    /// transfer: prefixes and FINs, exit 0), churn (connections dropped at
    /// random; descriptors come back).
    #[arg(long, default_value = "loss")]
    mode: iocore_cli::soak::SoakMode,
    /// Packets dropped at random each way, percent (0 to 50).
    #[arg(long, default_value_t = 1.0)]
    loss: f64,
    /// Bytes to echo and verify over all connections (e.g. 1GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    bytes: usize,
    /// Connections (1 to 1000).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// The iocore binary the server runs (default: this one).
    #[arg(long)]
    server_binary: Option<std::path::PathBuf>,
    /// Fail if not done within this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    time_limit: Duration,
    /// Seed of the byte streams and write sizes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct TopArgs {
    /// The metrics endpoint (`serve --metrics`): HOST:PORT, or a port on
    /// 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_addr)]
    metrics: SocketAddr,
    /// How often to poll (above 0).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Interleaved, rotated rounds (1 to 100).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
    /// One short round with fewer connections, to try it out.
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON, Markdown and SVG results (the committed
    /// ones are in bench/results; a run writes under target/ unless told).
    #[arg(long, default_value = "target/bench-results")]
    out: std::path::PathBuf,
    /// Servers, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "iocore-epoll,iocore-uring,tokio,monoio,compio,epoll-floor"
    )]
    servers: Vec<String>,
    /// Only the points whose name starts with one of these (comma-separated),
    /// e.g. `chat` for the fan-out points (then no idle-memory step).
    #[arg(long, value_delimiter = ',')]
    points: Vec<String>,
    /// The window of the `-coalesce` servers (`serve --app chat
    /// --coalesce`), 1ms to 1s.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    coalesce: Duration,
}

#[derive(clap::Args)]
struct ChatArgs {
    /// The chat server: HOST:PORT, or a port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:7777", value_parser = parse_addr)]
    addr: SocketAddr,
    /// The room to join (a name of 1 to 64 bytes).
    #[arg(long, default_value = "lobby", value_parser = parse_room)]
    room: String,
    /// I/O model: auto, epoll or uring (Windows: iocp, wsa-event, overlapped).
    #[arg(long, default_value = "auto")]
    engine: EngineKind,
}

/// What the load client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Echo: messages come back; round trips, latency, byte-exact checks.
    Echo,
    /// Chat: members in rooms say messages that reach every member of the
    /// room; deliveries, delivery latency, exactly-once checks.
    Chat,
    /// Churn (a login storm): each of --connections lanes connects, sends
    /// one message, checks its echo, closes and connects again;
    /// connections per second and connect-to-first-byte latency. --count
    /// is then connections in all.
    Churn,
    /// Arena: --bots players in --rooms rooms of `serve --app arena` send
    /// --input-rate inputs a second for --duration; tick lateness,
    /// input-to-snapshot latency, bytes per player, server CPU per
    /// player-tick.
    Arena,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// I/O model: auto, epoll or uring (Windows: iocp, wsa-event, overlapped).
    #[arg(long, default_value = "auto")]
    engine: EngineKind,
    /// Application: echo, sink, chat or arena.
    #[arg(long, default_value = "echo")]
    app: App,
    /// Chat only: gather what is said in each room for this long (1ms to
    /// 1s, e.g. 50ms) and send it to every member at once, one write per
    /// member; messages wait up to that long. Not with --redis.
    #[arg(long, value_parser = parse_duration)]
    coalesce: Option<Duration>,
    /// Arena only: most players in a room (1 to 1000; default 20).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    room_size: Option<u16>,
    /// Arena only: simulation ticks a second (1 to 1000; default 20).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    tick_rate: Option<u16>,
    /// Arena only: how long a dropped player's place is kept for it to
    /// rejoin with its token (default 10s).
    #[arg(long, value_parser = parse_duration)]
    rejoin_grace: Option<Duration>,
    /// Chat only: the largest packet accepted, header included (13 to
    /// 65535; default 4096).
    #[arg(long, value_parser = clap::value_parser!(u16).range(13..))]
    max_packet: Option<u16>,
    /// Address to listen on: HOST:PORT, or a port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:7777", value_parser = parse_addr)]
    addr: SocketAddr,
    /// Worker threads (1 to 255; default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=255))]
    threads: Option<u16>,
    /// How connections are spread over the workers: reuse-port (a
    /// listener per worker, the kernel picks; Linux default) or hand-off
    /// (one listener deals them out in turn; Windows default).
    #[arg(long)]
    accept: Option<Accept>,
    /// Most sessions at once (at least 1); more connections are reset.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_sessions: u64,
    /// Most sessions at once from one client address (at least 1); more
    /// connections from it are reset (default: no cap).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_sessions_per_ip: Option<u64>,
    /// Most unsent bytes per session before it is closed (1 to 2GiB, and
    /// at least --send-high-watermark; bytes, or with a unit: 64KiB, 1MiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_send_queue: usize,
    /// Backpressure: stop reading a session while its send queue holds
    /// more than this (at most --max-send-queue).
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    send_high_watermark: usize,
    /// Resume reading once the queue has drained to this.
    #[arg(long, default_value = "32KiB", value_parser = parse_size)]
    send_low_watermark: usize,
    /// Close a session whose peer acknowledges none of its queued bytes
    /// for this long (above 0, or "off": never).
    #[arg(long, default_value = "30s", value_parser = parse_optional_duration)]
    send_stall_timeout: MaybeDuration,
    /// Most unconsumed received bytes per session before it is closed (1
    /// to 2GiB).
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    max_recv_buffer: usize,
    /// Close sessions idle this long (above 0, e.g. 30s); default never.
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// TCP keepalive: IDLE[,INTERVAL[,COUNT]], e.g. 60s or 60s,10s,5
    /// (probe after IDLE quiet, every INTERVAL, drop after COUNT
    /// unanswered; defaults 10s and 5). Default off.
    #[arg(long, value_parser = parse_keepalive)]
    tcp_keepalive: Option<Keepalive>,
    /// On stop, how long sessions may flush before they are reset.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    grace: Duration,
    /// Share topics (chat rooms) with the server's other instances through
    /// this Redis (redis://HOST[:PORT][/DB]): messages said on one instance
    /// reach members on every instance. Local delivery goes on if Redis is
    /// away.
    #[arg(long)]
    redis: Option<String>,
    /// With --redis: the prefix of the topics' Redis channels (instances
    /// share rooms when they share it).
    #[arg(long, requires = "redis", default_value = "iocore:topic:")]
    redis_prefix: String,
    /// Serve Prometheus metrics at http://ADDR/metrics: HOST:PORT, or a
    /// port on 127.0.0.1 (e.g. 9464). Bind another address only on a
    /// network you trust: the endpoint has no authentication.
    #[arg(long, value_parser = parse_addr)]
    metrics: Option<SocketAddr>,
    /// Every connection starts with a PROXY protocol header (v1 or v2),
    /// as HAProxy's `send-proxy`/`send-proxy-v2` sends it: sessions see
    /// the client's address. Connections from untrusted sources, with a
    /// bad header or none in time are closed.
    #[arg(long)]
    proxy_protocol: bool,
    /// With --proxy-protocol: the proxies' networks, comma-separated CIDR
    /// blocks or addresses (default: loopback).
    #[arg(long, requires = "proxy_protocol", value_parser = parse_trusted)]
    trusted_proxies: Option<Trusted>,
    /// With --proxy-protocol: how long a connection may take to send its
    /// header.
    #[arg(long, requires = "proxy_protocol", default_value = "5s", value_parser = parse_duration)]
    proxy_header_timeout: Duration,
    /// Also serve WebSocket clients on ADDR (HOST:PORT, or a port on
    /// 127.0.0.1), beside the TCP ones on --addr, in the same rooms and
    /// topics: a message is one binary WebSocket message (echo: text comes
    /// back as text; chat: one or more packets). With --app chat a plain
    /// GET / on ADDR gets the chat page for a browser.
    #[arg(long, value_parser = parse_addr)]
    ws: Option<SocketAddr>,
    /// With --ws: the largest message taken (1 byte to 64MiB; default
    /// 16KiB); a longer one closes its session with code 1009.
    #[arg(long, requires = "ws", default_value = "16KiB", value_parser = parse_size)]
    ws_max_message: usize,
    /// Speak TLS on --addr and --ws (wss): the certificate chain, PEM
    /// (leaf first). Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// With --tls-cert: its private key, PEM.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// With --tls-cert: how long a connection may take to finish its TLS
    /// handshake (above 0).
    #[arg(long, requires = "tls_cert", default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// What to do: echo (the seed client), chat (fan-out in rooms) or churn
    /// (connect, one echo, close, again).
    #[arg(long, value_enum, default_value = "echo")]
    scenario: Scenario,
    /// Chat and arena: rooms (at least 1, at most --connections);
    /// connection i joins room i % ROOMS.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rooms: u64,
    /// Arena: inputs each bot sends a second (above 0, at most 1000).
    #[arg(long, default_value_t = 30.0)]
    input_rate: f64,
    /// I/O model: auto, epoll or uring (Windows: iocp, wsa-event, overlapped).
    #[arg(long, default_value = "auto")]
    engine: EngineKind,
    /// Server address: HOST:PORT, or a port on 127.0.0.1; the chat
    /// scenario takes several (comma-separated: the instances of a
    /// cluster), member i connecting to the i-th in turn.
    #[arg(long, default_value = "127.0.0.1:7777", value_delimiter = ',', value_parser = parse_addr)]
    addr: Vec<SocketAddr>,
    /// Bytes per message (1 to 64MiB; bytes, or with a unit: 4KiB, 1MiB).
    #[arg(long, default_value = "100", value_parser = parse_size)]
    size: usize,
    /// Open loop: pause between messages on a connection (default 1s;
    /// at least 1us, e.g. 10ms).
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["rate", "pipeline"])]
    interval: Option<Duration>,
    /// Open loop: messages per second per connection, instead of
    /// --interval (above 0, at most 1000000).
    #[arg(long, conflicts_with = "pipeline")]
    rate: Option<f64>,
    /// Closed loop: messages in flight per connection (1 to 65536; 1 =
    /// ping-pong).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pipeline: Option<u32>,
    /// Connections (at least 1; at most what the open-file limit allows);
    /// the arena's bots (--bots is the same).
    #[arg(long, alias = "bots", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Messages per connection (at least 1; default: until --duration or
    /// Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop sending after this long, warmup included (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Do not measure what happens in this first stretch (e.g. 1s; less
    /// than --duration).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Check every echoed byte; exit non-zero on any mismatch or loss.
    #[arg(long)]
    verify: bool,
    /// Speak WebSocket (to a `serve --ws` port): each message is one
    /// masked binary message, each echo one message back.
    #[arg(long)]
    ws: bool,
    /// Speak TLS (to a `serve --tls-cert` port), trusting the
    /// certificates in this PEM file (a CA's, or the server's own).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: the name the server's certificate must carry
    /// (default: the IP address of --addr).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// After sending stops, wait this long for the last echoes (above 0;
    /// churn: how long one connection may take in all).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Report this process's (the server's) CPU per round trip and RSS
    /// (Linux; a process that exists).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Churn: close each connection with FIN (TIME_WAIT piles up on the
    /// client) instead of a reset.
    #[arg(long)]
    graceful_close: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Worker threads (1 to 255).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=255))]
    threads: u16,
}

/// The longest duration any flag takes: a year (a deadline further off is
/// a typo, and would overflow the clock's arithmetic).
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses "250ms", "1.5s", "2m", "1h", "1d" or a bare number of seconds,
/// up to [`MAX_DURATION`].
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (e.g. 250ms, 1.5s, 2m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in '{s}' (use us, ms, s, m, h or d)"
            ))
        }
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("duration '{s}' is longer than a year")),
    }
}

/// The levels `--log-level` takes.
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a `--log-level`: levels, or `target=level` directives,
/// comma-separated. A bare word that is not a level (`warning`) would be
/// read as a target and silence everything: refused.
fn parse_log_level(s: &str) -> Result<String, String> {
    let valid = LEVELS.join(", ");
    for directive in s.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown log level '{level}' (expected {valid}, or target=level directives like iocore=debug)"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("invalid log filter '{s}': {e}"))?;
    Ok(s.to_string())
}

/// Checks a chat room name: 1 to 64 bytes.
fn parse_room(s: &str) -> Result<String, String> {
    chat::term::check_room(s).map(|()| s.to_string())
}

/// Networks of trusted proxies (`--trusted-proxies`).
#[derive(Clone, Debug)]
struct Trusted(Vec<iocore::proxy::IpNet>);

fn parse_trusted(s: &str) -> Result<Trusted, String> {
    match iocore::proxy::ProxyProtocol::parse_trusted(s).map_err(|e| e.problem)? {
        nets if nets.is_empty() => Err("--trusted-proxies needs at least one network".into()),
        nets => Ok(Trusted(nets)),
    }
}

/// Parses HOST:PORT (an address or a name: `localhost:7777`; a name's
/// IPv4 address is taken when it has one), or a bare port (on 127.0.0.1).
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let usage = "use HOST:PORT, e.g. 127.0.0.1:7777 or localhost:7777, or a port for 127.0.0.1";
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !s.contains(':') {
        return Err(format!("invalid address '{s}': no port ({usage})"));
    }
    let found: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("invalid address '{s}': {e} ({usage})"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("'{s}' names no address ({usage})"))
}

/// A duration, or none ("off").
#[derive(Clone, Copy, Debug)]
struct MaybeDuration(Option<Duration>);

/// Parses "off"/"none"/"never" as no duration, else a duration (see
/// [`parse_duration`]).
fn parse_optional_duration(s: &str) -> Result<MaybeDuration, String> {
    match s.trim() {
        "off" | "none" | "never" => Ok(MaybeDuration(None)),
        other => parse_duration(other).map(|d| MaybeDuration(Some(d))),
    }
}

/// Parses a byte count: "65536", "64KiB", "64k", "1MiB", "1m", "2GiB".
fn parse_size(s: &str) -> Result<usize, String> {
    iocore_cli::load::parse_size(s)
}

/// Parses IDLE[,INTERVAL[,COUNT]] (see `--tcp-keepalive`).
fn parse_keepalive(s: &str) -> Result<Keepalive, String> {
    let mut parts = s.split(',');
    let idle = parse_duration(parts.next().unwrap_or(""))?;
    let mut k = Keepalive::after(idle);
    if let Some(interval) = parts.next() {
        k.interval = parse_duration(interval)?;
    }
    if let Some(count) = parts.next() {
        k.count = count
            .trim()
            .parse()
            .map_err(|_| format!("invalid keepalive probe count '{count}'"))?;
    }
    if parts.next().is_some() {
        return Err(format!("invalid keepalive '{s}' (IDLE[,INTERVAL[,COUNT]])"));
    }
    if k.idle < Duration::from_secs(1) || k.interval < Duration::from_secs(1) || k.count == 0 {
        return Err("keepalive times must be at least 1s and the count at least 1".into());
    }
    Ok(k)
}

/// Delivers Ctrl-C and SIGTERM (Ctrl-C / close on Windows) as messages; a
/// second one exits at once.
fn signals() -> Result<mpsc::Receiver<()>, ctrlc::Error> {
    let (tx, rx) = mpsc::channel();
    let mut seen = false;
    ctrlc::set_handler(move || {
        if seen {
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
        seen = true;
        let _ = tx.send(());
    })?;
    Ok(rx)
}

/// The `serve` flag that sets a library setting, for errors in the
/// user's words.
fn serve_flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Threads => "--threads",
        Setting::Accept => "--accept",
        Setting::MaxSessions => "--max-sessions",
        Setting::MaxSessionsPerIp => "--max-sessions-per-ip",
        Setting::MaxRecvBuffer => "--max-recv-buffer",
        Setting::MaxSendQueue => "--max-send-queue",
        Setting::SendHighWatermark => "--send-high-watermark",
        Setting::SendLowWatermark => "--send-low-watermark",
        Setting::SendStallTimeout => "--send-stall-timeout",
        Setting::IdleTimeout => "--idle-timeout",
        Setting::TrustedProxies => "--trusted-proxies",
        Setting::ProxyHeaderTimeout => "--proxy-header-timeout",
        Setting::RedisUrl => "--redis",
        Setting::WebSocketMaxMessage => "--ws-max-message",
        Setting::HandshakeTimeout => "--tls-handshake-timeout",
        _ => "an option",
    }
}

/// A configuration the library refused, in the words of the flags.
fn flag_error(e: &ConfigError, flag: impl Fn(Setting) -> &'static str) -> String {
    format!("{} {}", flag(e.setting), e.problem)
}

/// The server `args` ask for, checked (the error names the flag).
fn serve_builder(args: &ServeArgs) -> Result<ServerBuilder, String> {
    if args.max_packet.is_some() && args.app != App::Chat {
        return Err(format!(
            "--max-packet is for --app chat (the {} app has no packets)",
            args.app
        ));
    }
    if let Some(c) = args.coalesce {
        if args.app != App::Chat {
            return Err(format!("--coalesce is for --app chat (the {} app)", args.app));
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&c) {
            return Err("--coalesce must be between 1ms and 1s".into());
        }
        if args.redis.is_some() {
            return Err("--coalesce keeps rooms on this instance: not with --redis".into());
        }
    }
    if args.app != App::Arena {
        for (given, flag) in [
            (args.room_size.is_some(), "--room-size"),
            (args.tick_rate.is_some(), "--tick-rate"),
            (args.rejoin_grace.is_some(), "--rejoin-grace"),
        ] {
            if given {
                return Err(format!("{flag} is for --app arena"));
            }
        }
    }
    let mut builder = Server::builder()
        .addr(args.addr)
        .engine(args.engine)
        .max_sessions(args.max_sessions as usize)
        .max_sessions_per_ip(args.max_sessions_per_ip.map(|n| n as usize))
        .max_send_queue(args.max_send_queue)
        .send_watermarks(args.send_high_watermark, args.send_low_watermark)
        .send_stall_timeout(args.send_stall_timeout.0)
        .max_recv_buffer(args.max_recv_buffer)
        .idle_timeout(args.idle_timeout)
        .tcp_keepalive(args.tcp_keepalive);
    if let Some(t) = args.threads {
        builder = builder.threads(t.into());
    }
    if let Some(a) = args.accept {
        builder = builder.accept(a);
    }
    if let Some(m) = args.metrics {
        builder = builder.metrics(m);
    }
    if let Some(url) = &args.redis {
        let mut bridge = iocore::bridge::RedisBridge::new(url.clone());
        bridge.channel_prefix = args.redis_prefix.clone();
        builder = builder.redis(Some(bridge));
    }
    if args.proxy_protocol {
        let mut proxy = iocore::proxy::ProxyProtocol {
            header_timeout: args.proxy_header_timeout,
            ..Default::default()
        };
        if let Some(Trusted(trusted)) = args.trusted_proxies.clone() {
            proxy.trusted = trusted;
        }
        builder = builder.proxy_protocol(Some(proxy));
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = iocore::tls::TlsConfig::server_pem(cert, key)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?
            .handshake_timeout(args.tls_handshake_timeout);
        builder = builder.tls(Some(tls));
    }
    if let Some(ws) = args.ws {
        if args.ws_max_message > MAX_SIZE {
            return Err("--ws-max-message must be at most 64MiB".into());
        }
        let mut config = iocore::websocket::WebSocketConfig::new().max_message(args.ws_max_message);
        if args.app == App::Chat {
            config = config.page(chat::page::HTML);
        }
        builder = builder.websocket_listener(ws, config);
    }
    builder.validate().map_err(|e| flag_error(&e, serve_flag))?;
    args.engine.resolve().map_err(|e| e.to_string())?;
    Ok(builder)
}

fn serve(args: ServeArgs, check: bool) -> Result<(), Box<dyn std::error::Error>> {
    let builder = serve_builder(&args)?;
    if check {
        println!("arguments OK");
        return Ok(());
    }
    match iocore_cli::usage::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let stop = signals()?;
    let server: ServerHandle = match args.app {
        App::Echo => builder.start(|| Echo)?,
        App::Sink => builder.start(Sink::default)?,
        App::Chat => {
            let max = args
                .max_packet
                .map_or(iocore::packet::DEFAULT_MAX_PACKET, usize::from);
            match args.coalesce {
                Some(tick) => {
                    let rooms = chat::server::rooms(max, tick);
                    let r = rooms.clone();
                    builder
                        .rooms(&rooms)
                        .start(move || chat::server::coalesced_handler(max, &r))?
                }
                None => builder.start(move || chat::server::handler(max))?,
            }
        }
        App::Arena => {
            let rooms = arena::server::rooms(arena_config(&args)?);
            let r = rooms.clone();
            builder.rooms(&rooms).start(move || arena::server::handler(&r))?
        }
    };
    if args.app == App::Chat {
        let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
        for ws in server.websocket_addrs() {
            tracing::info!(page = %format_args!("{scheme}://{ws}/"), "the chat page for a browser");
        }
    }
    match server.metrics_addr() {
        Some(m) => {
            tracing::info!(app = %args.app, addr = %server.local_addr(), engine = %server.engine(), metrics = %format_args!("http://{m}/metrics"), "ready (Ctrl-C stops)")
        }
        None => {
            tracing::info!(app = %args.app, addr = %server.local_addr(), engine = %server.engine(), "ready (Ctrl-C stops)")
        }
    }
    let mut last = server.stats();
    loop {
        match stop.recv_timeout(Duration::from_secs(1)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = server.stats();
        if args.app == App::Sink && now.bytes_received != last.bytes_received {
            tracing::info!(
                bytes = now.bytes_received - last.bytes_received,
                reads = now.reads - last.reads,
                sessions = now.live_sessions,
                "received in the last second"
            );
        }
        last = now;
        if server.is_finished() {
            break;
        }
    }
    tracing::info!(grace = ?args.grace, "stopping: flushing sessions");
    server.shutdown(args.grace)?;
    tracing::info!("stopped");
    Ok(())
}

/// A flag set by Ctrl-C or SIGTERM.
fn stop_flag() -> Result<Arc<AtomicBool>, Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    let rx = signals()?;
    let flag = stop.clone();
    std::thread::spawn(move || {
        if rx.recv().is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    Ok(stop)
}

fn print_report<T: serde::Serialize + std::fmt::Display>(
    summary: &T,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(summary)?),
        false => println!("{summary}"),
    }
    Ok(())
}

/// The most connections one client process takes, whatever its limits.
const MAX_CONNECTIONS: u64 = 1_000_000;
/// The largest message.
const MAX_SIZE: usize = 64 << 20;
/// The highest open-loop rate per connection: the scheduler's wait has
/// microsecond resolution.
const MAX_RATE: f64 = 1_000_000.0;
/// Descriptors a client needs besides its connections (its workers'
/// rings or epoll and wake-up descriptors, the standard streams, logs).
const FD_RESERVE: u64 = 64;

impl ClientArgs {
    /// The load's shape, checked against the flags' ranges and the
    /// machine (open files): the error names the flag.
    fn load(&self, in_flight: usize) -> Result<iocore_cli::load::Load, String> {
        if self.size == 0 || self.size > MAX_SIZE {
            return Err(format!(
                "--size must be between 1 byte and 64MiB, not {}",
                self.size
            ));
        }
        if self.connections > MAX_CONNECTIONS {
            return Err(format!(
                "--connections {} is more than one client process holds (at most {MAX_CONNECTIONS})",
                self.connections
            ));
        }
        check_open_files(self.connections)?;
        if self.drain_timeout.is_zero() {
            return Err("--drain-timeout must be above 0".into());
        }
        if let Some(d) = self.duration {
            if d.is_zero() {
                return Err("--duration must be above 0".into());
            }
            if self.warmup >= d {
                return Err(format!(
                    "--warmup ({:?}) must be shorter than --duration ({d:?}): nothing would be measured",
                    self.warmup
                ));
            }
        }
        if let Some(pid) = self.server_pid {
            iocore_cli::usage::usage(pid).map_err(|e| match e.kind() {
                std::io::ErrorKind::Unsupported => format!("--server-pid: {e}"),
                _ => format!("--server-pid {pid}: no such process to measure (is the server running?)"),
            })?;
        }
        // A session's send queue holds what is in flight; the client
        // never pauses its own input, so its watermarks sit at the cap.
        let queue = in_flight
            .checked_mul(self.size)
            .and_then(|n| n.checked_mul(2))
            .filter(|&n| n <= 1 << 31)
            .ok_or_else(|| {
                format!(
                    "--size {} with --pipeline {in_flight} would queue more than 2GiB per connection",
                    self.size
                )
            })?
            .max(1 << 20);
        Ok(iocore_cli::load::Load {
            engine: self.engine,
            threads: self.threads.into(),
            connections: self.connections as usize,
            size: self.size,
            count: self.count,
            duration: self.duration,
            warmup: self.warmup,
            drain_timeout: self.drain_timeout,
            server_pid: self.server_pid,
            max_send_queue: queue,
            websocket: self.ws,
            tls: match &self.tls_ca {
                None => None,
                Some(ca) => {
                    let name = match &self.tls_server_name {
                        Some(n) => n.clone(),
                        None => self
                            .addr
                            .first()
                            .map_or("localhost".into(), |a| a.ip().to_string()),
                    };
                    Some(
                        iocore::tls::TlsConfig::client_pem(ca, &name)
                            .map_err(|e| format!("--tls-ca: {e}"))?,
                    )
                }
            },
        })
    }

    /// Open loop: messages per second per connection, from --rate or
    /// --interval (default 1 s), checked.
    fn rate(&self) -> Result<f64, String> {
        let rate = match (self.rate, self.interval) {
            (Some(rate), _) => rate,
            (None, Some(interval)) if interval < Duration::from_micros(1) => {
                return Err("--interval must be at least 1us".into())
            }
            (None, Some(interval)) => 1.0 / interval.as_secs_f64(),
            (None, None) => 1.0,
        };
        if !(rate > 0.0 && rate <= MAX_RATE) {
            return Err(format!(
                "--rate must be above 0 and at most {MAX_RATE} messages per second per connection"
            ));
        }
        Ok(rate)
    }
}

/// Raises the open-file limit as far as the hard limit allows and checks
/// that `connections` fit in it, before any is made.
fn check_open_files(connections: u64) -> Result<(), String> {
    let limit =
        iocore_cli::usage::raise_fd_limit().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    let need = connections + FD_RESERVE;
    if need > limit {
        return Err(format!(
            "--connections {connections} needs about {need} open files, and this process may open {limit} \
             (the hard limit, `ulimit -Hn`): raise it, or use fewer connections"
        ));
    }
    Ok(())
}

fn run_chat_load(args: ClientArgs, check: bool) -> Result<bool, Box<dyn std::error::Error>> {
    if args.pipeline.is_some() {
        return Err("--pipeline is for the echo scenario; chat is open loop (--rate or --interval)".into());
    }
    if args.rooms > args.connections {
        return Err(format!(
            "--rooms {} is more than --connections {}: every room needs a member",
            args.rooms, args.connections
        )
        .into());
    }
    if args.count.is_none() && args.duration.is_none() {
        return Err("give --count or --duration: the chat load needs an end".into());
    }
    let opts = chat::load::ChatOptions {
        load: args.load(4)?,
        rate: args.rate()?,
        addrs: args.addr,
        rooms: args.rooms as usize,
    };
    opts.check()?;
    if check {
        println!("arguments OK");
        return Ok(true);
    }
    let summary = chat::load::run(&opts, stop_flag()?)?;
    print_report(&summary, args.json)?;
    Ok(summary.ok())
}

/// The arena's settings from `serve`'s flags, checked.
fn arena_config(args: &ServeArgs) -> Result<arena::server::ArenaConfig, String> {
    let mut cfg = arena::server::ArenaConfig::default();
    if let Some(n) = args.room_size {
        cfg.room_size = n.into();
    }
    if let Some(hz) = args.tick_rate {
        cfg.tick_hz = hz.into();
    }
    if let Some(g) = args.rejoin_grace {
        cfg.grace = g;
    }
    cfg.check()?;
    Ok(cfg)
}

fn run_arena(args: ClientArgs, check: bool) -> Result<bool, Box<dyn std::error::Error>> {
    if args.pipeline.is_some() || args.rate.is_some() || args.interval.is_some() || args.count.is_some() {
        return Err("the arena sends --input-rate inputs a second for --duration: no --pipeline, --rate, --interval or --count".into());
    }
    let [addr] = args.addr[..] else {
        return Err("the arena scenario takes one --addr".into());
    };
    if args.rooms > args.connections {
        return Err(format!(
            "--rooms {} is more than --bots {}: every room needs a bot",
            args.rooms, args.connections
        )
        .into());
    }
    let opts = arena::bots::ArenaOptions {
        addr,
        load: args.load(64)?,
        rooms: args.rooms as usize,
        input_rate: args.input_rate,
    };
    opts.check()?;
    if check {
        println!("arguments OK");
        return Ok(true);
    }
    let summary = arena::bots::run(&opts, stop_flag()?)?;
    print_report(&summary, args.json)?;
    Ok(summary.ok())
}

fn run_soak(args: SoakArgs, check: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let opts = iocore_cli::soak::SoakOptions {
        engine: args.engine,
        mode: args.mode,
        loss: args.loss,
        bytes: args.bytes as u64,
        connections: args.connections,
        server: match args.server_binary {
            Some(p) => p,
            None => std::env::current_exe()?,
        },
        time_limit: args.time_limit,
        seed: args.seed,
    };
    opts.check()?;
    if check {
        println!("arguments OK");
        return Ok(true);
    }
    let report = iocore_cli::soak::run(&opts, stop_flag()?)?;
    print_report(&report, args.json)?;
    Ok(report.ok())
}

fn run_churn(args: ClientArgs, check: bool) -> Result<bool, Box<dyn std::error::Error>> {
    if args.pipeline.is_some() || args.rate.is_some() || args.interval.is_some() {
        return Err("churn sends one message per connection: no --pipeline, --rate or --interval".into());
    }
    let [addr] = args.addr[..] else {
        return Err("the churn scenario takes one --addr".into());
    };
    if args.count.is_none() && args.duration.is_none() {
        return Err("give --count or --duration: churn needs an end".into());
    }
    let opts = iocore_cli::churn::ChurnOptions {
        addr,
        load: args.load(1)?,
        graceful: args.graceful_close,
    };
    if check {
        println!("arguments OK");
        return Ok(true);
    }
    let summary = iocore_cli::churn::run(&opts, stop_flag()?)?;
    print_report(&summary, args.json)?;
    Ok(summary.ok())
}

fn run_client(args: ClientArgs, check: bool) -> Result<bool, Box<dyn std::error::Error>> {
    match args.scenario {
        Scenario::Chat => return run_chat_load(args, check),
        Scenario::Churn => return run_churn(args, check),
        Scenario::Arena => return run_arena(args, check),
        Scenario::Echo => {}
    }
    if args.rooms != 1 {
        return Err("--rooms is for the chat and arena scenarios".into());
    }
    let (mode, in_flight) = match args.pipeline {
        Some(pipeline) => (
            Mode::ClosedLoop {
                pipeline: pipeline as usize,
            },
            pipeline as usize,
        ),
        None => (Mode::OpenLoop { rate: args.rate()? }, 4),
    };
    let [addr] = args.addr[..] else {
        return Err("the echo scenario takes one --addr (several are for --scenario chat)".into());
    };
    let opts = ClientOptions {
        addr,
        load: args.load(in_flight)?,
        mode,
        verify: args.verify,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    if check {
        println!("arguments OK");
        return Ok(true);
    }
    let summary = client::run(&opts, stop_flag()?)?;
    print_report(&summary, args.json)?;
    Ok(summary.ok())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The terminal programs draw on the screen the logs would go to.
    let quiet = matches!(cli.command, Command::Chat(_) | Command::Top(_));
    let level = cli
        .log_level
        .clone()
        .unwrap_or_else(|| if quiet { "warn" } else { "info" }.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|e| {
        eprintln!("error: invalid --log-level '{level}': {e}");
        std::process::exit(2);
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    let check = cli.check;
    let done = |()| {
        if check {
            println!("arguments OK");
        }
        true
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args, check).map(|()| true),
        Command::Client(args) => run_client(args, check),
        Command::Chat(args) if check => args.engine.resolve().map(|_| done(())).map_err(Into::into),
        Command::Chat(args) => chat::term::run(
            &chat::term::TermOptions {
                addr: args.addr,
                room: args.room,
                engine: args.engine,
            },
            std::io::BufReader::new(std::io::stdin()),
        )
        .map(|()| true)
        .map_err(Into::into),
        Command::Bench(args) => {
            let opts = iocore_cli::bench::BenchOptions {
                rounds: args.rounds.into(),
                quick: args.quick,
                out: args.out,
                servers: args.servers,
                points: args.points,
                coalesce: args.coalesce,
            };
            match opts.check() {
                Err(e) => Err(e.into()),
                Ok(()) if check => Ok(done(())),
                Ok(()) => iocore_cli::bench::run(&opts)
                    .map(|report| {
                        println!("{}", iocore_cli::bench::markdown(&report));
                        true
                    })
                    .map_err(Into::into),
            }
        }
        Command::Top(args) if args.interval.is_zero() => Err("--interval must be above 0".into()),
        Command::Top(_) if check => Ok(done(())),
        Command::Soak(args) => run_soak(args, check),
        Command::Top(args) => stop_flag()
            .and_then(|stop| {
                let opts = iocore_cli::top::TopOptions {
                    metrics: args.metrics,
                    interval: args.interval,
                };
                iocore_cli::top::run(&opts, stop).map_err(Into::into)
            })
            .map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
