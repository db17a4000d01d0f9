//! Engines: one event loop per worker thread that turns the operating
//! system's readiness reports or completions into calls on the session
//! layer. Engines move bytes; they hold no application or protocol logic.
//!
//! # The engine contract
//!
//! Every engine, whatever its I/O model:
//!
//! - owns the sockets of the sessions on its thread and a [`Table`] of
//!   [`Conn`]s addressed by the token that rides in each OS event;
//! - hands received bytes to [`Conn::received`] (or reads into
//!   [`Conn::read_target`] and calls [`Conn::received_in_place`]), reports
//!   end of input with [`Conn::eof`] and socket failures with
//!   [`Conn::failed`];
//! - takes input from a socket only while [`Conn::wants_input`] holds
//!   (flow control: the handler paused input, or the send queue is over its
//!   high watermark); when it stops for that reason it remembers, and reads
//!   again (or posts the receive again) as soon as input is wanted — an
//!   edge-triggered socket or a disabled FD_READ will not say so. Bytes it
//!   already took from the kernel still go to the session; what it takes
//!   ahead of the session must stay bounded (one read; one capped receive);
//! - writes what [`Conn::send_slices`] gives, in order, and reports the
//!   count with [`Conn::sent`];
//! - after anything that touched a session, asks [`Conn::step`] what to do
//!   (send what is queued and ask again, send FIN, or close and call
//!   [`Conn::finish`] exactly once), and re-arms its deadline with
//!   [`Conn::arm`];
//! - runs [`Timers`] with the time it reads once per loop turn, and serves
//!   its inbox (connect requests, connections handed over by the worker
//!   that accepted them, stop);
//! - implements `driver::Driver`, which does the parts that are the same
//!   for every engine: commands, accepted connections (served here or
//!   handed to another worker), deadlines and stop; who is admitted is a
//!   decision of `admission`, which `sockets` carries out on the socket.
//!
//! How the models differ:
//!
//! - **Readiness** (`epoll`; the seed's WSAEventSelect): the kernel says a
//!   socket *can* be read or written; the engine then calls `read`/`sendmsg`
//!   itself until `WouldBlock`. Registration is edge-triggered, so an event
//!   not drained to `WouldBlock` is not reported again — the seed's rule
//!   "after FD_READ you must call recv or FD_READ will not come again".
//! - **Completion** (`uring`; the seed's overlapped I/O and IOCP): the
//!   engine posts an operation with a buffer and learns later that it
//!   finished. The buffer belongs to the kernel until then.
//!
//! | seed model (Windows)            | engine here | mechanism                    |
//! |---------------------------------|-------------|------------------------------|
//! | WSAEventSelect                  | `epoll`     | epoll, edge-triggered        |
//! | Overlapped I/O with events      | `uring`     | io_uring, provided buffers   |
//! | IOCP + worker threads           | `uring`     | one ring per worker thread   |
//! | IOCP (on Windows)               | `iocp`      | a completion port per worker |
//! | WSAEventSelect (on Windows)     | `wsa-event` | event objects, 63 per waiter |
//! | Overlapped + events (Windows)   | `overlapped`| `hEvent` per session, 63 per waiter |

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::session::{CloseReason, Handler, Limits, SessionId, Tick};
#[allow(unused_imports)] // named in the contract above
use crate::session::{Conn, Table, Timers};
use crate::sys::{OwnedSocket, Waker};
use bytes::Bytes;

mod admission;
#[cfg(any(target_os = "linux", windows))]
mod completion;
mod core;
mod driver;
#[cfg(target_os = "linux")]
mod epoll;
#[cfg(windows)]
mod groups;
#[cfg(windows)]
mod iocp;
#[cfg(windows)]
mod overlapped;
mod readiness;
pub(crate) mod sim;
mod sockets;
mod stats;
#[cfg(target_os = "linux")]
mod uring;
#[cfg(windows)]
mod wsa_event;

