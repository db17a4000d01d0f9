//! Why a session ended, and why a send was refused.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// Why a session ended; given to [`crate::Handler::on_disconnected`]
/// exactly once per handler.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent FIN. Data queued before it was still sent.
    PeerClosed,
    /// The peer reset the connection (RST): `ECONNRESET`, `EPIPE`.
    PeerReset,
    /// The handler called [`crate::Session::close`]; queued data was sent
    /// first, then FIN.
    LocalClose,
    /// The handler called [`crate::Session::abort`]; queued data was
    /// dropped and the peer got RST.
    LocalAbort,
    /// The handler left more than [`crate::Limits::max_recv_buffer`]
    /// bytes unconsumed; the peer got RST.
    RecvBufferFull,
    /// Sends queued faster than the peer reads went over
    /// [`crate::Limits::max_send_queue`]; the queue was dropped and the
    /// peer got RST.
    SendQueueFull,
    /// Bytes were queued but the peer took none of them for
    /// [`crate::Limits::send_stall_timeout`] (it stopped reading); the
    /// queue was dropped and the peer got RST.
    SendStalled,
    /// Nothing was received for [`crate::Limits::idle_timeout`]; queued
    /// data was sent first, then FIN.
    IdleTimeout,
    /// The server or client was stopped; queued data was sent until the
    /// stop deadline, then FIN (or RST if the deadline passed first).
    ServerShutdown,
    /// An outbound connection could not be established (refused, timed
    /// out, unreachable). `on_connected` was never called.
    ConnectFailed(io::Error),
    /// The handler found the peer breaking the protocol (a malformed,
    /// oversized or unexpected message) and ended the session with
    /// [`crate::Session::close_with`] or [`crate::Session::abort_with`];
    /// the text says what was wrong.
    ProtocolViolation(Cow<'static, str>),
    /// The handler ended the session for a reason of its own with
    /// [`crate::Session::close_with`] or [`crate::Session::abort_with`].
    Custom(Cow<'static, str>),
    /// Any other socket error.
    Io(io::Error),
    /// PROXY protocol: the connection came from an address that is not a
    /// trusted proxy, so it may not say whom it speaks for. `on_connected`
    /// was never called.
    ProxyUntrusted,
    /// PROXY protocol: the connection did not start with a valid PROXY
    /// header; the text says what was wrong. `on_connected` was never
    /// called.
    ProxyInvalid(Cow<'static, str>),
    /// PROXY protocol: no whole header arrived within the header timeout.
    /// `on_connected` was never called.
    ProxyTimeout,
    /// One of the handler's callbacks panicked; the text is the panic's
    /// message. Only this session ended (the peer got RST); the worker
    /// goes on serving the others. See [`crate::Handler`]'s "Panics".
    HandlerPanicked(Cow<'static, str>),
    /// A transport's opening handshake failed (a WebSocket upgrade request
    /// that is not one, or too big): the text says what was wrong. The
    /// peer was answered (an HTTP error status) where the protocol has a
    /// way to say it. `on_connected` was never called.
    HandshakeInvalid(Cow<'static, str>),
    /// A transport's opening handshake did not finish within its timeout.
    /// `on_connected` was never called.
    HandshakeTimeout,
}

/// The kind of a [`CloseReason`], without the error value: small and
/// `Copy`, for counters and comparisons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseKind {
    /// See [`CloseReason::PeerClosed`].
    PeerClosed,
    /// See [`CloseReason::PeerReset`].
    PeerReset,
    /// See [`CloseReason::LocalClose`].
    LocalClose,
    /// See [`CloseReason::LocalAbort`].
    LocalAbort,
    /// See [`CloseReason::RecvBufferFull`].
    RecvBufferFull,
    /// See [`CloseReason::SendQueueFull`].
    SendQueueFull,
    /// See [`CloseReason::SendStalled`].
    SendStalled,
    /// See [`CloseReason::IdleTimeout`].
    IdleTimeout,
    /// See [`CloseReason::ServerShutdown`].
    ServerShutdown,
    /// See [`CloseReason::ConnectFailed`].
    ConnectFailed,
    /// See [`CloseReason::ProtocolViolation`].
    ProtocolViolation,
    /// See [`CloseReason::Custom`].
    Custom,
    /// See [`CloseReason::Io`].
    Io,
    /// See [`CloseReason::ProxyUntrusted`].
    ProxyUntrusted,
    /// See [`CloseReason::ProxyInvalid`].
    ProxyInvalid,
    /// See [`CloseReason::ProxyTimeout`].
    ProxyTimeout,
    /// See [`CloseReason::HandlerPanicked`].
    HandlerPanicked,
    /// See [`CloseReason::HandshakeInvalid`].
    HandshakeInvalid,
    /// See [`CloseReason::HandshakeTimeout`].
    HandshakeTimeout,
}

impl CloseKind {
    /// Every kind, in declaration order (the index used by counters).
    pub const ALL: &'static [CloseKind] = &[
        CloseKind::PeerClosed,
        CloseKind::PeerReset,
        CloseKind::LocalClose,
        CloseKind::LocalAbort,
        CloseKind::RecvBufferFull,
        CloseKind::SendQueueFull,
        CloseKind::SendStalled,
        CloseKind::IdleTimeout,
        CloseKind::ServerShutdown,
        CloseKind::ConnectFailed,
        CloseKind::ProtocolViolation,
        CloseKind::Custom,
        CloseKind::Io,
        CloseKind::ProxyUntrusted,
        CloseKind::ProxyInvalid,
        CloseKind::ProxyTimeout,
        CloseKind::HandlerPanicked,
        CloseKind::HandshakeInvalid,
        CloseKind::HandshakeTimeout,
    ];

    /// Position in [`CloseKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short `snake_case` name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseKind::PeerClosed => "peer_closed",
            CloseKind::PeerReset => "peer_reset",
            CloseKind::LocalClose => "local_close",
            CloseKind::LocalAbort => "local_abort",
            CloseKind::RecvBufferFull => "recv_buffer_full",
            CloseKind::SendQueueFull => "send_queue_full",
            CloseKind::SendStalled => "send_stalled",
            CloseKind::IdleTimeout => "idle_timeout",
            CloseKind::ServerShutdown => "server_shutdown",
            CloseKind::ConnectFailed => "connect_failed",
            CloseKind::ProtocolViolation => "protocol_violation",
            CloseKind::Custom => "custom",
            CloseKind::Io => "io",
            CloseKind::ProxyUntrusted => "proxy_untrusted",
            CloseKind::ProxyInvalid => "proxy_invalid",
            CloseKind::ProxyTimeout => "proxy_timeout",
            CloseKind::HandlerPanicked => "handler_panicked",
            CloseKind::HandshakeInvalid => "handshake_invalid",
            CloseKind::HandshakeTimeout => "handshake_timeout",
        }
    }
}

