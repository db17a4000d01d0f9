//! What every engine's loop keeps besides its I/O: the session table, the
//! deadlines, the stop state, and the bookkeeping done when a session
//! opens, settles or ends. Engines add only how bytes move.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::session::{CloseKind, CloseReason, Conn, Context, Handler, SessionId, Step, Table, Tick, Timers};

use super::{AcceptErrorKind, Command, Remote, Worker, WorkerStats};
use crate::session::{SendError, SessionId as Id};
use crate::sys::{socket, OwnedSocket};
use crate::topic::{Hub, Pending};
use bytes::Bytes;

/// The close reason for a failed socket call: a reset, or any other error.
pub(crate) fn io_close_reason(e: io::Error) -> CloseReason {
    if socket::is_reset(&e) {
        CloseReason::PeerReset
    } else {
        CloseReason::Io(e)
    }
}

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

/// The control side of every engine's loop, the same on each: commands
/// from other threads, accepted connections (served here or handed to
/// another worker), deadlines, and stop. An engine supplies how a socket
/// becomes a session, how a session is settled, and how its listener stops
/// being watched.
pub(crate) trait Driver<H: Handler> {
    /// The engine's per-socket state.
    type Io;

    fn core(&mut self) -> &mut Core<H, Self::Io>;

    /// Registers an accepted (or handed-over) connection's session and
    /// starts it.
    fn open_accepted(&mut self, conn: Conn<H>, socket: OwnedSocket) -> io::Result<()>;

    /// Opens an outbound connection whose session `handler` serves.
    fn connect(&mut self, addr: SocketAddr, handler: H) -> io::Result<()>;

    /// Does what session `token` needs now: flush, FIN, close, re-arm.
    fn settle(&mut self, token: u64) -> io::Result<()>;

    /// Stops watching the listener, which the worker no longer holds.
    fn close_listener(&mut self, listener: OwnedSocket) -> io::Result<()>;

    /// Session `token`'s stall check is due ([`Conn::stall_check_due`]):
    /// an engine that writes again only after a writable report tries a
    /// write now (bytes the kernel takes are progress: the peer made room).
    fn before_stall_check(&mut self, _token: u64) {}

    /// How many bytes the peer of this socket has acknowledged, where the
    /// OS tells (see [`Conn::wake`]): the stall timeout's measure of
    /// progress. `None`: the engine's own view of progress decides.
    fn bytes_acked(_io: &Self::Io) -> Option<u64> {
        None
    }

    /// Runs what other threads asked for, in the order asked.
    fn commands(&mut self) -> io::Result<()> {
        for cmd in self.core().w.inbox.take() {
            match cmd {
                Command::Connect { addr, make } => self.connect(addr, make())?,
                Command::Adopt { socket, peer } => {
                    if let Some((conn, socket)) = self.core().adopted(socket, peer) {
                        self.open_accepted(conn, socket)?;
                    }
                }
                Command::Remote(Remote::Stop { grace }) => self.stop(grace)?,
                Command::Remote(Remote::Send { id, buf }) => {
                    if let Some((cx, slot)) = self.core().session(id) {
                        let _ = slot.conn.deliver(buf, cx);
                        self.settle(id.token())?;
                    }
                }
                Command::Remote(Remote::Close { id }) => {
                    if let Some((_, slot)) = self.core().session(id) {
                        slot.conn.close_from_outside(CloseReason::LocalClose);
                        self.settle(id.token())?;
                    }
                }
                Command::Remote(Remote::Publish { topic, buf }) => self.fan_out(&topic, &buf, None)?,
            }
        }
        self.uncork()
    }

    /// Fans out the publishes this worker's sessions made during their
    /// callbacks, in the order made: to the other workers (one command
    /// each) and to the subscribers here. Publishes made meanwhile (by
    /// handlers the deliveries woke) are fanned out in the same call.
    fn deliver_published(&mut self) -> io::Result<()> {
        let core = self.core();
        core.w.stats.delivered(core.hub.own_deliveries.replace(0));
        let (received, sent) = core.hub.messages.replace((0, 0));
        core.w.stats.messages(received, sent);
        loop {
            let batch = std::mem::take(&mut *self.core().hub.pending.borrow_mut());
            if batch.is_empty() && self.core().corked.is_empty() {
                return Ok(());
            }
            for p in batch {
                self.core().published(&p);
                self.fan_out(&p.topic, &p.buf, p.skip)?;
            }
            self.uncork()?;
        }
    }

