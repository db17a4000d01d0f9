//! The application's side of a session: the [`Handler`] trait and the
//! [`Session`] handle it is given, plus the identifiers, limits and time
//! values they use.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::close::{CloseReason, SendError};
use super::conn::{Core, Flow, Phase};
use super::cork::Cork;
use super::hub::Hub;
use crate::config::{ConfigError, Setting};
use crate::proxy::ProxyInfo;

/// Per-session application logic, in the spirit of the seeds' `Session`.
///
/// A server makes one handler per accepted connection with its factory; a
/// client makes one per [`crate::ClientHandle::connect`]. All calls for one
/// session happen on the worker thread that owns it, one at a time, so a
/// handler needs no locks. Callbacks never block: anything slow belongs on
/// another thread that reports back.
///
/// Order of calls: `on_connected` once; then any number of `on_recv`,
/// `on_sent`, `on_writable` and `on_timer`; then `on_disconnected` exactly
/// once. A client whose connect fails gets only `on_disconnected`
/// ([`CloseReason::ConnectFailed`]).
///
/// # Flow control
///
/// A session whose send queue holds more than
/// [`Limits::send_high_watermark`] bytes stops taking input from its
/// socket until the queue drains to [`Limits::send_low_watermark`]; TCP's
/// window then slows the peer, so a peer that sends without reading the
/// replies cannot grow the server's memory. Bytes already taken from the
/// socket when the pause begins are still delivered. Nothing is needed
/// from a handler that only answers its input.
///
/// A handler that produces data on its own (a broadcast, a download)
/// checks [`Session::is_writable`] and stops queueing while it is false;
/// [`Handler::on_writable`] says when to go on. Whatever it queues beyond
/// [`Limits::max_send_queue`] closes the session
/// ([`CloseReason::SendQueueFull`]).
///
/// A handler can also stop its input itself with [`Session::pause_recv`]
/// (say while a job for this session runs elsewhere) and resume it with
/// [`Session::resume_recv`]; no `on_recv` comes in between, and bytes that
/// had already arrived are offered after the resume, in order.
///
/// # Panics
///
/// A panic in a callback ends only its session: the worker catches it,
/// resets the connection (queued bytes are dropped) and calls
/// `on_disconnected` with [`CloseReason::HandlerPanicked`] and the panic's
/// message, so the handler can still give back what it holds (a panic
/// there is caught and logged too). Every other session on the worker goes
/// on. The sessions' closes are counted under `handler_panicked` and
/// logged at `error` level (at most once a second per worker, with how
/// many were held back). A panic in the server's factory refuses that one
/// connection; a panic in a client's `make` closure means no session
/// ([`crate::ConnectError::NotOpened`]).
///
/// This needs unwinding: built with `panic = "abort"`, a panic ends the
/// process. And what the handler shares with other sessions (through an
/// `Arc<Mutex<_>>`, say) may be left half-updated by the panic, as after
/// any caught panic: a poisoned mutex says so.
pub trait Handler: 'static {
    /// The connection is established. The session may send right away.
    fn on_connected(&mut self, session: &mut Session<'_>) {
        let _ = session;
    }

    /// Bytes arrived. `data` holds everything received and not yet
    /// consumed, oldest first; return how many leading bytes were consumed.
    /// The rest stays buffered and is offered again, followed by newer
    /// bytes (TCP has no message boundaries: a message may be cut anywhere).
    /// While the handler keeps consuming and bytes remain, it is called
    /// again at once, so consuming one message per call is fine. Leaving
    /// more than [`Limits::max_recv_buffer`] bytes closes the session with
    /// [`CloseReason::RecvBufferFull`].
    fn on_recv(&mut self, session: &mut Session<'_>, data: &[u8]) -> usize;

    /// Everything queued so far has been handed to the kernel (the send
    /// queue is empty).
    fn on_sent(&mut self, session: &mut Session<'_>) {
        let _ = session;
    }

    /// The send queue, which had gone over [`Limits::send_high_watermark`]
    /// ([`Session::is_writable`] was false), has drained to
    /// [`Limits::send_low_watermark`]: queue more here. Input from the
    /// socket resumes at the same moment (unless the handler paused it).
    fn on_writable(&mut self, session: &mut Session<'_>) {
        let _ = session;
    }

    /// The timer set with [`Session::set_timer`] expired.
    fn on_timer(&mut self, session: &mut Session<'_>) {
        let _ = session;
    }

    /// The session ended; called exactly once, last. Its socket is closed.
    fn on_disconnected(&mut self, reason: CloseReason) {
        let _ = reason;
    }
}

