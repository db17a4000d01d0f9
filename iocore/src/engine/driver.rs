//! The engines' shared control: [`Driver`] (commands from other threads,
//! fan-out of publishes, accepted connections, deadlines, stop) and, for
//! the engines that close a session's socket as soon as the session is
//! done, [`CloseAtOnce`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::core::Core;
use super::sockets::io_close_reason;
use super::{Command, Remote};
use crate::session::{CloseReason, Conn, Handler, SendError, SessionId, Step};
use crate::sys::OwnedSocket;

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
                Command::Connect { addr, make, reply } => {
                    self.core().last_inserted = None;
                    if let Some(handler) = self.core().make_handler(make) {
                        self.connect(addr, handler)?;
                    }
                    if let Some(reply) = reply {
                        let core = self.core();
                        let id = core
                            .last_inserted
                            .map(|token| SessionId::new(core.w.index, token));
                        // The caller may have given up waiting; nothing to do.
                        let _ = reply.send(id);
                    }
                }
                Command::Adopt {
                    socket,
                    peer,
                    websocket,
                    tls,
                } => {
                    if let Some((conn, socket)) =
                        self.core()
                            .adopted(socket, peer, websocket.as_ref(), tls.as_ref())
                    {
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
                Command::Remote(Remote::Publish { topic, buf, stamp }) => {
                    self.fan_out(&topic, &buf, stamp, None)?
                }
                Command::Remote(Remote::SendMany(sends)) => {
                    let mut frame = SharedFrame::default();
                    for (id, buf) in sends {
                        if self.core().session(id).is_some() {
                            self.queue_corked(id.token(), &buf, frame.for_buf(&buf));
                        }
                    }
                }
                Command::Remote(Remote::CloseWith { id, reason }) => {
                    if let Some((_, slot)) = self.core().session(id) {
                        slot.conn.close_from_outside(reason);
                        self.settle(id.token())?;
                    }
                }
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
                self.fan_out(&p.topic, &p.buf, p.stamp, p.skip)?;
            }
            self.uncork()?;
        }
    }

    /// Queues `buf` on every subscriber of `topic` on this worker (not
    /// `skip`, nor one that subscribed after the publish was made, at tick
    /// `stamp` of the publish clock) — a clone of the one buffer each. The
    /// subscribers are settled (flushed) once, by [`Driver::uncork`], after
    /// every message of the batch was queued: a subscriber gets all of them
    /// with one gather write. A subscriber whose queue would go over its
    /// cap is closed (`SendQueueFull`, counted for the topic); the others
    /// go on.
    fn fan_out(&mut self, topic: &str, buf: &Bytes, stamp: u64, skip: Option<u64>) -> io::Result<()> {
        let core = self.core();
        let mut tokens = std::mem::take(&mut core.fan_out);
        let counters = core
            .hub
            .topics
            .borrow()
            .subscribers_into(topic, stamp, &mut tokens);
        let mut delivered = 0;
        let mut at_cap = 0;
        let mut frame = None;
        for &token in &tokens {
            if Some(token) == skip {
                continue;
            }
            match self.queue_corked(token, buf, &mut frame) {
                Some(Ok(())) => delivered += 1,
                Some(Err(SendError::QueueFull)) => {
                    if let Some(c) = &counters {
                        c.closed_at_cap();
                    }
                    at_cap += 1;
                }
                _ => {}
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

    /// Queues `buf` on session `token` and leaves it corked: settled (one
    /// gather write for all queued so) by [`Driver::uncork`]. `None`: no
    /// such session. `frame` holds the WebSocket frame of `buf` once a
    /// WebSocket session needed it, for the next ones.
    fn queue_corked(
        &mut self,
        token: u64,
        buf: &Bytes,
        frame: &mut Option<Bytes>,
    ) -> Option<Result<(), SendError>> {
        let (cx, slot) = self.core().slot(token)?;
        let sent = slot.conn.deliver_shared(buf, frame, cx);
        if !slot.corked {
            slot.corked = true;
            self.core().corked.push(token);
        }
        Some(sent)
    }

    /// Runs this worker's rooms (their due timers and ticks, then a turn
    /// for each ready room) and carries out what they sent: queued on the
    /// members here, corked; one command to each other worker for its
    /// members.
    fn run_rooms(&mut self) -> io::Result<()> {
        let core = self.core();
        if core.rooms.is_empty() {
            return Ok(());
        }
        let now = core.precise_now();
        let mut out = std::mem::take(&mut core.room_out);
        for kind in core.rooms.iter_mut() {
            kind.run(now, &mut out);
        }
        let own = core.w.index;
        let mut elsewhere: Vec<Vec<(SessionId, Bytes)>> = Vec::new();
        let mut frame = SharedFrame::default();
        for (id, buf) in out.sends.drain(..) {
            if id.worker() == own {
                if self.queue_corked(id.token(), &buf, frame.for_buf(&buf)).is_none() {
                    self.core().w.stats.stale_request();
                }
                continue;
            }
            if id.worker() >= elsewhere.len() {
                elsewhere.resize_with(id.worker() + 1, Vec::new);
            }
            elsewhere[id.worker()].push((id, buf));
        }
        for (worker, sends) in elsewhere.into_iter().enumerate() {
            if !sends.is_empty() {
                self.core().to_worker(worker, Remote::SendMany(sends));
            }
        }
        for (id, reason) in out.closes.drain(..) {
            if id.worker() != own {
                self.core()
                    .to_worker(id.worker(), Remote::CloseWith { id, reason });
            } else if let Some((_, slot)) = self.core().session(id) {
                slot.conn.close_from_outside(reason);
                self.settle(id.token())?;
            }
        }
        self.core().room_out = out;
        self.uncork()
    }

    /// What every loop turn ends with, after the I/O events: the deadlines
    /// due, the rooms, then the publishes made meanwhile.
    fn after_events(&mut self) -> io::Result<()> {
        self.expire()?;
        self.run_rooms()?;
        // After the deadlines and the rooms: timer callbacks publish too.
        self.deliver_published()
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

/// The WebSocket frame of the buffer sent last, while the same buffer
/// (one room message to all its members) is sent again.
#[derive(Default)]
struct SharedFrame {
    of: (usize, usize),
    frame: Option<Bytes>,
}

impl SharedFrame {
    /// The frame slot for `buf`: emptied when `buf` is not the last one.
    fn for_buf(&mut self, buf: &Bytes) -> &mut Option<Bytes> {
        let of = (buf.as_ptr() as usize, buf.len());
        if of != self.of {
            self.of = of;
            self.frame = None;
        }
        &mut self.frame
    }
}
