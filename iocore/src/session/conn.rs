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
//! the linger deadline) → finished. `Aborting` skips to finished. Behind a
//! load balancer speaking the PROXY protocol an accepted connection starts
//! in `AwaitingProxy` (reading its header, within a deadline), then
//! `ProxyReady` (the engine admits it: [`Step::Admit`]), then `Open`.
//!
//! Flow control: while open, input is wanted unless the handler paused it
//! or the send queue went over its high watermark and has not yet drained
//! to its low one ([`Conn::wants_input`]); engines stop reading the socket
//! meanwhile. A queue that makes no progress for the stall timeout ends
//! the session — progress as the kernel sees it: the engine notes the
//! peer's acknowledged byte count when the socket is full
//! ([`Conn::send_blocked`]) and reads it again at every quarter of the
//! timeout without progress ([`Conn::wake`]); a count that moved starts
//! the timeout again.

use std::io::IoSlice;
use std::net::SocketAddr;

use bytes::Bytes;

use super::close::{catch_panic, CloseReason, SendError};
use super::handler::{Handler, Limits, Session, SessionId, Tick};
use super::hub::Hub;
use super::recv_buffer::RecvBuffer;
use super::send_queue::SendQueue;
use super::timers::Timers;
use crate::proxy::ProxyInfo;

#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "websocket")]
mod ws;

/// Where a connection is in its life. Plain, so that the checks made for
/// every message are one comparison; the close reason of the closing
/// phases is in [`Core::rare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Connecting,
    /// Accepted behind a proxy: reading the PROXY header.
    AwaitingProxy,
    /// The PROXY header was read: waiting for the engine to admit the
    /// session under its limits for the client's address.
    ProxyReady,
    /// A transport's opening handshake (a WebSocket upgrade request) is
    /// being read, within a deadline; the handler has not heard of the
    /// session yet.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    Upgrading,
    Open,
    /// Send what is queued, then FIN.
    Closing,
    /// FIN sent; waiting for the peer's FIN.
    Lingering,
    /// Close now.
    Aborting,
    /// Close now, with RST: the peer sees a reset.
    Resetting,
    /// `Step::Close` was returned; nothing more happens.
    Done,
}

/// Flow-control state: a few flags in one byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flow(u8);

impl Flow {
    /// The handler paused input ([`Session::pause_recv`]).
    pub(crate) const PAUSED: Flow = Flow(1);
    /// The send queue went over the high watermark and has not drained to
    /// the low one: input paused, [`Session::is_writable`] false.
    pub(crate) const BACKPRESSURE: Flow = Flow(2);
    /// Input was resumed: offer what the receive buffer holds.
    pub(crate) const OFFER: Flow = Flow(4);
    /// The session speaks WebSocket: sends are framed, input is decoded.
    pub(crate) const WS: Flow = Flow(8);
    /// A WebSocket close frame was queued: nothing more is sent.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) const WS_CLOSE_SENT: Flow = Flow(16);
    /// The WebSocket session is the client's: its frames are masked.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) const WS_CLIENT: Flow = Flow(64);
    /// The session speaks TLS: input is decrypted, sends are sealed.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) const TLS: Flow = Flow(128);
    /// The WebSocket message being offered is a text message.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) const WS_TEXT: Flow = Flow(32);
    /// What the cork cannot hold: a session whose every send is sealed
    /// (TLS) or masked (a WebSocket client).
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) const NO_CORK: Flow = Flow(Flow::WS_CLIENT.0 | Flow::TLS.0);
    /// A transport between the socket and the handler.
    pub(crate) const TRANSPORT: Flow = Flow(Flow::WS.0 | Flow::TLS.0);
    /// A WebSocket session that frames each message for itself (a
    /// client masks, TLS seals): no shared frame.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    const SEALS_EACH: Flow = Flow(Flow::WS_CLIENT.0 | Flow::TLS.0);
    /// Either flag that stops reading from the socket.
    const STOPS_INPUT: Flow = Flow(Flow::PAUSED.0 | Flow::BACKPRESSURE.0);

    pub(crate) fn contains(self, f: Flow) -> bool {
        self.0 & f.0 == f.0
    }
    pub(crate) fn intersects(self, f: Flow) -> bool {
        self.0 & f.0 != 0
    }
    pub(crate) fn insert(&mut self, f: Flow) {
        self.0 |= f.0;
    }
    pub(crate) fn remove(&mut self, f: Flow) {
        self.0 &= !f.0;
    }
}

/// The parts of a connection a [`Session`] handle may touch.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) peer: SocketAddr,
    pub(crate) send: SendQueue,
    pub(crate) phase: Phase,
    /// What few sessions have (boxed: one pointer for the rest): the close
    /// reason once closing, the PROXY header's information.
    rare: Option<Box<Rare>>,
    /// While open, the handler's timer; while connecting or lingering,
    /// the connect or linger deadline (one field: they never coexist).
    pub(crate) timer_at: Tick,
    /// Last time bytes arrived, or input resumed (idle timeout).
    pub(crate) last_active: Tick,
    /// Last time the kernel took queued bytes, or the queue stopped being
    /// empty (stall timeout).
    last_sent: Tick,
    /// The deadline currently scheduled in the worker's [`Timers`].
    wake_at: Tick,
    pub(crate) flow: Flow,
    /// No more input will come: the peer's FIN arrived or linger expired.
    input_done: bool,
    /// When the connection was accepted or its connect began.
    pub(crate) opened: Tick,
    /// Bytes read from the socket.
    pub(crate) bytes_in: u64,
    /// Bytes the kernel took for sending.
    pub(crate) bytes_out: u64,
}

