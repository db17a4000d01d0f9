//! What every engine's loop keeps besides its I/O: the session table, the
//! deadlines, the stop state, and the bookkeeping done when a session
//! opens, settles or ends. Engines add only how bytes move. Who is
//! admitted is decided in [`super::admission`]; what that does to sockets
//! is in [`super::sockets`].

use std::time::Duration;

use super::admission::Quiet;
use super::sockets::Shortage;
use super::{Command, Remote, Worker, WorkerStats};
use crate::room::{RoomOutput, RunRooms};
use crate::session::Hub;
use crate::session::{CloseKind, CloseReason, Conn, Context, Handler, SessionId, Table, Tick, Timers};
use crate::sys::socket;
use crate::topic::Pending;

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
    pub(super) corked: bool,
}

impl<H: Handler, S> Slot<H, S> {
    /// After anything touched the session (slot `token`): report its queue
    /// and whether its input is paused, re-arm its deadline.
    #[inline]
    pub(super) fn account(&mut self, token: u64, stats: &WorkerStats, timers: &mut Timers, cx: Context<'_>) {
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
    pub(super) next_worker: usize,
    /// A listening worker's reserve descriptor (see
    /// [`Core::accept_shortage`]); none for a worker without a listener.
    pub(super) spare: Option<socket::Spare>,
    pub(super) shortage: Option<Shortage>,
    pub(super) per_ip_warning: Quiet,
    violation_warning: Quiet,
    /// Panics of the application's code (handlers, factories).
    pub(super) panic_warning: Quiet,
    /// The worker's topics and the publishes waiting to be fanned out.
    pub hub: Hub,
    /// Subscriber tokens of the topic being fanned out (kept to reuse).
    pub(super) fan_out: Vec<u64>,
    /// Sessions a fan-out queued messages on, to settle once (see
    /// `Driver::uncork`).
    pub(super) corked: Vec<u64>,
    /// The token [`Core::insert`] gave last: how a connect command learns
    /// its session's id without the engines' help.
    pub(super) last_inserted: Option<u64>,
    /// This worker's executor of each kind of rooms.
    pub(super) rooms: Vec<Box<dyn RunRooms>>,
    /// What the rooms sent during their last run (kept to reuse).
    pub(super) room_out: RoomOutput,
    /// The clock is set by [`Core::set_now`] (a simulation), not read.
    manual_clock: bool,
}

impl<H: Handler, S> Core<H, S> {
    pub(super) fn new(w: Worker<H>) -> Core<H, S> {
        let now = w.now();
        let spare = w.listener.is_some().then(socket::Spare::new);
        let hub = Hub::new(w.registry.clone());
        // Made here, on the worker's thread: a room's state need not be Send.
        let rooms = w.rooms.iter().map(|kind| (kind.make)(w.index)).collect();
        Core {
            w,
            sessions: Table::default(),
            timers: Timers::default(),
            now,
            stop_deadline: None,
            forced: false,
            next_worker: 0,
            last_inserted: None,
            rooms,
            room_out: RoomOutput::default(),
            manual_clock: false,
            spare,
            shortage: None,
            per_ip_warning: Quiet::default(),
            violation_warning: Quiet::default(),
            panic_warning: Quiet::default(),
            hub,
            fan_out: Vec::new(),
            corked: Vec::new(),
        }
    }

    /// Reads the clock (once per loop turn).
    pub(super) fn tick(&mut self) {
        self.now = self.w.now();
    }

    /// Sets the time (a simulated engine's clock).
    pub(super) fn set_now(&mut self, now: Tick) {
        self.now = now;
        self.manual_clock = true;
    }

    /// The time to the microsecond and beyond (the rooms' clock): read
    /// now, or the simulated clock.
    pub(super) fn precise_now(&self) -> Duration {
        match self.manual_clock {
            true => Duration::from_millis(self.now.0),
            false => self.w.epoch.elapsed(),
        }
    }

    /// When the rooms must run next, if anything waits.
    fn rooms_due(&self) -> Option<Duration> {
        if self.rooms.is_empty() {
            return None;
        }
        let now = self.precise_now();
        self.rooms.iter().filter_map(|r| r.next_due(now)).min()
    }

    /// A session's context and slot, borrowed together.
    pub(super) fn slot(&mut self, token: u64) -> Option<(Context<'_>, &mut Slot<H, S>)> {
        self.slot_stats(token).map(|(cx, slot, _)| (cx, slot))
    }

    /// A session's context and slot, plus the worker's counters.
    pub(super) fn slot_stats(&mut self, token: u64) -> Option<(Context<'_>, &mut Slot<H, S>, &WorkerStats)> {
        self.parts(token).map(|(cx, slot, stats, _)| (cx, slot, stats))
    }