/// The io_uring engine's optional kernel features, and the environment
/// variable that turns them off (`IOCORE_URING_OFF=ring-fd,plain-send`).
#[cfg(target_os = "linux")]
pub use crate::sys::uring::{Features as UringFeatures, FEATURES_OFF_VAR as URING_FEATURES_OFF_VAR};
pub(crate) use stats::WorkerStats;
pub use stats::{AcceptErrorKind, Stats};

/// Which I/O model runs the sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum EngineKind {
    /// `uring` where io_uring is usable, else `epoll`; the choice and the
    /// reason are logged.
    #[default]
    Auto,
    /// Readiness: epoll, edge-triggered (the WSAEventSelect model).
    Epoll,
    /// Completion: io_uring (the overlapped / IOCP model).
    Uring,
    /// Windows: `WSAEventSelect` + `WSAWaitForMultipleEvents`, the first
    /// seed literally.
    WsaEvent,
    /// Windows: overlapped `WSARecv`/`WSASend` with event objects, the
    /// second seed literally.
    Overlapped,
    /// Windows: an I/O completion port per worker thread.
    Iocp,
}

impl EngineKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Epoll => "epoll",
            EngineKind::Uring => "uring",
            EngineKind::WsaEvent => "wsa-event",
            EngineKind::Overlapped => "overlapped",
            EngineKind::Iocp => "iocp",
        }
    }

    /// Every engine that can be named.
    pub const ALL: &'static [EngineKind] = &[
        EngineKind::Auto,
        EngineKind::Epoll,
        EngineKind::Uring,
        EngineKind::WsaEvent,
        EngineKind::Overlapped,
        EngineKind::Iocp,
    ];

    /// The concrete engine to run for this request, or why it cannot run
    /// here. `Auto` picks the best available and logs its choice.
    pub fn resolve(self) -> Result<EngineKind, EngineError> {
        match self {
            #[cfg(windows)]
            EngineKind::Auto => EngineKind::Iocp.resolve(),
            // A feature switch with a typo is a mistake to report, not a
            // reason to fall back.
            #[cfg(target_os = "linux")]
            EngineKind::Auto | EngineKind::Uring if crate::sys::uring::Features::from_env().is_err() => {
                let why = crate::sys::uring::Features::from_env()
                    .err()
                    .map(|e| e.to_string());
                Err(EngineError::Misconfigured {
                    engine: EngineKind::Uring,
                    why: why.unwrap_or_default(),
                })
            }
            #[cfg(not(windows))]
            EngineKind::Auto => match EngineKind::Uring.resolve() {
                Ok(chosen) => {
                    tracing::info!(
                        engine = "uring",
                        "engine auto: chose uring (io_uring probe passed)"
                    );
                    Ok(chosen)
                }
                Err(why) => {
                    let chosen = EngineKind::Epoll.resolve()?;
                    tracing::info!(engine = "epoll", %why, "engine auto: io_uring unusable, falling back to epoll");
                    Ok(chosen)
                }
            },
            EngineKind::Epoll if cfg!(target_os = "linux") => Ok(EngineKind::Epoll),
            EngineKind::Epoll => Err(EngineError::Unsupported {
                engine: self,
                why: "epoll exists only on Linux".into(),
            }),
            #[cfg(target_os = "linux")]
            EngineKind::Uring => match crate::sys::uring::probe() {
                Ok(()) => Ok(EngineKind::Uring),
                Err(e) => Err(EngineError::Unsupported {
                    engine: self,
                    why: e.to_string(),
                }),
            },
            #[cfg(not(target_os = "linux"))]
            EngineKind::Uring => Err(EngineError::Unsupported {
                engine: self,
                why: "io_uring exists only on Linux".into(),
            }),
            EngineKind::Iocp | EngineKind::WsaEvent | EngineKind::Overlapped if cfg!(windows) => Ok(self),
            EngineKind::WsaEvent | EngineKind::Overlapped | EngineKind::Iocp => {
                Err(EngineError::Unsupported {
                    engine: self,
                    why: "Winsock engines exist only on Windows".into(),
                })
            }
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EngineKind {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<EngineKind, EngineError> {
        EngineKind::ALL
            .iter()
            .copied()
            .find(|e| e.name() == s)
            .ok_or_else(|| EngineError::Unknown(s.to_string()))
    }
}

/// Why an engine cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// No engine has this name.
    Unknown(String),
    /// The engine is not part of this build of iocore.
    NotBuilt(EngineKind),
    /// The engine's settings from the environment are wrong (for
    /// io_uring, an unknown name in `IOCORE_URING_OFF`).
    Misconfigured {
        /// The engine concerned.
        engine: EngineKind,
        /// What is wrong.
        why: String,
    },
    /// The engine exists but this system cannot run it.
    Unsupported {
        /// The engine asked for.
        engine: EngineKind,
        /// What the system lacks.
        why: String,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Unknown(s) => {
                let names: Vec<&str> = EngineKind::ALL.iter().map(|e| e.name()).collect();
                write!(f, "unknown engine '{s}' (expected one of: {})", names.join(", "))
            }
            EngineError::NotBuilt(e) => write!(f, "engine '{e}' is not available in this build of iocore"),
            EngineError::Misconfigured { engine, why } => write!(f, "engine '{engine}': {why}"),
            EngineError::Unsupported { engine, why } => {
                write!(f, "engine '{engine}' cannot run on this system: {why}")
            }
        }
    }
}

