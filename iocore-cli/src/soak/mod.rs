//! The fault soak (`iocore soak`): the echo server in a network namespace
//! of its own, behind a lossy veth link, and a verifying client outside
//! that echoes pseudo-random bytes in random write sizes (1 B to 256 KiB)
//! over many connections, reading while writing, and compares every byte.
//!
//! Modes:
//! - **loss** — every connection must get all its bytes back, in order;
//! - **blackhole** — a further connection's packets are all dropped mid
//!   transfer: the server (stall timeout 3 s) must close that session
//!   within 2× the timeout, and the others finish unharmed;
//! - **stop** — SIGTERM to the server a third into the run: each
//!   connection must end with a correct prefix of its stream and a FIN,
//!   and the server exit 0 within its grace period;
//! - **churn** — during the run, connections are opened and dropped at
//!   random (half of them with RST): afterwards the server's open
//!   sockets are back at their count before the run.
//!
//! Needs root (namespaces, iptables). Traffic goes only between the
//! namespace it makes and this one, over the veth pair's own addresses.

pub mod netns;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use iocore::{Client, CloseReason, EngineKind, Handler, Session};

use crate::load::{invalid, note_error};
use netns::Netns;

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SoakMode {
    /// Random loss both ways; every byte back.
    Loss,
    /// One connection blackholed mid transfer; the server closes it.
    Blackhole,
    /// SIGTERM mid transfer; prefixes and FINs, exit 0.
    Stop,
    /// Connections opened and dropped at random; sockets come back.
    Churn,
}

impl std::str::FromStr for SoakMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SoakMode, String> {
        match s {
            "loss" => Ok(SoakMode::Loss),
            "blackhole" => Ok(SoakMode::Blackhole),
            "stop" => Ok(SoakMode::Stop),
            "churn" => Ok(SoakMode::Churn),
            _ => Err(format!(
                "unknown mode '{s}' (expected loss, blackhole, stop or churn)"
            )),
        }
    }
}

/// The soak's settings.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// The server's engine (a Windows engine runs the server under Wine).
    pub engine: EngineKind,
    pub mode: SoakMode,
    /// Packets dropped at random each way, percent.
    pub loss: f64,
    /// Bytes to echo and verify, over all connections.
    pub bytes: u64,
    pub connections: usize,
    /// The `iocore` binary the server runs (the Windows build's `.exe`
    /// for a Windows engine).
    pub server: PathBuf,
    /// The run fails if not done by then.
    pub time_limit: Duration,
    pub seed: u64,
}

/// What a soak found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SoakReport {
    pub engine: String,
    pub mode: String,
    pub loss_percent: f64,
    pub connections: usize,
    /// Bytes asked for.
    pub bytes: u64,
    /// Bytes echoed and found right.
    pub bytes_verified: u64,
    /// Packets the loss rules dropped.
    pub packets_dropped: u64,
    /// TCP segments retransmitted, both sides.
    pub retransmits: u64,
    pub elapsed_secs: f64,
    pub mb_per_sec: f64,
    /// What was checked, and held.
    pub checks: Vec<String>,
    pub errors: u64,
    pub error_lines: Vec<String>,
}

impl SoakReport {
    /// Everything checked held.
    pub fn ok(&self) -> bool {
        self.errors == 0
    }

    fn error(&mut self, line: String) {
        note_error(&mut self.errors, &mut self.error_lines, line);
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak:        {} engine, {} mode, {}% loss each way, {} connections",
            self.engine, self.mode, self.loss_percent, self.connections
        )?;
        writeln!(
            f,
            "verified:    {} of {} bytes ({:.1} MB/s over {:.1}s)",
            self.bytes_verified, self.bytes, self.mb_per_sec, self.elapsed_secs
        )?;
        writeln!(
            f,
            "network:     {} packets dropped, {} segments retransmitted",
            self.packets_dropped, self.retransmits
        )?;
        for c in &self.checks {
            writeln!(f, "checked:     {c}")?;
        }
        crate::report::write_outcome(f, self.errors, &self.error_lines, self.elapsed_secs, self.ok())
    }
}

