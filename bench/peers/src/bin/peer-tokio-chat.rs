//! tokio chat server speaking iocore's chat protocol (see iocore-cli's
//! `chat::protocol`), written the way tokio's docs and mini-redis show
//! pub/sub: single-threaded (current_thread), one task per connection
//! that `select!`s between its socket and its room's broadcast channel
//! (one `tokio::sync::broadcast` channel per room, in a map behind a
//! mutex), writing each message with `write_all`.
//!
//! Packets: u16 size (header included), u16 id, little-endian, then the
//! body. JOIN 1 {room}, SAY 2 {text}, LEAVE 3; JOINED 101 {u32 members,
//! u32 longest text, room}, MSG 102 {u64 from, text}, LEFT 103, ERROR 199
//! {text}.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

const JOIN: u16 = 1;
const SAY: u16 = 2;
const LEAVE: u16 = 3;
const JOINED: u16 = 101;
const MSG: u16 = 102;
const LEFT: u16 = 103;
const ERROR: u16 = 199;
const MAX_PACKET: usize = 4096;
/// Messages a room's channel holds for a member that is behind.
const BACKLOG: usize = 16 * 1024;

type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<Bytes>>>>;

fn packet(id: u16, parts: &[&[u8]]) -> Bytes {
    let size = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut b = BytesMut::with_capacity(size);
    b.put_u16_le(size as u16);
    b.put_u16_le(id);
    for p in parts {
        b.put_slice(p);
    }
    b.freeze()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listener = tokio::net::TcpListener::bind(iocore_peers::listen_addr())
        .await
        .unwrap();
    let rooms = Rooms::default();
    let mut next_id = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        tokio::spawn(member(stream, next_id, rooms.clone()));
    }
}

/// One connection: packets from the socket, messages from the room.
async fn member(mut stream: TcpStream, id: u64, rooms: Rooms) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut room: Option<(String, broadcast::Sender<Bytes>, broadcast::Receiver<Bytes>)> = None;
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
            let kind = u16::from_le_bytes([buf[2], buf[3]]);
            let body = buf.split_to(size).split_off(4).freeze();
            let reply = match kind {
                JOIN => {
                    let Ok(name) = std::str::from_utf8(&body) else {
                        return;
                    };
                    if name.is_empty() || name.len() > 64 {
                        return;
                    }
                    let tx = rooms
                        .lock()
                        .unwrap()
                        .entry(name.to_string())
                        .or_insert_with(|| broadcast::channel(BACKLOG).0)
                        .clone();
                    let rx = tx.subscribe();
                    let members = tx.receiver_count() as u32;
                    room = Some((name.to_string(), tx, rx));
                    let max_text = (MAX_PACKET - 12) as u32;
                    packet(
                        JOINED,
                        &[&members.to_le_bytes(), &max_text.to_le_bytes(), name.as_bytes()],
                    )
                }
                SAY => match &room {
                    Some((_, tx, _)) => {
                        if std::str::from_utf8(&body).is_err() || body.len() > MAX_PACKET - 12 {
                            return;
                        }
                        let _ = tx.send(packet(MSG, &[&id.to_le_bytes(), &body]));
                        continue;
                    }
                    None => packet(ERROR, &[b"join a room first"]),
                },
                LEAVE => match room.take() {
                    Some(_) => packet(LEFT, &[]),
                    None => packet(ERROR, &[b"not in a room"]),
                },
                _ => return,
            };
            if stream.write_all(&reply).await.is_err() {
                return;
            }
        }
        let from_room = async {
            match &mut room {
                Some((_, _, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            msg = from_room => match msg {
                Ok(msg) => {
                    if stream.write_all(&msg).await.is_err() {
                        return;
                    }
                }
                // Fell more than BACKLOG behind: tokio drops messages.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        buf.reserve(4096);
    }
}
