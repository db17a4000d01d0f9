//! The completion engine: io_uring — the seed's overlapped I/O (post an
//! operation, learn of its completion later) and IOCP (one completion
//! queue per worker thread) on Linux.
//!
//! Per session at most three operations are in the kernel: a multishot
//! receive into the worker's provided-buffer ring (an idle session holds no
//! receive buffer; bytes the handler leaves unconsumed are copied into the
//! session's own buffer), one gather `sendmsg` over the queued buffers
//! (order is kept by never posting a second before the first completes;
//! a partial send posts the rest), and a cancel: of the receive when the
//! session stops wanting input (paused by its handler or by a send queue
//! over the high watermark), or of everything when closing.
//!
//! Backpressure needs the kernel's read-ahead bounded: a multishot receive
//! keeps taking data into provided buffers until the cancel arrives, and
//! one loop turn can carry megabytes of completions for one fast sender.
//! So each multishot receive is capped ([`RECV_CAP`] bytes, Linux 6.17) and
//! posted again only while input is wanted; what completions carried
//! before the cancel took effect is still delivered, and it is at most the
//! cap. Kernels without the cap reject it (`EINVAL`); the worker then
//! receives single-shot (one provided buffer per posting), which bounds
//! the read-ahead the same way. A session
//! is freed only after its last completion. Where the kernel lacks
//! multishot accept or capped multishot receive (`EINVAL`), the worker
//! falls back to single-shot operations posted again after each
//! completion; the variable `IOCORE_URING_SINGLESHOT=1` forces that mode.
//!
//! The ring uses, where the kernel has them, deferred task work (the
//! kernel runs completions' task work only inside this worker's own
//! `io_uring_enter`, which always asks for events), a registered ring
//! descriptor, a plain `send` for a single buffer, receive bundles (one
//! completion for a burst over several provided buffers), and a registered file
//! table that sessions' operations name their socket by (the descriptor
//! stays open beside it, for socket options, the peer's address and
//! shutdown; the session's socket closes when both are let go);
//! in-flight sends are kept in a slab. `IOCORE_URING_OFF` turns each off
//! (see [`crate::engine::UringFeatures`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::session::{CloseReason, Conn, Handler, Tick};
use crate::sys::socket;
use crate::sys::uring::{is_not_now, Completion, FileRef, FileSlot, SendKey, SendOp, Uring, RECV_CAP};

use super::completion::{CloseAfterLast, Posted};
use super::core::Core;
use super::driver::Driver;
use super::sockets::{io_close_reason, ACCEPT_BACKOFF};
use super::{EngineKind, Worker};

/// Submission queue size.
const ENTRIES: u32 = 1024;
/// Provided receive buffers per worker, and their size.
const BUFFERS: u16 = 256;
const BUFFER_SIZE: usize = 16 * 1024;

/// `user_data` = operation kind in the top 4 bits, session token below.
const OP_SHIFT: u32 = 60;
const TOKEN_MASK: u64 = (1 << OP_SHIFT) - 1;
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CONNECT: u64 = 3;
const OP_CANCEL: u64 = 4;
const OP_ACCEPT: u64 = 5;
const OP_WAKER: u64 = 6;
const OP_ENGINE_CANCEL: u64 = 7;
const OP_RECV_CANCEL: u64 = 8;
/// The pause before a send the kernel gave back with "not now" is posted
/// again (rule 7 of `sys::uring`).
const OP_SEND_RETRY: u64 = 9;

fn user_data(op: u64, token: u64) -> u64 {
    debug_assert!(token <= TOKEN_MASK);
    (op << OP_SHIFT) | token
}