    /// Queues `buf` on every subscriber of `topic` on this worker (but
    /// `skip`) — a clone of the one buffer each. The subscribers are
    /// settled (flushed) once, by [`Driver::uncork`], after every message
    /// of the batch was queued: a subscriber gets all of them with one
    /// gather write. A subscriber whose queue would go over its cap is
    /// closed (`SendQueueFull`, counted for the topic); the others go on.
    fn fan_out(&mut self, topic: &str, buf: &Bytes, skip: Option<u64>) -> io::Result<()> {
        let core = self.core();
        let mut tokens = std::mem::take(&mut core.fan_out);
        let counters = core.hub.topics.borrow().subscribers_into(topic, &mut tokens);
        let mut delivered = 0;
        let mut at_cap = 0;
        for &token in &tokens {
            if Some(token) == skip {
                continue;
            }
            let Some((cx, slot)) = self.core().slot(token) else {
                continue;
            };
            match slot.conn.deliver(buf.clone(), cx) {
                Ok(()) => delivered += 1,
                Err(SendError::QueueFull) => {
                    if let Some(c) = &counters {
                        c.closed_at_cap();
                    }
                    at_cap += 1;
                }
                Err(_) => {}
            }
            if !slot.corked {
                slot.corked = true;
                self.core().corked.push(token);
            }
        }
        if let Some(c) = &counters {
            c.delivered(delivered);
        }
        let core = self.core();
        core.w.stats.delivered(delivered);
        core.w.stats.closed_at_cap(at_cap);
        core.fan_out = tokens;
        Ok(())
    }

    /// Settles every session a fan-out queued messages on, once each.
    fn uncork(&mut self) -> io::Result<()> {
        let mut corked = std::mem::take(&mut self.core().corked);
        for &token in &corked {
            if let Some((_, slot)) = self.core().slot(token) {
                slot.corked = false;
                self.settle(token)?;
            }
        }
        corked.clear();
        self.core().corked = corked;
        Ok(())
    }

    /// A connection was accepted: serves it here or hands it to another
    /// worker (see [`Core::accepted`]).
    fn serve_accepted(&mut self, socket: OwnedSocket, peer: SocketAddr) -> io::Result<()> {
        match self.core().accepted(socket, peer) {
            Some((conn, socket)) => self.open_accepted(conn, socket),
            None => Ok(()),
        }
    }

    /// Settles the sessions whose deadline has come: a stop's deadline
    /// (forced close), then each session's own (timer, idle, linger).
    fn expire(&mut self) -> io::Result<()> {
        for token in self.core().forced_now() {
            self.settle(token)?;
        }
        for (at, token) in self.core().due() {
            if self
                .core()
                .slot(token)
                .is_some_and(|(cx, slot)| slot.conn.stall_check_due(at, cx))
            {
                self.before_stall_check(token);
            }
            if let Some((cx, slot)) = self.core().slot(token) {
                let io = &slot.io;
                slot.conn.wake(at, cx, || Self::bytes_acked(io));
                self.settle(token)?;
            }
        }
        Ok(())
    }

    /// Starts stopping: no new connections; every session flushes and
    /// closes within `grace`.
    fn stop(&mut self, grace: Duration) -> io::Result<()> {
        if let Some(listener) = self.core().w.listener.take() {
            self.close_listener(listener)?;
        }
        for token in self.core().begin_stop(grace) {
            self.settle(token)?;
        }
        Ok(())
    }
}

/// The settle of the engines that close a session's socket as soon as the
/// session is done (epoll and wsa-event, and overlapped, whose socket waits
/// for its own cancellations when dropped): flush, then act on the
/// session's next steps. The completion engines (uring, iocp) close only
/// after the kernel's last completion and settle in their own way.
pub(crate) trait CloseAtOnce<H: Handler>: Driver<H> {
    /// Sends what is queued, as far as the socket takes it now.
    fn flush(&mut self, token: u64);

    /// Sends FIN.
    fn shutdown_write(io: &Self::Io) -> io::Result<()>;

