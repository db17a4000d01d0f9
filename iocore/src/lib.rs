//! # iocore
//!
//! TCP session servers and clients on the socket I/O models taught by the
//! game-server course this project grew from: readiness events (Winsock's
//! `WSAEventSelect`) and overlapped I/O with completion ports (IOCP). On
//! Linux these are an **epoll readiness engine** and an **io_uring
//! completion engine**; the same [`Handler`] runs on each, and the model is
//! picked with [`EngineKind`].
//!
//! | seed model (Windows)              | engine on Linux                  | engine on Windows |
//! |-----------------------------------|----------------------------------|-------------------|
//! | WSAEventSelect: readiness per socket | `epoll` (no 64-socket limit)  | `wsa-event`       |
//! | Overlapped I/O + events           | `uring` (io_uring completions)   | `overlapped`      |
//! | IOCP: completion port + workers   | `uring`, one ring per worker     | `iocp`            |
//!
//! ## What a user works with
//!
//! - [`Handler`] (one per session: `on_connected`, `on_recv`, `on_sent`,
//!   `on_writable`, `on_timer`, `on_disconnected`) and the [`Session`]
//!   handle its callbacks get: send, close, timers, flow control, topics.
//! - [`Server`] / [`Client`] and their builders: bind or connect, worker
//!   threads, [`Limits`], graceful stop; the [`ServerHandle`] /
//!   [`ClientHandle`] send, close and publish from any thread by
//!   [`SessionId`].
//! - Why sessions end ([`CloseReason`], [`CloseKind`]), counters
//!   ([`Stats`], [`TopicStats`]), the engine choice ([`EngineKind`]) and
//!   configuration errors ([`ConfigError`]).
//! - [`packet`]: the course's size + id header, as a handler adaptor;
//!   [`proxy`]: PROXY protocol headers from a load balancer; with their
//!   features, `metrics` (Prometheus) and `bridge` (topics across instances
//!   through Redis).
//! - [`room`]: state many sessions act on (a match, a zone), run one job
//!   at a time on a worker, with timers and a drift-free tick.
//! - [`testing`]: sessions driven without sockets, on a clock you move, to
//!   test a handler's logic.
//!
//! ## Layers inside
//!
//! Dependencies point down only: the service (threads, limits, stop) over
//! the session core (engine-independent connection logic: receive buffer,
//! send queue, lifecycle and close reasons, flow control, timers; no
//! sockets, no clocks) over the engines (one event loop per worker
//! thread; they move bytes) over `sys`, the only module with `unsafe`
//! (epoll, io_uring, eventfd, sockets; IOCP and Winsock on Windows).
//! Packets and topics sit on top of sessions.
//!
//! The applications (echo, sink, chat, the load clients, benchmarks) and
//! the `iocore` command live in the `iocore-cli` crate of the same
//! workspace.
//!
//! ## Example: an echo server (`examples/echo.rs`)
//!
//! ```no_run
//! use iocore::{Handler, Server, Session};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
//!         let _ = s.send_copy(data); // a refused send has closed the session
//!         data.len() // consumed everything
//!     }
//! }
//!
//! let server = Server::builder().addr("127.0.0.1:7777".parse()?).start(|| Echo)?;
//! server.join()?; // serves until stopped
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Example: a client (`examples/client.rs`)
//!
//! ```no_run
//! use iocore::{Bytes, Client, CloseReason, Handler, Session};
//!
//! struct Hello(std::sync::mpsc::Sender<CloseReason>);
//! impl Handler for Hello {
//!     fn on_connected(&mut self, s: &mut Session<'_>) {
//!         let _ = s.send(Bytes::from_static(b"Hello World\n"));
//!     }
//!     fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
//!         print!("{}", String::from_utf8_lossy(data));
//!         s.close(); // FIN once everything queued is sent
//!         data.len()
//!     }
//!     fn on_disconnected(&mut self, reason: CloseReason) {
//!         let _ = self.0.send(reason);
//!     }
//! }
//!
//! let client = Client::builder().start::<Hello>()?;
//! let (done, ended) = std::sync::mpsc::channel();
//! client.connect("127.0.0.1:7777".parse()?, move || Hello(done))?;
//! println!("ended: {}", ended.recv()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Example: rooms with packets and topics (`examples/rooms.rs`)
//!
//! ```no_run
//! use iocore::packet::{self, PacketHandler, Packets};
//! use iocore::{Server, Session};
//!
//! struct Member;
//! impl PacketHandler for Member {
//!     fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
//!         match id {
//!             1 => { s.subscribe("lobby"); }                    // JOIN
//!             2 => s.publish("lobby", packet::encode(3, body).unwrap()), // SAY
//!             _ => s.close(),
//!         }
//!     }
//! }
//!
//! let server = Server::builder().start(|| Packets::new(Member))?;
//! // From any thread: one buffer, shared by every subscriber.
//! server.publish("lobby", packet::encode(3, b"welcome")?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Dependencies and features
//!
//! The library needs only what the engines and sessions use
//! (`cargo tree -p iocore -e normal --target all`, depth 1):
//!
//! | crate | for |
//! |---|---|
//! | `bytes` | shared, reference-counted send buffers |
//! | `libc` | system calls (Linux) |
//! | `tracing` (no default features) | log events; the application picks the subscriber |
//! | `io-uring` (Linux) | the `uring` engine's ring |
//! | `windows-sys`, `socket2` (Windows) | Winsock, IOCP and event objects |
//!
//! No async runtime, no CLI, serialization or histogram crate: those are
//! the `iocore` command's, and CI fails if one appears here. Integrations
//! that need more are opt-in cargo features, off by default:
//!
//! | feature | adds | crates |
//! |---|---|---|
//! | `metrics` | the `metrics` module: Prometheus metrics of a server, served at `/metrics` by an iocore server of its own (`ServerBuilder::metrics`) | `prometheus-client`, `httparse` |
//! | `proxy-protocol` | PROXY protocol v1/v2 headers on accept, from trusted proxies (`ServerBuilder::proxy_protocol`; see [`proxy`]) | `proxy-header`, `ipnet` |
//! | `redis` | the `bridge` module: topics across server instances through Redis pub/sub (`ServerBuilder::redis`) | `redis` (synchronous, default features off) |
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]
#![cfg_attr(not(any(target_os = "linux", windows)), allow(unused))]