/// This engine's per-session state.
struct Sock {
    fd: OwnedFd,
    /// The socket's slot in the ring's file table, if it has one (then
    /// operations name it by slot, else by `fd`); detached when the
    /// session is freed.
    slot: FileSlot,
    recv_posted: bool,
    /// The receive is being cancelled because input is not wanted.
    recv_cancel_posted: bool,
    /// The send in flight, if any (the ring holds its buffers).
    sending: Option<SendKey>,
    /// The kernel gave the last send back with "not now": the next one
    /// waits for the pause (`OP_SEND_RETRY`) to end.
    send_paused: bool,
    /// Operations in flight and the session's end (freed after the last
    /// completion).
    posted: Posted,
}

// Idle memory per session: this state is part of it (32 bytes, as before
// the close protocol was shared).
const _: () = assert!(std::mem::size_of::<Sock>() <= 32);

struct Loop<H> {
    core: Core<H, Sock>,
    ring: Uring,
    multishot_accept: bool,
    multishot_recv: bool,
    accept_posted: bool,
    waker_posted: bool,
    waker_cancelled: bool,
    accept_paused_until: Option<Tick>,
    /// Send operations to reuse. Boxed on purpose: the ring needs them at
    /// a stable address, and moving the box in and out costs no copy.
    #[allow(clippy::vec_box)]
    spare_sends: Vec<Box<SendOp>>,
}

/// Runs the worker until it is stopped.
pub(crate) fn run<H: Handler>(w: Worker<H>) -> io::Result<()> {
    let ring = match Uring::new(ENTRIES, BUFFERS, BUFFER_SIZE) {
        Ok(ring) => ring,
        Err(e) => return w.report_setup(EngineKind::Uring, Err(e)),
    };
    tracing::info!(
        worker = w.index,
        features = %ring.features(),
        "io_uring ring set up"
    );
    let multishot = !std::env::var_os("IOCORE_URING_SINGLESHOT").is_some_and(|v| v != "0");
    let mut lp = Loop {
        core: Core::new(w),
        ring,
        multishot_accept: multishot,
        multishot_recv: multishot,
        accept_posted: false,
        waker_posted: false,
        waker_cancelled: false,
        accept_paused_until: None,
        spare_sends: Vec::new(),
    };
    let started = lp.post_waker().and_then(|()| lp.post_accept());
    lp.core.w.report_setup(EngineKind::Uring, started)?;
    lp.run()
}

impl<H: Handler> Loop<H> {
    fn run(&mut self) -> io::Result<()> {
        loop {
            let timeout = self.core.timeout(self.accept_paused_until);
            self.ring.submit_and_wait(timeout)?;
            self.core.tick();
            let completions = self.ring.completions();
            self.core.w.stats.turn(completions.len());
            for c in &completions {
                self.complete(*c)?;
            }
            self.ring.reuse(completions);
            self.core.w.stats.set_buffers_held(self.ring.buffers_held());
            let (submitted, reaped) = self.ring.totals();
            self.core.w.stats.set_uring(submitted, reaped);
            if self.accept_paused_until.is_some_and(|t| t <= self.core.now) {
                self.accept_paused_until = None;
                self.post_accept()?;
            }
            self.after_events()?;
            if self.core.finished() {
                if !self.accept_posted && !self.waker_posted {
                    return Ok(());
                }
                if self.waker_posted && !self.waker_cancelled {
                    // Rule 4: nothing may be in the kernel when the ring goes.
                    self.ring
                        .cancel(user_data(OP_WAKER, 0), user_data(OP_ENGINE_CANCEL, 0))?;
                    self.waker_cancelled = true;
                }
            }
        }
    }

    fn post_waker(&mut self) -> io::Result<()> {
        self.ring
            .poll_readable(self.core.w.inbox.waker().as_raw_fd(), user_data(OP_WAKER, 0))?;
        self.waker_posted = true;
        Ok(())
    }

    fn post_accept(&mut self) -> io::Result<()> {
        if let Some(l) = &self.core.w.listener {
            if !self.accept_posted && self.accept_paused_until.is_none() && !self.core.stopping() {
                self.ring
                    .accept(l.as_raw_fd(), self.multishot_accept, user_data(OP_ACCEPT, 0))?;
                self.accept_posted = true;
            }
        }
        Ok(())
    }