    /// The session is over: stops watching its socket and closes it, with
    /// RST if `rst`.
    fn release(&mut self, io: Self::Io, rst: bool);

    /// The session's flag "reading stopped, with data possibly left,
    /// because input was not wanted".
    fn read_stalled(io: &mut Self::Io) -> &mut bool;

    /// Reads what the socket holds, to the end (or posts the receive):
    /// reading had stopped and input is wanted again.
    fn read_input(&mut self, token: u64);

    /// Brings session `token` up to date after anything touched it:
    /// flush, act on its next step, resume its input if it stopped reading
    /// and wants input again, account its queue, re-arm its deadline.
    fn settle_at_once(&mut self, token: u64) -> io::Result<()> {
        loop {
            self.flush(token);
            let Some((cx, slot, stats, timers)) = self.core().parts(token) else {
                return Ok(());
            };
            match slot.conn.step(cx) {
                Step::Wait => {
                    let stalled = Self::read_stalled(&mut slot.io);
                    if !*stalled || !slot.conn.wants_input() {
                        slot.account(token, stats, timers, cx);
                        return Ok(());
                    }
                    *stalled = false;
                    self.read_input(token);
                }
                Step::Continue => {}
                Step::Admit => self.core().admit_proxied(token),
                Step::Fin => {
                    if let Err(e) = Self::shutdown_write(&slot.io) {
                        slot.conn.failed(io_close_reason(e));
                    }
                }
                Step::Close { reason, rst } => {
                    let slot = self.core().remove(token).expect("present above");
                    self.release(slot.io, rst);
                    self.core().finish(Some(token), slot.conn, reason);
                    return Ok(());
                }
            }
        }
    }
}

/// A session on an engine: its state machine, the engine's per-socket
/// state `S`, and what was last reported to the stats (queued bytes, input
/// paused).
pub(crate) struct Slot<H, S> {
    pub conn: Conn<H>,
    pub io: S,
    queued_seen: u32,
    /// Receive-buffer memory last reported.
    recv_seen: u32,
    paused_seen: bool,
    /// A fan-out queued messages on it; it is settled once they all are.
    corked: bool,
}

impl<H: Handler, S> Slot<H, S> {
    /// After anything touched the session (slot `token`): report its queue
    /// and whether its input is paused, re-arm its deadline.
    #[inline]
    fn account(&mut self, token: u64, stats: &WorkerStats, timers: &mut Timers, cx: Context<'_>) {
        let queued = self.conn.queued() as u32;
        if queued != self.queued_seen {
            stats.queued_changed(self.queued_seen as usize, queued as usize);
            self.queued_seen = queued;
        }
        let recv = self.conn.recv_capacity() as u32;
        if recv != self.recv_seen {
            stats.recv_buffer_changed(self.recv_seen as usize, recv as usize);
            self.recv_seen = recv;
        }
        let paused = self.conn.input_paused();
        if paused != self.paused_seen {
            stats.paused_changed(paused);
            self.paused_seen = paused;
        }
        self.conn.arm(token, timers, cx.limits);
    }
}

/// How long to pause accepting when out of resources and no connection
/// can be shed (no spare descriptor, or out of memory).
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Least time between two warnings of one kind from one worker.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// A warning that a storm could repeat for every connection: said at most
/// once per [`WARN_EVERY`], with how many were held back meanwhile.
#[derive(Default)]
struct Quiet {
    next: Cell<Tick>,
    held_back: Cell<u64>,
}

