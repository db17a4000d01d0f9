//! Typed packets for iocore, defined in a `.proto` file.
//!
//! A protocol's messages are protobuf messages (encoded by [`prost`]); each
//! packet is iocore's packet (`u16` size, `u16` id, body: see
//! [`iocore::packet`]) whose body is one message. Which message a packet id
//! carries is written in the `.proto` itself, in an enum named `PacketId`:
//!
//! ```proto
//! syntax = "proto3";
//! package arena;
//!
//! enum PacketId {
//!   PACKET_ID_UNSPECIFIED = 0;  // 0 is not a packet
//!   C_JOIN = 1;                 // carries message CJoin
//!   S_WELCOME = 101;            // carries message SWelcome
//! }
//! message CJoin { string room = 1; }
//! message SWelcome { uint32 player = 1; }
//! ```
//!
//! Each value names its message (`C_JOIN` → `CJoin`) and fixes its id:
//! adding a message never renumbers the others (the course's generator
//! numbered packets in file order, so inserting one renumbered every later
//! one and broke deployed clients). The ids are in the file every client,
//! in any language, is generated from.
//!
//! A build script compiles the file with `build::compile` (feature
//! `build`; a pure-Rust compiler, no `protoc` needed). Besides prost's
//! message types, the generated module has:
//!
//! - `impl iocore_proto::Packet for CJoin` (its `ID` and `NAME`), so
//!   [`encode`] makes any message a packet;
//! - `enum Packet { CJoin(CJoin), SWelcome(SWelcome), .. }` with `id()`,
//!   `decode(id, body)` and `encode()`;
//! - `trait Dispatch`, one method per packet (`on_c_join(session, msg)`)
//!   whose default closes the session as a protocol violation (a packet
//!   this side does not expect), and `fn dispatch(handler, session, id,
//!   body)`: decode and call. An unknown id or a body that does not decode
//!   closes the session with [`iocore::CloseReason::ProtocolViolation`]
//!   saying which.
//!
//! ```text
//! // build.rs
//! fn main() -> std::io::Result<()> {
//!     iocore_proto::build::compile(&["proto/arena.proto"], &["proto"])
//! }
//! // src/arena.rs
//! pub mod wire {
//!     iocore_proto::include_proto!("arena");
//! }
//! ```

#[cfg(any(feature = "build", test))]
pub mod build;

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
pub use prost;

use iocore::packet::{PacketTooLarge, HEADER, MAX_PACKET};
use iocore::{CloseReason, Session};

/// A message that is a packet: the id its `.proto` gave it.
pub trait Packet: prost::Message + Default + Sized {
    /// Its packet id (from the `.proto`'s `PacketId` enum).
    const ID: u16;
    /// Its message name, for errors and logs.
    const NAME: &'static str;
}

/// `msg` as one packet (header and body), in one buffer.
pub fn encode<P: Packet>(msg: &P) -> Result<Bytes, PacketTooLarge> {
    let size = HEADER + msg.encoded_len();
    if size > MAX_PACKET {
        return Err(PacketTooLarge { size });
    }
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u16_le(size as u16);
    buf.put_u16_le(P::ID);
    msg.encode(&mut buf)
        .expect("the buffer was made as long as the message");
    Ok(buf.freeze())
}

/// Why a packet could not be read as a message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// No message has this packet id.
    UnknownId(u16),
    /// The body is not a valid encoding of the id's message.
    Malformed {
        /// The message the id names.
        name: &'static str,
        /// What prost found wrong.
        error: prost::DecodeError,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownId(id) => write!(f, "unknown packet id {id}"),
            DecodeError::Malformed { name, error } => write!(f, "malformed {name}: {error}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// Closes `session` as a protocol violation that says this.
    pub fn close(&self, session: &mut Session<'_>) {
        session.close_with(CloseReason::protocol(self.to_string()));
    }
}

/// Decodes a body as message `P` (what the generated `Packet::decode` calls).
pub fn decode<P: Packet>(body: &[u8]) -> Result<P, DecodeError> {
    P::decode(body).map_err(|error| DecodeError::Malformed { name: P::NAME, error })
}

/// What a generated `Dispatch` method does by default: closes the session
/// as a protocol violation, `name` being a packet this side does not take.
pub fn unexpected(session: &mut Session<'_>, name: &str) {
    session.close_with(CloseReason::protocol(format!("unexpected {name}")));
}

/// Includes the code `build::compile` generated for `package` (in the
/// build script's `OUT_DIR`).
#[macro_export]
macro_rules! include_proto {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}
