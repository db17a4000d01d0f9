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

use std::io::{self, IoSlice};
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::session::{CloseReason, Conn, Context, Handler, SessionId, Step, Table, Tick, Timers, RESERVED};
use crate::sys::epoll::{Epoll, Event, Interest};
use crate::sys::socket;

use super::{Command, Worker};

const WAKER: u64 = RESERVED;
const LISTENER: u64 = RESERVED + 1;
/// The shared receive buffer: the most one read takes.
const SCRATCH: usize = 64 * 1024;
/// Most buffers gathered into one `sendmsg`.
const MAX_IOV: usize = 64;
/// Most reads for one session per loop turn before others get a turn.
const READ_BUDGET: usize = 16;
/// Events taken per wait.
const EVENTS: usize = 1024;
/// How long to pause accepting when out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A session on this engine: its state machine and its socket.
struct Slot<H> {
    conn: Conn<H>,
    fd: OwnedFd,
    /// The last send found the socket full: wait for a write report.
    write_blocked: bool,
    /// Queued bytes last reported to the stats.
    queued_seen: usize,
}

struct Loop<H> {
    w: Worker<H>,
    epoll: Epoll,
    sessions: Table<Slot<H>>,
    timers: Timers,
    scratch: Box<[u8]>,
    now: Tick,
    /// Sessions whose read budget ran out: read more next turn.
    unfinished: Vec<u64>,
    /// Accepting resumes at this time (after EMFILE and the like).
    accept_paused_until: Option<Tick>,
    /// Stopping: every session must be gone by this time.
    stop_deadline: Option<Tick>,
    forced: bool,
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
        Ok(epoll) => {
            let _ = w.ready.send(Ok(()));
            epoll
        }
        Err(e) => {
            let _ = w
                .ready
                .send(Err(io::Error::new(e.kind(), format!("epoll engine setup: {e}"))));
            return Err(e);
        }
    };
    let now = w.now();
    let mut lp = Loop {
        w,
        epoll,
        sessions: Table::default(),
        timers: Timers::default(),
        scratch: vec![0; SCRATCH].into_boxed_slice(),
        now,
        unfinished: Vec::new(),
        accept_paused_until: None,
        stop_deadline: None,
        forced: false,
    };
    lp.run()
}

impl<H: Handler> Loop<H> {
    fn run(&mut self) -> io::Result<()> {
        loop {
            let n = self.epoll.wait(self.timeout())?;
            self.now = self.w.now();
            let unfinished = std::mem::take(&mut self.unfinished);
            for token in unfinished {
                self.readable(token, false);
                self.settle(token);
            }
            for i in 0..n {
                let ev = self.epoll.event(i);
                match ev.token {
                    WAKER => self.commands()?,
                    LISTENER => self.accept(),
                    token => self.session_event(token, ev),
                }
            }
            self.expire();
            if self.stop_deadline.is_some() && self.sessions.is_empty() {
                return Ok(());
            }
        }
    }

    /// How long the next wait may block.
    fn timeout(&self) -> Option<Duration> {
        if !self.unfinished.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = [
            self.timers.next(),
            self.accept_paused_until,
            self.stop_deadline.filter(|_| !self.forced),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(self.w.now().until(next))
    }

    fn cx(&self, token: u64) -> Context<'_> {
        Context {
            id: SessionId::new(self.w.index, token),
            now: self.now,
            limits: &self.w.limits,
        }
    }