impl Quiet {
    /// Whether to warn now; if so, how many warnings were held back.
    fn allow(&self, now: Tick) -> Option<u64> {
        if now < self.next.get() {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.next.set(now.after(WARN_EVERY));
        Some(self.held_back.replace(0))
    }
}

/// A shortage of descriptors or memory that made accepts fail.
struct Shortage {
    since: Tick,
    /// Connections accepted and closed at once meanwhile.
    shed: u64,
}

/// The engine-independent part of a worker loop.
pub(crate) struct Core<H, S> {
    pub w: Worker<H>,
    pub sessions: Table<Slot<H, S>>,
    pub timers: Timers,
    /// The time read once per loop turn.
    pub now: Tick,
    /// Stopping: every session must be gone by this time.
    stop_deadline: Option<Tick>,
    forced: bool,
    /// Hand-off accept: the worker the next connection goes to.
    next_worker: usize,
    /// A listening worker's reserve descriptor (see [`Core::accept_shortage`]).
    spare: socket::Spare,
    shortage: Option<Shortage>,
    per_ip_warning: Quiet,
    violation_warning: Quiet,
    /// The worker's topics and the publishes waiting to be fanned out.
    pub hub: Hub,
    /// Subscriber tokens of the topic being fanned out (kept to reuse).
    fan_out: Vec<u64>,
    /// Sessions a fan-out queued messages on, to settle once (see
    /// `Driver::uncork`).
    corked: Vec<u64>,
}

impl<H: Handler, S> Core<H, S> {
    pub fn new(w: Worker<H>) -> Core<H, S> {
        let now = w.now();
        let spare = socket::Spare::new();
        let hub = Hub::new(w.registry.clone());
        Core {
            w,
            sessions: Table::default(),
            timers: Timers::default(),
            now,
            stop_deadline: None,
            forced: false,
            next_worker: 0,
            spare,
            shortage: None,
            per_ip_warning: Quiet::default(),
            violation_warning: Quiet::default(),
            hub,
            fan_out: Vec::new(),
            corked: Vec::new(),
        }
    }

    /// Reads the clock (once per loop turn).
    pub fn tick(&mut self) {
        self.now = self.w.now();
    }

    /// A session's context and slot, borrowed together.
    pub fn slot(&mut self, token: u64) -> Option<(Context<'_>, &mut Slot<H, S>)> {
        self.slot_stats(token).map(|(cx, slot, _)| (cx, slot))
    }

    /// A session's context and slot, plus the worker's counters.
    pub fn slot_stats(&mut self, token: u64) -> Option<(Context<'_>, &mut Slot<H, S>, &WorkerStats)> {
        self.parts(token).map(|(cx, slot, stats, _)| (cx, slot, stats))
    }

    /// A session's context and slot, the worker's counters and its timers,
    /// borrowed together.
    #[allow(clippy::type_complexity)]
    fn parts(&mut self, token: u64) -> Option<(Context<'_>, &mut Slot<H, S>, &WorkerStats, &mut Timers)> {
        let cx = Context {
            id: SessionId::new(self.w.index, token),
            now: self.now,
            limits: &self.w.limits,
            hub: &self.hub,
        };
        let stats = &*self.w.stats;
        let timers = &mut self.timers;
        self.sessions.get_mut(token).map(|slot| (cx, slot, stats, timers))
    }

    /// The session `id` names, if it is this worker's and still live (its
    /// slot not reused since); else the request is counted as stale.
    pub fn session(&mut self, id: Id) -> Option<(Context<'_>, &mut Slot<H, S>)> {
        let found = id.worker() == self.w.index && self.sessions.get_mut(id.token()).is_some();
        if !found {
            self.w.stats.stale_request();
            tracing::debug!(worker = self.w.index, session = %id, "request for a session that has ended: dropped");
            return None;
        }
        self.slot(id.token())
    }

    /// A publish made here is counted once, for its topic and the worker,
    /// and handed to every other worker.
    fn published(&self, p: &Pending) {
        self.w.stats.published();
        self.hub.topics.borrow().count_publish(&p.topic);
        self.w.registry.relay(&p.topic, &p.buf);
        for (i, inbox) in self.w.workers.iter().enumerate() {
            if i != self.w.index {
                let r = Remote::Publish {
                    topic: p.topic.clone(),
                    buf: p.buf.clone(),
                };
                let _ = inbox.push(Command::Remote(r));
            }
        }
    }

    /// Takes a place under `max_sessions`, or counts a rejection.
    pub fn admit(&self) -> bool {
        let ok = self.w.gate.try_acquire();
        if !ok {
            self.w.stats.rejected();
        }
        ok
    }

