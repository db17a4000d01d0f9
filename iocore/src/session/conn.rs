//! One connection's engine-independent state machine.
//!
//! An engine owns the socket and moves bytes; [`Conn`] decides everything
//! else: whom to hand received bytes to and what to keep, what to send
//! next, when to send FIN, when a session is finished and why. Engines call
//! it and act on the [`Step`] it returns, so every engine closes, flushes
//! and reports close reasons the same way.
//!
//! Lifecycle: `Connecting` (outbound only) → `Open` → `Closing` (flush the
//! queue) → `Lingering` (FIN sent, discard input until the peer's FIN or
//! the linger deadline) → finished. `Aborting` skips to finished.

use std::io::IoSlice;
use std::net::SocketAddr;

use super::close::CloseReason;
use super::handler::{Handler, Limits, Session, SessionId, Tick};
use super::recv_buffer::RecvBuffer;
use super::send_queue::SendQueue;
use super::timers::Timers;

/// Where a connection is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    Connecting,
    Open,
    /// Send what is queued, then FIN.
    Closing(CloseReason),
    /// FIN sent; waiting for the peer's FIN.
    Lingering(CloseReason),
    /// Close now; `rst` makes the peer see a reset.
    Aborting {
        reason: CloseReason,
        rst: bool,
    },
    /// `Step::Close` was returned; nothing more happens.
    Done,
}

/// The parts of a connection a [`Session`] handle may touch.
#[derive(Debug)]
pub struct Core {
    pub(crate) peer: SocketAddr,
    pub(crate) send: SendQueue,
    pub(crate) phase: Phase,
    /// While open, the handler's timer; while connecting or lingering,
    /// the connect or linger deadline (one field: they never coexist).
    pub(crate) timer_at: Tick,
    /// Last time bytes arrived (idle timeout).
    pub(crate) last_active: Tick,
    /// The deadline currently scheduled in the worker's [`Timers`].
    wake_at: Tick,
    /// No more input will come: the peer's FIN arrived or linger expired.
    input_done: bool,
}

impl Core {
    /// Graceful close, unless the session is already closing.
    pub(crate) fn close(&mut self, reason: CloseReason) {
        match self.phase {
            Phase::Connecting => self.abort_with(reason, false),
            Phase::Open => self.phase = Phase::Closing(reason),
            _ => {}
        }
    }

    /// Immediate close with RST, dropping the queue.
    pub(crate) fn abort(&mut self, reason: CloseReason) {
        self.abort_with(reason, true)
    }

    fn abort_with(&mut self, reason: CloseReason, rst: bool) {
        if !matches!(self.phase, Phase::Aborting { .. } | Phase::Done) {
            self.send.clear();
            self.phase = Phase::Aborting { reason, rst };
        }
    }
}

/// What the engine must do next for a connection.
#[derive(Debug)]
pub enum Step {
    /// Nothing: wait for the socket or a timer.
    Wait,
    /// Send FIN (`shutdown(SHUT_WR)`); keep reading and discarding.
    Fin,
    /// Close the socket (after `SO_LINGER` 0 if `rst`), remove the session
    /// and call [`Conn::finish`] with `reason`.
    Close {
        /// Why the session ends.
        reason: CloseReason,
        /// Reset the connection instead of closing it normally.
        rst: bool,
    },
}

/// What a connection's callbacks need from their worker: who it is, what
/// time it is, and the limits.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The session's id.
    pub id: SessionId,
    /// The worker's current time.
    pub now: Tick,
    /// The service's per-session limits.
    pub limits: &'a Limits,
}

/// One connection: protocol-free state plus the application's handler.
pub struct Conn<H> {
    core: Core,
    recv: RecvBuffer,
    handler: H,
}

impl<H: Handler> Conn<H> {
    fn new(peer: SocketAddr, handler: H, phase: Phase, deadline: Tick, now: Tick) -> Conn<H> {
        Conn {
            core: Core {
                peer,
                send: SendQueue::new(),
                phase,
                timer_at: deadline,
                last_active: now,
                wake_at: Tick::NEVER,
                input_done: false,
            },
            recv: RecvBuffer::new(),
            handler,
        }
    }