/// The parts of a connection that most sessions never have, or have only
/// at the end.
#[derive(Debug, Default)]
pub(crate) struct Rare {
    /// Why the session ends, once it is closing.
    reason: Option<CloseReason>,
    /// What the PROXY header said, for a session behind a proxy.
    proxy: Option<ProxyInfo>,
    /// The engine admitted the session behind a proxy ([`Conn::admit`]).
    admitted: bool,
    /// The bytes the peer had acknowledged, as the kernel counts them,
    /// when the socket was last found full ([`Conn::send_blocked`]) or at
    /// the last stall check: the stall timeout compares with it.
    acked: Option<u64>,
    /// When the kernel's count was last checked for the stall timeout.
    stall_checked: Tick,
    /// The WebSocket transport's inbound state, for a WebSocket session
    /// (taken out while its input is decoded).
    #[cfg(feature = "websocket")]
    ws: Option<Box<crate::websocket::Layer>>,
    /// The TLS state, for a TLS session (taken out while records are read).
    #[cfg(feature = "tls")]
    tls: Option<Box<tls::TlsLayer>>,
}

impl Core {
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    fn set_reason(&mut self, reason: CloseReason) {
        self.rare().reason = Some(reason);
    }

    /// Whether a close reason was set.
    fn has_reason(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.reason.is_some())
    }

    /// What the PROXY header said, if the session came through a proxy.
    pub(crate) fn proxy(&self) -> Option<&ProxyInfo> {
        self.rare.as_ref()?.proxy.as_ref()
    }

    /// Queues `buf` for sending under the session's limits: over the high
    /// watermark input pauses; over the cap the session is aborted with
    /// [`CloseReason::SendQueueFull`].
    #[inline]
    pub(crate) fn queue(&mut self, buf: Bytes, now: Tick, limits: &Limits) -> Result<(), SendError> {
        #[cfg(feature = "tls")]
        if self.flow.contains(Flow::TLS) {
            return self.tls_queue(buf, now, limits);
        }
        self.queue_raw(buf, now, limits)
    }

    /// [`Core::queue`] of bytes as they go on the wire.
    #[inline]
    pub(crate) fn queue_raw(&mut self, buf: Bytes, now: Tick, limits: &Limits) -> Result<(), SendError> {
        if self.send.is_empty() {
            self.last_sent = now;
        }
        match self.send.push(buf, limits.max_send_queue) {
            Ok(()) => {
                if self.send.len() > limits.send_high_watermark {
                    self.flow.insert(Flow::BACKPRESSURE);
                }
                Ok(())
            }
            Err(_) => {
                self.abort(CloseReason::SendQueueFull);
                Err(SendError::QueueFull)
            }
        }
    }

    /// Queues `buf` (a close frame) past the cap: the close must be said.
    /// Sealed on a TLS session.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) fn push_control(&mut self, buf: Bytes) {
        #[cfg(feature = "tls")]
        let buf = match self.flow.contains(Flow::TLS) {
            true => match self.tls_seal(&buf) {
                Some(records) => records,
                None => return,
            },
            false => buf,
        };
        let _ = self.send.push(buf, usize::MAX);
    }

    /// Graceful close, unless the session is already closing.
    pub(crate) fn close(&mut self, reason: CloseReason) {
        match self.phase {
            Phase::Connecting | Phase::AwaitingProxy | Phase::ProxyReady | Phase::Upgrading => {
                self.abort_with(reason, false)
            }
            Phase::Open => {
                #[cfg(feature = "websocket")]
                if self.flow.contains(Flow::WS) {
                    self.ws_close_frame(&reason);
                }
                #[cfg(feature = "tls")]
                if self.flow.contains(Flow::TLS) {
                    self.tls_close_notify();
                }
                self.phase = Phase::Closing;
                self.set_reason(reason);
            }
            _ => {}
        }
    }

    /// Immediate close with RST, dropping the queue.
    pub(crate) fn abort(&mut self, reason: CloseReason) {
        self.abort_with(reason, true)
    }

    /// Immediate close for `reason` (replacing a graceful close's reason).
    fn abort_with(&mut self, reason: CloseReason, rst: bool) {
        if !matches!(self.phase, Phase::Aborting | Phase::Resetting | Phase::Done) {
            self.send.clear();
            self.phase = match rst {
                true => Phase::Resetting,
                false => Phase::Aborting,
            };
            self.set_reason(reason);
        }
    }

    /// The reason of a closing session, taken once when it is done.
    fn take_reason(&mut self) -> CloseReason {
        self.phase = Phase::Done;
        match self.rare.as_mut().and_then(|r| r.reason.take()) {
            Some(r) => r,
            None => CloseReason::ServerShutdown,
        }
    }
}

/// What the engine must do next for a connection.
#[derive(Debug)]
#[must_use = "the engine must act on the step"]
pub(crate) enum Step {
    /// Nothing: wait for the socket or a timer.
    Wait,
    /// The session did work of its own (it offered input kept while
    /// paused): send what is queued and ask again.
    Continue,
    /// Send FIN (`shutdown(SHUT_WR)`); keep reading and discarding.
    Fin,
    /// The PROXY header was read: admit the session under the limits for
    /// the client's address, then call [`Conn::admit`] (or refuse it with
    /// [`Conn::failed`]) and ask again.
    Admit,
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
pub(crate) struct Context<'a> {
    /// The session's id.
    pub id: SessionId,
    /// The worker's current time.
    pub now: Tick,
    /// The service's per-session limits.
    pub limits: &'a Limits,
    /// The worker's topics and pending publishes.
    pub(crate) hub: &'a Hub,
}