impl fmt::Display for CloseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl CloseReason {
    /// A protocol violation described by `what` (see
    /// [`CloseReason::ProtocolViolation`]).
    pub fn protocol(what: impl Into<Cow<'static, str>>) -> CloseReason {
        CloseReason::ProtocolViolation(what.into())
    }

    /// A reason of the application's own (see [`CloseReason::Custom`]).
    pub fn custom(why: impl Into<Cow<'static, str>>) -> CloseReason {
        CloseReason::Custom(why.into())
    }

    /// The kind of this reason.
    pub fn kind(&self) -> CloseKind {
        match self {
            CloseReason::PeerClosed => CloseKind::PeerClosed,
            CloseReason::PeerReset => CloseKind::PeerReset,
            CloseReason::LocalClose => CloseKind::LocalClose,
            CloseReason::LocalAbort => CloseKind::LocalAbort,
            CloseReason::RecvBufferFull => CloseKind::RecvBufferFull,
            CloseReason::SendQueueFull => CloseKind::SendQueueFull,
            CloseReason::SendStalled => CloseKind::SendStalled,
            CloseReason::IdleTimeout => CloseKind::IdleTimeout,
            CloseReason::ServerShutdown => CloseKind::ServerShutdown,
            CloseReason::ConnectFailed(_) => CloseKind::ConnectFailed,
            CloseReason::ProtocolViolation(_) => CloseKind::ProtocolViolation,
            CloseReason::Custom(_) => CloseKind::Custom,
            CloseReason::Io(_) => CloseKind::Io,
            CloseReason::ProxyUntrusted => CloseKind::ProxyUntrusted,
            CloseReason::ProxyInvalid(_) => CloseKind::ProxyInvalid,
            CloseReason::ProxyTimeout => CloseKind::ProxyTimeout,
            CloseReason::HandlerPanicked(_) => CloseKind::HandlerPanicked,
            CloseReason::HandshakeInvalid(_) => CloseKind::HandshakeInvalid,
            CloseReason::HandshakeTimeout => CloseKind::HandshakeTimeout,
        }
    }

