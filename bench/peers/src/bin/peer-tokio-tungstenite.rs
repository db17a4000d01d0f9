//! tokio-tungstenite WebSocket echo server, single-threaded
//! (current_thread), one task per connection reading messages from the
//! stream and sending text and binary ones back, as its examples do.
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    iocore_peers::accept_loop(|stream, _| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            let echo = match msg {
                Message::Text(_) | Message::Binary(_) => ws.send(msg).await,
                Message::Close(_) => return,
                _ => Ok(()),
            };
            if echo.is_err() {
                return;
            }
        }
    })
    .await;
}
