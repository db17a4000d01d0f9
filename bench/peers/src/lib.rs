//! Shared bits of the peer servers: the listen address from argv, the
//! accept loop, and the chat protocol's rooms.

/// The address to listen on: the first argument, else 127.0.0.1:7777.
/// Only loopback addresses are accepted: these servers exist to be
/// measured on this machine.
pub fn listen_addr() -> std::net::SocketAddr {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7777".into())
        .parse()
        .expect("usage: peer-<name> [127.0.0.1:PORT]");
    assert!(addr.ip().is_loopback(), "peer servers listen on loopback only");
    addr
}

/// Listens on [`listen_addr`] and runs `serve(stream, n)` in a task of
/// its own for each accepted connection (`n` counts them from 1), with
/// `TCP_NODELAY` set, as a tokio server does.
pub async fn accept_loop<F, Fut>(mut serve: F)
where
    F: FnMut(tokio::net::TcpStream, u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen_addr()).await.unwrap();
    let mut n = 0;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        n += 1;
        tokio::spawn(serve(stream, n));
    }
}

/// Echoes what `stream` sends with read / write_all through a 4 KiB
/// buffer, as tokio's docs show, until EOF or an error.
pub async fn echo<S>(mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The chat protocol of iocore's chat app, for the chat peers (over TCP,
/// and over WebSocket one packet per binary message): rooms are tokio
/// broadcast channels in a map behind a mutex.
pub mod chat {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use bytes::{BufMut, Bytes, BytesMut};
    use tokio::sync::broadcast;

    const JOIN: u16 = 1;
    const SAY: u16 = 2;
    const LEAVE: u16 = 3;
    const JOINED: u16 = 101;
    const MSG: u16 = 102;
    const LEFT: u16 = 103;
    const ERROR: u16 = 199;
    /// The largest packet, header included.
    pub const MAX_PACKET: usize = 4096;
    /// Messages a room's channel holds for a member that is behind.
    const BACKLOG: usize = 16 * 1024;

    /// Every room: its channel.
    pub type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<Bytes>>>>;

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

    /// One member's state.
    pub struct Member {
        pub id: u64,
        pub room: Option<(broadcast::Sender<Bytes>, broadcast::Receiver<Bytes>)>,
    }

    /// What a member's message asks for.
    pub enum Reply {
        /// Send this to the member.
        Send(Bytes),
        /// Nothing to send (a SAY went to the room).
        Nothing,
        /// A broken packet: close.
        Close,
    }

    impl Member {
        /// Handles one packet (a whole binary message).
        pub fn packet(&mut self, rooms: &Rooms, msg: &[u8]) -> Reply {
            if msg.len() < 4
                || u16::from_le_bytes([msg[0], msg[1]]) as usize != msg.len()
                || msg.len() > MAX_PACKET
            {
                return Reply::Close;
            }
            let body = &msg[4..];
            match u16::from_le_bytes([msg[2], msg[3]]) {
                JOIN => {
                    let Ok(name) = std::str::from_utf8(body) else {
                        return Reply::Close;
                    };
                    if name.is_empty() || name.len() > 64 {
                        return Reply::Close;
                    }
                    let tx = rooms
                        .lock()
                        .unwrap()
                        .entry(name.to_string())
                        .or_insert_with(|| broadcast::channel(BACKLOG).0)
                        .clone();
                    let rx = tx.subscribe();
                    let members = tx.receiver_count() as u32;
                    self.room = Some((tx, rx));
                    let max_text = (MAX_PACKET - 12) as u32;
                    Reply::Send(packet(
                        JOINED,
                        &[&members.to_le_bytes(), &max_text.to_le_bytes(), name.as_bytes()],
                    ))
                }
                SAY => match &self.room {
                    Some((tx, _)) => {
                        if std::str::from_utf8(body).is_err() || body.len() > MAX_PACKET - 12 {
                            return Reply::Close;
                        }
                        let _ = tx.send(packet(MSG, &[&self.id.to_le_bytes(), body]));
                        Reply::Nothing
                    }
                    None => Reply::Send(packet(ERROR, &[b"join a room first"])),
                },
                LEAVE => match self.room.take() {
                    Some(_) => Reply::Send(packet(LEFT, &[])),
                    None => Reply::Send(packet(ERROR, &[b"not in a room"])),
                },
                _ => Reply::Close,
            }
        }

        /// The next message of the member's room (pending without one).
        pub async fn from_room(&mut self) -> Option<Bytes> {
            loop {
                match &mut self.room {
                    Some((_, rx)) => match rx.recv().await {
                        Ok(msg) => return Some(msg),
                        // Fell more than BACKLOG behind: tokio drops messages.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    None => std::future::pending::<()>().await,
                }
            }
        }
    }
}
