//! What the readiness engines (epoll, wsa-event) and the engines that are
//! told "data is there" (a zero-byte receive completing: iocp,
//! overlapped) share of their I/O: the read loop into the worker's scratch
//! buffer, and the gather write over a session's queue.

use std::io;

use super::sockets::io_close_reason;
use super::WorkerStats;
use crate::session::{Conn, Context, Handler};

/// How a read loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(windows), allow(dead_code))] // the Windows engines' loop
pub(crate) enum ReadEnd {
    /// The socket has nothing more (WOULDBLOCK), or the peer's FIN or an
    /// error ended the input.
    Drained,
    /// The session stopped wanting input (see [`Conn::wants_input`]); data
    /// may remain in the socket: read again when input is wanted.
    Paused,
    /// The budget ran out; data may remain.
    Budget,
}

/// Reads with `read` into `scratch` until the socket has nothing more
/// (WOULDBLOCK), the peer's FIN, an error, the session stops wanting
/// input, or `budget` reads, handing the bytes to `conn` — the loop the
/// engines that are told "data is there" (completion of a zero-byte
/// receive, FD_READ) run.
#[cfg_attr(not(windows), allow(dead_code))] // the Windows engines' loop
pub(crate) fn read_into_scratch<H: Handler>(
    conn: &mut Conn<H>,
    scratch: &mut [u8],
    stats: &WorkerStats,
    cx: Context<'_>,
    budget: usize,
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> ReadEnd {
    for _ in 0..budget {
        if !conn.wants_input() {
            return ReadEnd::Paused;
        }
        match read(scratch) {
            Ok(0) => {
                stats.read_attempt();
                conn.eof();
                return ReadEnd::Drained;
            }
            Ok(n) => {
                stats.read(n);
                conn.received(&scratch[..n], cx);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stats.read_attempt();
                return ReadEnd::Drained;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                stats.read_attempt();
                conn.failed(io_close_reason(e));
                return ReadEnd::Drained;
            }
        }
    }
    ReadEnd::Budget
}

/// Most buffers gathered into one readiness-engine send.
const MAX_IOV: usize = 64;

/// The readiness engines' send: gathers the queued buffers into one
/// `send` call after another until the queue is empty or the socket is
/// full (then `write_blocked` is set: wait for writability — EPOLLOUT,
/// FD_WRITE — instead of retrying, and `full` is told: see
/// [`Conn::send_blocked`]).
pub(crate) fn flush_gather<H: Handler>(
    conn: &mut Conn<H>,
    write_blocked: &mut bool,
    stats: &WorkerStats,
    cx: Context<'_>,
    mut send: impl FnMut(&[std::io::IoSlice<'_>]) -> io::Result<usize>,
    mut full: impl FnMut(&mut Conn<H>),
) {
    // What the handler corked while it was handed input goes first, straight
    // from the worker's cork.
    let corked = cx.hub.cork.borrow_mut().close_for(cx.id.token());
    if let Some(corked) = corked {
        if conn.takes_corked() {
            let n = match *write_blocked {
                true => 0,
                false => {
                    let sent = send(&[std::io::IoSlice::new(&corked)]);
                    took(sent, conn, write_blocked, stats, &mut full).unwrap_or(0)
                }
            };
            conn.sent_corked(&corked, n, cx);
        }
        cx.hub.cork.borrow_mut().give_back(corked);
    }
    while conn.has_unsent() && !*write_blocked {
        let sent = match conn.sole_unsent() {
            // One buffer (the common case): no gather array to fill.
            Some(buf) => send(&[std::io::IoSlice::new(buf)]),
            None => {
                let mut iov = [std::io::IoSlice::new(&[]); MAX_IOV];
                let count = conn.send_slices(&mut iov);
                send(&iov[..count])
            }
        };
        if let Some(n) = took(sent, conn, write_blocked, stats, &mut full) {
            conn.sent(n, cx);
        }
    }
}

/// What a readiness-engine send did: the bytes the kernel took, or `None`
/// after noting a full socket (`write_blocked`, and `full` is told) or
/// failing the session.
#[inline(always)]
fn took<H: Handler>(
    sent: io::Result<usize>,
    conn: &mut Conn<H>,
    write_blocked: &mut bool,
    stats: &WorkerStats,
    full: &mut impl FnMut(&mut Conn<H>),
) -> Option<usize> {
    match sent {
        Ok(n) => {
            stats.wrote(n);
            Some(n)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            stats.write_attempt();
            *write_blocked = true;
            full(conn);
            None
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
        Err(e) => {
            stats.write_attempt();
            conn.failed(io_close_reason(e));
            None
        }
    }
}