    fn complete(&mut self, c: Completion) -> io::Result<()> {
        let token = c.user_data & TOKEN_MASK;
        match c.user_data >> OP_SHIFT {
            OP_WAKER => {
                self.waker_posted = c.more();
                // Taking the commands drains the wake-up too.
                self.commands()?;
                if !self.waker_posted && !self.core.stopping() {
                    self.post_waker()?;
                }
            }
            OP_ACCEPT => self.accepted(c)?,
            OP_ENGINE_CANCEL => {}
            op => {
                self.session_completion(op, token, c)?;
                self.settle(token)?;
            }
        }
        Ok(())
    }

    fn accepted(&mut self, c: Completion) -> io::Result<()> {
        self.accept_posted = c.more();
        match c.io_result() {
            Ok(fd) => {
                let fd = socket::take_completed_fd(fd as i32);
                self.core.accept_ok();
                // Multishot accept returns no address. A connection reset
                // before we ask has none either; it still gets its session
                // (which ends at once with PeerReset), as on epoll.
                let peer = socket::peer_addr(&fd).unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                if !self.core.stopping() {
                    self.serve_accepted(fd, peer)?;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.multishot_accept => {
                tracing::info!("multishot accept unsupported: accepting single-shot");
                self.multishot_accept = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) if socket::is_resource_exhausted(&e) => {
                // Sheds the backlog with plain accepts (the listener is
                // non-blocking). A posted accept would fail again at once,
                // connection or not, so it is posted again only after the
                // backoff: waiting clients are shed every ACCEPT_BACKOFF.
                let until = self.core.accept_shortage(&e);
                self.accept_paused_until = Some(until.unwrap_or_else(|| self.core.now.after(ACCEPT_BACKOFF)));
            }
            Err(e) if socket::is_transient_accept_error(&e) => {
                self.core.accept_error(&e);
            }
            Err(e) => {
                self.core.accept_error(&e);
                tracing::error!(worker = self.core.w.index, error = %e, "accept failed");
            }
        }
        if !self.accept_posted {
            self.post_accept()?;
        }
        Ok(())
    }

    /// Makes the posted receive match whether the session wants input:
    /// posts one when input is wanted, cancels it when not.
    fn sync_recv(&mut self, token: u64) -> io::Result<()> {
        let Some((_, slot)) = self.core.slot(token) else {
            return Ok(());
        };
        let io = &mut slot.io;
        if io.posted.is_closing() || io.recv_cancel_posted {
            return Ok(());
        }
        let wanted = slot.conn.wants_input();
        if wanted && !io.recv_posted {
            let target = user_data(OP_RECV, token);
            let cap = self.multishot_recv.then_some(RECV_CAP);
            self.ring.recv(io.file(), cap, target)?;
            io.recv_posted = true;
            io.posted.posted();
        } else if !wanted && io.recv_posted && slot.conn.is_open() {
            let target = user_data(OP_RECV, token);
            self.ring.cancel(target, user_data(OP_RECV_CANCEL, token))?;
            io.recv_cancel_posted = true;
            io.posted.posted();
        }
        Ok(())
    }

    fn session_completion(&mut self, op: u64, token: u64, c: Completion) -> io::Result<()> {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            // Every operation is counted in its slot, which outlives it.
            self.unexpected(op, token, c, "no session has this token");
            return Ok(());
        };
        if !c.more() {
            slot.io.posted.completed();
        }
        match op {
            OP_RECV => {
                slot.io.recv_posted = c.more();
                let result = match c.io_result() {
                    Ok(0) => Ok(0),
                    Ok(n) if c.buffer_count() > 0 => {
                        stats.read(n);
                        // A bundle's bytes span several buffers.
                        for bytes in self.ring.buffers(&c) {
                            slot.conn.received(bytes, cx);
                        }
                        Ok(n)
                    }
                    Ok(_) => Err(io::Error::other("receive completion without a buffer")),
                    Err(e) => Err(e),
                };
                // Every buffer a completion names goes back to the ring.
                self.ring.recycle(&c);
                // A receive that ended is posted again by settle (sync_recv)
                // if input is still wanted.
                match result {
                    Ok(0) => {
                        stats.read_attempt();
                        slot.conn.eof();
                    }
                    Ok(_) => {}
                    Err(e) if is_not_now(&e) => {
                        // The buffer ring ran dry, or the kernel said "not
                        // now" (rule 7): posted again below.
                        stats.uring_retry();
                    }
                    Err(e) => match e.raw_os_error() {
                        // Cancelled (input paused, or closing).
                        Some(libc::ECANCELED) => {}
                        Some(libc::EINVAL) if self.multishot_recv => {
                            tracing::info!(
                                "capped multishot receive unsupported (needs Linux 6.17): receiving single-shot"
                            );
                            self.multishot_recv = false;
                        }
                        _ => {
                            stats.read_attempt();
                            slot.conn.failed(io_close_reason(e));
                        }
                    },
                }
            }
            OP_RECV_CANCEL => slot.io.recv_cancel_posted = false,
            OP_SEND => {
                let Some(mut op) = slot.io.sending.take().and_then(|key| self.ring.take_send(key)) else {
                    self.unexpected(op, token, c, "the session has no send in flight");
                    return Ok(());
                };
                let offered = op.offered();
                let sent = match c.io_result() {
                    Ok(n) => {
                        stats.wrote(n);
                        n
                    }
                    Err(e) if is_not_now(&e) => {
                        // Rule 7: the same bytes go again, after a pause.
                        stats.write_attempt();
                        stats.uring_retry();
                        self.ring.delay(user_data(OP_SEND_RETRY, token))?;
                        slot.io.send_paused = true;
                        slot.io.posted.posted();
                        0
                    }
                    Err(e) => {
                        stats.write_attempt();
                        if e.raw_os_error() != Some(libc::ECANCELED) {
                            slot.conn.failed(io_close_reason(e));
                        }
                        0
                    }
                };
                slot.conn.send_completed(&mut op.bufs, op.offset, sent, cx);
                self.spare_sends.push(op);
                if sent < offered && slot.conn.has_unsent() {
                    // The kernel took less than it was offered: the socket
                    // is full and the next send waits for room. Note the
                    // peer's progress for the stall timeout, which that
                    // send's completion may be long in coming to show (a
                    // send that took everything costs no system call).
                    slot.conn.send_blocked(socket::bytes_acked(&slot.io.fd).ok());
                }
            }
            OP_SEND_RETRY => slot.io.send_paused = false,
            OP_CONNECT => match c.io_result() {
                Ok(_) => {
                    slot.conn.connected(cx);
                    stats.connected();
                }
                Err(e) => slot.conn.failed(CloseReason::ConnectFailed(e)),
            },
            OP_CANCEL => {}
            _ => self.unexpected(op, token, c, "unknown operation"),
        }
        Ok(())
    }

    /// A completion the engine cannot place: the kernel's completions are
    /// input, so it is logged and counted (and stops a debug build), and
    /// the worker goes on serving its other sessions.
    #[cold]
    fn unexpected(&self, op: u64, token: u64, c: Completion, why: &str) {
        self.core.w.stats.uring_unexpected();
        tracing::error!(
            worker = self.core.w.index,
            op,
            token,
            result = c.result,
            why,
            "io_uring completion dropped"
        );
        debug_assert!(
            false,
            "io_uring completion dropped: {why} (op {op}, token {token})"
        );
    }
}

impl<H: Handler> Driver<H> for Loop<H> {
    type Io = Sock;

