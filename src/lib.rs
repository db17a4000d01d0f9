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
//! 1. [`apps`] — echo, sink and the seed client, used by the `iocore` CLI.
//! 2. [`service`] — [`Server`] and [`Client`]: threads, limits, stop.
//! 3. [`session`] — engine-independent connection logic: [`RecvBuffer`],
//!    [`SendQueue`], lifecycle and [`CloseReason`], calls into [`Handler`].
//! 4. `engine` — one event loop per worker thread; moves bytes.
//! 5. `sys` — the only module with `unsafe`: epoll, io_uring, eventfd,
//!    sockets; IOCP and Winsock on Windows.
//!
//! ## Example: an echo server
//!
//! ```no_run
//! use iocore::{Handler, Server, Session};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
//!         let _ = s.send_copy(data); // queue failures close the session
//!         data.len()
//!     }
//! }
//!
//! let server = Server::builder().addr("127.0.0.1:7777".parse()?).start(|| Echo)?;
//! server.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod apps;
pub mod engine;
pub mod service;
pub mod session;
#[allow(unsafe_code)]
mod sys;

/// Resource usage of another process (for load reports).
pub use sys::procfs::{raise_fd_limit, usage as process_usage, ProcessUsage};

pub use bytes::Bytes;
pub use engine::{EngineError, EngineKind, Stats};
pub use service::{Accept, Client, ClientBuilder, ClientHandle, Server, ServerBuilder, ServerHandle};
pub use session::{
    CloseKind, CloseReason, Handler, Limits, RecvBuffer, SendError, SendQueue, Session, SessionId,
};
