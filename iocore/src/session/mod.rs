//! The session layer: everything about a connection that does not depend
//! on the I/O model. No sockets, no clocks, no `unsafe`: engines feed it
//! bytes, write results and the time, and it calls the [`Handler`].
//!
//! - [`RecvBuffer`]: unconsumed input with read/write cursors, compaction
//!   and a limit; unallocated while empty.
//! - [`SendQueue`]: shared buffers waiting to be sent, partial-send offset,
//!   gather slices, a limit.
//! - [`Conn`]: the lifecycle state machine (open → closing → lingering →
//!   closed, or aborting) and the calls into the handler.
//! - [`CloseReason`]: why a session ended.
//! - [`Table`] and [`Timers`]: a worker's sessions by token and their
//!   deadlines.

mod close;
mod conn;
mod cork;
mod handler;
mod hub;
mod recv_buffer;
mod send_queue;
mod table;
mod timers;

pub(crate) use close::catch_panic;
pub use close::{CloseKind, CloseReason, SendError};
pub(crate) use conn::{Conn, Context, Step};
pub(crate) use handler::Tick;
pub use handler::{Handler, Limits, Session, SessionId};
pub(crate) use hub::Hub;
pub(crate) use table::Table;
#[cfg(target_os = "linux")]
pub(crate) use table::RESERVED;
pub(crate) use timers::Timers;