/// The server's port in the namespace, and its metrics port.
const PORT: u16 = 7777;
const METRICS: u16 = 9464;
/// The server's send stall timeout in the blackhole mode.
const STALL: Duration = Duration::from_secs(3);
/// The server's grace period when stopped.
const GRACE: Duration = Duration::from_secs(5);
/// Bytes a connection keeps queued at most.
const WINDOW: usize = 1 << 20;
/// Largest write.
const MAX_WRITE: usize = 256 * 1024;
/// The most the server's resident memory may grow over a churn run: the
/// allocator keeps freed buffers, and the uring engine's provided
/// receive buffers (4 MiB a worker, three workers with the metrics one)
/// become resident as they are first used. A leak of a buffer per
/// connection over hundreds of connections is more.
const MAX_RSS_GROWTH_KIB: u64 = 32 * 1024;

/// xorshift64*: the byte stream of a connection, and its write sizes.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A byte stream from an [`Rng`], read in pieces of any size.
#[derive(Clone)]
struct Stream {
    rng: Rng,
    word: [u8; 8],
    used: usize,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            rng: Rng::new(seed),
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            if self.used == 8 {
                self.word = self.rng.next().to_le_bytes();
                self.used = 0;
            }
            let n = (8 - self.used).min(out.len() - i);
            out[i..i + n].copy_from_slice(&self.word[self.used..self.used + n]);
            self.used += n;
            i += n;
        }
    }
}

/// What the connections share with the driving thread.
#[derive(Default)]
struct Shared {
    verified: AtomicU64,
    connected: AtomicUsize,
    /// Connections that have had bytes back: sessions of the server.
    echoing: AtomicUsize,
    finished: AtomicUsize,
    outcomes: Mutex<Vec<Outcome>>,
    over: AtomicBool,
}

/// How a verified connection ended.
#[derive(Clone)]
struct Outcome {
    index: usize,
    received: u64,
    target: u64,
    /// Its close reason, as text.
    how: String,
    /// The first byte that was not the byte sent, if any.
    mismatch: Option<String>,
}

/// One verifying connection.
struct Soaker {
    index: usize,
    target: u64,
    sent: u64,
    received: u64,
    tx: Stream,
    rx: Stream,
    sizes: Rng,
    scratch: Vec<u8>,
    mismatch: Option<String>,
    shared: Arc<Shared>,
}

impl Soaker {
    fn pump(&mut self, s: &mut Session<'_>) {
        while self.sent < self.target && s.queued_bytes() < WINDOW && s.is_open() {
            let size = (1 + self.sizes.below(MAX_WRITE as u64)).min(self.target - self.sent) as usize;
            let mut buf = vec![0; size];
            self.tx.fill(&mut buf);
            if s.send(buf).is_err() {
                return;
            }
            self.sent += size as u64;
        }
    }
}

impl Handler for Soaker {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.shared.connected.fetch_add(1, Ordering::AcqRel);
        self.pump(s);
        s.set_timer(Duration::from_millis(100));
    }

    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        if self.mismatch.is_some() {
            return data.len();
        }
        self.scratch.resize(data.len(), 0);
        self.rx.fill(&mut self.scratch);
        if let Some(i) = data.iter().zip(&self.scratch).position(|(a, b)| a != b) {
            let at = self.received + i as u64;
            self.mismatch = Some(format!(
                "connection {}: byte {at} is {:#04x}, {:#04x} was sent",
                self.index, data[i], self.scratch[i]
            ));
            s.abort();
            return data.len();
        }
        if self.received == 0 {
            self.shared.echoing.fetch_add(1, Ordering::AcqRel);
        }
        self.received += data.len() as u64;
        self.shared
            .verified
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.received > self.target {
            self.mismatch = Some(format!("connection {}: more bytes back than sent", self.index));
            s.abort();
        } else if self.received == self.target {
            s.close();
        }
        data.len()
    }

    fn on_sent(&mut self, s: &mut Session<'_>) {
        self.pump(s);
    }

    fn on_writable(&mut self, s: &mut Session<'_>) {
        self.pump(s);
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        if self.shared.over.load(Ordering::Relaxed) {
            return s.abort();
        }
        self.pump(s);
        s.set_timer(Duration::from_millis(100));
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        let outcome = Outcome {
            index: self.index,
            received: self.received,
            target: self.target,
            how: reason.to_string(),
            mismatch: self.mismatch.take(),
        };
        self.shared
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(outcome);
        self.shared.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// The server inside the namespace; killed (and waited for) on drop,
/// with the wineserver it ran under, if any (namespace and Wine prefix).
struct Server {
    child: Child,
    wine: Option<(String, PathBuf)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((ns, prefix)) = &self.wine {
            let _ = stop_wineserver(Some(ns), prefix);
        }
    }
}

