//! The echo server of the WSAEventSelect seed: every byte received is sent
//! back, in order. Where the seed tracks `recvBytes`/`sendBytes` itself and
//! resends the unsent rest on the next FD_WRITE, here the session's send
//! queue does that for every engine.

use iocore::{Handler, Session};

/// Sends every received byte back.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_recv(&mut self, session: &mut Session<'_>, data: &[u8]) -> usize {
        // On failure the session is already closing (queue over its limit
        // or closed): nothing else to do. A WebSocket text message comes
        // back as text (its bytes were checked UTF-8).
        if session.received_text() {
            if let Ok(text) = std::str::from_utf8(data) {
                let _ = session.send_text(text);
                return data.len();
            }
        }
        // One call of send_copy: it is inlined here, as the TCP echo wants.
        let _ = session.send_copy(data);
        data.len()
    }
}