impl<H: Handler + ?Sized> Handler for Box<H> {
    fn on_connected(&mut self, session: &mut Session<'_>) {
        (**self).on_connected(session)
    }
    fn on_recv(&mut self, session: &mut Session<'_>, data: &[u8]) -> usize {
        (**self).on_recv(session, data)
    }
    fn on_sent(&mut self, session: &mut Session<'_>) {
        (**self).on_sent(session)
    }
    fn on_writable(&mut self, session: &mut Session<'_>) {
        (**self).on_writable(session)
    }
    fn on_timer(&mut self, session: &mut Session<'_>) {
        (**self).on_timer(session)
    }
    fn on_disconnected(&mut self, reason: CloseReason) {
        (**self).on_disconnected(reason)
    }
}

/// Identifies a session across the whole server: the worker thread that
/// owns it, its slot there and that slot's reuse count. Small and `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// Builds the id of the session in `token`'s slot on `worker`.
    pub(crate) fn new(worker: usize, token: u64) -> SessionId {
        debug_assert!(token >> 56 == 0, "token beyond slot and generation");
        SessionId(((worker as u64 & 0xFF) << 56) | token)
    }

    /// Index of the worker thread that owns the session.
    pub fn worker(self) -> usize {
        (self.0 >> 56) as usize
    }

    /// The session's token on its worker (slot and generation).
    pub(crate) fn token(self) -> u64 {
        self.0 & ((1 << 56) - 1)
    }

    /// The id as one number (for logs and maps); see
    /// [`SessionId::from_u64`].
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id that [`SessionId::as_u64`] gave (say, read back from a
    /// message). An id that names no live session is refused where it is
    /// used, never taken for another session.
    pub fn from_u64(raw: u64) -> SessionId {
        SessionId(raw)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.0 & 0xFFFF_FFFF;
        let generation = (self.0 >> 32) & 0xFF_FFFF;
        write!(f, "w{}#{}.{}", self.worker(), slot, generation)
    }
}

/// A point in time as whole milliseconds since the worker started. The
/// session layer never reads a clock; engines pass the time in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub(crate) struct Tick(pub u64);

impl Tick {
    /// Later than any real time: "no deadline".
    pub(crate) const NEVER: Tick = Tick(u64::MAX);

    /// This time plus `d` (rounded up to a whole millisecond).
    pub(crate) fn after(self, d: Duration) -> Tick {
        let ms = d.as_nanos().div_ceil(1_000_000).min(u64::MAX as u128) as u64;
        Tick(self.0.saturating_add(ms))
    }

    /// Time from `self` until `later` (zero if `later` is not later).
    pub(crate) fn until(self, later: Tick) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

/// Per-session resource limits, enforced by the session layer.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most unconsumed received bytes kept per session (a partial message
    /// can be at most this long). Default 64 KiB.
    pub max_recv_buffer: usize,
    /// Most unsent bytes queued per session: the hard cap on what a
    /// handler queues faster than the peer reads; over it the session is
    /// closed with [`CloseReason::SendQueueFull`]. Default 1 MiB.
    pub max_send_queue: usize,
    /// With more than this many unsent bytes queued, the session stops
    /// taking input from its socket ([`Session::is_writable`] turns false)
    /// until the queue drains to [`Limits::send_low_watermark`]. At most
    /// `max_send_queue`. Default 64 KiB.
    pub send_high_watermark: usize,
    /// Input resumes (and [`Handler::on_writable`] is called) when a
    /// paused session's queue has drained to this many bytes. Below
    /// `send_high_watermark`. Default 32 KiB.
    pub send_low_watermark: usize,
    /// Close a session whose peer took none of its queued bytes for this
    /// long ([`CloseReason::SendStalled`]): the write side of slowloris.
    /// Judged by what the peer acknowledged where the OS tells (Linux:
    /// the session ends between one and one and a quarter timeouts after
    /// the peer's last acknowledgment, however seldom the socket reports
    /// room), else by the engine's view of the kernel taking bytes; see
    /// the README's "Running in production". On Linux the kernel is given
    /// the same timeout for the bytes it already holds (`TCP_USER_TIMEOUT`):
    /// a peer that vanished with bytes in flight ends the session with
    /// [`CloseReason::Io`] (timed out) within about this long, where the
    /// kernel alone would retransmit for many minutes. `None` waits
    /// forever. Default 30 s.
    pub send_stall_timeout: Option<Duration>,
    /// Close sessions that receive nothing for this long (time with input
    /// paused does not count). Default: never.
    pub idle_timeout: Option<Duration>,
    /// After a local close sent FIN, how long to keep reading (and
    /// discarding) while waiting for the peer's FIN, so that the peer's
    /// late data cannot make the kernel reset the connection before our
    /// last bytes are read. Default 2 s.
    pub linger: Duration,
    /// How long an outbound connect may take. Default 10 s.
    pub connect_timeout: Duration,
}

