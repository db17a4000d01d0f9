//! tokio-tungstenite chat server speaking iocore's chat protocol, one
//! packet per binary message (see `iocore_peers::chat`): single-threaded
//! (current_thread), one task per connection that `select!`s between its
//! WebSocket and its room's broadcast channel, sending each message with
//! `send` (tungstenite frames it for each member).
use futures_util::{SinkExt, StreamExt};
use iocore_peers::chat::{Member, Reply, Rooms};
use tokio_tungstenite::tungstenite::Message;

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
        let (id, rooms) = (next_id, rooms.clone());
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let mut member = Member { id, room: None };
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Binary(b))) => match member.packet(&rooms, &b) {
                            Reply::Send(reply) => {
                                if ws.send(Message::Binary(reply)).await.is_err() {
                                    return;
                                }
                            }
                            Reply::Nothing => {}
                            Reply::Close => return,
                        },
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    },
                    Some(msg) = member.from_room() => {
                        if ws.send(Message::Binary(msg)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