    /// An accepted connection; call [`Conn::start`] once it is registered.
    pub fn accepted(peer: SocketAddr, handler: H, now: Tick) -> Conn<H> {
        Conn::new(peer, handler, Phase::Open, Tick::NEVER, now)
    }

    /// An outbound connection whose connect is in progress; call
    /// [`Conn::connected`] when it completes.
    pub fn connecting(peer: SocketAddr, handler: H, now: Tick, limits: &Limits) -> Conn<H> {
        let deadline = now.after(limits.connect_timeout);
        Conn::new(peer, handler, Phase::Connecting, deadline, now)
    }

    fn session<'a>(core: &'a mut Core, cx: &Context<'a>) -> Session<'a> {
        Session {
            core,
            id: cx.id,
            now: cx.now,
            limits: cx.limits,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.peer
    }

    /// The connection is established and registered: tells the handler.
    pub fn start(&mut self, cx: Context<'_>) {
        debug_assert!(matches!(self.core.phase, Phase::Open));
        self.handler.on_connected(&mut Self::session(&mut self.core, &cx));
    }

    /// Whether an outbound connect is still in progress.
    pub fn is_connecting(&self) -> bool {
        matches!(self.core.phase, Phase::Connecting)
    }

    /// The outbound connect completed: the session opens.
    pub fn connected(&mut self, cx: Context<'_>) {
        if self.is_connecting() {
            self.core.phase = Phase::Open;
            self.core.last_active = cx.now;
            self.core.timer_at = Tick::NEVER;
            self.start(cx);
        }
    }

    /// Whether the handler still takes input.
    pub fn is_open(&self) -> bool {
        matches!(self.core.phase, Phase::Open)
    }

    /// Whether the session is closed, with FIN sent and awaiting only the
    /// peer's FIN.
    pub fn is_lingering(&self) -> bool {
        matches!(self.core.phase, Phase::Lingering(_))
    }

    /// Where the next read should go: into the receive buffer when a
    /// partial message waits there (then the bytes land behind it without a
    /// copy), else `None`: read into the worker's shared scratch buffer and
    /// pass the bytes to [`Conn::received`].
    pub fn read_target(&mut self, want: usize, limits: &Limits) -> Option<&mut [u8]> {
        if self.recv.is_empty() || !self.is_open() {
            return None;
        }
        Some(self.recv.spare(want, limits.max_recv_buffer))
    }

    /// `data` arrived (read into scratch memory): hands it to the handler
    /// and keeps what it did not consume. Input after a local close is
    /// discarded.
    pub fn received(&mut self, data: &[u8], cx: Context<'_>) {
        if !self.is_open() || data.is_empty() {
            return;
        }
        self.core.last_active = cx.now;
        if !self.recv.is_empty() {
            if self.recv.extend(data, cx.limits.max_recv_buffer).is_err() {
                self.core.abort(CloseReason::RecvBufferFull);
                return;
            }
            return self.deliver_buffered(cx);
        }
        let mut rest = data;
        while !rest.is_empty() && self.is_open() {
            let n = self
                .handler
                .on_recv(&mut Self::session(&mut self.core, &cx), rest);
            if n == 0 {
                break;
            }
            rest = &rest[n.min(rest.len())..];
        }
        if self.is_open() && !rest.is_empty() && self.recv.extend(rest, cx.limits.max_recv_buffer).is_err() {
            self.core.abort(CloseReason::RecvBufferFull);
        }
    }

    /// `n` bytes were read into the slice [`Conn::read_target`] returned.
    pub fn received_in_place(&mut self, n: usize, cx: Context<'_>) {
        self.recv.commit(n);
        self.core.last_active = cx.now;
        self.deliver_buffered(cx);
    }

    fn deliver_buffered(&mut self, cx: Context<'_>) {
        while !self.recv.is_empty() && self.is_open() {
            let n = self
                .handler
                .on_recv(&mut Self::session(&mut self.core, &cx), self.recv.data());
            if n == 0 {
                break;
            }
            self.recv.consume(n.min(self.recv.len()));
        }
        if self.is_open() && self.recv.len() >= cx.limits.max_recv_buffer {
            self.core.abort(CloseReason::RecvBufferFull);
        }
    }

    /// The peer sent FIN: no more input. An open session closes after its
    /// queue is flushed, with [`CloseReason::PeerClosed`].
    pub fn eof(&mut self) {
        self.core.input_done = true;
        self.recv.clear();
        self.core.close(CloseReason::PeerClosed);
    }

    /// The socket failed (reset or another error): the session ends now.
    pub fn failed(&mut self, reason: CloseReason) {
        self.core.abort_with(reason, false);
    }

    /// The server is stopping: flush and close; connects in progress end.
    pub fn shutdown(&mut self) {
        self.core.close(CloseReason::ServerShutdown);
    }

    /// The stop deadline passed: whatever is left is reset now.
    pub fn force_close(&mut self) {
        let reason = match std::mem::replace(&mut self.core.phase, Phase::Done) {
            Phase::Closing(r) | Phase::Lingering(r) => r,
            Phase::Aborting { reason, .. } => reason,
            _ => CloseReason::ServerShutdown,
        };
        self.core.phase = Phase::Aborting { reason, rst: true };
        self.core.send.clear();
    }

    /// Unsent bytes are queued and the session may still send.
    pub fn has_unsent(&self) -> bool {
        !self.core.send.is_empty() && matches!(self.core.phase, Phase::Open | Phase::Closing(_))
    }

    /// Unsent bytes queued.
    pub fn queued(&self) -> usize {
        self.core.send.len()
    }

    /// Fills `out` with the unsent buffers, for one gather write.
    pub fn send_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        self.core.send.io_slices(out)
    }

