//! The chat protocol: packets (see `iocore::packet`) with these ids and
//! bodies, integers little-endian, text UTF-8.
//!
//! | id | direction | name | body |
//! |---|---|---|---|
//! | 1 | client → server | JOIN | room name (1–64 bytes); leaves the room joined before |
//! | 2 | client → server | SAY | text, relayed verbatim to every member of the room |
//! | 3 | client → server | LEAVE | — |
//! | 101 | server → client | JOINED | `u32` members (after joining), `u32` longest text a SAY may carry, room name |
//! | 102 | server → client | MSG | `u64` sender's session id, text |
//! | 103 | server → client | LEFT | — |
//! | 199 | server → client | ERROR | text: a request that cannot be served (the session stays open), or why the server closes the session (it closes right after) |

use bytes::Bytes;
use iocore::packet;

/// Client → server: join a room.
pub const JOIN: u16 = 1;
/// Client → server: say something in the room.
pub const SAY: u16 = 2;
/// Client → server: leave the room.
pub const LEAVE: u16 = 3;
/// Server → client: joined, with the member count.
pub const JOINED: u16 = 101;
/// Server → client: a member said something.
pub const MSG: u16 = 102;
/// Server → client: left the room.
pub const LEFT: u16 = 103;
/// Server → client: a request that cannot be served now.
pub const ERROR: u16 = 199;

/// Longest room name, in bytes.
pub const MAX_ROOM: usize = 64;
/// Bytes a MSG adds to the text it relays (the sender's id).
pub const MSG_OVERHEAD: usize = 8;

fn encode(id: u16, parts: &[&[u8]]) -> Bytes {
    packet::encode_parts(id, parts).expect("chat packets are built within the size limit")
}

/// JOIN `room`.
pub fn join(room: &str) -> Bytes {
    encode(JOIN, &[room.as_bytes()])
}

/// SAY `text`.
pub fn say(text: &str) -> Bytes {
    encode(SAY, &[text.as_bytes()])
}

/// LEAVE.
pub fn leave() -> Bytes {
    encode(LEAVE, &[])
}

/// JOINED `members` `max_text` `room`.
pub fn joined(members: u32, max_text: u32, room: &str) -> Bytes {
    encode(
        JOINED,
        &[&members.to_le_bytes(), &max_text.to_le_bytes(), room.as_bytes()],
    )
}

/// MSG from session `from`: `text`.
pub fn msg(from: u64, text: &[u8]) -> Bytes {
    encode(MSG, &[&from.to_le_bytes(), text])
}

/// LEFT.
pub fn left() -> Bytes {
    encode(LEFT, &[])
}

/// ERROR `text`.
pub fn error(text: &str) -> Bytes {
    encode(ERROR, &[text.as_bytes()])
}

/// A message from the server, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum FromServer<'a> {
    /// JOINED.
    Joined {
        /// Members of the room, this one included.
        members: u32,
        /// The longest text a SAY may carry on this server.
        max_text: u32,
        /// The room.
        room: &'a str,
    },
    /// MSG.
    Msg {
        /// The sender's session id (`iocore::SessionId::as_u64`).
        from: u64,
        /// What it said.
        text: &'a str,
    },
    /// LEFT.
    Left,
    /// ERROR.
    Error(&'a str),
}

/// Decodes a packet from the server; the error says what is wrong.
pub fn from_server(id: u16, body: &[u8]) -> Result<FromServer<'_>, String> {
    fn utf8(id: u16, b: &[u8]) -> Result<&str, String> {
        std::str::from_utf8(b).map_err(|_| format!("packet {id}: text is not UTF-8"))
    }
    let text = |b| utf8(id, b);
    match id {
        JOINED if body.len() >= 8 => Ok(FromServer::Joined {
            members: u32::from_le_bytes(body[..4].try_into().expect("4 bytes")),
            max_text: u32::from_le_bytes(body[4..8].try_into().expect("4 bytes")),
            room: text(&body[8..])?,
        }),
        MSG if body.len() >= MSG_OVERHEAD => Ok(FromServer::Msg {
            from: u64::from_le_bytes(body[..8].try_into().expect("8 bytes")),
            text: text(&body[8..])?,
        }),
        LEFT => Ok(FromServer::Left),
        ERROR => Ok(FromServer::Error(text(body)?)),
        JOINED | MSG => Err(format!("packet {id}: body of {} bytes is too short", body.len())),
        other => Err(format!("unknown packet id {other} from the server")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: Bytes) -> (u16, Vec<u8>) {
        let f = packet::decode(&p, packet::MAX_PACKET).unwrap().unwrap();
        (f.id, f.body.to_vec())
    }

    #[test]
    fn server_messages_decode_to_what_was_encoded() {
        let (id, body) = roundtrip(joined(3, 4084, "lobby"));
        assert_eq!(
            from_server(id, &body),
            Ok(FromServer::Joined {
                members: 3,
                max_text: 4084,
                room: "lobby"
            })
        );
        let (id, body) = roundtrip(msg(0x0100_0002_0000_0007, "héllo".as_bytes()));
        assert_eq!(
            from_server(id, &body),
            Ok(FromServer::Msg {
                from: 0x0100_0002_0000_0007,
                text: "héllo"
            })
        );
        let (id, body) = roundtrip(error("join a room first"));
        assert_eq!(from_server(id, &body), Ok(FromServer::Error("join a room first")));
        assert_eq!(roundtrip(left()), (LEFT, vec![]));
        assert!(from_server(MSG, &[1, 2]).is_err());
        assert!(from_server(42, &[]).is_err());
    }
}