impl std::error::Error for EngineError {}

impl From<EngineError> for io::Error {
    fn from(e: EngineError) -> io::Error {
        let kind = match e {
            EngineError::Unknown(_) | EngineError::Misconfigured { .. } => io::ErrorKind::InvalidInput,
            EngineError::NotBuilt(_) | EngineError::Unsupported { .. } => io::ErrorKind::Unsupported,
        };
        io::Error::new(kind, e)
    }
}

/// A request from another thread to a worker.
pub(crate) enum Command<H> {
    /// Open an outbound connection with a handler made on the worker.
    Connect {
        addr: SocketAddr,
        make: Box<dyn FnOnce() -> H + Send>,
        /// Where the new session's id goes (`None`: it was not opened), if
        /// the caller waits for it.
        reply: Option<mpsc::SyncSender<Option<SessionId>>>,
    },
    /// Serve a connection another worker accepted (the hand-off accept
    /// strategy), or another listener's acceptor thread: admit it here,
    /// make its handler here, own it here; `websocket`: how it speaks
    /// WebSocket, if it does.
    Adopt {
        socket: OwnedSocket,
        peer: SocketAddr,
        websocket: Option<Arc<WsConfig>>,
        tls: Option<Arc<TlsCfg>>,
    },
    /// A request that does not depend on the handler type.
    Remote(Remote),
}

/// A request any thread may make of a worker, whatever its handler type.
pub(crate) enum Remote {
    /// Stop accepting, flush and close every session within `grace`, then
    /// end the loop.
    Stop { grace: Duration },
    /// Queue `buf` on session `id`, if it is still the session named.
    Send { id: SessionId, buf: Bytes },
    /// Close session `id` gracefully, if it is still the session named.
    Close { id: SessionId },
    /// Fan `buf` out to this worker's subscribers of `topic` (those that
    /// subscribed before tick `stamp` of the publish clock).
    Publish { topic: Arc<str>, buf: Bytes, stamp: u64 },
    /// Queue each buffer on its session (what rooms on another worker
    /// sent during one turn), then flush each session once.
    SendMany(Vec<(SessionId, Bytes)>),
    /// Close session `id` gracefully with `reason` (a room kicked it).
    CloseWith { id: SessionId, reason: CloseReason },
}