impl Limits {
    /// Checks that the limits make sense together; the error names the
    /// one that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Both are counted in 32 bits (cursors, the per-session gauges).
        const MAX: usize = 1 << 31;
        if self.max_recv_buffer == 0 || self.max_recv_buffer > MAX {
            return Err(ConfigError::new(
                Setting::MaxRecvBuffer,
                "must be between 1 byte and 2 GiB",
            ));
        }
        if self.max_send_queue == 0 || self.max_send_queue > MAX {
            return Err(ConfigError::new(
                Setting::MaxSendQueue,
                "must be between 1 byte and 2 GiB",
            ));
        }
        if self.send_high_watermark > self.max_send_queue {
            return Err(ConfigError::new(
                Setting::SendHighWatermark,
                format!(
                    "({} bytes) must not exceed the send queue's cap ({} bytes): lower the watermarks too",
                    self.send_high_watermark, self.max_send_queue
                ),
            ));
        }
        if self.send_low_watermark >= self.send_high_watermark {
            return Err(ConfigError::new(
                Setting::SendLowWatermark,
                format!(
                    "({} bytes) must be below the high watermark ({} bytes)",
                    self.send_low_watermark, self.send_high_watermark
                ),
            ));
        }
        let zero = |d: Option<Duration>| d == Some(Duration::ZERO);
        if zero(self.send_stall_timeout) {
            return Err(ConfigError::new(
                Setting::SendStallTimeout,
                "must be above zero (or off)",
            ));
        }
        if zero(self.idle_timeout) {
            return Err(ConfigError::new(Setting::IdleTimeout, "must be above zero"));
        }
        if self.linger.is_zero() {
            return Err(ConfigError::new(Setting::Linger, "must be above zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new(Setting::ConnectTimeout, "must be above zero"));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_recv_buffer: 64 * 1024,
            max_send_queue: 1024 * 1024,
            send_high_watermark: 64 * 1024,
            send_low_watermark: 32 * 1024,
            send_stall_timeout: Some(Duration::from_secs(30)),
            idle_timeout: None,
            linger: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What a handler may do with its session during a callback.
pub struct Session<'a> {
    pub(crate) core: &'a mut Core,
    pub(crate) id: SessionId,
    pub(crate) now: Tick,
    pub(crate) limits: &'a Limits,
    pub(crate) hub: &'a Hub,
}

impl Session<'_> {
    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The peer's address: the client's. Behind a proxy speaking the PROXY
    /// protocol, the address its header gave (the connection's own peer
    /// is [`Session::proxy_addr`]).
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.peer
    }

    /// The proxy this session came through, if it came through one (see
    /// `ServerBuilder::proxy_protocol` (feature `proxy-protocol`)): the connection's own
    /// peer address.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.core.proxy().map(|p| p.proxy)
    }

    /// Everything the session's PROXY header said, if it had one.
    pub fn proxy(&self) -> Option<&ProxyInfo> {
        self.core.proxy()
    }

    /// Bytes read from this session's socket so far (including bytes the
    /// handler has not consumed yet).
    pub fn bytes_received(&self) -> u64 {
        self.core.bytes_in
    }

    /// Bytes of this session the kernel took for sending so far (queued
    /// bytes not yet taken are not counted).
    pub fn bytes_sent(&self) -> u64 {
        self.core.bytes_out
    }

    /// How long ago the session was accepted (or its connect began), in
    /// the worker's time.
    pub fn age(&self) -> Duration {
        self.core.opened.until(self.now)
    }