    fn core(&mut self) -> &mut Core<H, Sock> {
        &mut self.core
    }

    /// Registers an established session; settling starts its receive.
    fn open_accepted(&mut self, conn: Conn<H>, fd: OwnedFd) -> io::Result<()> {
        let slot = self.ring.attach(fd.as_raw_fd())?;
        let token = self.core.insert(conn, Sock::new(fd, slot));
        let (cx, slot) = self.core.slot(token).expect("just inserted");
        slot.conn.start(cx);
        self.settle(token)
    }

    fn connect(&mut self, addr: SocketAddr, handler: H) -> io::Result<()> {
        let Some((conn, fd)) = self.core.outbound(addr, handler, socket::stream_for) else {
            return Ok(());
        };
        let slot = self.ring.attach(fd.as_raw_fd())?;
        let token = self.core.insert(conn, Sock::new(fd, slot));
        let (_, slot) = self.core.slot(token).expect("just inserted");
        self.ring
            .connect(slot.io.file(), &addr, user_data(OP_CONNECT, token))?;
        slot.io.posted.posted();
        self.settle(token)
    }

    fn settle(&mut self, token: u64) -> io::Result<()> {
        self.settle_after_last(token)
    }

    fn bytes_acked(io: &Sock) -> Option<u64> {
        socket::bytes_acked(&io.fd).ok()
    }