/// A worker's mailbox as any thread sees it.
pub(crate) trait Control: Send + Sync {
    /// Hands `r` to the worker; gives it back if the worker has ended.
    #[allow(clippy::result_large_err)]
    fn remote(&self, r: Remote) -> Result<(), Remote>;
}

impl<H: 'static> Control for Inbox<H> {
    fn remote(&self, r: Remote) -> Result<(), Remote> {
        self.push(Command::Remote(r)).map_err(|c| match c {
            Command::Remote(r) => r,
            _ => unreachable!("push gives back what it was given"),
        })
    }
}

/// A publish from outside the workers (a server's or client's handle):
/// counted once for its topic, relayed to other instances if the topics
/// are bridged, and handed to every worker's fan-out, one command each
/// carrying the one buffer. False if no worker took it (all have ended).
pub(crate) fn publish_everywhere<'a>(
    registry: &crate::topic::Registry,
    workers: impl IntoIterator<Item = &'a dyn Control>,
    topic: &str,
    buf: Bytes,
) -> bool {
    let topic: Arc<str> = topic.into();
    let stamp = registry.stamp();
    registry.published(&topic);
    registry.relay(&topic, &buf);
    let mut sent = false;
    for w in workers {
        let r = Remote::Publish {
            topic: topic.clone(),
            buf: buf.clone(),
            stamp,
        };
        sent |= w.remote(r).is_ok();
    }
    sent
}

/// A worker's mailbox: commands plus a descriptor that wakes its loop.
/// Closed when the worker's loop has ended: then it takes nothing more.
/// Commands are taken in the order pushed: two requests from one thread
/// to one worker are carried out in that order.
pub(crate) struct Inbox<H> {
    queue: Mutex<Queue<H>>,
    waker: Waker,
}

struct Queue<H> {
    commands: Vec<Command<H>>,
    closed: bool,
}

