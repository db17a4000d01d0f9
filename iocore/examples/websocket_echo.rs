//! A WebSocket echo server (feature `websocket`): every message comes back
//! as it came, text as text.
//!
//!     cargo run -p iocore --features websocket --example websocket_echo [ADDR]
//!
//! Try it from a browser's console: `ws = new WebSocket("ws://127.0.0.1:7780")`.
use iocore::websocket::WebSocketConfig;
use iocore::{Handler, Server, Session};

struct Echo;

impl Handler for Echo {
    fn on_recv(&mut self, s: &mut Session<'_>, message: &[u8]) -> usize {
        let _ = match std::str::from_utf8(message) {
            Ok(text) if s.received_text() => s.send_text(text),
            _ => s.send_copy(message),
        };
        message.len()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7780".into());
    let server = Server::builder()
        .addr(addr.parse()?)
        .websocket(Some(WebSocketConfig::new()))
        .start(|| Echo)?;
    println!("WebSocket echo on ws://{}", server.local_addr());
    Ok(server.join()?)
}
