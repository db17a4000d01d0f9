//! The readiness engine: epoll, edge-triggered — the seed's WSAEventSelect
//! loop (wait for any → which events → act) without its 64-socket limit.
//!
//! Each session's socket is registered once for read, write and peer-close
//! with the session's token. On a read report the engine reads until the
//! socket is drained, into the worker's one scratch buffer unless a partial
//! message is waiting in the session's own buffer, so idle sessions hold no
//! receive memory. On a write report it writes the queued buffers with
//! gather `sendmsg` until the queue is empty or the socket is full, then
//! waits for the next write report (the seed's FD_WRITE) — never spinning.
//!
//! A session that does not want input (paused by its handler, or its send
//! queue over the high watermark) is not read: the engine remembers that
//! it stopped and reads again when input is wanted, since an edge-
//! triggered socket left undrained reports no new edge.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::session::{CloseReason, Conn, Handler, Tick, RESERVED};
use crate::sys::epoll::{Epoll, Event, Interest};
use crate::sys::socket;

use super::core::{Core, Slot};
use super::driver::{CloseAtOnce, Driver};
use super::readiness::flush_gather;
use super::sockets::io_close_reason;
use super::{EngineKind, Worker};

const WAKER: u64 = RESERVED;
const LISTENER: u64 = RESERVED + 1;
/// The shared receive buffer: the most one read takes.
const SCRATCH: usize = 64 * 1024;
/// Most reads for one session per loop turn before others get a turn.
const READ_BUDGET: usize = 16;
/// Events taken per wait.
const EVENTS: usize = 1024;

/// This engine's per-session state: the socket, whether it is full, and
/// whether reading stopped because input was not wanted.
struct Sock {
    fd: OwnedFd,
    /// The last send found the socket full: wait for a write report.
    write_blocked: bool,
    /// Reading stopped with data possibly left: read when input is wanted.
    read_stalled: bool,
}

struct Loop<H> {
    core: Core<H, Sock>,
    epoll: Epoll,
    scratch: Box<[u8]>,
    /// Sessions whose read budget ran out: read more next turn.
    unfinished: Vec<u64>,
    /// Accepting resumes at this time (after EMFILE and the like).
    accept_paused_until: Option<Tick>,
}

/// Runs the worker until it is stopped.
pub(crate) fn run<H: Handler>(w: Worker<H>) -> io::Result<()> {
    let setup = || -> io::Result<Epoll> {
        let epoll = Epoll::new(EVENTS)?;
        epoll.add(w.inbox.waker(), WAKER, Interest::READ_EDGE)?;
        if let Some(l) = &w.listener {
            epoll.add(l, LISTENER, Interest::READ_EDGE)?;
        }
        Ok(epoll)
    };
    let epoll = match setup() {
        Ok(epoll) => epoll,
        Err(e) => return w.report_setup(EngineKind::Epoll, Err(e)),
    };
    // Ready only once the loop holds everything it runs with (the spare
    // descriptor included).
    let mut lp = Loop {
        core: Core::new(w),
        epoll,
        scratch: vec![0; SCRATCH].into_boxed_slice(),
        unfinished: Vec::new(),
        accept_paused_until: None,
    };
    lp.core.w.report_setup(EngineKind::Epoll, Ok(()))?;
    lp.run()
}

/// Applies what `ev` says of the socket to `slot` (writable again, failed
/// while not reading); whether to read it: `Some(read_closed)`.
fn slot_io_event<H: Handler>(slot: &mut Slot<H, Sock>, ev: Event) -> Option<bool> {
    if ev.is_writable() {
        slot.io.write_blocked = false;
    }
    if ev.is_error() && !slot.conn.wants_input() && !slot.conn.is_connecting() {
        // Not reading now, but a failed socket ends the session.
        if let Ok(Some(e)) | Err(e) = socket::take_error(&slot.io.fd) {
            slot.conn.failed(io_close_reason(e));
        }
    }
    ev.is_readable().then(|| ev.is_read_closed())
}