    /// The unsent bytes when one buffer holds them all.
    pub fn sole_unsent(&self) -> Option<&[u8]> {
        self.core.send.sole()
    }

    /// The kernel took `n` more bytes. When the queue empties the handler
    /// hears [`Handler::on_sent`].
    pub fn sent(&mut self, n: usize, cx: Context<'_>) {
        self.core.send.advance(n);
        if self.core.send.is_empty() && self.is_open() {
            self.handler.on_sent(&mut Self::session(&mut self.core, &cx));
        }
    }

    /// Whether there are unsent bytes a new send could take (none are
    /// lent out to a send in flight, and the session may still send).
    pub fn can_lend(&self) -> bool {
        self.core.send.has_unlent() && self.core.send.lent() == 0 && self.has_unsent()
    }

    /// For a completion engine: moves the unsent buffers (at most `max`)
    /// into `out` for one send; see [`SendQueue::lend`]. Returns the offset
    /// into `out[0]`.
    pub fn lend_unsent(&mut self, out: &mut Vec<bytes::Bytes>, max: usize) -> usize {
        self.core.send.lend(out, max)
    }

    /// The send of lent buffers completed, taking `n` bytes (fewer than
    /// lent is a partial send: the rest goes back to the front). When the
    /// queue empties the handler hears [`Handler::on_sent`].
    pub fn send_completed(&mut self, bufs: &mut Vec<bytes::Bytes>, offset: usize, n: usize, cx: Context<'_>) {
        self.core.send.give_back(bufs, offset, n);
        if self.core.send.is_empty() && self.is_open() {
            self.handler.on_sent(&mut Self::session(&mut self.core, &cx));
        }
    }