impl<H> Inbox<H> {
    pub(crate) fn new() -> io::Result<Inbox<H>> {
        Ok(Inbox {
            queue: Mutex::new(Queue {
                commands: Vec::new(),
                closed: false,
            }),
            waker: Waker::new()?,
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue<H>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `cmd` and wakes the worker; if the worker's loop has ended,
    /// gives `cmd` back. Only the first command of a batch wakes it (a
    /// queue found non-empty has a wake-up on its way, and the worker takes
    /// the whole queue at once), so a thread sending to many sessions of
    /// one worker pays one wake-up, not one each.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, cmd: Command<H>) -> Result<(), Command<H>> {
        let mut queue = self.queue();
        if queue.closed {
            return Err(cmd);
        }
        let first = queue.commands.is_empty();
        queue.commands.push(cmd);
        drop(queue);
        if first {
            if let Err(e) = self.waker.wake() {
                // Only a full wake counter fails, and then a wake is pending.
                tracing::debug!(error = %e, "waking a worker failed");
            }
        }
        Ok(())
    }

    /// Takes every queued command (after the wake-up was drained).
    pub(crate) fn take(&self) -> Vec<Command<H>> {
        let _ = self.waker.drain();
        std::mem::take(&mut self.queue().commands)
    }

    /// The worker's loop has ended: refuse further commands and drop the
    /// queued ones (a connection handed over meanwhile is closed).
    pub(crate) fn close(&self) {
        let left = {
            let mut queue = self.queue();
            queue.closed = true;
            std::mem::take(&mut queue.commands)
        };
        drop(left);
    }

    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
}

/// Counts live sessions across all workers of a service against its
/// `max_sessions`.
pub(crate) struct SessionGate {
    max: usize,
    live: AtomicUsize,
}

impl SessionGate {
    pub(crate) fn new(max: usize) -> SessionGate {
        SessionGate {
            max,
            live: AtomicUsize::new(0),
        }
    }

    /// Takes a place, if one is free.
    pub(crate) fn try_acquire(&self) -> bool {
        if self.live.fetch_add(1, Ordering::AcqRel) < self.max {
            true
        } else {
            self.live.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// Gives a place back.
    pub(crate) fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts live accepted sessions per client address across all workers of
/// a server against its `max_sessions_per_ip`. Taken on accept, released
/// when the session ends: the connection-setup path, not the hot one.
pub(crate) struct IpGate {
    max: usize,
    live: Mutex<HashMap<IpAddr, usize>>,
}

impl IpGate {
    pub(crate) fn new(max: usize) -> IpGate {
        IpGate {
            max,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// An IPv4 client seen through an IPv6 listener counts as itself.
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for `ip`, if it has one free.
    pub(crate) fn try_acquire(&self, ip: IpAddr) -> bool {
        let mut live = self.live();
        let n = live.entry(Self::key(ip)).or_insert(0);
        if *n < self.max {
            *n += 1;
            true
        } else {
            false
        }
    }

    /// Gives `ip`'s place back.
    pub(crate) fn release(&self, ip: IpAddr) {
        let mut live = self.live();
        let key = Self::key(ip);
        if let Some(n) = live.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                live.remove(&key);
            }
        }
    }
}

/// TCP keepalive for a service's sessions: after `idle` without traffic
/// the kernel probes the peer every `interval`; after `count` unanswered
/// probes the connection is reset and its session ends (with
/// [`crate::CloseReason::Io`], `ETIMEDOUT`). Finds half-open peers (a
/// client whose machine vanished) that would otherwise hold a session
/// forever. Whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Quiet time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

impl Keepalive {
    /// Keepalive after `idle`, then probes every 10 s, 5 at most.
    pub fn after(idle: Duration) -> Keepalive {
        Keepalive {
            idle,
            interval: Duration::from_secs(10),
            count: 5,
        }
    }
}

/// What all workers of a service are configured with.
#[derive(Clone, Debug, Default)]
pub(crate) struct Settings {
    pub limits: Limits,
    pub max_sessions: usize,
    pub max_sessions_per_ip: Option<usize>,
    pub keepalive: Option<Keepalive>,
    /// Accepted connections start with a PROXY header.
    pub proxy: Option<Arc<crate::proxy::ProxySettings>>,
    /// Accepted connections speak WebSocket.
    pub websocket: Option<Arc<WsConfig>>,
    /// Sessions speak TLS (accepted ones as the server, outbound ones as
    /// the client).
    pub tls: Option<Arc<TlsCfg>>,
    /// The service's topics (with their relay to other instances, if any).
    pub registry: Arc<crate::topic::Registry>,
    /// Rooms to run on the workers.
    pub rooms: RoomKinds,
}

/// The kinds of rooms given to a server ([`crate::ServerBuilder::rooms`]).
#[derive(Clone, Default)]
pub(crate) struct RoomKinds(pub Vec<Arc<dyn crate::room::Attach>>);

impl fmt::Debug for RoomKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} kinds of rooms", self.0.len())
    }
}

/// How accepted connections speak WebSocket (nothing without the feature).
#[cfg(feature = "websocket")]
pub(crate) type WsConfig = crate::websocket::WebSocketConfig;
#[cfg(not(feature = "websocket"))]
pub(crate) type WsConfig = ();

/// How sessions speak TLS (nothing without the feature).
#[cfg(feature = "tls")]
pub(crate) type TlsCfg = crate::tls::TlsConfig;
#[cfg(not(feature = "tls"))]
pub(crate) type TlsCfg = ();

/// Makes a handler for each accepted connection.
pub(crate) type Factory<H> = Arc<dyn Fn() -> H + Send + Sync>;

/// Everything one worker thread needs; the engine takes it over.
pub(crate) struct Worker<H> {
    pub index: usize,
    /// The runtime's id ([`next_runtime_id`]).
    pub runtime: usize,
    /// The rooms that run on this server's workers: each worker makes its
    /// executor of each kind.
    pub rooms: Arc<[crate::room::Attached]>,
    pub listener: Option<OwnedSocket>,
    /// Every worker's inbox (this one's included, by index): for publishes
    /// to the other workers and for the hand-off accept.
    pub workers: Arc<[Arc<Inbox<H>>]>,
    /// Hand-off accept: the worker with the listener deals accepted
    /// connections out to all workers in turn. Else sessions stay where
    /// they are accepted.
    pub hand_off: bool,
    /// The server's topics (counters shared by all workers).
    pub registry: Arc<crate::topic::Registry>,
    pub factory: Option<Factory<H>>,
    pub inbox: Arc<Inbox<H>>,
    pub limits: Limits,
    pub keepalive: Option<Keepalive>,
    pub stats: Arc<WorkerStats>,
    pub gate: Arc<SessionGate>,
    /// `max_sessions_per_ip`, if set: shared by all workers.
    pub ip_gate: Option<Arc<IpGate>>,
    /// Accepted connections start with a PROXY header.
    pub proxy: Option<Arc<crate::proxy::ProxySettings>>,
    /// Accepted connections speak WebSocket.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub websocket: Option<Arc<WsConfig>>,
    /// Sessions speak TLS.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub tls: Option<Arc<TlsCfg>>,
    pub epoch: Instant,
    /// Told once the loop is set up (or why it could not be).
    pub ready: std::sync::mpsc::Sender<io::Result<()>>,
}

impl<H> Worker<H> {
    /// Tells the service whether the loop is set up (once per worker:
    /// call it with the final outcome), naming the engine in an error, and
    /// passes `result` on.
    pub(crate) fn report_setup<T>(&self, engine: EngineKind, result: io::Result<T>) -> io::Result<T> {
        let report = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), format!("{engine} engine setup: {e}"))),
        };
        let _ = self.ready.send(report);
        result
    }

    /// The current time as the session layer sees it.
    pub(crate) fn now(&self) -> Tick {
        Tick(self.epoch.elapsed().as_millis() as u64)
    }
}

