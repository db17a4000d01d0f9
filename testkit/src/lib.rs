//! Shared helpers for the integration tests of `iocore` and `iocore-cli`:
//! the engine matrix, servers on 127.0.0.1:0, recording handlers, an echo
//! handler, a deterministic RNG, bounded waits, and the `iocore` binary run
//! as a user would run it. Not published; a dev-dependency only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iocore::{CloseKind, CloseReason, EngineKind, Handler, ServerBuilder, Session};

/// Runs each listed `fn name(engine: EngineKind)` once per engine of this
/// OS, as `epoll::name`, `uring::name` on Linux and `iocp::name`,
/// `wsa_event::name`, `overlapped::name` on Windows: the other OS's cases
/// are not compiled, so the count of passed tests is what ran. An engine
/// of this OS that cannot run on the machine fails its tests with the
/// reason (see [`require`]).
#[macro_export]
macro_rules! engine_suite {
    ($($test:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        $crate::engine_suite!(@engine epoll, iocore::EngineKind::Epoll, $($test),*);
        #[cfg(target_os = "linux")]
        $crate::engine_suite!(@engine uring, iocore::EngineKind::Uring, $($test),*);
        #[cfg(windows)]
        $crate::engine_suite!(@engine iocp, iocore::EngineKind::Iocp, $($test),*);
        #[cfg(windows)]
        $crate::engine_suite!(@engine wsa_event, iocore::EngineKind::WsaEvent, $($test),*);
        #[cfg(windows)]
        $crate::engine_suite!(@engine overlapped, iocore::EngineKind::Overlapped, $($test),*);
        // Each further engine is one line here.
    };
    (@engine $module:ident, $kind:expr, $($test:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test($crate::require($kind));
                }
            )*
        }
    };
}

/// The engine, resolved. One this machine cannot run (io_uring forbidden
/// by a sandbox, say) fails the test with the reason: a test that did not
/// run must not count as passed. Leave such an engine's tests out by name
/// (`cargo test -- --skip uring::`).
pub fn require(engine: EngineKind) -> EngineKind {
    match engine.resolve() {
        Ok(e) => e,
        Err(why) => panic!(
            "engine {engine} cannot run on this machine: {why}. Its tests cannot pass here; \
             leave them out with `cargo test -- --skip {}::`",
            engine.name().replace('-', "_")
        ),
    }
}

/// Longest any wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A server builder on 127.0.0.1 with a free port and two workers, with
/// the OS's default accept strategy (Linux: a listener per worker;
/// Windows: one listener handing connections to both).
pub fn server(engine: EngineKind) -> ServerBuilder {
    iocore::Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .engine(engine)
        .threads(2)
}

/// Polls `cond` until it holds or [`PATIENCE`] runs out.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` until it holds (true) or [`PATIENCE`] runs out (false).
pub fn try_wait(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= PATIENCE {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A connected client socket with generous timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// A connected client socket whose receive buffer is `rcvbuf` bytes, set
/// before the connect (so the window it advertises from the handshake on
/// is that small: a phone on a bad link), with generous timeouts.
pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Reads exactly `n` bytes.
pub fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read_exact");
    buf
}

/// Reads until EOF (or an error such as a reset) and returns what came.
pub fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Writes all of `data`, returning the error that stopped it, if any.
pub fn write_all(s: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data)
}

/// Byte `offset` of stream `seed`: any dropped, repeated, reordered or
/// altered byte of a long stream shows up as a mismatch.
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let x = (offset ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 29) as u8 ^ (offset >> 16) as u8
}