    /// What the engine must do next; see [`Step`].
    pub fn step(&mut self, cx: Context<'_>) -> Step {
        match &self.core.phase {
            Phase::Closing(_) if self.core.send.is_empty() => {
                let Phase::Closing(reason) = std::mem::replace(&mut self.core.phase, Phase::Done) else {
                    unreachable!()
                };
                if self.core.input_done {
                    // The peer already sent FIN: closing now sends ours
                    // after the flushed data, with nothing left to read.
                    Step::Close { reason, rst: false }
                } else {
                    self.core.phase = Phase::Lingering(reason);
                    self.core.timer_at = cx.now.after(cx.limits.linger);
                    Step::Fin
                }
            }
            Phase::Lingering(_) if self.core.input_done => {
                let Phase::Lingering(reason) = std::mem::replace(&mut self.core.phase, Phase::Done) else {
                    unreachable!()
                };
                Step::Close { reason, rst: false }
            }
            Phase::Aborting { .. } => {
                let Phase::Aborting { reason, rst } = std::mem::replace(&mut self.core.phase, Phase::Done)
                else {
                    unreachable!()
                };
                Step::Close { reason, rst }
            }
            _ => Step::Wait,
        }
    }

    /// Tells the handler the session ended. Call exactly once, after
    /// [`Step::Close`], with its reason.
    pub fn finish(mut self, reason: CloseReason) {
        self.handler.on_disconnected(reason);
    }

    /// The earliest time this connection needs [`Conn::wake`].
    fn next_deadline(&self, limits: &Limits) -> Tick {
        match self.core.phase {
            Phase::Open => {
                let idle = match limits.idle_timeout {
                    Some(t) => self.core.last_active.after(t),
                    None => Tick::NEVER,
                };
                idle.min(self.core.timer_at)
            }
            Phase::Connecting | Phase::Lingering(_) => self.core.timer_at,
            _ => Tick::NEVER,
        }
    }

    /// Makes sure `timers` will wake this connection (slot `token`) at its
    /// next deadline. Call after anything that may have moved it.
    pub fn arm(&mut self, token: u64, timers: &mut Timers, limits: &Limits) {
        let at = self.next_deadline(limits);
        if at < self.core.wake_at {
            self.core.wake_at = at;
            timers.schedule(at, token);
        }
    }