/// One connection: protocol-free state plus the application's handler.
pub(crate) struct Conn<H> {
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
                rare: None,
                timer_at: deadline,
                last_active: now,
                last_sent: now,
                wake_at: Tick::NEVER,
                flow: Flow::default(),
                input_done: false,
                opened: now,
                bytes_in: 0,
                bytes_out: 0,
            },
            recv: RecvBuffer::new(),
            handler,
        }
    }

    /// An accepted connection; call [`Conn::start`] once it is registered.
    pub(crate) fn accepted(peer: SocketAddr, handler: H, now: Tick) -> Conn<H> {
        Conn::new(peer, handler, Phase::Open, Tick::NEVER, now)
    }

    /// An accepted connection from a proxy: it must start with a PROXY
    /// header before `header_deadline` (see [`crate::proxy`]);
    /// when it has, [`Conn::step`] says [`Step::Admit`]. [`Conn::start`]
    /// does nothing for it.
    pub(crate) fn behind_proxy(peer: SocketAddr, handler: H, now: Tick, header_deadline: Tick) -> Conn<H> {
        Conn::new(peer, handler, Phase::AwaitingProxy, header_deadline, now)
    }

    /// An outbound connection whose connect is in progress; call
    /// [`Conn::connected`] when it completes.
    pub(crate) fn connecting(peer: SocketAddr, handler: H, now: Tick, limits: &Limits) -> Conn<H> {
        let deadline = now.after(limits.connect_timeout);
        Conn::new(peer, handler, Phase::Connecting, deadline, now)
    }

    /// Runs one of the handler's callbacks, `f`, on the session. If it
    /// panics, only this session ends: it is reset with
    /// [`CloseReason::HandlerPanicked`], and `otherwise` is returned.
    #[inline(always)]
    fn callback<R>(core: &mut Core, otherwise: R, f: impl FnOnce(&mut Core) -> R) -> R {
        match catch_panic(|| f(&mut *core)) {
            Ok(r) => r,
            Err(what) => {
                core.abort_with(CloseReason::HandlerPanicked(what), true);
                otherwise
            }
        }
    }

    fn session<'a>(core: &'a mut Core, cx: &Context<'a>) -> Session<'a> {
        Session {
            core,
            id: cx.id,
            now: cx.now,
            limits: cx.limits,
            hub: cx.hub,
        }
    }

    /// The peer's address.
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.core.peer
    }

    /// Bytes read from the socket so far.
    pub(crate) fn bytes_received(&self) -> u64 {
        self.core.bytes_in
    }

    /// Bytes the kernel took for sending so far.
    pub(crate) fn bytes_sent(&self) -> u64 {
        self.core.bytes_out
    }

    /// When the connection was accepted, or its connect began.
    pub(crate) fn opened_at(&self) -> Tick {
        self.core.opened
    }

    /// The connection is established and registered: tells the handler
    /// (not yet for one awaiting its PROXY header).
    pub(crate) fn start(&mut self, cx: Context<'_>) {
        if matches!(self.core.phase, Phase::AwaitingProxy | Phase::Upgrading) {
            return;
        }
        debug_assert!(matches!(self.core.phase, Phase::Open));
        Self::callback(&mut self.core, (), |core| {
            self.handler.on_connected(&mut Self::session(core, &cx))
        });
    }

    /// The engine admitted a session whose PROXY header was read
    /// ([`Step::Admit`]): it opens, the handler hears of it, and the bytes
    /// that came after the header are offered.
    pub(crate) fn admit(&mut self, cx: Context<'_>) {
        if self.core.phase != Phase::ProxyReady {
            return;
        }
        self.core.rare().admitted = true;
        #[cfg(feature = "tls")]
        if self.core.flow.contains(Flow::TLS) {
            return self.begin_tls(cx);
        }
        #[cfg(feature = "websocket")]
        if self.core.rare().ws.is_some() {
            return self.begin_upgrade(cx);
        }
        self.open(cx);
    }

    /// What came first (a PROXY header, a handshake) is done: the session
    /// opens, its handler hears of it, and the bytes that came after are
    /// offered.
    fn open(&mut self, cx: Context<'_>) {
        self.core.phase = Phase::Open;
        self.core.timer_at = Tick::NEVER;
        self.core.last_active = cx.now;
        Self::callback(&mut self.core, (), |core| {
            self.handler.on_connected(&mut Self::session(core, &cx))
        });
        if self.is_open() && !self.recv.is_empty() {
            self.deliver_buffered(cx);
        }
    }

    /// The engine refused a session whose PROXY header was read (a limit
    /// for the client's address): it ends at once with RST, before the
    /// handler heard of it.
    pub(crate) fn refuse(&mut self, reason: CloseReason) {
        self.recv.clear();
        self.core.abort_with(reason, true);
    }

    /// What the PROXY header said, if the session came through a proxy.
    pub(crate) fn proxy(&self) -> Option<&ProxyInfo> {
        self.core.proxy()
    }

    /// Whether the engine admitted this session after its PROXY header.
    pub(crate) fn proxy_admitted(&self) -> bool {
        self.core.rare.as_ref().is_some_and(|r| r.admitted)
    }

    /// Bytes at the start of a connection behind a proxy: its header,
    /// maybe whole, maybe followed by the client's first bytes (kept for
    /// the handler).
    #[cold]
    #[inline(never)]
    fn proxy_input(&mut self, data: &[u8]) {
        // One read's worth beyond MAX_HEADER at most: a header that is not
        // whole by then is refused below, and reading stops once it is.
        let _ = self.recv.extend(data, usize::MAX);
        #[cfg(feature = "proxy-protocol")]
        match crate::proxy::parse(self.recv.data(), self.core.peer) {
            crate::proxy::Parsed::More => {}
            crate::proxy::Parsed::Invalid(why) => {
                self.recv.clear();
                self.core.abort_with(CloseReason::ProxyInvalid(why.into()), false);
            }
            crate::proxy::Parsed::Header { info, source, len } => {
                self.recv.consume(len);
                if let Some(client) = source {
                    self.core.peer = client;
                }
                self.core.rare().proxy = Some(info);
                self.core.phase = Phase::ProxyReady;
                self.core.timer_at = Tick::NEVER;
            }
        }
        #[cfg(not(feature = "proxy-protocol"))]
        {
            // Without the feature no connection is made behind a proxy.
            self.recv.clear();
            self.core.abort_with(
                CloseReason::ProxyInvalid("PROXY protocol support is not built in".into()),
                false,
            );
        }
    }

    /// Whether an outbound connect is still in progress.
    pub(crate) fn is_connecting(&self) -> bool {
        matches!(self.core.phase, Phase::Connecting)
    }

    /// The outbound connect completed: the session opens.
    pub(crate) fn connected(&mut self, cx: Context<'_>) {
        #[cfg(feature = "tls")]
        if self.is_connecting() && self.core.flow.contains(Flow::TLS) {
            return self.begin_tls(cx);
        }
        #[cfg(feature = "websocket")]
        if self.is_connecting() && self.core.rare.as_ref().is_some_and(|r| r.ws.is_some()) {
            return self.begin_client_upgrade(cx);
        }
        if self.is_connecting() {
            self.core.phase = Phase::Open;
            self.core.last_active = cx.now;
            self.core.timer_at = Tick::NEVER;
            self.start(cx);
        }
    }

    /// Whether the handler still takes input.
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.core.phase, Phase::Open)
    }

    /// Whether the engine should read from the socket now: not while
    /// connecting or aborting, nor while open with input paused (by the
    /// handler, or by a send queue over its high watermark). A closing
    /// session reads (and discards) until the peer's FIN.
    #[inline]
    pub(crate) fn wants_input(&self) -> bool {
        match self.core.phase {
            Phase::Open => !self.core.input_done && !self.core.flow.intersects(Flow::STOPS_INPUT),
            Phase::Closing | Phase::Lingering | Phase::AwaitingProxy | Phase::Upgrading => {
                !self.core.input_done
            }
            _ => false,
        }
    }

    /// Memory the receive buffer holds (bytes a handler left unconsumed,
    /// and room kept for them).
    #[inline]
    pub(crate) fn recv_capacity(&self) -> usize {
        self.recv.capacity()
    }

    /// Whether the session is open with its input paused, by the handler
    /// or by its send queue.
    #[inline]
    pub(crate) fn input_paused(&self) -> bool {
        self.is_open() && self.core.flow.intersects(Flow::STOPS_INPUT)
    }

    /// Whether the handler is offered input now: open and not paused by
    /// the handler. (A send queue over its high watermark stops reading
    /// from the socket, not the delivery of bytes already read.)
    #[inline]
    fn takes_input(&self) -> bool {
        self.is_open() && !self.core.flow.contains(Flow::PAUSED)
    }

    /// Keeps the unconsumed tail `data` of a read: within
    /// [`Limits::max_recv_buffer`] while the handler takes input; while it
    /// paused input, whatever the engine had already read (one read on the
    /// readiness engines, at most one capped receive on uring) is kept in
    /// full, so that nothing is lost.
    fn keep(&mut self, data: &[u8], limits: &Limits) {
        let max = match self.takes_input() {
            true => limits.max_recv_buffer,
            false => usize::MAX,
        };
        if self.recv.extend(data, max).is_err() {
            self.core.abort(CloseReason::RecvBufferFull);
        }
    }

    /// Whether the session is closed, with FIN sent and awaiting only the
    /// peer's FIN.
    #[cfg(test)]
    pub(crate) fn is_lingering(&self) -> bool {
        self.core.phase == Phase::Lingering
    }

    /// Where the next read should go: into the receive buffer when a
    /// partial message waits there (then the bytes land behind it without a
    /// copy), else `None`: read into the worker's shared scratch buffer and
    /// pass the bytes to [`Conn::received`].
    #[cfg_attr(windows, allow(dead_code))] // the Linux engines
    pub(crate) fn read_target(&mut self, want: usize, limits: &Limits) -> Option<&mut [u8]> {
        // A TLS session's buffer holds plaintext: its reads go to rustls.
        if self.recv.is_empty() || !self.takes_input() || self.core.flow.contains(Flow::TLS) {
            return None;
        }
        Some(self.recv.spare(want, limits.max_recv_buffer))
    }

    /// `data` arrived (read into scratch memory): hands it to the handler
    /// and keeps what it did not consume. Input after a local close is
    /// discarded.
    pub(crate) fn received(&mut self, data: &[u8], cx: Context<'_>) {
        self.core.bytes_in += data.len() as u64;
        if !self.is_open() || data.is_empty() {
            if self.core.phase == Phase::AwaitingProxy && !data.is_empty() {
                self.proxy_input(data);
            }
            #[cfg(feature = "tls")]
            if self.core.phase == Phase::Upgrading && self.core.flow.contains(Flow::TLS) && !data.is_empty() {
                return self.tls_received(data, cx);
            }
            #[cfg(feature = "websocket")]
            if self.core.phase == Phase::Upgrading && !data.is_empty() {
                self.upgrade_input(data, cx);
            }
            return;
        }
        self.core.last_active = cx.now;
        // One test for both transports; a TCP session goes on below.
        if self.core.flow.intersects(Flow::TRANSPORT) {
            return self.transport_received(data, cx);
        }
        if !self.recv.is_empty() || !self.takes_input() {
            // Behind what waits, then offered: the limit applies to what
            // the handler leaves (checked in deliver_buffered), not to the
            // waiting bytes plus this read.
            let _ = self.recv.extend(data, usize::MAX);
            return self.deliver_buffered(cx);
        }
        let mut rest = data;
        while !rest.is_empty() && self.takes_input() {
            let n = Self::callback(&mut self.core, 0, |core| {
                self.handler.on_recv(&mut Self::session(core, &cx), rest)
            });
            if n == 0 {
                break;
            }
            rest = &rest[n.min(rest.len())..];
        }
        if self.is_open() && !rest.is_empty() {
            self.keep(rest, cx.limits);
        }
    }

    /// A read on an open session with a transport (TLS, WebSocket): the
    /// lower layer takes it.
    #[inline(never)]
    fn transport_received(&mut self, data: &[u8], cx: Context<'_>) {
        #[cfg(feature = "tls")]
        if self.core.flow.contains(Flow::TLS) {
            return self.tls_received(data, cx);
        }
        #[cfg(feature = "websocket")]
        if self.core.flow.contains(Flow::WS) {
            return self.ws_received(data, cx);
        }
        let _ = (data, cx);
    }

    /// `n` bytes were read into the slice [`Conn::read_target`] returned.
    #[cfg_attr(windows, allow(dead_code))] // the Linux engines
    pub(crate) fn received_in_place(&mut self, n: usize, cx: Context<'_>) {
        self.core.bytes_in += n as u64;
        self.recv.commit(n);
        self.core.last_active = cx.now;
        self.deliver_buffered(cx);
    }

    fn deliver_buffered(&mut self, cx: Context<'_>) {
        #[cfg(feature = "websocket")]
        if self.core.flow.contains(Flow::WS) {
            return self.ws_buffered(cx);
        }
        while !self.recv.is_empty() && self.takes_input() {
            let data = self.recv.data();
            let n = Self::callback(&mut self.core, 0, |core| {
                self.handler.on_recv(&mut Self::session(core, &cx), data)
            });
            if n == 0 {
                break;
            }
            self.recv.consume(n.min(self.recv.len()));
        }
        if self.takes_input() && self.recv.len() >= cx.limits.max_recv_buffer {
            self.core.abort(CloseReason::RecvBufferFull);
        }
    }

    /// The peer sent FIN: no more input. An open session closes after its
    /// queue is flushed, with [`CloseReason::PeerClosed`].
    pub(crate) fn eof(&mut self) {
        self.core.input_done = true;
        self.recv.clear();
        self.core.close(CloseReason::PeerClosed);
    }

    /// The socket failed (reset or another error): the session ends now.
    pub(crate) fn failed(&mut self, reason: CloseReason) {
        self.core.abort_with(reason, false);
    }

    /// The server is stopping: flush and close; connects in progress end.
    pub(crate) fn shutdown(&mut self) {
        self.core.close(CloseReason::ServerShutdown);
    }

    /// The stop deadline passed: whatever is left is reset now.
    pub(crate) fn force_close(&mut self) {
        if self.core.phase == Phase::Done {
            return;
        }
        if !self.core.has_reason() {
            self.core.set_reason(CloseReason::ServerShutdown);
        }
        self.core.phase = Phase::Resetting;
        self.core.send.clear();
    }

    /// Queues `buf` as [`Session::send`] would, for a message from outside
    /// the session's callbacks (another thread, or a topic's fan-out).
    pub(crate) fn deliver(&mut self, buf: Bytes, cx: Context<'_>) -> Result<(), SendError> {
        if !self.is_open() {
            return Err(SendError::Closed);
        }
        // Behind what the session's own handler corked, if it is the one
        // being handed input now.
        Self::session(&mut self.core, &cx).send(buf)
    }

    /// Queues a topic's publish `buf`: as it is on a TCP session; on a
    /// WebSocket session as the frame in `frame`, made from `buf` by the
    /// first WebSocket subscriber and shared by the others.
    #[inline]
    pub(crate) fn deliver_shared(
        &mut self,
        buf: &Bytes,
        frame: &mut Option<Bytes>,
        cx: Context<'_>,
    ) -> Result<(), SendError> {
        #[cfg(feature = "websocket")]
        if self.core.flow.contains(Flow::WS) && !self.core.flow.intersects(Flow::SEALS_EACH) && self.is_open()
        {
            let frame = frame
                .get_or_insert_with(|| crate::websocket::frame_message(crate::websocket::Opcode::Binary, buf))
                .clone();
            return Self::session(&mut self.core, &cx).send_raw(frame);
        }
        let _ = frame;
        self.deliver(buf.clone(), cx)
    }

    /// Whether a transport holds bytes of a message the handler left.
    #[inline]
    fn holds_message(&self) -> bool {
        #[cfg(feature = "websocket")]
        if self.core.flow.contains(Flow::WS) {
            return self.ws_holds();
        }
        false
    }

    /// The engine wrote `n` bytes of `corked` (the worker's cork, held for
    /// this session) straight to the socket: the rest is queued, then the
    /// progress is counted as for a queued send. A session that ended
    /// meanwhile drops them, as it dropped its queue.
    pub(crate) fn sent_corked(&mut self, corked: &[u8], n: usize, cx: Context<'_>) {
        // The send may have failed the session meanwhile.
        if !self.takes_corked() {
            return;
        }
        if n < corked.len() {
            let rest = Bytes::copy_from_slice(&corked[n..]);
            if self.core.queue(rest, cx.now, cx.limits).is_err() {
                return;
            }
        }
        self.send_progress(n, cx);
    }

    /// Whether corked bytes of this session would still be sent.
    pub(crate) fn takes_corked(&self) -> bool {
        matches!(self.core.phase, Phase::Open | Phase::Closing)
    }

    /// Closes gracefully from outside the session's callbacks.
    pub(crate) fn close_from_outside(&mut self, reason: CloseReason) {
        self.core.close(reason);
    }

    /// Unsent bytes are queued and the session may still send.
    pub(crate) fn has_unsent(&self) -> bool {
        // Upgrading: a WebSocket client's request waits to go out.
        !self.core.send.is_empty()
            && matches!(self.core.phase, Phase::Open | Phase::Closing | Phase::Upgrading)
    }

    /// Unsent bytes queued.
    pub(crate) fn queued(&self) -> usize {
        self.core.send.len()
    }

    /// Fills `out` with the unsent buffers, for one gather write.
    pub(crate) fn send_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        self.core.send.io_slices(out)
    }

    /// The unsent bytes when one buffer holds them all.
    pub(crate) fn sole_unsent(&self) -> Option<&[u8]> {
        self.core.send.sole()
    }

    /// The kernel took all it could of the queue: the socket is full and
    /// bytes wait. `acked` is how many bytes the peer has acknowledged so
    /// far, where the OS tells (`TCP_INFO` on Linux); the stall timeout
    /// compares it with the count when it comes (see [`Conn::wake`]).
    #[cold]
    #[cfg_attr(windows, allow(dead_code))] // the Linux engines
    pub(crate) fn send_blocked(&mut self, acked: Option<u64>) {
        if let Some(acked) = acked {
            self.core.rare().acked = Some(acked);
        }
    }

    /// The kernel took `n` more bytes. When the queue drains to its low
    /// watermark after being over the high one the handler hears
    /// [`Handler::on_writable`]; when it empties, [`Handler::on_sent`].
    pub(crate) fn sent(&mut self, n: usize, cx: Context<'_>) {
        self.core.send.advance(n);
        self.send_progress(n, cx);
    }

    #[inline]
    fn send_progress(&mut self, n: usize, cx: Context<'_>) {
        self.core.bytes_out += n as u64;
        if n > 0 {
            self.core.last_sent = cx.now;
        }
        if self.core.flow.contains(Flow::BACKPRESSURE) {
            self.drained_to_low_watermark(cx);
        }
        if self.core.send.is_empty() && self.is_open() {
            Self::callback(&mut self.core, (), |core| {
                self.handler.on_sent(&mut Self::session(core, &cx))
            });
        }
    }

    /// Backpressure ends once the queue is down to its low watermark:
    /// input resumes and the handler hears [`Handler::on_writable`].
    #[cold]
    fn drained_to_low_watermark(&mut self, cx: Context<'_>) {
        if self.core.send.len() <= cx.limits.send_low_watermark {
            self.core.flow.remove(Flow::BACKPRESSURE);
            self.core.last_active = cx.now;
            if self.is_open() {
                Self::callback(&mut self.core, (), |core| {
                    self.handler.on_writable(&mut Self::session(core, &cx))
                });
            }
        }
    }

    /// Whether there are unsent bytes a new send could take (none are
    /// lent out to a send in flight, and the session may still send).
    pub(crate) fn can_lend(&self) -> bool {
        self.core.send.has_unlent() && self.core.send.lent() == 0 && self.has_unsent()
    }

    /// For a completion engine: moves the unsent buffers (at most `max`)
    /// into `out` for one send; see [`SendQueue::lend`]. Returns the offset
    /// into `out[0]`.
    pub(crate) fn lend_unsent(&mut self, out: &mut Vec<Bytes>, max: usize) -> usize {
        self.core.send.lend(out, max)
    }

    /// The send of lent buffers completed, taking `n` bytes (fewer than
    /// lent is a partial send: the rest goes back to the front). When the
    /// queue empties the handler hears [`Handler::on_sent`].
    pub(crate) fn send_completed(&mut self, bufs: &mut Vec<Bytes>, offset: usize, n: usize, cx: Context<'_>) {
        self.core.send.give_back(bufs, offset, n);
        self.send_progress(n, cx);
    }

    /// What the engine must do next; see [`Step`].
    #[inline(always)]
    pub(crate) fn step(&mut self, cx: Context<'_>) -> Step {
        if self.core.flow.contains(Flow::OFFER) && self.offer_kept_input(cx) {
            return Step::Continue;
        }
        if self.core.phase == Phase::Open {
            return Step::Wait;
        }
        self.step_closing(cx)
    }

    /// [`Conn::step`] once the session is not simply open.
    #[inline(never)]
    fn step_closing(&mut self, cx: Context<'_>) -> Step {
        match self.core.phase {
            Phase::Closing if self.core.send.is_empty() => {
                if self.core.input_done {
                    // The peer already sent FIN: closing now sends ours
                    // after the flushed data, with nothing left to read.
                    let reason = self.core.take_reason();
                    Step::Close { reason, rst: false }
                } else {
                    self.core.phase = Phase::Lingering;
                    self.core.timer_at = cx.now.after(cx.limits.linger);
                    Step::Fin
                }
            }
            Phase::Lingering if self.core.input_done => {
                let reason = self.core.take_reason();
                Step::Close { reason, rst: false }
            }
            Phase::Aborting | Phase::Resetting => {
                let rst = self.core.phase == Phase::Resetting;
                let reason = self.core.take_reason();
                Step::Close { reason, rst }
            }
            Phase::ProxyReady => Step::Admit,
            _ => Step::Wait,
        }
    }

    /// Input was resumed: offers the bytes kept meanwhile, if any; returns
    /// whether it did.
    #[cold]
    fn offer_kept_input(&mut self, cx: Context<'_>) -> bool {
        self.core.flow.remove(Flow::OFFER);
        self.core.last_active = cx.now;
        if self.takes_input() && (!self.recv.is_empty() || self.holds_message()) {
            self.deliver_buffered(cx);
            return true;
        }
        false
    }

    /// Tells the handler the session ended. Call exactly once, after
    /// [`Step::Close`], with its reason.
    pub(crate) fn finish(mut self, reason: CloseReason) {
        if let Err(what) = catch_panic(|| self.handler.on_disconnected(reason)) {
            tracing::error!(peer = %self.core.peer, panic = %what, "a handler panicked in on_disconnected");
        }
    }

    /// Whether the timer entry `at` is this session's stall check, due
    /// now (see [`Conn::wake`]): an engine that writes again only after a
    /// writable report tries a write first, for the kernel may have made
    /// room without reporting it.
    pub(crate) fn stall_check_due(&self, at: Tick, cx: Context<'_>) -> bool {
        at == self.core.wake_at
            && matches!(self.core.phase, Phase::Open | Phase::Closing)
            && cx.now >= self.stall_check_at(cx.limits)
    }

    /// When the queue's lack of progress is next checked (see
    /// [`Conn::wake`]), if it is not empty: a quarter of the stall timeout
    /// after the last progress or the last check.
    #[inline]
    fn stall_check_at(&self, limits: &Limits) -> Tick {
        match limits.send_stall_timeout {
            Some(t) if !self.core.send.is_empty() => {
                let since = match &self.core.rare {
                    Some(r) => r.stall_checked.max(self.core.last_sent),
                    None => self.core.last_sent,
                };
                since.after(t / 4)
            }
            _ => Tick::NEVER,
        }
    }

    /// The stall check (see [`Conn::wake`]): if the peer's acknowledged
    /// count moved since it was noted (or was never noted), progress
    /// counts from `now`; a queue without progress for the whole timeout
    /// ends the session.
    #[cold]
    fn stall_check(&mut self, acked: Option<u64>, now: Tick, limits: &Limits) {
        let rare = self.core.rare();
        rare.stall_checked = now;
        if let Some(acked) = acked {
            if rare.acked.replace(acked) != Some(acked) {
                self.core.last_sent = now;
                return;
            }
        }
        let Some(timeout) = limits.send_stall_timeout else {
            return;
        };
        if now >= self.core.last_sent.after(timeout) {
            self.core.abort(CloseReason::SendStalled);
        }
    }

    /// The earliest time this connection needs [`Conn::wake`].
    #[inline]
    fn next_deadline(&self, limits: &Limits) -> Tick {
        match self.core.phase {
            Phase::Open => {
                let mut at = self.core.timer_at.min(self.stall_check_at(limits));
                if let Some(t) = limits.idle_timeout {
                    if self.wants_input() {
                        at = at.min(self.core.last_active.after(t));
                    }
                }
                at
            }
            Phase::Closing => self.stall_check_at(limits),
            Phase::Connecting | Phase::Lingering | Phase::AwaitingProxy | Phase::Upgrading => {
                self.core.timer_at
            }
            _ => Tick::NEVER,
        }
    }

    /// Makes sure `timers` will wake this connection (slot `token`) at its
    /// next deadline. Call after anything that may have moved it.
    #[inline(always)]
    pub(crate) fn arm(&mut self, token: u64, timers: &mut Timers, limits: &Limits) {
        // No timer, nothing queued and no idle timeout: no deadline in any
        // phase (the common case, checked inline).
        if self.core.timer_at == Tick::NEVER && self.core.send.is_empty() && limits.idle_timeout.is_none() {
            return;
        }
        self.arm_deadline(token, timers, limits);
    }

    #[inline(never)]
    fn arm_deadline(&mut self, token: u64, timers: &mut Timers, limits: &Limits) {
        let at = self.next_deadline(limits);
        if at < self.core.wake_at {
            self.core.wake_at = at;
            timers.schedule(at, token);
        }
    }

    /// A timer entry for this connection fired at `at`. Stale entries
    /// (superseded by an earlier one) are ignored.
    ///
    /// The stall check: `acked` asks the socket how many bytes the peer
    /// has acknowledged. While bytes wait, the engine learns of progress
    /// only when the socket has room for a good part of its buffer again,
    /// which a peer reading slowly (through a small window, say) may take
    /// longer than [`Limits::send_stall_timeout`] to make, though it reads
    /// all along. So after each quarter of the timeout without progress
    /// the count is read: if it moved since it was last noted (when the
    /// socket was found full, or at the last check), or was never noted,
    /// the timeout starts again; a session ends as stalled once the count
    /// has stood still for the whole timeout — between one and one and a
    /// quarter timeouts after the peer's last acknowledgment. Where the OS
    /// gives no count (`None`), the engine's own view decides: the kernel
    /// took none of the queue for the timeout.
    pub(crate) fn wake(&mut self, at: Tick, cx: Context<'_>, acked: impl FnOnce() -> Option<u64>) {
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
            Phase::Lingering if now >= self.core.timer_at => self.core.input_done = true,
            Phase::AwaitingProxy if now >= self.core.timer_at => {
                self.recv.clear();
                self.core.abort_with(CloseReason::ProxyTimeout, false);
            }
            Phase::Upgrading if now >= self.core.timer_at => {
                self.recv.clear();
                self.core.abort_with(CloseReason::HandshakeTimeout, false);
            }
            Phase::Open | Phase::Closing if now >= self.stall_check_at(cx.limits) => {
                self.stall_check(acked(), now, cx.limits);
                // A handler's timer due now is armed again and fires
                // next turn.
            }
            Phase::Open => {
                if let Some(idle) = cx.limits.idle_timeout {
                    if self.wants_input() && now >= self.core.last_active.after(idle) {
                        self.core.close(CloseReason::IdleTimeout);
                        return;
                    }
                }
                if now >= self.core.timer_at {
                    self.core.timer_at = Tick::NEVER;
                    Self::callback(&mut self.core, (), |core| {
                        self.handler.on_timer(&mut Self::session(core, &cx))
                    });
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
        writable: usize,
        timers: usize,
        recv_while_paused: usize,
    }

    impl Handler for Probe {
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            if s.is_recv_paused() {
                self.recv_while_paused += 1;
            }
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                return 0;
            };
            let line = String::from_utf8_lossy(&data[..nl]).into_owned();
            match line.as_str() {
                "close" => s.close(),
                "abort" => s.abort(),
                "pause" => s.pause_recv(),
                "violate" => s.close_with(CloseReason::protocol("a line the protocol forbids")),
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
        fn on_writable(&mut self, s: &mut Session<'_>) {
            assert!(s.is_writable());
            self.writable += 1;
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
        thread_local! {
            static HUB: &'static Hub = Box::leak(Box::new(Hub::new(Default::default())));
        }
        Context {
            id: SessionId::new(0, 1),
            now: Tick(now),
            limits: l,
            hub: HUB.with(|h| *h),
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
    fn a_read_completing_a_buffered_message_is_offered_before_the_limit_applies() {
        let l = limits();
        let mut c = conn();
        c.received(b"partial", cx(&l, 0));
        // 7 buffered + 40 read > 32, but the handler consumes all but 2.
        c.received(b" line\nsecond line\nthird line\nfou", cx(&l, 0));
        assert!(c.is_open(), "only what is left counts against the limit");
        assert_eq!(c.handler.lines, ["partial line", "second line", "third line"]);
        assert_eq!(c.recv.data(), b"fou");
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
        c.wake(due, cx(&l, at.0), || None);
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
            c.wake(due, cx(&l, now), || None);
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
        c.wake(at, cx(&l, at.0), || None);
        let Step::Close { reason, .. } = c.step(cx(&l, at.0)) else {
            panic!()
        };
        assert!(matches!(reason, CloseReason::ConnectFailed(_)));
    }

    fn flow_limits() -> Limits {
        Limits {
            max_send_queue: 64,
            send_high_watermark: 16,
            send_low_watermark: 8,
            ..limits()
        }
    }

    #[test]
    fn backpressure_pauses_input_between_the_watermarks() {
        let l = flow_limits();
        let mut c = conn();
        c.received(b"0123456789\n", cx(&l, 0));
        assert!(
            c.wants_input() && !c.input_paused(),
            "11 queued: under the high watermark"
        );
        c.received(b"abcdefg\n", cx(&l, 0));
        assert_eq!(c.queued(), 19);
        assert!(!c.wants_input() && c.input_paused(), "over the high watermark");
        // Bytes the engine had already read are still delivered.
        c.received(b"x\n", cx(&l, 0));
        assert_eq!(c.handler.lines.last().unwrap(), "x");
        assert_eq!(c.queued(), 21);
        c.sent(12, cx(&l, 1));
        assert!(!c.wants_input(), "9 left: still above the low watermark");
        assert_eq!(c.handler.writable, 0);
        c.sent(1, cx(&l, 2));
        assert!(c.wants_input(), "8 left: at the low watermark");
        assert_eq!((c.handler.writable, c.handler.sent), (1, 0));
        c.sent(8, cx(&l, 3));
        assert_eq!((c.handler.writable, c.handler.sent), (1, 1), "on_sent once empty");
    }

    #[test]
    fn handler_pause_keeps_input_and_offers_it_after_resume() {
        let l = limits();
        let mut c = conn();
        c.received(b"one\npause\ntwo\nthree\n", cx(&l, 0));
        assert_eq!(c.handler.lines, ["one", "pause"]);
        assert!(!c.wants_input());
        // A read already under way is kept in full, past max_recv_buffer.
        let more = b"4\n".repeat(20);
        c.received(&more, cx(&l, 0));
        assert!(c.is_open(), "kept, not refused");
        assert!(
            matches!(c.step(cx(&l, 0)), Step::Wait),
            "nothing offered while paused"
        );
        Conn::<Probe>::session(&mut c.core, &cx(&l, 0)).resume_recv();
        assert!(matches!(c.step(cx(&l, 1)), Step::Continue), "kept input offered");
        assert_eq!(c.handler.recv_while_paused, 0);
        assert_eq!(c.handler.lines.len(), 4 + 20);
        assert_eq!(c.handler.lines[2..4], ["two", "three"]);
        assert!(c.wants_input());
        assert!(matches!(c.step(cx(&l, 1)), Step::Wait));
        assert!(c.recv.is_empty());
    }

    /// Limits with a 100 ms stall timeout, and a session with bytes queued
    /// at 0 ms (its echo of a line).
    fn stalling() -> (Limits, Conn<Probe>, Timers) {
        let l = Limits {
            send_stall_timeout: Some(Duration::from_millis(100)),
            ..limits()
        };
        let mut c = conn();
        c.received(b"hello\n", cx(&l, 0));
        (l, c, Timers::default())
    }

    #[test]
    fn a_queue_without_progress_ends_the_session_after_the_stall_timeout() {
        let (l, mut c, mut timers) = stalling();
        // No count from the OS: the engine's view decides. The kernel
        // takes two bytes at 50 ms: the stall starts again then, and the
        // queue is checked every 25 ms until 100 ms have passed without.
        c.sent(2, cx(&l, 50));
        let closed = run_stall_checks(&mut c, &mut timers, &l, |_| None);
        assert_eq!(closed, 150);
    }

    /// Fires the session's deadlines in order with `acked(now)` as the
    /// kernel's count, until the session closes as stalled; returns when.
    fn run_stall_checks(
        c: &mut Conn<Probe>,
        timers: &mut Timers,
        l: &Limits,
        mut acked: impl FnMut(u64) -> Option<u64>,
    ) -> u64 {
        let mut checks = Vec::new();
        loop {
            c.arm(1, timers, l);
            let at = timers.next().expect("a deadline while bytes wait");
            let (due, _) = timers.pop_due(at).unwrap();
            c.wake(due, cx(l, at.0), || acked(at.0));
            if c.core.phase == Phase::Resetting {
                let Step::Close { reason, rst } = c.step(cx(l, at.0)) else {
                    panic!("closing")
                };
                assert!(matches!(reason, CloseReason::SendStalled) && rst);
                return at.0;
            }
            checks.push(at.0);
            assert!(checks.len() < 100, "never closed; checks at {checks:?}");
        }
    }

    /// The stall is judged from the peer's acknowledged count when the OS
    /// gives it: a peer whose count moves is kept however long the engine
    /// sees no progress; once it stands still, the session is closed one
    /// timeout after the check that last saw it move — between one and one
    /// and a quarter timeouts after the peer's last acknowledgment.
    #[test]
    fn the_stall_timeout_counts_what_the_peer_acknowledged() {
        // The socket is found full at 0 with 1000 bytes acknowledged; the
        // peer acknowledges 10 more bytes every 40 ms until 500 ms, then
        // nothing. Checks come every 25 ms.
        let (l, mut c, mut timers) = stalling();
        c.send_blocked(Some(1000));
        let count = |now: u64| 1000 + 10 * (now.min(500) / 40);
        let closed = run_stall_checks(&mut c, &mut timers, &l, |now| Some(count(now)));
        // The last acknowledgment came at 480; the check at 500 saw it.
        assert_eq!(closed, 600);
        assert!(c.core.bytes_out == 0, "the engine itself saw no progress");

        // A peer that takes nothing after the socket filled: the count
        // stands still from the first check, closed after one timeout.
        let (l, mut c, mut timers) = stalling();
        c.send_blocked(Some(7));
        assert_eq!(run_stall_checks(&mut c, &mut timers, &l, |_| Some(7)), 100);

        // The count was never noted (the socket filled unseen): the first
        // check notes it and the timeout starts again.
        let (l, mut c, mut timers) = stalling();
        assert_eq!(run_stall_checks(&mut c, &mut timers, &l, |_| Some(7)), 125);
    }

    #[test]
    fn an_empty_queue_never_stalls() {
        let l = Limits {
            send_stall_timeout: Some(Duration::from_millis(100)),
            ..limits()
        };
        let mut c = conn();
        let mut timers = Timers::default();
        c.received(b"hi\n", cx(&l, 0));
        c.sent(3, cx(&l, 1));
        c.arm(1, &mut timers, &l);
        assert_eq!(timers.next(), None, "nothing queued, no deadline");
    }

    #[test]
    fn close_with_names_the_reason_given_to_on_disconnected() {
        let l = limits();
        let mut c = conn();
        c.received(b"violate\nignored\n", cx(&l, 0));
        assert_eq!(c.handler.lines, ["violate"]);
        assert!(matches!(c.step(cx(&l, 0)), Step::Fin));
        c.eof();
        let Step::Close { reason, rst } = c.step(cx(&l, 0)) else {
            panic!()
        };
        assert!(!rst);
        assert_eq!(reason.kind(), crate::CloseKind::ProtocolViolation);
        assert_eq!(
            reason.to_string(),
            "protocol violation: a line the protocol forbids"
        );
        c.finish(reason);
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