/// Writes `total` bytes of stream `seed` to `s`, in 64 KiB writes.
pub fn write_pattern(s: &mut TcpStream, seed: u64, total: u64) -> std::io::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    let mut offset = 0;
    while offset < total {
        let n = buf.len().min((total - offset) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(seed, offset + i as u64);
        }
        s.write_all(&buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

/// Reads `total` bytes from `s` and checks them against stream `seed`;
/// panics at the first byte that differs (or at a read error).
pub fn read_pattern(s: &mut TcpStream, seed: u64, total: u64) {
    let mut buf = vec![0; 64 * 1024];
    let mut offset = 0;
    while offset < total {
        let want = buf.len().min((total - offset) as usize);
        let n = match s.read(&mut buf[..want]) {
            Ok(0) => panic!("end of stream after {offset} of {total} bytes"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read failed after {offset} of {total} bytes: {e}"),
        };
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = offset + i as u64;
            assert_eq!(b, pattern_byte(seed, at), "byte {at} of stream {seed} differs");
        }
        offset += n as u64;
    }
}

/// Deterministic xorshift generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// In `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() as usize) % (hi - lo + 1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// What recorded handlers saw, shared with the test.
#[derive(Default)]
pub struct Events {
    pub connected: AtomicUsize,
    /// The worker of each session, in the order they connected.
    pub workers: Mutex<Vec<usize>>,
    pub closed: Mutex<Vec<CloseKind>>,
    pub reasons: Mutex<Vec<String>>,
}

impl Events {
    pub fn closed(&self) -> Vec<CloseKind> {
        self.closed.lock().unwrap().clone()
    }
    pub fn closed_count(&self) -> usize {
        self.closed.lock().unwrap().len()
    }
    pub fn wait_closed(&self, n: usize) -> Vec<CloseKind> {
        wait_until(&format!("{n} sessions closed"), || self.closed_count() >= n);
        self.closed()
    }
}

/// Wraps a handler and records its lifecycle into [`Events`].
pub struct Recorded<H> {
    pub inner: H,
    pub events: Arc<Events>,
}

impl<H: Handler> Handler for Recorded<H> {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.events.workers.lock().unwrap().push(s.id().worker());
        self.events.connected.fetch_add(1, Ordering::SeqCst);
        self.inner.on_connected(s)
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        self.inner.on_recv(s, data)
    }
    fn on_sent(&mut self, s: &mut Session<'_>) {
        self.inner.on_sent(s)
    }
    fn on_writable(&mut self, s: &mut Session<'_>) {
        self.inner.on_writable(s)
    }
    fn on_timer(&mut self, s: &mut Session<'_>) {
        self.inner.on_timer(s)
    }
    fn on_disconnected(&mut self, reason: CloseReason) {
        self.events.reasons.lock().unwrap().push(reason.to_string());
        self.events.closed.lock().unwrap().push(reason.kind());
        self.inner.on_disconnected(reason)
    }
}

/// A factory of recorded handlers and the events they share.
pub fn recorded<H: Handler>(
    make: impl Fn() -> H + Send + Sync + 'static,
) -> (Arc<Events>, impl Fn() -> Recorded<H> + Send + Sync + 'static) {
    let events = Arc::new(Events::default());
    let e = events.clone();
    (events, move || Recorded {
        inner: make(),
        events: e.clone(),
    })
}

/// Sends every received byte back (the echo app, for the library's own
/// tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let _ = s.send_copy(data);
        data.len()
    }
}

/// Sends `total` bytes of stream `seed` (see [`pattern_byte`]) on its own,
/// not in reply to input, `chunk` bytes at a time, then closes. With
/// `heed` it queues only while the session is writable and goes on in
/// `on_writable` (a well-behaved producer); without, it queues a chunk
/// every millisecond whatever the queue holds.
pub struct Pusher {
    pub seed: u64,
    pub total: u64,
    pub chunk: usize,
    pub heed: bool,
    sent: u64,
}

impl Pusher {
    pub fn new(seed: u64, total: u64, chunk: usize, heed: bool) -> Pusher {
        Pusher {
            seed,
            total,
            chunk,
            heed,
            sent: 0,
        }
    }

    fn push(&mut self, s: &mut Session<'_>) {
        while self.sent < self.total && (!self.heed || s.is_writable()) {
            let n = self.chunk.min((self.total - self.sent) as usize);
            let buf: Vec<u8> = (0..n as u64)
                .map(|i| pattern_byte(self.seed, self.sent + i))
                .collect();
            if s.send(buf).is_err() {
                return;
            }
            self.sent += n as u64;
            if !self.heed {
                break;
            }
        }
        if self.sent == self.total {
            s.close();
        } else if !self.heed {
            s.set_timer(Duration::from_millis(1));
        }
    }
}

impl Handler for Pusher {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.push(s)
    }
    fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_writable(&mut self, s: &mut Session<'_>) {
        if self.heed {
            self.push(s)
        }
    }
    fn on_timer(&mut self, s: &mut Session<'_>) {
        self.push(s)
    }
}