    /// Queues `buf` to be sent after everything queued before it. The
    /// buffer is shared, not copied: one [`Bytes`] can be queued on many
    /// sessions. Fails when the session is closing, or when the queue would
    /// exceed [`Limits::max_send_queue`] — then the session is closed with
    /// [`CloseReason::SendQueueFull`] and its queue is freed.
    #[inline]
    pub fn send(&mut self, buf: impl Into<Bytes>) -> Result<(), SendError> {
        if !matches!(self.core.phase, Phase::Open) {
            return Err(SendError::Closed);
        }
        #[cfg(feature = "websocket")]
        if self.core.flow.contains(Flow::WS) {
            return self.send_ws(crate::websocket::Opcode::Binary, buf.into());
        }
        self.send_raw(buf.into())
    }

    /// Queues `buf` as it is, not framed by the session's transport (a
    /// frame made once for many sessions).
    #[inline]
    pub(crate) fn send_raw(&mut self, buf: Bytes) -> Result<(), SendError> {
        self.uncork()?;
        self.core.queue(buf, self.now, self.limits)?;
        self.hub.message_sent();
        Ok(())
    }

    /// Sends `text` as one text message on a WebSocket session (a browser
    /// gets a string); on a TCP session, its bytes as
    /// [`Session::send_copy`] would.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        #[cfg(feature = "websocket")]
        if self.core.flow.contains(Flow::WS) {
            if !matches!(self.core.phase, Phase::Open) {
                return Err(SendError::Closed);
            }
            return self.send_ws(
                crate::websocket::Opcode::Text,
                Bytes::copy_from_slice(text.as_bytes()),
            );
        }
        self.send_copy(text.as_bytes())
    }

    /// Whether the session speaks WebSocket (its peer sees each send as a
    /// message).
    pub fn is_websocket(&self) -> bool {
        self.core.flow.contains(Flow::WS)
    }

    /// On a TLS session, the ALPN protocol its handshake agreed on (see
    /// `TlsConfig::alpn`), if any.
    #[cfg(feature = "tls")]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.core.alpn_protocol()
    }

    /// Whether the session speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.core.flow.contains(Flow::TLS)
    }

    /// During [`Handler::on_recv`] on a WebSocket session: whether the
    /// message offered is a text message (its bytes are checked UTF-8).
    /// False on a TCP session.
    pub fn received_text(&self) -> bool {
        self.core.flow.contains(Flow::WS_TEXT)
    }

    /// Moves the bytes the worker's cork holds for this session into its
    /// queue, ahead of what is queued next (see [`Cork`]).
    #[inline]
    pub(crate) fn uncork(&mut self) -> Result<(), SendError> {
        let mut cork = self.hub.cork.borrow_mut();
        if cork.buf.is_empty() || !cork.is_open_for(self.id.token()) {
            return Ok(());
        }
        let corked = Bytes::copy_from_slice(&cork.buf);
        cork.buf.clear();
        drop(cork);
        self.core.queue(corked, self.now, self.limits)
    }

    /// Counts one message received, for [`crate::Stats::messages_received`]
    /// and the metrics. A framing layer calls it once per message it
    /// decodes ([`crate::packet::Packets`] does, per packet); the byte
    /// stream itself has no messages.
    #[inline]
    pub fn count_received_message(&mut self) {
        let (i, o) = self.hub.messages.get();
        self.hub.messages.set((i + 1, o));
    }

    /// Copies `data` and queues it; see [`Session::send`]. While the
    /// session is handed input on a readiness engine (epoll, wsa-event)
    /// and nothing is queued before it, the copy goes into the worker's
    /// cork rather than a buffer of its own, and is written from there by
    /// the session's flush (only what the kernel does not take is queued).
    #[inline]
    pub fn send_copy(&mut self, data: &[u8]) -> Result<(), SendError> {
        // A session with a transport frames or seals: out of the TCP path.
        if self.core.flow.intersects(Flow::TRANSPORT) {
            return self.send_copy_framed(data);
        }
        if matches!(self.core.phase, Phase::Open) && self.core.send.is_empty() {
            let mut cork = self.hub.cork.borrow_mut();
            // Within what the queue would take too: a copy over the cap
            // fails here as it would queued.
            let room = Cork::MAX.min(self.limits.max_send_queue);
            if cork.is_open_for(self.id.token()) && cork.buf.len() + data.len() <= room {
                cork.buf.extend_from_slice(data);
                drop(cork);
                self.hub.message_sent();
                return Ok(());
            }
        }
        self.send(Bytes::copy_from_slice(data))
    }

    /// [`Session::send_copy`] on a session with a transport: a WebSocket
    /// server's message goes into the cork behind its frame header; a TLS
    /// session's, or a WebSocket client's, is framed and sealed or masked
    /// on its own.
    #[inline(never)]
    fn send_copy_framed(&mut self, data: &[u8]) -> Result<(), SendError> {
        #[cfg(feature = "websocket")]
        if matches!(self.core.phase, Phase::Open)
            && self.core.send.is_empty()
            && !self.core.flow.intersects(Flow::NO_CORK)
        {
            let mut cork = self.hub.cork.borrow_mut();
            let room = Cork::MAX.min(self.limits.max_send_queue);
            let header = crate::websocket::frame::MAX_HEADER;
            if cork.is_open_for(self.id.token()) && cork.buf.len() + data.len() + header <= room {
                // Not sealed, not masked: a WebSocket server's frame.
                crate::websocket::put_header(crate::websocket::Opcode::Binary, data.len(), &mut cork.buf);
                cork.buf.extend_from_slice(data);
                drop(cork);
                self.hub.message_sent();
                return Ok(());
            }
        }
        self.send(Bytes::copy_from_slice(data))
    }

    /// Closes gracefully: what is queued is sent, then FIN. Nothing more is
    /// received by the handler. Ends with [`CloseReason::LocalClose`].
    pub fn close(&mut self) {
        self.core.close(CloseReason::LocalClose);
    }

    /// Closes at once: the queue is dropped and the peer gets RST. Ends
    /// with [`CloseReason::LocalAbort`].
    pub fn abort(&mut self) {
        self.core.abort(CloseReason::LocalAbort);
    }

    /// Closes gracefully like [`Session::close`], naming why: `reason`
    /// reaches [`Handler::on_disconnected`], the log and the counters by
    /// its kind. Typically [`CloseReason::protocol`] or
    /// [`CloseReason::custom`].
    pub fn close_with(&mut self, reason: CloseReason) {
        self.core.close(reason);
    }

    /// Closes at once like [`Session::abort`] (queue dropped, peer reset),
    /// naming why; see [`Session::close_with`].
    pub fn abort_with(&mut self, reason: CloseReason) {
        self.core.abort(reason);
    }

    /// Stops input: no [`Handler::on_recv`] until [`Session::resume_recv`].
    /// The engine stops reading the socket, so the peer is slowed by TCP;
    /// bytes already read are kept and offered after the resume.
    pub fn pause_recv(&mut self) {
        self.core.flow.insert(Flow::PAUSED);
    }

    /// Resumes input stopped by [`Session::pause_recv`]: bytes kept
    /// meanwhile are offered first, then reading goes on (unless the send
    /// queue holds the session paused, see [`Session::is_writable`]).
    pub fn resume_recv(&mut self) {
        if self.core.flow.contains(Flow::PAUSED) {
            self.core.flow.remove(Flow::PAUSED);
            self.core.flow.insert(Flow::OFFER);
        }
    }

    /// Input is stopped by [`Session::pause_recv`].
    pub fn is_recv_paused(&self) -> bool {
        self.core.flow.contains(Flow::PAUSED)
    }

    /// The send queue is not held over its high watermark: queueing more is
    /// welcome. False from when the queue goes over
    /// [`Limits::send_high_watermark`] until it drains to
    /// [`Limits::send_low_watermark`] ([`Handler::on_writable`]).
    pub fn is_writable(&self) -> bool {
        !self.core.flow.contains(Flow::BACKPRESSURE)
    }

    /// The session is open: not closing, not closed.
    pub fn is_open(&self) -> bool {
        matches!(self.core.phase, Phase::Open)
    }

    /// Unsent bytes in the send queue (and in the worker's cork, for this
    /// session).
    pub fn queued_bytes(&self) -> usize {
        let cork = self.hub.cork.borrow();
        let corked = match cork.is_open_for(self.id.token()) {
            true => cork.buf.len(),
            false => 0,
        };
        self.core.send.len() + corked
    }

    /// Calls [`Handler::on_timer`] once after `after`, replacing any timer
    /// set before. Resolution is a millisecond.
    pub fn set_timer(&mut self, after: Duration) {
        self.core.timer_at = self.now.after(after);
    }

    /// Cancels the timer, if any.
    pub fn cancel_timer(&mut self) {
        self.core.timer_at = Tick::NEVER;
    }
}
