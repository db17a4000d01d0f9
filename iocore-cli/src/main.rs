//! `iocore`: a thin command-line front end over the library's apps.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::{Parser, Subcommand};
use iocore::{Accept, EngineKind, Keepalive, Server, ServerHandle};
use iocore_cli::client::{self, ClientOptions, Mode};
use iocore_cli::{chat, echo::Echo, sink::Sink, App};

#[derive(Parser)]
#[command(
    name = "iocore",
    version,
    about = "TCP session servers and clients on epoll and io_uring"
)]
struct Cli {
    /// Log filter: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log lines as `human` text or `json` (one object per line, for log
    /// shippers).
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
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
}

#[derive(clap::Args)]
struct TopArgs {
    /// The metrics endpoint (`serve --metrics`): ADDR:PORT or a port on
    /// 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr)]
    metrics: SocketAddr,
    /// How often to poll.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Interleaved, rotated rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// One short round with fewer connections, to try it out.
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON, Markdown and SVG results.
    #[arg(long, default_value = "bench/results")]
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
}

#[derive(clap::Args)]
struct ChatArgs {
    /// The chat server.
    #[arg(long, default_value = "127.0.0.1:7777")]
    addr: SocketAddr,
    /// The room to join.
    #[arg(long, default_value = "lobby")]
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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// I/O model: auto, epoll or uring (Windows: iocp, wsa-event, overlapped).
    #[arg(long, default_value = "auto")]
    engine: EngineKind,
    /// Application: echo, sink or chat.
    #[arg(long, default_value = "echo")]
    app: App,
    /// Chat: the largest packet accepted, header included (4 to 65535).
    #[arg(long, default_value_t = iocore::packet::DEFAULT_MAX_PACKET)]
    max_packet: usize,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7777")]
    addr: SocketAddr,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// How connections are spread over the workers: reuse-port (a
    /// listener per worker, the kernel picks; Linux default) or hand-off
    /// (one listener deals them out in turn; Windows default).
    #[arg(long)]
    accept: Option<Accept>,
    /// Most sessions at once; more connections are reset.
    #[arg(long, default_value_t = 10_000)]
    max_sessions: usize,
    /// Most sessions at once from one client address; more connections
    /// from it are reset (default: no cap).
    #[arg(long)]
    max_sessions_per_ip: Option<usize>,
    /// Most unsent bytes per session before it is closed (bytes, or with
    /// a unit: 64KiB, 1MiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_send_queue: usize,
    /// Backpressure: stop reading a session while its send queue holds
    /// more than this (at most --max-send-queue).
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    send_high_watermark: usize,
    /// Resume reading once the queue has drained to this.
    #[arg(long, default_value = "32KiB", value_parser = parse_size)]
    send_low_watermark: usize,
    /// Close a session whose peer takes none of its queued bytes for this
    /// long ("off": never).
    #[arg(long, default_value = "30s", value_parser = parse_optional_duration)]
    send_stall_timeout: MaybeDuration,
    /// Most unconsumed received bytes per session before it is closed.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    max_recv_buffer: usize,
    /// Close sessions idle this long (e.g. 30s); default never.
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
    /// this Redis (redis://HOST:PORT): messages said on one instance reach
    /// members on every instance. Local delivery goes on if Redis is away.
    #[arg(long)]
    redis: Option<String>,
    /// With --redis: the prefix of the topics' Redis channels (instances
    /// share rooms when they share it).
    #[arg(long, requires = "redis", default_value = "iocore:topic:")]
    redis_prefix: String,
    /// Serve Prometheus metrics at http://ADDR/metrics: ADDR:PORT, or a
    /// port on 127.0.0.1 (e.g. 9464). Bind another address only on a
    /// network you trust: the endpoint has no authentication.
    #[arg(long, value_parser = parse_metrics_addr)]
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
}

#[derive(clap::Args)]
struct ClientArgs {
    /// What to do: echo (the seed client), chat (fan-out in rooms) or churn
    /// (connect, one echo, close, again).
    #[arg(long, value_enum, default_value = "echo")]
    scenario: Scenario,
    /// Chat: rooms; connection i joins room i % ROOMS.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// I/O model: auto, epoll or uring (Windows: iocp, wsa-event, overlapped).
    #[arg(long, default_value = "auto")]
    engine: EngineKind,
    /// Server address; the chat scenario takes several (comma-separated:
    /// the instances of a cluster), member i connecting to the i-th in
    /// turn.
    #[arg(long, default_value = "127.0.0.1:7777", value_delimiter = ',')]
    addr: Vec<SocketAddr>,
    /// Bytes per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Open loop: pause between messages on a connection (e.g. 1s, 10ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Open loop: messages per second per connection (instead of --interval).
    #[arg(long, conflicts_with = "pipeline")]
    rate: Option<f64>,
    /// Closed loop: messages in flight per connection (1 = ping-pong).
    #[arg(long)]
    pipeline: Option<usize>,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Messages per connection (default: until --duration or Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// Stop sending after this long, warmup included (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Do not measure round trips in this first stretch (e.g. 1s).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Check every echoed byte; exit non-zero on any mismatch or loss.
    #[arg(long)]
    verify: bool,
    /// After sending stops, wait this long for the last echoes (churn: how
    /// long one connection may take in all).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Report this process's (the server's) CPU per round trip and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Churn: close each connection with FIN (TIME_WAIT piles up on the
    /// client) instead of a reset.
    #[arg(long)]
    graceful_close: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Parses "250ms", "1.5s", "2m", "1h" or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid duration '{s}'"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit in '{s}' (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration '{s}': {e}"))
}