    /// A timer entry for this connection fired at `at`. Stale entries
    /// (superseded by an earlier one) are ignored.
    pub fn wake(&mut self, at: Tick, cx: Context<'_>) {
        if at != self.core.wake_at {
            return;
        }
        self.core.wake_at = Tick::NEVER;
        let now = cx.now;
        match self.core.phase {
            Phase::Connecting if now >= self.core.timer_at => {
                let err = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                self.core.abort_with(CloseReason::ConnectFailed(err), false);
            }
            Phase::Lingering(_) if now >= self.core.timer_at => self.core.input_done = true,
            Phase::Open => {
                if let Some(idle) = cx.limits.idle_timeout {
                    if now >= self.core.last_active.after(idle) {
                        self.core.close(CloseReason::IdleTimeout);
                        return;
                    }
                }
                if now >= self.core.timer_at {
                    self.core.timer_at = Tick::NEVER;
                    self.handler.on_timer(&mut Self::session(&mut self.core, &cx));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    /// Records calls; consumes whole lines; echoes them; obeys commands.
    #[derive(Default)]
    struct Probe {
        lines: Vec<String>,
        closed: Option<CloseReason>,
        sent: usize,
        timers: usize,
    }

    impl Handler for Probe {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                return 0;
            };
            let line = String::from_utf8_lossy(&data[..nl]).into_owned();
            match line.as_str() {
                "close" => s.close(),
                "abort" => s.abort(),
                "big" => {
                    let _ = s.send(Bytes::from(vec![0; 100]));
                }
                _ => s.send_copy(&data[..=nl]).unwrap(),
            }
            self.lines.push(line);
            nl + 1
        }
        fn on_sent(&mut self, _: &mut Session<'_>) {
            self.sent += 1;
        }
        fn on_timer(&mut self, s: &mut Session<'_>) {
            self.timers += 1;
            s.set_timer(Duration::from_millis(10));
        }
        fn on_disconnected(&mut self, reason: CloseReason) {
            assert!(self.closed.is_none(), "on_disconnected twice");
            self.closed = Some(reason);
        }
    }

    fn limits() -> Limits {
        Limits {
            max_recv_buffer: 32,
            max_send_queue: 64,
            ..Limits::default()
        }
    }

    fn cx(l: &Limits, now: u64) -> Context<'_> {
        Context {
            id: SessionId::new(0, 1),
            now: Tick(now),
            limits: l,
        }
    }

    fn conn() -> Conn<Probe> {
        Conn::accepted("127.0.0.1:1".parse().unwrap(), Probe::default(), Tick(0))
    }

    fn unsent(c: &Conn<Probe>) -> Vec<u8> {
        let mut s = [IoSlice::new(&[]); 16];
        let n = c.send_slices(&mut s);
        s[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn messages_split_anywhere_are_reassembled() {
        let l = limits();
        let mut c = conn();
        c.received(b"hel", cx(&l, 0));
        assert!(c.handler.lines.is_empty());
        // The partial line is buffered; the next read lands behind it.
        let target = c.read_target(8, &l).expect("partial message buffered");
        target[..8].copy_from_slice(b"lo\nwor\nx");
        c.received_in_place(8, cx(&l, 0));
        assert_eq!(c.handler.lines, ["hello", "wor"]);
        assert_eq!(unsent(&c), b"hello\nwor\n");
        c.received(b"\n", cx(&l, 0));
        assert_eq!(c.handler.lines, ["hello", "wor", "x"]);
        assert!(c.recv.is_empty());
        assert_eq!(c.recv.capacity(), 0, "no buffer kept once consumed");
    }

    #[test]
    fn handler_not_consuming_closes_with_recv_buffer_full() {
        let l = limits();
        let mut c = conn();
        c.received(&[b'a'; 20], cx(&l, 0));
        assert!(c.is_open());
        c.received(&[b'a'; 20], cx(&l, 0));
        match c.step(cx(&l, 0)) {
            Step::Close {
                reason: CloseReason::RecvBufferFull,
                rst: true,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_sends_then_on_sent_once_drained() {
        let l = limits();
        let mut c = conn();
        c.received(b"abc\n", cx(&l, 0));
        c.received(b"de\n", cx(&l, 0));
        assert_eq!(c.queued(), 7);
        c.sent(2, cx(&l, 0));
        assert_eq!(unsent(&c), b"c\nde\n");
        assert_eq!(c.handler.sent, 0);
        c.sent(5, cx(&l, 0));
        assert_eq!(c.handler.sent, 1);
        assert!(!c.has_unsent());
    }

    #[test]
    fn send_over_cap_aborts_and_frees_the_queue() {
        let l = limits();
        let mut c = conn();
        c.received(b"big\n", cx(&l, 0));
        assert_eq!(c.queued(), 0, "queue freed");
        match c.step(cx(&l, 0)) {
            Step::Close {
                reason: CloseReason::SendQueueFull,
                rst: true,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn close_flushes_then_fin_then_waits_for_peer_fin() {
        let l = limits();
        let mut c = conn();
        c.received(b"hi\nclose\nignored\n", cx(&l, 0));
        assert_eq!(c.handler.lines, ["hi", "close"], "nothing delivered after close");
        assert!(matches!(c.step(cx(&l, 0)), Step::Wait), "queue not yet flushed");
        c.sent(3, cx(&l, 0));
        assert!(matches!(c.step(cx(&l, 0)), Step::Fin));
        assert!(c.is_lingering());
        c.received(b"late\n", cx(&l, 0));
        assert!(matches!(c.step(cx(&l, 0)), Step::Wait));
        c.eof();
        match c.step(cx(&l, 0)) {
            Step::Close {
                reason: CloseReason::LocalClose,
                rst: false,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn linger_expires_at_its_deadline() {
        let l = limits();
        let mut c = conn();
        let mut timers = Timers::default();
        c.received(b"close\n", cx(&l, 0));
        assert!(matches!(c.step(cx(&l, 5)), Step::Fin));
        c.arm(7, &mut timers, &l);
        let at = timers.next().unwrap();
        assert_eq!(at, Tick(5).after(l.linger));
        assert!(timers.pop_due(Tick(at.0 - 1)).is_none());
        let (due, token) = timers.pop_due(at).unwrap();
        assert_eq!(token, 7);
        c.wake(due, cx(&l, at.0));
        assert!(matches!(
            c.step(cx(&l, at.0)),
            Step::Close {
                reason: CloseReason::LocalClose,
                ..
            }
        ));
    }

    #[test]
    fn peer_fin_flushes_queue_then_closes_as_peer_closed() {
        let l = limits();
        let mut c = conn();
        c.received(b"last\n", cx(&l, 0));
        c.eof();
        assert!(c.has_unsent(), "queued echo still goes out");
        assert!(matches!(c.step(cx(&l, 0)), Step::Wait));
        c.sent(5, cx(&l, 0));
        match c.step(cx(&l, 0)) {
            Step::Close {
                reason: CloseReason::PeerClosed,
                rst: false,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn abort_drops_queue_and_resets() {
        let l = limits();
        let mut c = conn();
        c.received(b"x\nabort\n", cx(&l, 0));
        assert_eq!(c.queued(), 0);
        assert!(matches!(
            c.step(cx(&l, 0)),
            Step::Close {
                reason: CloseReason::LocalAbort,
                rst: true
            }
        ));
    }

    #[test]
    fn reset_wins_over_a_pending_close_and_reports_once() {
        let l = limits();
        let mut c = conn();
        c.received(b"x\nclose\n", cx(&l, 0));
        c.failed(CloseReason::PeerReset);
        c.failed(CloseReason::Io(std::io::Error::other("later")));
        let Step::Close { reason, rst } = c.step(cx(&l, 0)) else {
            panic!()
        };
        assert!(matches!(reason, CloseReason::PeerReset));
        assert!(!rst);
        assert!(matches!(c.step(cx(&l, 0)), Step::Wait), "closed only once");
        c.finish(reason);
    }

    #[test]
    fn idle_timeout_and_handler_timer() {
        let l = Limits {
            idle_timeout: Some(Duration::from_millis(100)),
            ..limits()
        };
        let mut c = conn();
        let mut timers = Timers::default();
        Conn::<Probe>::session(&mut c.core, &cx(&l, 0)).set_timer(Duration::from_millis(10));
        c.arm(1, &mut timers, &l);
        let mut now = 0;
        while let Some(at) = timers.next() {
            now = at.0;
            let (due, _) = timers.pop_due(at).unwrap();
            c.wake(due, cx(&l, now));
            if !c.is_open() {
                break;
            }
            c.arm(1, &mut timers, &l);
        }
        assert_eq!(now, 100, "idle deadline");
        assert_eq!(c.handler.timers, 9, "timer fired every 10 ms before idle");
        match c.step(cx(&l, now)) {
            Step::Fin => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_timeout_fails_without_on_connected() {
        let l = limits();
        let mut c = Conn::connecting("127.0.0.1:1".parse().unwrap(), Probe::default(), Tick(0), &l);
        let mut timers = Timers::default();
        c.arm(3, &mut timers, &l);
        let (at, _) = timers.pop_due(Tick::NEVER).unwrap();
        c.wake(at, cx(&l, at.0));
        let Step::Close { reason, .. } = c.step(cx(&l, at.0)) else {
            panic!()
        };
        assert!(matches!(reason, CloseReason::ConnectFailed(_)));
    }

    #[test]
    fn shutdown_then_deadline_forces_reset() {
        let l = limits();
        let mut c = conn();
        c.received(b"pending\n", cx(&l, 0));
        c.shutdown();
        assert!(matches!(c.step(cx(&l, 0)), Step::Wait), "still flushing");
        c.force_close();
        assert!(matches!(
            c.step(cx(&l, 0)),
            Step::Close {
                reason: CloseReason::ServerShutdown,
                rst: true
            }
        ));
    }
}