    fn close_listener(&mut self, listener: OwnedFd) -> io::Result<()> {
        if self.accept_posted {
            self.ring
                .cancel(user_data(OP_ACCEPT, 0), user_data(OP_ENGINE_CANCEL, 0))?;
        }
        // The posted accept holds its own reference until cancelled.
        drop(listener);
        Ok(())
    }
}

impl<H: Handler> CloseAfterLast<H> for Loop<H> {
    fn posted(io: &mut Sock) -> &mut Posted {
        &mut io.posted
    }

    /// Posts the queued buffers as one gather send, unless one is in flight.
    fn flush(&mut self, token: u64) -> io::Result<()> {
        let Some((_, slot)) = self.core.slot(token) else {
            return Ok(());
        };
        if slot.io.sending.is_some()
            || slot.io.send_paused
            || !slot.conn.can_lend()
            || slot.io.posted.is_closing()
        {
            return Ok(());
        }
        let mut op = self.spare_sends.pop().unwrap_or_else(SendOp::new);
        op.offset = slot.conn.lend_unsent(&mut op.bufs, SendOp::MAX_IOV);
        let key = self.ring.send(slot.io.file(), op, user_data(OP_SEND, token))?;
        slot.io.sending = Some(key);
        slot.io.posted.posted();
        Ok(())
    }

    fn shutdown_write(io: &Sock) -> io::Result<()> {
        socket::shutdown_write(&io.fd)
    }

    fn sync_input(&mut self, token: u64) -> io::Result<()> {
        self.sync_recv(token)
    }

    /// Rule 3: cancels what is in flight (the cancel completes too).
    fn cancel_all(&mut self, token: u64) -> io::Result<()> {
        let Some((_, slot)) = self.core.slot(token) else {
            return Ok(());
        };
        self.ring
            .cancel_file(slot.io.file(), user_data(OP_CANCEL, token))?;
        slot.io.posted.posted();
        Ok(())
    }

    fn release(&mut self, io: Sock, rst: bool) -> io::Result<()> {
        if rst {
            let _ = socket::set_linger_zero(&io.fd);
        }
        // The socket closes when both the table's reference and the
        // descriptor are gone.
        let detached = self.ring.detach(io.slot);
        drop(io.fd);
        detached
    }
}

impl Sock {
    fn new(fd: OwnedFd, slot: FileSlot) -> Sock {
        Sock {
            fd,
            slot,
            recv_posted: false,
            recv_cancel_posted: false,
            sending: None,
            send_paused: false,
            posted: Posted::default(),
        }
    }

    /// The socket as the ring's operations name it.
    fn file(&self) -> FileRef {
        FileRef::new(self.fd.as_raw_fd(), self.slot)
    }
}