/// The value of field `name` in a log line, human (`name=value`) or JSON
/// (`"name":"value"` or `"name":value`).
pub fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let human = format!("{name}=");
    let json = format!("\"{name}\":");
    if let Some(at) = line.find(&json) {
        let rest = &line[at + json.len()..];
        return match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next(),
            None => rest.split([',', '}']).next(),
        };
    }
    let at = line
        .match_indices(&human)
        .find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')?
        .0;
    line[at + human.len()..].split_whitespace().next()
}

/// `iocore serve` run as a user would, with its stderr log.
pub struct CliServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Where its `/metrics` endpoint listens, if started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// The log lines up to and including the "ready" line.
    pub log: Vec<String>,
    /// The log lines after it, read by a thread of their own.
    rest: std::sync::mpsc::Receiver<String>,
}

impl CliServer {
    /// Starts the `iocore` binary at `bin` with `args` (after `serve
    /// --addr 127.0.0.1:0`) and `env`, and waits for its ready line.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> CliServer {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied());
        CliServer::spawn(cmd)
    }

    /// Like [`CliServer::start`], in a shell that first lowers the
    /// open-file limit (soft and hard) to `nofile` (Unix).
    pub fn start_with_nofile(bin: &str, nofile: u32, args: &[&str], env: &[(&str, &str)]) -> CliServer {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(bin)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied());
        CliServer::spawn(cmd)
    }

    /// Runs `cmd` (an `iocore serve` command line) and waits for its ready
    /// line (at most [`PATIENCE`]).
    pub fn spawn(mut cmd: std::process::Command) -> CliServer {
        use std::io::BufRead;
        let mut child = spawn(cmd.stderr(std::process::Stdio::piped()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rest) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Owned by the guard from here on, so a failure kills it (Drop).
        let mut server = CliServer {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            metrics: None,
            log: Vec::new(),
            rest,
        };
        let start = Instant::now();
        loop {
            let left = PATIENCE.saturating_sub(start.elapsed());
            let line = match server.rest.recv_timeout(left) {
                Ok(line) => line,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no ready line within {PATIENCE:?}: {:?}", server.log)
                }
                Err(_) => panic!("server exited before ready: {:?}", server.log),
            };
            server.log.push(line.clone());
            if line.contains("ready") {
                let addr = log_field(&line, "addr").expect("addr in the ready line");
                server.addr = addr.parse().unwrap();
                server.metrics = log_field(&line, "metrics").map(|url| {
                    let host = url.trim_start_matches("http://").trim_end_matches("/metrics");
                    host.parse().unwrap()
                });
                return server;
            }
        }
    }

    /// The `addr` of the first log line (up to the ready line) saying
    /// `message`: a further listener's address.
    pub fn logged_addr(&self, message: &str) -> SocketAddr {
        let line = self
            .log
            .iter()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} line in {:?}", self.log));
        log_field(line, "addr")
            .expect("addr in the line")
            .parse()
            .unwrap()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next log line (waiting at most [`PATIENCE`]), if the server's
    /// stderr is still open.
    pub fn next_log_line(&mut self) -> Option<String> {
        self.rest.recv_timeout(PATIENCE).ok()
    }

    /// Ends the server when the test is done with it: on Unix with
    /// SIGTERM, checking that it stops gracefully with status 0; on
    /// Windows, which has no SIGTERM, it is killed (the graceful stop is
    /// the library tests').
    pub fn end(self) {
        if cfg!(unix) {
            let (status, log) = self.stop();
            assert!(status.success(), "{status:?}: {log:?}");
        }
    }

    /// SIGTERM, then wait (at most [`PATIENCE`]): returns the exit status
    /// and the remaining log.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(kill.unwrap().success());
        let status = wait_bounded(&mut self.child, PATIENCE).expect("the server ends after SIGTERM");
        // The reader thread ends with the pipe.
        let rest = std::iter::from_fn(|| self.rest.recv_timeout(PATIENCE).ok()).collect();
        (status, rest)
    }
}