    fn commands(&mut self) -> io::Result<()> {
        for cmd in self.w.inbox.take() {
            match cmd {
                Command::Connect { addr, make } => self.connect(addr, make()),
                Command::Stop { grace } => self.stop(grace),
            }
        }
        Ok(())
    }

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.w.listener else { return };
            let (fd, peer) = match socket::accept(listener) {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if socket::is_transient_accept_error(&e) => continue,
                Err(e) if socket::is_resource_exhausted(&e) => {
                    tracing::warn!(worker = self.w.index, error = %e, "accept paused");
                    self.accept_paused_until = Some(self.now.after(ACCEPT_BACKOFF));
                    return;
                }
                Err(e) => {
                    tracing::error!(worker = self.w.index, error = %e, "accept failed");
                    return;
                }
            };
            if !self.w.gate.try_acquire() {
                self.w.stats.rejected();
                tracing::debug!(%peer, "session limit reached: connection refused");
                let _ = socket::set_linger_zero(&fd);
                continue;
            }
            let _ = socket::set_nodelay(&fd);
            let factory = self.w.factory.as_ref().expect("a listening worker has a factory");
            let conn = Conn::accepted(peer, factory(), self.now);
            self.w.stats.accepted();
            self.open(conn, fd, true);
        }
    }

    fn connect(&mut self, addr: std::net::SocketAddr, handler: H) {
        if !self.w.gate.try_acquire() {
            let err = io::Error::new(io::ErrorKind::OutOfMemory, "session limit reached");
            self.w.stats.rejected();
            return Conn::accepted(addr, handler, self.now).finish(CloseReason::ConnectFailed(err));
        }
        self.w.stats.opened_outbound();
        let conn = Conn::connecting(addr, handler, self.cx(0));
        match socket::connect(&addr) {
            Ok((fd, in_progress)) => self.open(conn, fd, !in_progress),
            Err(e) => self.finish(conn, CloseReason::ConnectFailed(e)),
        }
    }

    /// Registers a new session; `established` says whether it is open now
    /// (accepted, or connected at once) rather than connecting.
    fn open(&mut self, conn: Conn<H>, fd: OwnedFd, established: bool) {
        let token = self.sessions.insert(Slot {
            conn,
            fd,
            write_blocked: false,
            queued_seen: 0,
        });
        let slot = self.sessions.get_mut(token).expect("just inserted");
        if let Err(e) = self.epoll.add(&slot.fd, token, Interest::READ_WRITE_EDGE) {
            let slot = self.sessions.remove(token).expect("just inserted");
            let reason = if slot.conn.is_connecting() {
                CloseReason::ConnectFailed(e)
            } else {
                CloseReason::Io(e)
            };
            return self.finish(slot.conn, reason);
        }
        if established {
            let cx = Context {
                id: SessionId::new(self.w.index, token),
                now: self.now,
                limits: &self.w.limits,
            };
            let slot = self.sessions.get_mut(token).expect("just inserted");
            if slot.conn.is_connecting() {
                slot.conn.connected(cx);
                self.w.stats.connected();
            } else {
                slot.conn.start(cx);
            }
        }
        self.settle(token);
    }

    fn session_event(&mut self, token: u64, ev: Event) {
        let cx = Context {
            id: SessionId::new(self.w.index, token),
            now: self.now,
            limits: &self.w.limits,
        };
        let Some(slot) = self.sessions.get_mut(token) else {
            return;
        };
        if slot.conn.is_connecting() {
            if !(ev.is_writable() || ev.is_error()) {
                return;
            }
            match socket::take_error(&slot.fd) {
                Ok(None) if !ev.is_error() => {
                    slot.conn.connected(cx);
                    self.w.stats.connected();
                }
                Ok(Some(e)) | Err(e) => slot.conn.failed(CloseReason::ConnectFailed(e)),
                Ok(None) => slot
                    .conn
                    .failed(CloseReason::ConnectFailed(io::Error::other("connect failed"))),
            }
        }
        if ev.is_writable() {
            slot.write_blocked = false;
        }
        if ev.is_readable() {
            self.readable(token, ev.is_read_closed());
        }
        self.settle(token);
    }

    /// Reads until the socket is drained (or the budget is spent), handing
    /// the bytes to the session.
    fn readable(&mut self, token: u64, read_closed: bool) {
        let cx = Context {
            id: SessionId::new(self.w.index, token),
            now: self.now,
            limits: &self.w.limits,
        };
        let Some(Slot { conn, fd, .. }) = self.sessions.get_mut(token) else {
            return;
        };
        if conn.is_connecting() {
            return;
        }
        for _ in 0..READ_BUDGET {
            let (res, asked, in_place) = match conn.read_target(SCRATCH, cx.limits) {
                Some(buf) if !buf.is_empty() => (socket::read(fd, buf), buf.len(), true),
                _ => (socket::read(fd, &mut self.scratch), SCRATCH, false),
            };
            match res {
                Ok(0) => {
                    self.w.stats.read_attempt();
                    conn.eof();
                    return;
                }
                Ok(n) => {
                    self.w.stats.read(n);
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.w.stats.read_attempt();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.w.stats.read_attempt();
                    conn.failed(if socket::is_reset(&e) {
                        CloseReason::PeerReset
                    } else {
                        CloseReason::Io(e)
                    });
                    return;
                }
            }
        }
        self.unfinished.push(token);
    }

    /// Writes queued bytes until the queue is empty or the socket is full.
    fn flush(&mut self, token: u64) {
        let cx = Context {
            id: SessionId::new(self.w.index, token),
            now: self.now,
            limits: &self.w.limits,
        };
        let Some(slot) = self.sessions.get_mut(token) else {
            return;
        };
        while slot.conn.has_unsent() && !slot.write_blocked {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let count = slot.conn.send_slices(&mut iov);
            match socket::send_vectored(&slot.fd, &iov[..count]) {
                Ok(n) => {
                    self.w.stats.wrote(n);
                    slot.conn.sent(n, cx);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.w.stats.write_attempt();
                    slot.write_blocked = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.w.stats.write_attempt();
                    slot.conn.failed(if socket::is_reset(&e) {
                        CloseReason::PeerReset
                    } else {
                        CloseReason::Io(e)
                    });
                }
            }
        }
    }

    /// Brings a session up to date after anything touched it: flush, act
    /// on its next step, account its queue, re-arm its deadline.
    fn settle(&mut self, token: u64) {
        loop {
            self.flush(token);
            let cx = Context {
                id: SessionId::new(self.w.index, token),
                now: self.now,
                limits: &self.w.limits,
            };
            let Some(slot) = self.sessions.get_mut(token) else {
                return;
            };
            match slot.conn.step(cx) {
                Step::Wait => break,
                Step::Fin => {
                    if let Err(e) = socket::shutdown_write(&slot.fd) {
                        slot.conn.failed(if socket::is_reset(&e) {
                            CloseReason::PeerReset
                        } else {
                            CloseReason::Io(e)
                        });
                    }
                }
                Step::Close { reason, rst } => {
                    let slot = self.sessions.remove(token).expect("present above");
                    if rst {
                        let _ = socket::set_linger_zero(&slot.fd);
                    }
                    self.w.stats.queued_changed(slot.queued_seen, 0);
                    drop(slot.fd); // closing also removes it from epoll
                    return self.finish(slot.conn, reason);
                }
            }
        }
        let slot = self.sessions.get_mut(token).expect("present above");
        self.w.stats.queued_changed(slot.queued_seen, slot.conn.queued());
        slot.queued_seen = slot.conn.queued();
        slot.conn.arm(token, &mut self.timers, &self.w.limits);
    }

    /// Ends a registered or never-registered session: counts it, frees its
    /// place, tells its handler.
    fn finish(&mut self, conn: Conn<H>, reason: CloseReason) {
        tracing::trace!(peer = %conn.peer_addr(), %reason, "session closed");
        self.w.stats.closed(reason.kind());
        self.w.gate.release();
        conn.finish(reason);
    }

    /// Runs what is due: session deadlines, the accept pause, the stop
    /// deadline.
    fn expire(&mut self) {
        if self.accept_paused_until.is_some_and(|t| t <= self.now) {
            self.accept_paused_until = None;
            self.accept();
        }
        if let Some(deadline) = self.stop_deadline {
            if !self.forced && deadline <= self.now {
                self.forced = true;
                for token in self.sessions.tokens() {
                    if let Some(slot) = self.sessions.get_mut(token) {
                        slot.conn.force_close();
                    }
                    self.settle(token);
                }
            }
        }
        // Take what is due first, so a deadline set during this pass waits
        // for the next turn instead of looping here.
        let mut due = Vec::new();
        while let Some(entry) = self.timers.pop_due(self.now) {
            due.push(entry);
        }
        for (at, token) in due {
            let cx = Context {
                id: SessionId::new(self.w.index, token),
                now: self.now,
                limits: &self.w.limits,
            };
            if let Some(slot) = self.sessions.get_mut(token) {
                slot.conn.wake(at, cx);
                self.settle(token);
            }
        }
    }

    /// Stops accepting and starts closing every session gracefully.
    fn stop(&mut self, grace: Duration) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.stop_deadline = Some(self.now.after(grace));
        if let Some(l) = self.w.listener.take() {
            let _ = self.epoll.delete(&l);
        }
        for token in self.sessions.tokens() {
            if let Some(slot) = self.sessions.get_mut(token) {
                slot.conn.shutdown();
            }
            self.settle(token);
        }
    }
}
