//! The overlapped engine — the second seed, literally: each session posts
//! overlapped `WSARecv`/`WSASend` whose `WSAOVERLAPPED.hEvent` is the
//! session's event object; `WSA_IO_PENDING` means the result comes later;
//! when the event is signaled, `WSAGetOverlappedResult` gives it. Sends are
//! one gather `WSASend` (a `WSABUF` array) at a time over the session's
//! queued buffers; receives are zero-byte (they complete when data is
//! there, holding no buffer), after which the data is read without
//! blocking into the worker's scratch buffer. Outbound connects are
//! `ConnectEx` with the same event. The listener is watched with
//! `WSAEventSelect(FD_ACCEPT)` (the seed's server busy-loops on accept).
//!
//! More than 63 sessions: the event objects live in the same groups of 63
//! per waiter thread as the `wsa-event` engine's (see `groups.rs`).
//!
//! A session that does not want input (paused by its handler, or its send
//! queue over the high watermark) stops reading and posts no receive; it
//! reads and posts again when input is wanted.

use std::io;
use std::net::SocketAddr;

use crate::session::{CloseReason, Conn, Handler};
use crate::sys::iocp::SendOp;
use crate::sys::overlapped::OvSocket;
use crate::sys::wsaevent as wsa;
use crate::sys::OwnedSocket;

use super::core::Core;
use super::driver::{CloseAtOnce, Driver};
use super::groups::{EventEngine, Shell};
use super::readiness::{read_into_scratch, ReadEnd};
use super::sockets::io_close_reason;
use super::{EngineKind, Worker};

const SCRATCH: usize = 64 * 1024;
const READ_BUDGET: usize = 16;

struct Sock {
    ov: OvSocket,
    group: usize,
    slot: usize,
    /// Reading stopped (no receive posted) because input was not wanted.
    read_stalled: bool,
}

struct Loop<H> {
    // Sessions (with their posted operations) go before the groups whose
    // event objects those operations signal.
    core: Core<H, Sock>,
    shell: Shell,
    scratch: Box<[u8]>,
    /// Boxed on purpose: the socket takes and returns them by box.
    #[allow(clippy::vec_box)]
    spare_sends: Vec<Box<SendOp>>,
}

/// Runs the worker until it is stopped.
pub(crate) fn run<H: Handler>(w: Worker<H>) -> io::Result<()> {
    let shell = Shell::new(w.listener.as_ref(), format!("iocore-ov-wait-{}", w.index));
    let shell = w.report_setup(EngineKind::Overlapped, shell)?;
    let mut lp = Loop {
        core: Core::new(w),
        shell,
        scratch: vec![0; SCRATCH].into_boxed_slice(),
        spare_sends: Vec::new(),
    };
    lp.run_loop()
}

impl<H: Handler> Loop<H> {
    /// Registers a session in a slot and posts its first operation: a
    /// connect to `connect_to`, or a receive.
    fn open(&mut self, conn: Conn<H>, s: OwnedSocket, connect_to: Option<SocketAddr>) -> io::Result<()> {
        let (g, slot) = self.shell.groups.acquire()?;
        let ov = OvSocket::new(s, self.shell.groups.event(g, slot));
        let sock = Sock {
            ov,
            group: g,
            slot,
            read_stalled: false,
        };
        let token = self.core.insert(conn, sock);
        self.shell.groups.assign(g, slot, token);
        let (cx, slot) = self.core.slot(token).expect("just inserted");
        match connect_to {
            Some(addr) => {
                if let Err(e) = slot.io.ov.post_connect(&addr) {
                    slot.conn.failed(CloseReason::ConnectFailed(e));
                }
            }
            None => {
                slot.conn.start(cx);
                // Bytes may already wait: read them now, then post.
                self.readable(token);
            }
        }
        self.settle(token)
    }

    /// Reads what is there without blocking, then posts the next receive
    /// (unless input is not wanted now).
    fn readable(&mut self, token: u64) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        let ov = &slot.io.ov;
        let end = read_into_scratch(&mut slot.conn, &mut self.scratch, stats, cx, READ_BUDGET, |buf| {
            wsa::read(ov.socket(), buf)
        });
        if end == ReadEnd::Paused {
            slot.io.read_stalled = true;
            return;
        }
        // Drained or budget spent: the zero-byte receive completes at once
        // if data remains.
        if slot.conn.wants_input() && !slot.io.ov.recv_posted() {
            if let Err(e) = slot.io.ov.post_recv() {
                slot.conn.failed(io_close_reason(e));
            }
        }
    }
}