    /// A connection was accepted here. With the hand-off strategy it goes
    /// to the workers in turn — to another one through its inbox (it is
    /// admitted and gets its handler there, see [`Core::adopted`]) — else
    /// it is admitted here. Returns the session if it lives here.
    pub fn accepted(&mut self, s: OwnedSocket, peer: SocketAddr) -> Option<(Conn<H>, OwnedSocket)> {
        if self.w.hand_off {
            let workers = &self.w.workers;
            let to = self.next_worker;
            self.next_worker = (to + 1) % workers.len();
            if to != self.w.index {
                match workers[to].push(Command::Adopt { socket: s, peer }) {
                    Ok(()) => return None,
                    // That worker has ended: serve it here.
                    Err(Command::Adopt { socket, peer }) => return self.adopted(socket, peer),
                    Err(_) => unreachable!("push gives back what it was given"),
                }
            }
        }
        let conn = self.admit_accepted(&s, peer)?;
        Some((conn, s))
    }

    /// A connection another worker accepted was handed here: admitted like
    /// one accepted here, unless this worker is stopping (then reset and
    /// counted as rejected).
    pub fn adopted(&self, s: OwnedSocket, peer: SocketAddr) -> Option<(Conn<H>, OwnedSocket)> {
        if self.stopping() {
            self.w.stats.rejected();
            let _ = socket::set_linger_zero(&s);
            return None;
        }
        let conn = self.admit_accepted(&s, peer)?;
        Some((conn, s))
    }

    /// Admits an accepted connection under `max_sessions` and
    /// `max_sessions_per_ip` (else resets it, counted as rejected) and
    /// makes its session.
    fn admit_accepted(&self, fd: &OwnedSocket, peer: SocketAddr) -> Option<Conn<H>> {
        if !self.admit() {
            tracing::debug!(%peer, "session limit reached: connection reset");
            let _ = socket::set_linger_zero(fd);
            return None;
        }
        // Behind a proxy, the limit per address applies to the client's,
        // once its header has named it (see `admit_proxied`).
        if self.w.proxy.is_none() && !self.admit_ip(peer.ip()) {
            self.w.gate.release();
            let _ = socket::set_linger_zero(fd);
            return None;
        }
        self.prepare(fd);
        let factory = self.w.factory.as_ref().expect("a listening worker has a factory");
        self.w.stats.accepted();
        let Some(proxy) = &self.w.proxy else {
            return Some(Conn::accepted(peer, factory(), self.now));
        };
        let conn = Conn::behind_proxy(peer, factory(), self.now, self.now.after(proxy.header_timeout));
        if !proxy.trusts(peer.ip()) {
            self.finish(None, conn, CloseReason::ProxyUntrusted);
            let _ = socket::set_linger_zero(fd);
            return None;
        }
        Some(conn)
    }

    /// Takes a place for `ip` under `max_sessions_per_ip` (if set), or
    /// counts a rejection and warns (rate-limited).
    fn admit_ip(&self, ip: std::net::IpAddr) -> bool {
        let Some(ip_gate) = &self.w.ip_gate else {
            return true;
        };
        if ip_gate.try_acquire(ip) {
            return true;
        }
        self.w.stats.rejected_per_ip();
        if let Some(held_back) = self.per_ip_warning.allow(self.now) {
            tracing::warn!(
                worker = self.w.index,
                %ip,
                held_back,
                "max_sessions_per_ip reached: connection reset"
            );
        }
        false
    }

    /// A session behind a proxy has read its PROXY header ([`Step::Admit`]):
    /// admitted under `max_sessions_per_ip` for the client's address, it
    /// opens; otherwise it is reset.
    pub fn admit_proxied(&mut self, token: u64) {
        let Some(ip) = self.sessions.get_mut(token).map(|s| s.conn.peer_addr().ip()) else {
            return;
        };
        let admitted = self.admit_ip(ip);
        let Some((cx, slot)) = self.slot(token) else {
            return;
        };
        match admitted {
            true => {
                if let Some(p) = slot.conn.proxy() {
                    tracing::debug!(
                        worker = cx.id.worker(),
                        session = %cx.id,
                        peer = %slot.conn.peer_addr(),
                        proxy = %p.proxy,
                        version = p.version,
                        local = p.local,
                        "session opened behind a proxy"
                    );
                }
                slot.conn.admit(cx)
            }
            false => slot
                .conn
                .refuse(CloseReason::custom("max_sessions_per_ip reached")),
        }
    }

    /// Sets a session socket's options: no Nagle delay, and keepalive if
    /// configured. A failure leaves the socket usable, so it is only
    /// logged.
    fn prepare(&self, fd: &OwnedSocket) {
        let _ = socket::set_nodelay(fd);
        if let Some(k) = self.w.keepalive {
            if let Err(e) = socket::set_keepalive(fd, k.idle, k.interval, k.count) {
                tracing::debug!(error = %e, "cannot set TCP keepalive");
            }
        }
    }

