//! tokio chat server speaking iocore's chat protocol (see iocore-cli's
//! `chat::protocol`, and `iocore_peers::chat` for the rooms), written the
//! way tokio's docs and mini-redis show pub/sub: single-threaded
//! (current_thread), one task per connection that `select!`s between its
//! socket and its room's broadcast channel (one `tokio::sync::broadcast`
//! channel per room, in a map behind a mutex), writing each message with
//! `write_all`.
//!
//! Packets: u16 size (header included), u16 id, little-endian, then the
//! body. JOIN 1 {room}, SAY 2 {text}, LEAVE 3; JOINED 101 {u32 members,
//! u32 longest text, room}, MSG 102 {u64 from, text}, LEFT 103, ERROR 199
//! {text}.
use bytes::BytesMut;
use iocore_peers::chat::{Member, Reply, Rooms, MAX_PACKET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rooms = Rooms::default();
    iocore_peers::accept_loop(|stream, id| member(stream, id, rooms.clone())).await;
}

/// One connection: packets from the socket, messages from the room.
async fn member(mut stream: TcpStream, id: u64, rooms: Rooms) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut member = Member { id, room: None };
    loop {
        // Whole packets already read first.
        while buf.len() >= 4 {
            let size = u16::from_le_bytes([buf[0], buf[1]]) as usize;
            if !(4..=MAX_PACKET).contains(&size) {
                return;
            }
            if buf.len() < size {
                break;
            }
            let packet = buf.split_to(size);
            match member.packet(&rooms, &packet) {
                Reply::Send(reply) => {
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
                Reply::Nothing => {}
                Reply::Close => return,
            }
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Some(msg) = member.from_room() => {
                if stream.write_all(&msg).await.is_err() {
                    return;
                }
            }
        }
        buf.reserve(4096);
    }
}
