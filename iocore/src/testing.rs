//! Sessions without sockets, on a clock the test moves: for testing a
//! handler's logic — what it answers, when its timers fire, how it ends —
//! and iocore's own policy (limits, flow control, timeouts, topics, the
//! stop) without waiting and without the OS.
//!
//! [`Sim`] runs the server's session core and control exactly as a real
//! engine does, over in-memory pipes: the same admission, the same read
//! loop and gather write, the same deadlines and close protocol. Each pipe
//! has a peer the test writes to, reads from, half-closes or resets, and a
//! window (the bytes the server may send before the peer reads) that
//! makes a slow or stalled reader. Time starts at zero and moves only by
//! [`Sim::advance`], which stops at every deadline on the way.
//!
//! What it does not show is what the OS does: real sockets' buffering,
//! resets and timings, engine-specific I/O (io_uring, IOCP). Test those
//! over real sockets (as iocore's own suite does, on every engine).

pub use crate::engine::sim::{Peer, PeerState, Sim, DEFAULT_WINDOW};