impl<H: Handler> Loop<H> {
    fn run(&mut self) -> io::Result<()> {
        loop {
            let timeout = match self.unfinished.is_empty() {
                true => self.core.timeout(self.accept_paused_until),
                false => Some(Duration::ZERO),
            };
            let n = self.epoll.wait(timeout)?;
            self.core.tick();
            self.core.w.stats.turn(n);
            for token in std::mem::take(&mut self.unfinished) {
                self.readable(token, false);
                self.settle(token)?;
            }
            for i in 0..n {
                let ev = self.epoll.event(i);
                match ev.token {
                    WAKER => self.commands()?,
                    LISTENER => self.accept()?,
                    token => self.session_event(token, ev)?,
                }
            }
            if self.accept_paused_until.is_some_and(|t| t <= self.core.now) {
                self.accept_paused_until = None;
                self.accept()?;
            }
            self.after_events()?;
            if self.core.finished() {
                return Ok(());
            }
        }
    }

    fn accept(&mut self) -> io::Result<()> {
        if self.accept_paused_until.is_some() {
            return Ok(());
        }
        loop {
            let Some(listener) = &self.core.w.listener else {
                return Ok(());
            };
            let (fd, peer) = match socket::accept(listener) {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if socket::is_transient_accept_error(&e) => {
                    self.core.accept_error(&e);
                    continue;
                }
                Err(e) if socket::is_resource_exhausted(&e) => {
                    // Shed: the backlog is empty; the next connection
                    // raises a new edge. Else wait and try again.
                    self.accept_paused_until = self.core.accept_shortage(&e);
                    return Ok(());
                }
                Err(e) => {
                    self.core.accept_error(&e);
                    tracing::error!(worker = self.core.w.index, error = %e, "accept failed");
                    return Ok(());
                }
            };
            self.core.accept_ok();
            self.serve_accepted(fd, peer)?;
        }
    }

    /// Registers a new session. An accepted one starts now; an outbound
    /// one starts on its first write report (connect completed).
    fn open(&mut self, conn: Conn<H>, fd: OwnedFd) -> io::Result<()> {
        let token = self.core.insert(
            conn,
            Sock {
                fd,
                write_blocked: false,
                read_stalled: false,
            },
        );
        let (cx, slot) = self.core.slot(token).expect("just inserted");
        if let Err(e) = self.epoll.add(&slot.io.fd, token, Interest::READ_WRITE_EDGE) {
            let slot = self.core.remove(token).expect("just inserted");
            let reason = match slot.conn.is_connecting() {
                true => CloseReason::ConnectFailed(e),
                false => CloseReason::Io(e),
            };
            self.core.finish(Some(token), slot.conn, reason);
            return Ok(());
        }
        if !slot.conn.is_connecting() {
            slot.conn.start(cx);
        }
        self.settle(token)
    }

    fn session_event(&mut self, token: u64, ev: Event) -> io::Result<()> {
        // The slot alone: the session's context is made only where needed.
        let Some(slot) = self.core.sessions.get_mut(token) else {
            return Ok(());
        };
        if slot.conn.is_connecting() {
            if !(ev.is_writable() || ev.is_error()) {
                return Ok(());
            }
            self.connect_done(token, ev.is_error());
            let Some(slot) = self.core.sessions.get_mut(token) else {
                return Ok(());
            };
            let readable = slot_io_event(slot, ev);
            return self.session_ready(token, readable);
        }
        let readable = slot_io_event(slot, ev);
        self.session_ready(token, readable)
    }

    /// What an event tells of an open (or closing) session: its socket
    /// writable again, failed, readable.
    fn session_ready(&mut self, token: u64, readable: Option<bool>) -> io::Result<()> {
        if let Some(read_closed) = readable {
            self.readable(token, read_closed);
        }
        self.settle(token)
    }

