//! WebSocket (RFC 6455): sessions that speak it, and the codec under
//! them.
//!
//! A server serves WebSocket clients with
//! [`crate::ServerBuilder::websocket`] (its listener) or
//! [`crate::ServerBuilder::websocket_listener`] (a further port beside the
//! TCP one), configured by [`WebSocketConfig`]. A handler is the same as
//! for TCP: [`crate::Handler::on_recv`] gets one message's payload per
//! call (what it leaves is offered again with the next message behind it),
//! [`crate::Session::send`] sends one binary message,
//! [`crate::Session::send_text`] a text one, and
//! [`crate::Session::received_text`] tells which kind arrived. The session
//! answers pings, joins fragments, checks text is UTF-8, and runs the
//! close handshake; a peer breaking the protocol gets the close code for
//! what it broke and its session ends with
//! [`crate::CloseReason::ProtocolViolation`]. A topic's publish is framed
//! once and the frame shared by every WebSocket subscriber. A client
//! speaks it with [`crate::ClientBuilder::websocket`]: the same handler,
//! its frames masked.
//!
//! The codec ([`handshake`], [`frame`]) reads and writes byte slices, so a
//! test or another transport can drive it without a session.
//!
//! Why a codec of our own rather than `tungstenite`: a server's frames are
//! unmasked, so a message published to many subscribers can be encoded
//! once (header and payload in one buffer) and the same bytes queued to
//! every subscriber; tungstenite writes a frame per connection into that
//! connection's stream, and wants a `Read + Write` stream where a session
//! has buffers. Conformance is checked with the Autobahn cases (every
//! case of 1–7, 9 and 10 is OK, NON-STRICT or INFORMATIONAL), and
//! tungstenite is the client of the tests.
//!
//! Not built: TLS (`wss`), extensions (permessage-deflate); a peer that sets an RSV bit is refused, as RFC
//! 6455 §5.2 asks when no extension was agreed.

pub mod frame;
pub mod handshake;

pub use frame::{Decoder, Event, Opcode, ProtocolError};

/// Which side of the connection this end is: a server reads masked
/// frames and writes unmasked ones, a client the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepted the connection: reads masked frames.
    Server,
    /// Opened the connection: masks what it sends.
    Client,
}

/// A close code (RFC 6455 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// The purpose was fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The endpoint is going away (a server stopping, a page left).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// A kind of data the endpoint does not take.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// Data not of its message's type (text that is not UTF-8).
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// A message that breaks the endpoint's policy.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// A message too big to process.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// The endpoint met a condition it could not handle.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// Whether a peer may put this code in a close frame: the codes RFC
    /// 6455 defines for that (1004, 1005, 1006 and 1015 are for reports
    /// only), those IANA registered since (1012–1014), and the ranges
    /// for libraries (3000–3999) and applications (4000–4999).
    pub fn may_be_sent(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

mod layer;
pub(crate) use layer::{close_frame, frame_as, frame_message, frame_parts, put_header, Layer, Upgrade};

use std::time::Duration;

/// How a server's sessions speak WebSocket (see
/// `ServerBuilder::websocket`): every accepted connection first reads
/// an HTTP/1.1 upgrade request, then its handler sees whole messages
/// ([`crate::Handler::on_recv`] gets one message's payload per call when
/// it consumes what it is given) and [`crate::Session::send`] sends one
/// binary message per buffer.
#[derive(Clone, Debug)]
pub struct WebSocketConfig {
    pub(crate) max_message: usize,
    pub(crate) max_request: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) protocols: Vec<String>,
    pub(crate) page: Option<bytes::Bytes>,
    pub(crate) path: String,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message: 16 * 1024,
            max_request: 8 * 1024,
            handshake_timeout: Duration::from_secs(10),
            protocols: Vec::new(),
            page: None,
            path: "/".into(),
        }
    }
}

impl WebSocketConfig {
    /// The defaults: messages of up to 16 KiB, upgrade requests of up to
    /// 8 KiB, a 10 s handshake timeout, no subprotocol, no page.
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest message taken, whole or in fragments (default 16 KiB,
    /// as uWebSockets' `maxPayloadLength`). A peer announcing a longer one
    /// is closed with code 1009 and [`crate::CloseReason::ProtocolViolation`]
    /// before its payload is kept.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// The largest upgrade request read (default 8 KiB); a longer one is
    /// answered 431 and closed with [`crate::CloseReason::HandshakeInvalid`].
    pub fn max_request(mut self, bytes: usize) -> Self {
        self.max_request = bytes;
        self
    }

    /// How long a new connection may take to send its whole upgrade
    /// request (default 10 s); then it is closed with
    /// [`crate::CloseReason::HandshakeTimeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The subprotocols the server speaks, in its order of preference: the
    /// first one of these a client offers is chosen. A client offering
    /// only others is still accepted, with no subprotocol (RFC 6455 §4.2.2).
    pub fn protocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// A page (HTML) answered to a plain `GET /` (one without an upgrade)
    /// on the same port, as `text/html`; other plain requests get 404.
    /// Without a page they get 426.
    pub fn page(mut self, html: impl Into<bytes::Bytes>) -> Self {
        self.page = Some(html.into());
        self
    }

    /// A client's request target (default `/`): what its upgrade request
    /// asks for (see `ClientBuilder::websocket`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Checks the settings: sizes of at least 1 (messages) and 256
    /// (requests) bytes, a handshake timeout of at least a millisecond.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.max_message == 0 {
            return Err(crate::ConfigError::new(
                crate::Setting::WebSocketMaxMessage,
                "must be at least 1 byte",
            ));
        }
        if self.max_request < 256 {
            return Err(crate::ConfigError::new(
                crate::Setting::WebSocketMaxRequest,
                "must be at least 256 bytes",
            ));
        }
        if !self.path.starts_with('/')
            || self
                .path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(crate::ConfigError::new(
                crate::Setting::WebSocketPath,
                "must start with / and hold no spaces or control characters",
            ));
        }
        if self.handshake_timeout < Duration::from_millis(1) {
            return Err(crate::ConfigError::new(
                crate::Setting::HandshakeTimeout,
                "must be at least 1 ms",
            ));
        }
        Ok(())
    }
}