/// Ends the wineserver of `prefix` (inside namespace `ns`, if given).
fn stop_wineserver(ns: Option<&str>, prefix: &std::path::Path) -> io::Result<()> {
    let mut c = match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "wineserver", "-k"]);
            c
        }
        None => {
            let mut c = std::process::Command::new("wineserver");
            c.arg("-k");
            c
        }
    };
    c.env("WINEPREFIX", prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
}

fn windows_engine(e: EngineKind) -> bool {
    matches!(
        e,
        EngineKind::Iocp | EngineKind::WsaEvent | EngineKind::Overlapped
    )
}

impl SoakOptions {
    /// Checks the options without running anything.
    pub fn check(&self) -> io::Result<()> {
        if !(0.0..=50.0).contains(&self.loss) {
            return Err(invalid("--loss must be between 0 and 50 percent"));
        }
        if self.connections == 0 || self.connections > 1000 {
            return Err(invalid("--connections must be between 1 and 1000"));
        }
        if self.bytes < self.connections as u64 {
            return Err(invalid("--bytes must be at least one per connection"));
        }
        if matches!(self.engine, EngineKind::Auto) {
            return Err(invalid(
                "name the server's --engine (epoll, uring, iocp, wsa-event, overlapped)",
            ));
        }
        if !self.server.exists() {
            return Err(invalid(&format!(
                "the server binary {} does not exist{}",
                self.server.display(),
                if windows_engine(self.engine) {
                    " (build it: cargo build --release --target x86_64-pc-windows-gnu -p iocore-cli)"
                } else {
                    ""
                }
            )));
        }
        netns::check_can_run().map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))
    }
}

/// A process's resident memory, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Counts the sockets open in the namespace's processes: the server's
/// (under Wine, its wineserver holds them; the server's own pipes to it
/// come and go with its helper threads, so sockets are what is counted).
fn open_sockets(ns: &Netns) -> Option<usize> {
    let pids = ns.exec_pids()?;
    let mut n = 0;
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        n += dir
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count();
    }
    Some(n)
}

/// The server's `iocore_sessions_closed_total` by reason and
/// `iocore_sessions_open`, from its metrics endpoint.
fn server_closes(addr: SocketAddr) -> Option<(Vec<(String, f64)>, f64)> {
    let text = crate::top::fetch(addr).ok()?;
    let mut closes: Vec<(String, f64)> = Vec::new();
    let mut open = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if let Some(labels) = series.strip_prefix("iocore_sessions_closed_total{") {
            let reason = labels
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string();
            match closes.iter_mut().find(|c| c.0 == reason) {
                Some(c) => c.1 += value,
                None => closes.push((reason, value)),
            }
        } else if series.starts_with("iocore_sessions_open") {
            open += value;
        }
    }
    Some((closes, open))
}

/// A connection outside the verified ones (the blackhole's victim):
/// writes and reads (counting in `read`) until told to stop.
struct Victim {
    stream: TcpStream,
    /// Echoed bytes read.
    read: Arc<AtomicU64>,
    /// Set: the reader stops reading.
    paused: Arc<AtomicBool>,
    /// When a write last went through, ms after `born`.
    last_write_ms: Arc<AtomicU64>,
    born: Instant,
}

