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
    let rooms = Rooms::default();
    iocore_peers::accept_loop(|stream, id| {
        let rooms = rooms.clone();
        async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let mut member = Member { id, room: None };
            loop {
                let out = tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Binary(b))) => match member.packet(&rooms, &b) {
                            Reply::Send(reply) => reply,
                            Reply::Nothing => continue,
                            Reply::Close => return,
                        },
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => continue,
                    },
                    Some(msg) = member.from_room() => msg,
                };
                if ws.send(Message::Binary(out)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
}