    /// An outbound connect completed (or failed: `error`).
    #[cold]
    #[inline(never)]
    fn connect_done(&mut self, token: u64, error: bool) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        match socket::take_error(&slot.io.fd) {
            Ok(None) if !error => {
                slot.conn.connected(cx);
                stats.connected();
            }
            Ok(Some(e)) | Err(e) => slot.conn.failed(CloseReason::ConnectFailed(e)),
            Ok(None) => slot
                .conn
                .failed(CloseReason::ConnectFailed(io::Error::other("connect failed"))),
        }
    }

    /// Reads until the socket is drained (or the budget is spent, or the
    /// session stops wanting input), handing the bytes to the session.
    fn readable(&mut self, token: u64, read_closed: bool) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        let conn = &mut slot.conn;
        let Sock { fd, read_stalled, .. } = &mut slot.io;
        if conn.is_connecting() {
            return;
        }
        // Replies copied out while handling this input wait in the cork for
        // this session's flush (settle follows every read).
        cx.hub.cork.borrow_mut().open_for(token);
        for _ in 0..READ_BUDGET {
            if !conn.wants_input() {
                *read_stalled = true;
                return;
            }
            let (res, asked, in_place) = match conn.read_target(SCRATCH, cx.limits) {
                Some(buf) if !buf.is_empty() => (socket::read(fd, buf), buf.len(), true),
                _ => (socket::read(fd, &mut self.scratch), SCRATCH, false),
            };
            match res {
                Ok(0) => {
                    stats.read_attempt();
                    return conn.eof();
                }
                Ok(n) => {
                    stats.read(n);
                    if in_place {
                        conn.received_in_place(n, cx);
                    } else {
                        conn.received(&self.scratch[..n], cx);
                    }
                    // A short read drained the socket: any later arrival is
                    // a new edge. Not so if FIN or an error was reported,
                    // which must be read to be seen.
                    if n < asked && !read_closed {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return stats.read_attempt(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    stats.read_attempt();
                    return conn.failed(io_close_reason(e));
                }
            }
        }
        self.unfinished.push(token);
    }
}

impl<H: Handler> Driver<H> for Loop<H> {
    type Io = Sock;

    fn core(&mut self) -> &mut Core<H, Sock> {
        &mut self.core
    }

    fn open_accepted(&mut self, conn: Conn<H>, fd: OwnedFd) -> io::Result<()> {
        self.open(conn, fd)
    }

    fn connect(&mut self, addr: SocketAddr, handler: H) -> io::Result<()> {
        let connect = |addr: &SocketAddr| socket::connect(addr).map(|(fd, _in_progress)| fd);
        match self.core.outbound(addr, handler, connect) {
            Some((conn, fd)) => self.open(conn, fd),
            None => Ok(()),
        }
    }

    fn settle(&mut self, token: u64) -> io::Result<()> {
        self.settle_at_once(token)
    }

    fn bytes_acked(io: &Sock) -> Option<u64> {
        socket::bytes_acked(&io.fd).ok()
    }

    fn close_listener(&mut self, listener: OwnedFd) -> io::Result<()> {
        // Closing it would remove it from epoll too; say so explicitly.
        let _ = self.epoll.delete(&listener);
        Ok(())
    }
}

impl<H: Handler> CloseAtOnce<H> for Loop<H> {
    /// Writes queued bytes until the queue is empty or the socket is full.
    fn flush(&mut self, token: u64) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        let Sock {
            fd, write_blocked, ..
        } = &mut slot.io;
        flush_gather(
            &mut slot.conn,
            write_blocked,
            stats,
            cx,
            |iov| socket::send_vectored(fd, iov),
            // The socket is full: note the peer's progress for the stall
            // timeout, which the next write report may be long in coming
            // to show.
            |conn| conn.send_blocked(socket::bytes_acked(fd).ok()),
        );
    }

    fn shutdown_write(io: &Sock) -> io::Result<()> {
        socket::shutdown_write(&io.fd)
    }

    fn release(&mut self, io: Sock, rst: bool) {
        if rst {
            let _ = socket::set_linger_zero(&io.fd);
        }
        drop(io); // closing also removes it from epoll
    }

    fn read_stalled(io: &mut Sock) -> &mut bool {
        &mut io.read_stalled
    }

    fn read_input(&mut self, token: u64) {
        // No edge will come for what is already there: read to the end.
        self.readable(token, true);
    }
}
