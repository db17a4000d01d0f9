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
//! ## Layers
//!
//! Dependencies point down only:
//!
//! 1. [`service`] — [`Server`] and [`Client`]: threads, limits, stop;
//!    sends, closes and publishes from any thread.
//! 2. [`session`] — engine-independent connection logic: [`RecvBuffer`],
//!    [`SendQueue`], lifecycle and [`CloseReason`], calls into [`Handler`].
//! 3. `engine` — one event loop per worker thread; moves bytes.
//! 4. `sys` — the only module with `unsafe`: epoll, io_uring, eventfd,
//!    sockets; IOCP and Winsock on Windows.
//!
//! Between sessions, on top of the session API: [`packet`] (the course's
//! size + id header, as a handler adaptor) and [`topic`] (pub/sub with one
//! shared buffer per publish). Around the server: [`proxy`] (PROXY
//! protocol headers from a load balancer), and with their features the
//! `metrics` and `bridge` (Redis) modules.
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

#[cfg(feature = "redis")]
pub mod bridge;
pub mod config;
pub mod engine;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod packet;
pub mod proxy;
pub mod service;
pub mod session;
#[allow(unsafe_code)]
mod sys;
pub mod topic;

pub use bytes::Bytes;
pub use config::{ConfigError, Setting};
pub use engine::{AcceptErrorKind, EngineError, EngineKind, Keepalive, Stats};
pub use service::{
    Accept, Client, ClientBuilder, ClientHandle, Server, ServerBuilder, ServerHandle, ToSessionError,
};
pub use session::{
    CloseKind, CloseReason, Handler, Limits, RecvBuffer, SendError, SendQueue, Session, SessionId,
};
pub use topic::TopicStats;