    /// A session's context and slot, the worker's counters and its timers,
    /// borrowed together.
    #[allow(clippy::type_complexity)]
    pub(super) fn parts(
        &mut self,
        token: u64,
    ) -> Option<(Context<'_>, &mut Slot<H, S>, &WorkerStats, &mut Timers)> {
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
    pub(super) fn session(&mut self, id: SessionId) -> Option<(Context<'_>, &mut Slot<H, S>)> {
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
    pub(super) fn published(&self, p: &Pending) {
        self.w.stats.published();
        self.hub.topics.borrow().count_publish(&p.topic);
        self.w.registry.relay(&p.topic, &p.buf);
        for (i, inbox) in self.w.workers.iter().enumerate() {
            if i != self.w.index {
                let r = Remote::Publish {
                    topic: p.topic.clone(),
                    buf: p.buf.clone(),
                    stamp: p.stamp,
                };
                let _ = inbox.push(Command::Remote(r));
            }
        }
    }

    /// Hands `r` to worker `index` of this server (dropped if there is no
    /// such worker, or it has ended: the request names sessions that are
    /// gone with it).
    pub(super) fn to_worker(&self, index: usize, r: Remote) {
        match self.w.workers.get(index) {
            Some(inbox) => {
                let _ = inbox.push(Command::Remote(r));
            }
            None => self.w.stats.stale_request(),
        }
    }

    /// Stores a new session (its place already admitted).
    pub(super) fn insert(&mut self, conn: Conn<H>, io: S) -> u64 {
        let token = self.sessions.insert(Slot {
            conn,
            io,
            queued_seen: 0,
            recv_seen: 0,
            paused_seen: false,
            corked: false,
        });
        self.last_inserted = Some(token);
        token
    }

    /// After anything touched a session: report its queue and whether its
    /// input is paused, re-arm its deadline.
    pub(super) fn settled(&mut self, token: u64) {
        if let Some((cx, slot, stats, timers)) = self.parts(token) {
            slot.account(token, stats, timers, cx);
        }
    }

    /// Removes a session whose socket the engine is done with, and ends it.
    pub(super) fn remove(&mut self, token: u64) -> Option<Slot<H, S>> {
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
    pub(super) fn finish(&self, token: Option<u64>, conn: Conn<H>, reason: CloseReason) {
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
        if kind == CloseKind::HandlerPanicked {
            if let Some(held_back) = self.panic_warning.allow(self.now) {
                tracing::error!(
                    worker = self.w.index,
                    session = id.map(tracing::field::display),
                    peer = %conn.peer_addr(),
                    %reason,
                    held_back,
                    "a handler panicked: its session was reset, the worker goes on"
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
    pub(super) fn timeout(&self, extra: Option<Tick>) -> Option<Duration> {
        let ticks = [self.tick_deadline(), extra].into_iter().flatten().min();
        let next = [ticks.map(|t| Duration::from_millis(t.0)), self.rooms_due()]
            .into_iter()
            .flatten()
            .min()?;
        Some(next.saturating_sub(self.precise_now()))
    }

    /// The earliest of the session deadlines, the stop deadline and the
    /// rooms' next run (to the millisecond, rounded up).
    pub(super) fn next_deadline(&self) -> Option<Tick> {
        let rooms = self
            .rooms_due()
            .map(|d| Tick(d.as_nanos().div_ceil(1_000_000) as u64));
        [self.tick_deadline(), rooms].into_iter().flatten().min()
    }

    /// The earliest of the session deadlines and the stop deadline.
    fn tick_deadline(&self) -> Option<Tick> {
        let stop = self.stop_deadline.filter(|_| !self.forced);
        [self.timers.next(), stop].into_iter().flatten().min()
    }

    /// Session deadlines due now. Taken all at once, so a deadline set
    /// while handling them waits for the next turn.
    pub(super) fn due(&mut self) -> Vec<(Tick, u64)> {
        let mut due = Vec::new();
        while let Some(entry) = self.timers.pop_due(self.now) {
            due.push(entry);
        }
        due
    }

    /// Starts stopping; returns the tokens to shut down, or nothing if a
    /// stop was already under way.
    pub(super) fn begin_stop(&mut self, grace: Duration) -> Vec<u64> {
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
    pub(super) fn forced_now(&mut self) -> Vec<u64> {
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
    pub(super) fn stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Stopping and every session is gone: the loop may end.
    pub(super) fn finished(&self) -> bool {
        self.stopping() && self.sessions.is_empty()
    }
}