/// Networks of trusted proxies (`--trusted-proxies`).
#[derive(Clone, Debug)]
struct Trusted(Vec<iocore::proxy::IpNet>);

fn parse_trusted(s: &str) -> Result<Trusted, String> {
    match iocore::proxy::ProxyProtocol::parse_trusted(s)? {
        nets if nets.is_empty() => Err("--trusted-proxies needs at least one network".into()),
        nets => Ok(Trusted(nets)),
    }
}

/// Parses ADDR:PORT, or a bare port (on 127.0.0.1).
fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("invalid address '{s}' (use ADDR:PORT, e.g. 127.0.0.1:9464, or a port)"))
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
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: usize = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in '{s}' (use KiB, MiB or GiB)")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size '{s}' is too large"))
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

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    match iocore_cli::usage::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let mut builder = Server::builder()
        .addr(args.addr)
        .engine(args.engine)
        .max_sessions(args.max_sessions)
        .max_sessions_per_ip(args.max_sessions_per_ip)
        .max_send_queue(args.max_send_queue)
        .send_watermarks(args.send_high_watermark, args.send_low_watermark)
        .send_stall_timeout(args.send_stall_timeout.0)
        .max_recv_buffer(args.max_recv_buffer)
        .idle_timeout(args.idle_timeout)
        .tcp_keepalive(args.tcp_keepalive);
    if let Some(t) = args.threads {
        builder = builder.threads(t);
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
    let stop = signals()?;
    let server: ServerHandle = match args.app {
        App::Echo => builder.start(|| Echo)?,
        App::Sink => builder.start(Sink::default)?,
        App::Chat => {
            if !(iocore::packet::HEADER + 8 < args.max_packet
                && args.max_packet <= iocore::packet::MAX_PACKET)
            {
                return Err(format!(
                    "--max-packet must be between 13 and {}",
                    iocore::packet::MAX_PACKET
                )
                .into());
            }
            let max = args.max_packet;
            builder.start(move || chat::server::handler(max))?
        }
    };
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

impl ClientArgs {
    /// The load's shape, the same for every scenario.
    fn load(&self) -> iocore_cli::load::Load {
        iocore_cli::load::Load {
            engine: self.engine,
            threads: self.threads,
            connections: self.connections,
            size: self.size,
            count: self.count,
            duration: self.duration,
            warmup: self.warmup,
            drain_timeout: self.drain_timeout,
            server_pid: self.server_pid,
        }
    }
}

fn run_chat_load(args: ClientArgs) -> Result<bool, Box<dyn std::error::Error>> {
    if args.pipeline.is_some() {
        return Err("--pipeline is for the echo scenario; chat is open loop (--rate or --interval)".into());
    }
    let rate = match args.rate {
        Some(rate) => rate,
        None if args.interval.is_zero() => return Err("--interval must be above 0".into()),
        None => 1.0 / args.interval.as_secs_f64(),
    };
    let opts = chat::load::ChatOptions {
        load: args.load(),
        addrs: args.addr,
        rooms: args.rooms,
        rate,
    };
    let summary = chat::load::run(&opts, stop_flag()?)?;
    print_report(&summary, args.json)?;
    Ok(summary.ok())
}

fn run_churn(args: ClientArgs) -> Result<bool, Box<dyn std::error::Error>> {
    if args.pipeline.is_some() || args.rate.is_some() {
        return Err("churn sends one message per connection: no --pipeline or --rate".into());
    }
    let [addr] = args.addr[..] else {
        return Err("the churn scenario takes one --addr".into());
    };
    let opts = iocore_cli::churn::ChurnOptions {
        addr,
        load: args.load(),
        graceful: args.graceful_close,
    };
    let summary = iocore_cli::churn::run(&opts, stop_flag()?)?;
    print_report(&summary, args.json)?;
    Ok(summary.ok())
}

fn run_client(args: ClientArgs) -> Result<bool, Box<dyn std::error::Error>> {
    match args.scenario {
        Scenario::Chat => return run_chat_load(args),
        Scenario::Churn => return run_churn(args),
        Scenario::Echo => {}
    }
    let mode = match (args.pipeline, args.rate) {
        (Some(pipeline), _) => Mode::ClosedLoop { pipeline },
        (None, Some(rate)) => Mode::OpenLoop { rate },
        (None, None) if args.interval.is_zero() => return Err("--interval must be above 0".into()),
        (None, None) => Mode::OpenLoop {
            rate: 1.0 / args.interval.as_secs_f64(),
        },
    };
    let [addr] = args.addr[..] else {
        return Err("the echo scenario takes one --addr (several are for --scenario chat)".into());
    };
    let opts = ClientOptions {
        addr,
        load: args.load(),
        mode,
        verify: args.verify,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let summary = client::run(&opts, stop_flag()?)?;
    print_report(&summary, args.json)?;
    Ok(summary.ok())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level).unwrap_or_else(|e| {
        eprintln!("invalid --log-level '{}': {e}", cli.log_level);
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
    let result = match cli.command {
        Command::Serve(args) => serve(args).map(|()| true),
        Command::Client(args) => run_client(args),
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
        Command::Bench(args) => iocore_cli::bench::run(&iocore_cli::bench::BenchOptions {
            rounds: args.rounds,
            quick: args.quick,
            out: args.out,
            servers: args.servers,
            points: args.points,
        })
        .map(|report| {
            println!("{}", iocore_cli::bench::markdown(&report));
            true
        })
        .map_err(Into::into),
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