impl Drop for CliServer {
    /// A failed test must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits at most `limit` for `child` to end; `None` (and the child killed)
/// if it did not.
pub fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cmd`. Under Wine a new process can die while Wine's loader
/// sets it up, before any of its code runs; `CreateProcess` then fails
/// with ERROR_INTERNAL_ERROR (1359: Wine's `NtCreateUserProcess` when the
/// child ended before it reported its start, with no exit code). That is
/// the emulator failing to make a process, not the program under test, so
/// only that error is tried again, at most twice, and said on stderr.
pub fn spawn(cmd: &mut std::process::Command) -> std::process::Child {
    const WINE_CHILD_DIED_STARTING: i32 = 1359;
    let mut attempt = 1;
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if cfg!(windows) && e.raw_os_error() == Some(WINE_CHILD_DIED_STARTING) && attempt < 3 => {
                eprintln!("{cmd:?}: the new process died before it started ({e}): starting it again");
                attempt += 1;
            }
            Err(e) => panic!("{cmd:?} could not start: {e}"),
        }
    }
}

/// What a command line run to its end printed.
#[derive(Debug)]
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Wall time from start to end.
    pub took: Duration,
}

impl Run {
    /// Stdout and stderr, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "{:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with its output captured; fails the test, killing it, if it
/// has not ended by itself within `limit` (a hang is a failure).
pub fn run_bounded(cmd: &mut std::process::Command, limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = spawn(
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    // Read both pipes while it runs (a full pipe would block it).
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = wait_bounded(&mut child, limit);
    let took = start.elapsed();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!("{cmd:?} did not end within {limit:?}: killed\n--- stdout\n{stdout}--- stderr\n{stderr}")
    };
    Run {
        status,
        stdout,
        stderr,
        took,
    }
}

/// A private tmux server (its own socket), killed on drop: terminal
/// programs are tested as a person uses them.
#[cfg(unix)]
pub struct Tmux {
    socket: String,
}

#[cfg(unix)]
impl Tmux {
    /// A tmux server for one test; fails the test if tmux is missing.
    pub fn new(tag: &str) -> Tmux {
        let found = std::process::Command::new("tmux").arg("-V").output().is_ok();
        assert!(
            found,
            "tmux is missing: install the Debian package tmux (`.ci/test` installs what the tests need)"
        );
        Tmux {
            socket: format!("iocore-test-{}-{tag}", std::process::id()),
        }
    }

    /// Runs `tmux args` on this server; returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A detached session `name`, 120×30, running `command`.
    pub fn start(&self, name: &str, command: &str) {
        self.run(&["new-session", "-d", "-s", name, "-x", "120", "-y", "30", command]);
    }

    /// What `name`'s screen shows now.
    pub fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    /// Waits until `name`'s screen satisfies `cond`; returns the screen.
    pub fn wait_until(&self, name: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(name);
            if cond(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{name} never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `name`'s screen shows `text`; returns the screen.
    pub fn wait_for(&self, name: &str, text: &str) -> String {
        self.wait_until(name, &format!("{text:?}"), |s| s.contains(text))
    }
}

#[cfg(unix)]
impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// An HTTP answer, as [`http_get`] read it.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: String,
}

impl HttpAnswer {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 answer with a `Content-Length` from `s`.
pub fn read_http_answer(s: &mut TcpStream) -> HttpAnswer {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).expect("reading an answer's head"),
            1,
            "the answer ended early: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("a UTF-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "status line: {status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut answer = HttpAnswer {
        status,
        headers,
        body: String::new(),
    };
    let len: usize = answer
        .header("content-length")
        .expect("Content-Length")
        .parse()
        .unwrap();
    answer.body = String::from_utf8(read_exact(s, len)).expect("a UTF-8 body");
    answer
}

/// `GET path` from `addr` on a new connection (`Connection: close`), with
/// `headers` (lines without CRLF): the answer.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[&str]) -> HttpAnswer {
    let mut s = connect(addr);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    read_http_answer(&mut s)
}

/// The samples of a Prometheus text exposition: (`name{labels}`, value).
pub fn metric_samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The sum of metric `name`'s samples whose labels include every one of
/// `labels` (`key="value"`); `None` if it has no sample at all.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for (series, v) in metric_samples(text) {
        let (n, l) = series.split_once('{').unwrap_or((&series, ""));
        if n == name && labels.iter().all(|want| l.contains(want)) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A free TCP port on 127.0.0.1 (bound, read and released: another
/// process could take it in between, which the callers' start-up checks
/// would notice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails the test, naming the Debian package, unless `program` can be
/// run: a test that needs a real component and did not run must not count
/// as passed. `.ci/test` (the README's test command) installs them all.
pub fn require_program(program: &str, package: &str) {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{program} is missing: install the Debian package {package} (`.ci/test` installs what the tests need)"
    );
}

/// A real `redis-server` on a free loopback port, no persistence; killed
/// on drop.
#[cfg(unix)]
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
}

#[cfg(unix)]
impl RedisServer {
    /// Starts one; fails the test if redis-server is missing.
    pub fn start() -> RedisServer {
        require_program("redis-server", "redis-server");
        let mut r = RedisServer {
            child: None,
            port: free_port(),
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its clients see their connections drop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_until("redis-server answering PING", || {
            let Ok(mut s) = TcpStream::connect(addr) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
        });
    }

    /// Runs one command (inline syntax) and returns the raw reply.
    pub fn command(&self, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// How many connections subscribe to `channel` (PUBSUB NUMSUB).
    pub fn subscribers(&self, channel: &str) -> u64 {
        let reply = self.command(&format!("PUBSUB NUMSUB {channel}"));
        // *2\r\n$len\r\nchannel\r\n:N\r\n
        reply
            .lines()
            .find_map(|l| l.strip_prefix(':'))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("PUBSUB NUMSUB reply: {reply:?}"))
    }
}

#[cfg(unix)]
impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real HAProxy (Debian package `haproxy`) running the configuration in
/// `examples/cluster/haproxy.cfg`, its ports given by environment
/// variables; stopped on drop.
#[cfg(unix)]
pub struct Haproxy {
    child: std::process::Child,
    /// Where clients connect.
    pub front: SocketAddr,
    /// Its statistics page.
    pub stats: SocketAddr,
}

#[cfg(unix)]
impl Haproxy {
    /// Starts HAProxy with `config` (a file) and `env` (the ports it
    /// names), and waits until its statistics page answers; fails the test
    /// if haproxy is missing.
    pub fn start(config: &std::path::Path, front: u16, stats: u16, env: &[(&str, String)]) -> Haproxy {
        require_program("haproxy", "haproxy");
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config)
            .env("FRONT_PORT", front.to_string())
            .env("STATS_PORT", stats.to_string())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let h = Haproxy {
            child,
            front: ([127, 0, 0, 1], front).into(),
            stats: ([127, 0, 0, 1], stats).into(),
        };
        wait_until("haproxy's statistics page", || h.try_servers().is_some());
        h
    }

    fn try_servers(&self) -> Option<Vec<(String, String)>> {
        let mut s = TcpStream::connect(self.stats).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /stats;csv HTTP/1.0\r\n\r\n").ok()?;
        let (answer, _) = read_to_end(&mut s);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let body = text.split_once("\r\n\r\n")?.1;
        Some(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f.len() > 17 && f[1] != "FRONTEND" && f[1] != "BACKEND")
                        .then(|| (f[1].to_string(), f[17].to_string()))
                })
                .collect(),
        )
    }

    /// Each backend server's name and status (`UP`, `DOWN`, ...).
    pub fn servers(&self) -> Vec<(String, String)> {
        self.try_servers().expect("haproxy's statistics")
    }

    /// Waits until every server in `up` is UP and every other DOWN (not
    /// on its way: "UP 1/2" is still taking connections).
    pub fn wait_for(&self, up: &[&str]) {
        wait_until(&format!("haproxy sees {up:?} up"), || {
            self.servers()
                .iter()
                .all(|(name, status)| match up.contains(&name.as_str()) {
                    true => status == "UP",
                    false => status.starts_with("DOWN"),
                })
        });
    }
}

#[cfg(unix)]
impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one packet (`iocore::packet`'s size + id header): its id and
/// body.
pub fn read_packet(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let header = read_exact(s, iocore::packet::HEADER);
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let id = u16::from_le_bytes([header[2], header[3]]);
    (id, read_exact(s, size - iocore::packet::HEADER))
}

/// The Python interpreter of the virtual environment `.ci/test` makes
/// (`IOCORE_PYTHON`: kosoku and Playwright are installed in it); fails the
/// test if it is not there.
pub fn python_tools() -> std::path::PathBuf {
    let python = std::env::var_os("IOCORE_PYTHON").map(std::path::PathBuf::from);
    match python {
        Some(p) if p.exists() => p,
        _ => panic!(
            "IOCORE_PYTHON names no Python with kosoku and Playwright: run the tests with `.ci/test`, \
             which makes target/ci-python (see .ci/python.sh)"
        ),
    }
}