impl Victim {
    /// Connects, then writes and reads (the echo, dropped) until `stop`.
    fn start(addr: SocketAddr, stop: Arc<AtomicBool>) -> io::Result<Victim> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        s.set_write_timeout(Some(Duration::from_millis(200)))?;
        let v = Victim {
            stream: s.try_clone()?,
            read: Arc::new(AtomicU64::new(0)),
            paused: Arc::new(AtomicBool::new(false)),
            last_write_ms: Arc::new(AtomicU64::new(0)),
            born: Instant::now(),
        };
        let (mut writer, mut reader) = (s.try_clone()?, s);
        let (stop_reading, read, paused) = (stop.clone(), v.read.clone(), v.paused.clone());
        let (last, born) = (v.last_write_ms.clone(), v.born);
        std::thread::spawn(move || {
            let chunk = vec![0x5a; 16 * 1024];
            while !stop.load(Ordering::Relaxed) {
                match writer.write(&chunk) {
                    Ok(_) => last.store(born.elapsed().as_millis() as u64, Ordering::Relaxed),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            while !stop_reading.load(Ordering::Relaxed) {
                if paused.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match reader.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        read.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(v)
    }

    /// Its writes have not gone through for this long: the server has
    /// paused its input, so its queue for the victim is over its high
    /// watermark.
    fn writes_blocked_for(&self, d: Duration) -> bool {
        let last = Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last) >= d
    }
}

/// A short-lived connection: connects, writes `bytes`, reads what comes
/// back for a moment, and drops it, with RST if `rst`.
fn churn_connection(addr: SocketAddr, bytes: usize, rst: bool) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    s.set_write_timeout(Some(Duration::from_millis(500)))?;
    let _ = s.write_all(&vec![0xc3; bytes]);
    let mut buf = vec![0; 64 * 1024];
    let _ = s.read(&mut buf);
    if rst {
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    }
    Ok(())
}

/// Runs one soak. Fails only if it cannot set up; what it finds wrong is
/// in the report.
pub fn run(opts: &SoakOptions, stop: Arc<AtomicBool>) -> io::Result<SoakReport> {
    opts.check()?;
    let start = Instant::now();
    let ns = Netns::create(std::process::id())?;
    let addr = SocketAddr::from((ns.ns_addr, PORT));
    let metrics = SocketAddr::from((ns.ns_addr, METRICS));
    let engine = opts.engine.name();
    let server_bin = opts.server.to_string_lossy().into_owned();
    let listen = addr.to_string();
    let metrics_at = metrics.to_string();
    let grace = format!("{}s", GRACE.as_secs());
    let stall = format!("{}s", STALL.as_secs());
    let mut args: Vec<&str> = Vec::new();
    if windows_engine(opts.engine) {
        args.push("wine");
    }
    args.extend([
        server_bin.as_str(),
        "serve",
        "--engine",
        engine,
        "--threads",
        "2",
        "--addr",
        &listen,
        "--metrics",
        &metrics_at,
        "--grace",
        &grace,
        "--log-level",
        "warn",
    ]);
    // The blackhole is found by the stall timeout (bytes in flight or
    // queued) or keepalive (nothing in flight): both configured. Churn
    // needs keepalive too: a dropped connection whose RST or FIN the lossy
    // link lost is half-open on the server until a probe finds it.
    match opts.mode {
        SoakMode::Blackhole => args.extend(["--send-stall-timeout", &stall, "--tcp-keepalive", "1s,1s,2"]),
        SoakMode::Churn => args.extend(["--tcp-keepalive", "1s,1s,2"]),
        SoakMode::Loss | SoakMode::Stop => {}
    }
    let mut command = ns.command(&args);
    // Its log (warnings and errors), to say why if it fails.
    let log_path = std::env::temp_dir().join(format!("iocore-soak-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .env("WINEDEBUG", "-all");
    // Wine 8 lacks ProcessPrng, which Rust's std imports: the stand-in DLL
    // .ci/run builds (see the README's Windows section), unless WINEPATH
    // says where.
    if windows_engine(opts.engine) && std::env::var_os("WINEPATH").is_none() {
        if let Ok(dir) = std::fs::canonicalize("target/wine-dll") {
            command.env("WINEPATH", dir);
        }
    }
    // Wine's sockets live in its wineserver: a prefix of the soak's own,
    // whose wineserver is started inside the namespace (one left running
    // elsewhere is ended first).
    let wine = match windows_engine(opts.engine) {
        true => {
            let prefix = std::env::temp_dir().join("iocore-soak-wine");
            std::fs::create_dir_all(&prefix)?;
            stop_wineserver(None, &prefix)?;
            command.env("WINEPREFIX", &prefix);
            Some((ns.name.clone(), prefix))
        }
        false => None,
    };
    let child = command.spawn()?;
    let mut server = Server { child, wine };
    let pid = server.child.id();
    // Ready once it answers on its port (no loss yet).
    let ready = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
        if let Some(status) = server.child.try_wait()? {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_file(&log_path);
            return Err(io::Error::other(format!(
                "the server exited at start: {status}: {}",
                said.trim()
            )));
        }
        if ready.elapsed() > Duration::from_secs(60) {
            return Err(io::Error::other("the server did not listen within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its sockets once the connection above has gone.
    std::thread::sleep(Duration::from_millis(500));
    let fds_before = open_sockets(&ns);
    let rss_before = rss_kib(pid);
    if opts.loss > 0.0 {
        ns.lose(PORT, opts.loss)?;
    }
    let snmp = || {
        std::fs::read_to_string("/proc/net/snmp")
            .ok()
            .and_then(|t| netns::retrans_segs(&t))
            .unwrap_or(0)
    };
    let retrans_before = snmp() + ns.retransmits();

    let mut report = SoakReport {
        engine: engine.to_string(),
        mode: format!("{:?}", opts.mode).to_lowercase(),
        loss_percent: opts.loss,
        connections: opts.connections,
        bytes: opts.bytes,
        ..SoakReport::default()
    };
    let shared = Arc::new(Shared::default());
    let client = Client::builder()
        .engine(EngineKind::Epoll)
        .threads(1)
        .max_send_queue(WINDOW + MAX_WRITE)
        .send_watermarks(WINDOW + MAX_WRITE, WINDOW)
        // A connection that stops moving for a minute is broken (TCP
        // retransmits within seconds): it ends, and the run with it.
        .send_stall_timeout(Some(Duration::from_secs(60)))
        .start::<Soaker>()?;
    let per = opts.bytes / opts.connections as u64;
    for index in 0..opts.connections {
        let target = per
            + if index == 0 {
                opts.bytes % opts.connections as u64
            } else {
                0
            };
        let seed = opts.seed ^ ((index as u64 + 1) << 32);
        let shared = shared.clone();
        client.connect_later(addr, move || Soaker {
            index,
            target,
            sent: 0,
            received: 0,
            tx: Stream::new(seed),
            rx: Stream::new(seed),
            sizes: Rng::new(!seed),
            scratch: Vec::new(),
            mismatch: None,
            shared,
        })?;
    }
    // Dropped (ending its sessions) before the churn's count.
    let mut client = Some(client);

    // The mode's event, and the wait for the connections.
    let side_stop = Arc::new(AtomicBool::new(false));
    let mut victim: Option<Victim> = None;
    let mut blackholed_at: Option<Instant> = None;
    let mut stopped_at: Option<Instant> = None;
    let mut exited: Option<(std::process::ExitStatus, Duration)> = None;
    let churned = Arc::new(AtomicU64::new(0));
    let churners: Vec<_> = (0..if opts.mode == SoakMode::Churn { 3 } else { 0 })
        .map(|t| {
            let (stop, churned) = (side_stop.clone(), churned.clone());
            let mut rng = Rng::new(opts.seed ^ (0xC4 + t));
            std::thread::spawn(move || {
                // Connections come and go until the run ends; half end
                // with RST.
                while !stop.load(Ordering::Relaxed) {
                    let bytes = rng.below(64 * 1024) as usize;
                    if churn_connection(addr, bytes, rng.below(2) == 0).is_ok() {
                        churned.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut closes_before = None;
    if opts.mode == SoakMode::Blackhole {
        closes_before = server_closes(metrics);
        victim = Some(Victim::start(addr, side_stop.clone())?);
    }
    let deadline = start + opts.time_limit;
    loop {
        if shared.finished.load(Ordering::Acquire) == opts.connections {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            report.error("stopped (Ctrl-C) before the end".into());
            break;
        }
        if Instant::now() > deadline {
            report.error(format!("not done within the time limit ({:?})", opts.time_limit));
            break;
        }
        let progress = shared.verified.load(Ordering::Relaxed) as f64 / opts.bytes as f64;
        match opts.mode {
            // Once the victim's bytes flow both ways. On Linux whatever
            // the server holds for it (in its queue, or in the kernel: the
            // stall timeout covers both) is cut off. Windows has no bound
            // on what its kernel holds (no TCP_USER_TIMEOUT), so there the
            // victim stops reading first, until the server's queue for it
            // is over its high watermark (its writes block): the stall
            // timeout then sees the queue stand still.
            SoakMode::Blackhole if blackholed_at.is_none() => {
                if let Some(v) = &victim {
                    let flowing = v.read.load(Ordering::Relaxed) > 256 * 1024;
                    let windows = windows_engine(opts.engine);
                    if flowing && windows && !v.paused.load(Ordering::Relaxed) {
                        v.paused.store(true, Ordering::Relaxed);
                    } else if flowing
                        && progress > 0.1
                        && (!windows || v.writes_blocked_for(Duration::from_millis(300)))
                    {
                        ns.blackhole(v.stream.local_addr()?.port())?;
                        blackholed_at = Some(Instant::now());
                    }
                }
            }
            // Once every connection is a session of the server (it has
            // echoed to each): one refused, or reset from the backlog,
            // after the stop is the stop working, not a fault.
            SoakMode::Stop
                if stopped_at.is_none()
                    && progress > 0.33
                    && shared.echoing.load(Ordering::Acquire) == opts.connections =>
            {
                run_kill(pid, windows_engine(opts.engine))?;
                stopped_at = Some(Instant::now());
            }
            SoakMode::Stop if exited.is_none() => {
                if let (Some(at), Some(status)) = (stopped_at, server.child.try_wait()?) {
                    exited = Some((status, at.elapsed()));
                }
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    shared.over.store(true, Ordering::Relaxed);
    side_stop.store(true, Ordering::Relaxed);
    for t in churners {
        let _ = t.join();
    }
    let churned = churned.load(Ordering::Relaxed);
    report.elapsed_secs = start.elapsed().as_secs_f64();
    report.bytes_verified = shared.verified.load(Ordering::Relaxed);
    report.mb_per_sec = report.bytes_verified as f64 / 1e6 / report.elapsed_secs.max(1e-9);
    report.packets_dropped = ns.dropped();

    // Judge the connections.
    let outcomes = shared.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut complete = 0;
    for Outcome {
        index,
        received,
        target,
        how,
        mismatch,
    } in &outcomes
    {
        if let Some(m) = mismatch {
            report.error(m.clone());
            continue;
        }
        match opts.mode {
            SoakMode::Stop => {
                // A prefix (checked byte by byte as it came), then the FIN.
                if how != &CloseReason::PeerClosed.to_string() && received < target {
                    report.error(format!("connection {index}: ended with \"{how}\" after {received} of {target} bytes, not a FIN"));
                }
            }
            _ => {
                if received != target {
                    report.error(format!(
                        "connection {index}: {received} of {target} bytes back, then \"{how}\""
                    ));
                }
            }
        }
        if received == target {
            complete += 1;
        }
    }
    if outcomes.len() < opts.connections {
        report.error(format!(
            "{} connections never ended",
            opts.connections - outcomes.len()
        ));
    }
    report.checks.push(format!(
        "{} of {} connections: every byte received was the byte sent ({complete} got all theirs)",
        outcomes.iter().filter(|o| o.mismatch.is_none()).count(),
        opts.connections
    ));

    match opts.mode {
        SoakMode::Loss => {}
        SoakMode::Blackhole => judge_blackhole(&mut report, metrics, closes_before, blackholed_at),
        SoakMode::Stop => {
            // Within the grace, and a little for the process to end.
            let limit = GRACE + Duration::from_secs(2);
            if let (None, Some(at)) = (exited, stopped_at) {
                while at.elapsed() < limit {
                    if let Some(status) = server.child.try_wait()? {
                        exited = Some((status, at.elapsed()));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            match exited {
                _ if stopped_at.is_none() => report.error("the run ended before the stop".into()),
                Some((s, after)) if s.success() && after <= limit => report.checks.push(format!(
                    "the server exited 0, {:.1}s after the stop signal (grace {}s)",
                    after.as_secs_f64(),
                    GRACE.as_secs()
                )),
                Some((s, after)) => report.error(format!(
                    "the server exited with {s}, {after:?} after the stop signal"
                )),
                None => report.error(format!(
                    "the server did not exit within {limit:?} of the stop signal"
                )),
            }
        }
        SoakMode::Churn => {
            // Every session ends (a lingering close takes up to its linger
            // time): wait, bounded, for the count from before.
            drop(client.take());
            let settle = Instant::now();
            let mut fds_after = open_sockets(&ns);
            while fds_after != fds_before && settle.elapsed() < Duration::from_secs(15) {
                std::thread::sleep(Duration::from_millis(100));
                fds_after = open_sockets(&ns);
            }
            match (fds_before, fds_after) {
                (Some(a), Some(b)) if a == b => report.checks.push(format!(
                    "{churned} connections opened and dropped (half with RST): the server's open sockets are back at {a} ({:.1}s after the run)",
                    settle.elapsed().as_secs_f64()
                )),
                (a, b) => {
                    let open = server_closes(metrics).map(|c| c.1);
                    report.error(format!(
                        "open sockets {a:?} before, {b:?} 15 s after the churn ({open:?} sessions open)"
                    ))
                }
            }
            // Memory: what the allocator keeps for reuse stays resident, so
            // the bound is loose; a leak per connection would pass it.
            match (rss_before, rss_kib(pid)) {
                (Some(a), Some(b)) if b <= a + MAX_RSS_GROWTH_KIB => report.checks.push(format!(
                    "server memory {a} KiB before, {b} KiB after (at most {MAX_RSS_GROWTH_KIB} KiB more allowed)"
                )),
                (a, b) => report.error(format!("server memory {a:?} KiB before, {b:?} KiB after the churn")),
            }
        }
    }
    drop(client);
    report.retransmits = (snmp() + ns.retransmits()).saturating_sub(retrans_before);
    drop(victim);
    drop(server);
    let _ = std::fs::remove_file(&log_path);
    drop(ns);
    report
        .checks
        .push("the namespace, its link and its rules were removed".into());
    Ok(report)
}

/// The blackholed session was closed by the server within 2× the stall
/// timeout, for a stall (its own, or the kernel's timeout), and no other.
fn judge_blackhole(
    report: &mut SoakReport,
    metrics: SocketAddr,
    before: Option<(Vec<(String, f64)>, f64)>,
    at: Option<Instant>,
) {
    let Some(at) = at else {
        return report.error("the run ended before the blackhole was made".into());
    };
    let count = |c: &Option<(Vec<(String, f64)>, f64)>, reason: &str| {
        c.as_ref()
            .and_then(|c| c.0.iter().find(|x| x.0 == reason).map(|x| x.1))
            .unwrap_or(0.0)
    };
    let limit = STALL * 2;
    loop {
        let now = server_closes(metrics);
        let stalled = count(&now, "send_stalled") - count(&before, "send_stalled");
        let timed_out = count(&now, "io") - count(&before, "io");
        if stalled + timed_out >= 1.0 {
            let after = at.elapsed();
            if after > limit + Duration::from_secs(1) {
                report.error(format!(
                    "the blackholed session was closed {after:?} after, not within {limit:?}"
                ));
            } else {
                report.checks.push(format!(
                    "the blackholed session was closed by the server {:.1}s after the blackhole ({} with a stall timeout of {}s)",
                    after.as_secs_f64(),
                    if stalled >= 1.0 { "send_stalled" } else { "timed out (io)" },
                    STALL.as_secs()
                ));
            }
            return;
        }
        if at.elapsed() > limit + Duration::from_secs(5) {
            let seen = now.map(|c| c.0).unwrap_or_default();
            return report.error(format!(
                "the blackholed session was not closed within {limit:?} (closes seen: {seen:?}, before: {:?})",
                before.as_ref().map(|b| &b.0)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks the server to stop: SIGTERM; under Wine SIGINT, which Wine turns
/// into the console's Ctrl-C event (it ends a process at SIGTERM).
fn run_kill(pid: u32, wine: bool) -> io::Result<()> {
    let signal = if wine { "-INT" } else { "-TERM" };
    netns::run(&["kill", signal, &pid.to_string()]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_reads_the_same_in_any_pieces() {
        let mut a = Stream::new(7);
        let mut whole = vec![0; 1000];
        a.fill(&mut whole);
        let mut b = Stream::new(7);
        let mut pieces = Vec::new();
        for n in [1, 7, 8, 9, 300, 675] {
            let mut p = vec![0; n];
            b.fill(&mut p);
            pieces.extend(p);
        }
        assert_eq!(whole, pieces);
        let mut c = Stream::new(8);
        let mut other = vec![0; 1000];
        c.fill(&mut other);
        assert_ne!(whole, other, "another seed, another stream");
    }
}