    /// Whether the library ends sessions for this reason with RST (queued
    /// data dropped) rather than FIN after the queue was flushed. (A
    /// handler's own reason resets if it used
    /// [`crate::Session::abort_with`].)
    pub fn resets_peer(&self) -> bool {
        matches!(
            self,
            CloseReason::LocalAbort
                | CloseReason::RecvBufferFull
                | CloseReason::SendQueueFull
                | CloseReason::SendStalled
                | CloseReason::HandlerPanicked(_)
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed the connection"),
            CloseReason::PeerReset => f.write_str("peer reset the connection"),
            CloseReason::LocalClose => f.write_str("closed by the handler"),
            CloseReason::LocalAbort => f.write_str("aborted by the handler"),
            CloseReason::RecvBufferFull => f.write_str("receive buffer full: handler did not consume"),
            CloseReason::SendQueueFull => f.write_str("send queue over its limit: peer not reading"),
            CloseReason::SendStalled => {
                f.write_str("send stalled: the peer took no bytes for the stall timeout")
            }
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::ServerShutdown => f.write_str("server shutdown"),
            CloseReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            CloseReason::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            CloseReason::Custom(why) => write!(f, "closed by the handler: {why}"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::ProxyUntrusted => f.write_str("PROXY protocol: not from a trusted proxy"),
            CloseReason::ProxyInvalid(what) => write!(f, "PROXY protocol: invalid header: {what}"),
            CloseReason::ProxyTimeout => f.write_str("PROXY protocol: no header within the timeout"),
            CloseReason::HandlerPanicked(what) => write!(f, "the handler panicked: {what}"),
            CloseReason::HandshakeInvalid(what) => write!(f, "handshake failed: {what}"),
            CloseReason::HandshakeTimeout => f.write_str("handshake not finished within its timeout"),
        }
    }
}

/// Why [`crate::Session::send`] refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closing or closed; nothing more is sent.
    Closed,
    /// The send queue would exceed its limit; the session is being closed
    /// with [`CloseReason::SendQueueFull`].
    QueueFull,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("session is closing"),
            SendError::QueueFull => f.write_str("send queue limit reached; session closed"),
        }
    }
}

impl std::error::Error for SendError {}

impl From<SendError> for io::Error {
    fn from(e: SendError) -> io::Error {
        let kind = match e {
            SendError::Closed => io::ErrorKind::NotConnected,
            SendError::QueueFull => io::ErrorKind::OutOfMemory,
        };
        io::Error::new(kind, e)
    }
}

/// Runs `f`, code of the application's (a handler's callback, a factory),
/// on a worker: its panic is caught and returned as its message, so that
/// it ends what it was for and not the worker with every session on it.
#[inline(always)]
pub(crate) fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, Cow<'static, str>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(panic_message)
}

/// What a caught panic said.
#[cold]
#[inline(never)]
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> Cow<'static, str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Cow::Borrowed(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Cow::Owned(s.clone())
    } else {
        Cow::Borrowed("a panic without a message")
    }
}