// One clear error on other targets, rather than a wall of missing system
// calls: the modules below that reach the OS are compiled only where their
// engines exist.
#[cfg(not(any(target_os = "linux", windows)))]
compile_error!(
    "iocore runs on Linux (the epoll and io_uring engines) and on Windows (iocp, wsa-event, \
     overlapped); this target is neither"
);

#[cfg(all(feature = "redis", any(target_os = "linux", windows)))]
pub mod bridge;
mod config;
#[cfg(any(target_os = "linux", windows))]
mod engine;
#[cfg(all(feature = "metrics", any(target_os = "linux", windows)))]
pub mod metrics;
pub mod packet;
pub mod proxy;
#[cfg(any(target_os = "linux", windows))]
pub mod room;
#[cfg(any(target_os = "linux", windows))]
mod service;
mod session;
#[cfg(any(target_os = "linux", windows))]
#[allow(unsafe_code)]
mod sys;
#[cfg(any(target_os = "linux", windows))]
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;
mod topic;
#[cfg(feature = "websocket")]
pub mod websocket;

pub use bytes::Bytes;
pub use config::{ConfigError, Setting, UnknownName};
#[cfg(any(target_os = "linux", windows))]
pub use engine::{AcceptErrorKind, EngineError, EngineKind, Keepalive, Stats};
#[cfg(target_os = "linux")]
pub use engine::{UringFeatures, URING_FEATURES_OFF_VAR};
#[cfg(any(target_os = "linux", windows))]
pub use service::{
    Accept, Client, ClientBuilder, ClientHandle, ConnectError, Server, ServerBuilder, ServerHandle,
    ToSessionError,
};
pub use session::{CloseKind, CloseReason, Handler, Limits, SendError, Session, SessionId};
pub use topic::TopicStats;