std::thread_local! {
    /// The worker whose loop this thread runs, if any: its runtime's id
    /// and its index.
    static CURRENT: std::cell::Cell<Option<(usize, usize)>> = const { std::cell::Cell::new(None) };
}

/// Whether the calling thread is a worker's: a call that waits for a worker
/// must not be made there (it could wait for itself, or for a worker that
/// waits for this one).
pub(crate) fn on_worker_thread() -> bool {
    current_worker().is_some()
}

/// The worker whose loop runs on the calling thread: its runtime's id
/// ([`Worker::runtime`]) and its index.
pub(crate) fn current_worker() -> Option<(usize, usize)> {
    CURRENT.with(|w| w.get())
}

/// A new runtime's id, unique in the process.
pub(crate) fn next_runtime_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Wakes a worker's loop from any thread (for what it must take from a
/// queue other than its inbox: the rooms' posts).
pub(crate) trait Wake: Send + Sync {
    fn wake(&self);
}

impl<H: 'static> Wake for Inbox<H> {
    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            // Only a full wake counter fails, and then a wake is pending.
            tracing::debug!(error = %e, "waking a worker failed");
        }
    }
}

/// Runs `worker`'s event loop on the calling thread with a resolved engine
/// until it is stopped.
pub(crate) fn run<H: Handler>(engine: EngineKind, worker: Worker<H>) -> io::Result<()> {
    CURRENT.with(|w| w.set(Some((worker.runtime, worker.index))));
    match engine {
        #[cfg(target_os = "linux")]
        EngineKind::Epoll => epoll::run(worker),
        #[cfg(target_os = "linux")]
        EngineKind::Uring => uring::run(worker),
        #[cfg(windows)]
        EngineKind::Iocp => iocp::run(worker),
        #[cfg(windows)]
        EngineKind::WsaEvent => wsa_event::run(worker),
        #[cfg(windows)]
        EngineKind::Overlapped => overlapped::run(worker),
        other => Err(EngineError::NotBuilt(other).into()),
    }
}