impl<H: Handler> Driver<H> for Loop<H> {
    type Io = Sock;

    fn core(&mut self) -> &mut Core<H, Sock> {
        &mut self.core
    }

    fn open_accepted(&mut self, conn: Conn<H>, s: OwnedSocket) -> io::Result<()> {
        self.open(conn, s, None)
    }

    fn connect(&mut self, addr: SocketAddr, handler: H) -> io::Result<()> {
        match self.core.outbound(addr, handler, crate::sys::iocp::stream_for) {
            Some((conn, s)) => self.open(conn, s, Some(addr)),
            None => Ok(()),
        }
    }

    fn settle(&mut self, token: u64) -> io::Result<()> {
        self.settle_at_once(token)
    }

    fn close_listener(&mut self, listener: OwnedSocket) -> io::Result<()> {
        self.shell.close_listener(listener);
        Ok(())
    }
}

impl<H: Handler> EventEngine<H> for Loop<H> {
    fn parts(&mut self) -> (&mut Core<H, Sock>, &mut Shell) {
        (&mut self.core, &mut self.shell)
    }

    /// The session's event was signaled: see which operations finished.
    fn session_event(&mut self, token: u64) -> io::Result<()> {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return Ok(());
        };
        // Reset first: an operation finishing after the polls below
        // signals again.
        self.shell.groups.event(slot.io.group, slot.io.slot).reset();
        let mut just_connected = false;
        if let Some(result) = slot.io.ov.poll_connect() {
            match result {
                Ok(()) => {
                    slot.conn.connected(cx);
                    stats.connected();
                    just_connected = true;
                }
                Err(e) => slot.conn.failed(CloseReason::ConnectFailed(e)),
            }
        }
        if let Some((result, mut op)) = slot.io.ov.poll_send() {
            let sent = match result {
                Ok(n) => {
                    stats.wrote(n);
                    n
                }
                Err(e) => {
                    stats.write_attempt();
                    slot.conn.failed(io_close_reason(e));
                    0
                }
            };
            slot.conn.send_completed(&mut op.bufs, op.offset, sent, cx);
            op.bufs.clear();
            self.spare_sends.push(op);
        }
        if just_connected {
            // Start receiving (and read what may already be there).
            self.readable(token);
        }
        let Some((_, slot)) = self.core.slot(token) else {
            return Ok(());
        };
        match slot.io.ov.poll_recv() {
            Some(Ok(())) => self.readable(token),
            Some(Err(e)) => slot.conn.failed(io_close_reason(e)),
            None => {}
        }
        self.settle(token)
    }

    /// The accepted socket inherits the listener's event selection: undo
    /// it, this one does overlapped I/O.
    fn prepare_accepted(&self, socket: &OwnedSocket) {
        wsa::deselect(socket);
    }
}

impl<H: Handler> CloseAtOnce<H> for Loop<H> {
    fn flush(&mut self, token: u64) {
        let Some((cx, slot)) = self.core.slot(token) else {
            return;
        };
        if slot.io.ov.send_posted() || !slot.conn.can_lend() {
            return;
        }
        let mut op = self.spare_sends.pop().unwrap_or_default();
        op.offset = slot.conn.lend_unsent(&mut op.bufs, crate::sys::iocp::MAX_BUFS);
        if let Err((e, mut op)) = slot.io.ov.post_send(op) {
            slot.conn.send_completed(&mut op.bufs, op.offset, 0, cx);
            slot.conn.failed(io_close_reason(e));
            op.bufs.clear();
            self.spare_sends.push(op);
        }
    }

    fn shutdown_write(io: &Sock) -> io::Result<()> {
        wsa::shutdown_write(io.ov.socket())
    }

    fn release(&mut self, io: Sock, rst: bool) {
        if rst {
            let _ = crate::sys::socket::set_linger_zero(io.ov.socket());
        }
        let Sock {
            mut ov, group, slot, ..
        } = io;
        // A send that finished before its event was handled (the session
        // ended in the meantime) still took its bytes: count them.
        if let Some((Ok(n), _)) = ov.poll_send() {
            self.core.w.stats.wrote(n);
        }
        // Dropping cancels posted operations and waits for them.
        drop(ov);
        self.shell.groups.release(group, slot);
    }

    fn read_stalled(io: &mut Sock) -> &mut bool {
        &mut io.read_stalled
    }

    fn read_input(&mut self, token: u64) {
        self.readable(token);
    }
}