    /// Counts a failed accept by its kind and returns the kind.
    pub fn accept_error(&self, e: &io::Error) -> AcceptErrorKind {
        let kind = if socket::is_out_of_descriptors(e) {
            AcceptErrorKind::Descriptors
        } else if socket::is_resource_exhausted(e) {
            AcceptErrorKind::Memory
        } else if socket::is_transient_accept_error(e) {
            AcceptErrorKind::Aborted
        } else {
            AcceptErrorKind::Other
        };
        self.w.stats.accept_error(kind);
        kind
    }

    /// An accept succeeded: a shortage, if there was one, is over.
    pub fn accept_ok(&mut self) {
        if let Some(s) = self.shortage.take() {
            self.w.stats.set_accept_shortage(false);
            tracing::info!(
                worker = self.w.index,
                after_ms = s.since.until(self.now).as_millis() as u64,
                closed_at_once = s.shed,
                "accepting again: the resource shortage is over"
            );
        }
    }

    /// Accepting failed with `e`, a shortage of descriptors or memory.
    /// Out of descriptors with the spare at hand, the connections waiting
    /// in the listener's backlog are accepted and closed at once (their
    /// clients see a close instead of hanging; counted as shed) until none
    /// is left: returns `None`, and the engine accepts again when a new
    /// connection is reported — not at once: the kernel takes the new
    /// descriptor before it looks for a connection, so during a shortage
    /// `accept` fails even with an empty backlog, and retrying would spin.
    /// Otherwise accepting should pause until the returned time. Logged
    /// once per shortage.
    pub fn accept_shortage(&mut self, e: &io::Error) -> Option<Tick> {
        self.accept_error(e);
        if self.shortage.is_none() {
            tracing::warn!(
                worker = self.w.index,
                error = %e,
                "accept failed for lack of resources: closing new connections at once until it is over"
            );
            self.shortage = Some(Shortage {
                since: self.now,
                shed: 0,
            });
            self.w.stats.set_accept_shortage(true);
        }
        let shed = match (&self.w.listener, socket::is_out_of_descriptors(e)) {
            (Some(listener), true) => socket::shed_backlog(listener, &mut self.spare),
            _ => None,
        };
        match shed {
            Some(n) => {
                self.w.stats.accept_shed(n);
                if let Some(s) = &mut self.shortage {
                    s.shed += n as u64;
                }
                None
            }
            None => {
                // No spare to free (taken meanwhile), or out of memory: wait.
                self.spare = socket::Spare::new();
                Some(self.now.after(ACCEPT_BACKOFF))
            }
        }
    }

    /// An outbound connection was asked for: admits it under
    /// `max_sessions` and makes its session, or tells the handler at once
    /// that the connect failed.
    fn admit_outbound(&self, addr: SocketAddr, handler: H) -> Option<Conn<H>> {
        let conn = Conn::connecting(addr, handler, self.now, &self.w.limits);
        if !self.admit() {
            let err = io::Error::new(io::ErrorKind::OutOfMemory, "session limit reached");
            conn.finish(CloseReason::ConnectFailed(err));
            return None;
        }
        self.w.stats.opened_outbound();
        Some(conn)
    }

    /// An outbound connection was asked for: admits it and makes its socket
    /// with `socket`, or tells the handler at once that the connect failed.
    pub fn outbound(
        &self,
        addr: SocketAddr,
        handler: H,
        socket: impl FnOnce(&SocketAddr) -> io::Result<OwnedSocket>,
    ) -> Option<(Conn<H>, OwnedSocket)> {
        let conn = self.admit_outbound(addr, handler)?;
        match socket(&addr) {
            Ok(s) => {
                self.prepare(&s);
                Some((conn, s))
            }
            Err(e) => {
                self.finish(None, conn, CloseReason::ConnectFailed(e));
                None
            }
        }
    }

    /// Stores a new session (its place already admitted).
    pub fn insert(&mut self, conn: Conn<H>, io: S) -> u64 {
        self.sessions.insert(Slot {
            conn,
            io,
            queued_seen: 0,
            recv_seen: 0,
            paused_seen: false,
            corked: false,
        })
    }

