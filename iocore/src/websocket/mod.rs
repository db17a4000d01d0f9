//! WebSocket (RFC 6455) as a codec without I/O: the opening handshake
//! ([`handshake`]) and frames ([`frame`]). It reads and writes byte
//! slices, so any session, engine or test can drive it.
//!
//! Why a codec of our own rather than `tungstenite`: a server's frames are
//! unmasked, so a message published to many subscribers can be encoded
//! once (header and payload in one buffer) and the same bytes queued to
//! every subscriber. tungstenite writes a frame per connection into that
//! connection's stream. Conformance is checked with the Autobahn cases.
//!
//! Not built: extensions (permessage-deflate); a peer that sets an RSV
//! bit is refused, as RFC 6455 §5.2 asks when no extension was agreed.

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