    /// After anything touched a session: report its queue and whether its
    /// input is paused, re-arm its deadline.
    pub fn settled(&mut self, token: u64) {
        if let Some((cx, slot, stats, timers)) = self.parts(token) {
            slot.account(token, stats, timers, cx);
        }
    }

    /// Removes a session whose socket the engine is done with, and ends it.
    pub fn remove(&mut self, token: u64) -> Option<Slot<H, S>> {
        let slot = self.sessions.remove(token)?;
        self.hub.topics.borrow_mut().remove_session(token);
        self.w.stats.queued_changed(slot.queued_seen as usize, 0);
        self.w.stats.recv_buffer_changed(slot.recv_seen as usize, 0);
        if slot.paused_seen {
            self.w.stats.paused_changed(false);
        }
        Some(slot)
    }

    /// Ends a session: counts it, frees its places, tells its handler.
    pub fn finish(&self, token: Option<u64>, conn: Conn<H>, reason: CloseReason) {
        let kind = reason.kind();
        let id = token.map(|t| SessionId::new(self.w.index, t));
        let lifetime = conn.opened_at().until(self.now);
        tracing::debug!(
            worker = self.w.index,
            session = id.map(tracing::field::display),
            peer = %conn.peer_addr(),
            kind = kind.name(),
            %reason,
            bytes_in = conn.bytes_received(),
            bytes_out = conn.bytes_sent(),
            lifetime_ms = lifetime.as_millis() as u64,
            "session closed"
        );
        if kind == CloseKind::ProtocolViolation {
            if let Some(held_back) = self.violation_warning.allow(self.now) {
                tracing::warn!(
                    worker = self.w.index,
                    session = id.map(tracing::field::display),
                    peer = %conn.peer_addr(),
                    %reason,
                    held_back,
                    "protocol violation: session closed"
                );
            }
        }
        self.w.stats.closed(kind);
        self.w.gate.release();
        if let Some(ip_gate) = &self.w.ip_gate {
            // Behind a proxy a session holds a place for its client's
            // address only once admitted.
            if self.w.proxy.is_none() || conn.proxy_admitted() {
                ip_gate.release(conn.peer_addr().ip());
            }
        }
        conn.finish(reason);
    }

    /// How long the loop may block: until the earliest of the session
    /// deadlines, the stop deadline and the engine's own `extra`.
    pub fn timeout(&self, extra: Option<Tick>) -> Option<Duration> {
        let stop = self.stop_deadline.filter(|_| !self.forced);
        let next = [self.timers.next(), stop, extra].into_iter().flatten().min()?;
        Some(self.w.now().until(next))
    }

    /// Session deadlines due now. Taken all at once, so a deadline set
    /// while handling them waits for the next turn.
    pub fn due(&mut self) -> Vec<(Tick, u64)> {
        let mut due = Vec::new();
        while let Some(entry) = self.timers.pop_due(self.now) {
            due.push(entry);
        }
        due
    }

    /// Starts stopping; returns the tokens to shut down, or nothing if a
    /// stop was already under way.
    pub fn begin_stop(&mut self, grace: Duration) -> Vec<u64> {
        if self.stop_deadline.is_some() {
            return Vec::new();
        }
        self.stop_deadline = Some(self.now.after(grace));
        for token in self.sessions.tokens() {
            if let Some(slot) = self.sessions.get_mut(token) {
                slot.conn.shutdown();
            }
        }
        self.sessions.tokens()
    }

    /// When the stop deadline has just passed: marks every session for a
    /// forced close and returns their tokens (once).
    pub fn forced_now(&mut self) -> Vec<u64> {
        match self.stop_deadline {
            Some(deadline) if !self.forced && deadline <= self.now => {
                self.forced = true;
                for token in self.sessions.tokens() {
                    if let Some(slot) = self.sessions.get_mut(token) {
                        slot.conn.force_close();
                    }
                }
                self.sessions.tokens()
            }
            _ => Vec::new(),
        }
    }

    /// A stop is under way.
    pub fn stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Stopping and every session is gone: the loop may end.
    pub fn finished(&self) -> bool {
        self.stopping() && self.sessions.is_empty()
    }
}
