//! A session that speaks WebSocket (feature `websocket`): the transport
//! between the bytes the engine moves and the messages the handler sees.
//!
//! An accepted connection starts in `Upgrading` (its upgrade request is
//! read within the handshake timeout); once answered 101 it is open with
//! [`Flow::WS`]: every read goes through the frame decoder, and the
//! handler's [`Handler::on_recv`] gets one message's payload per call
//! (what it leaves is offered again, the next message behind it, as a byte
//! stream would be). Pings are answered here. [`Session::send`] frames one
//! binary message per buffer. A close, from either side or for any reason,
//! sends a close frame first (once), then the queue is flushed and FIN
//! follows as for a TCP session. A peer breaking the protocol gets the
//! close code the decoder names and the session closes with
//! [`CloseReason::ProtocolViolation`].

use std::sync::Arc;

use bytes::Bytes;

use super::{Conn, Context, Core, Flow, Phase};
use crate::session::close::{CloseReason, SendError};
use crate::session::handler::{Handler, Session, Tick};
use crate::websocket::frame::{Event, Opcode};
use crate::websocket::WebSocketConfig;
use crate::websocket::{close_frame, frame_as, frame_parts, CloseCode, Layer, Role, Upgrade};

/// The largest scratch buffer a worker keeps between reads.
const SCRATCH_KEPT: usize = 64 * 1024;

impl Core {
    /// Queues the close frame saying why the session closes, unless one
    /// was queued already.
    pub(super) fn ws_close_frame(&mut self, reason: &CloseReason) {
        let (code, text): (CloseCode, &str) = match reason {
            CloseReason::ServerShutdown => (CloseCode::GOING_AWAY, "server shutdown"),
            CloseReason::ProtocolViolation(what) => (CloseCode::PROTOCOL_ERROR, what),
            CloseReason::IdleTimeout => (CloseCode::GOING_AWAY, "idle timeout"),
            CloseReason::Custom(why) => (CloseCode::NORMAL, why),
            _ => (CloseCode::NORMAL, ""),
        };
        self.ws_close_with(code, text);
    }

    fn ws_close_with(&mut self, code: CloseCode, text: &str) {
        if self.flow.contains(Flow::WS_CLOSE_SENT) {
            return;
        }
        self.flow.insert(Flow::WS_CLOSE_SENT);
        // A few bytes over the cap at most: the close must be said.
        self.push_control(close_frame(self.ws_role(), code, text));
    }

    /// Which side of the WebSocket this session is.
    fn ws_role(&self) -> Role {
        match self.flow.contains(Flow::WS_CLIENT) {
            true => Role::Client,
            false => Role::Server,
        }
    }
}

impl Session<'_> {
    /// Sends `payload` as one message of type `opcode` on a WebSocket
    /// session (the session is open).
    pub(crate) fn send_ws(&mut self, opcode: Opcode, payload: Bytes) -> Result<(), SendError> {
        self.uncork()?;
        self.frame_ws(opcode, payload)?;
        self.hub.message_sent();
        Ok(())
    }

    /// Queues `payload` as one message, framed as this side sends it.
    pub(crate) fn frame_ws(&mut self, opcode: Opcode, payload: Bytes) -> Result<(), SendError> {
        if self.core.flow.contains(Flow::WS_CLIENT) {
            return self
                .core
                .queue(frame_as(Role::Client, opcode, &payload), self.now, self.limits);
        }
        let (frame, rest) = frame_parts(opcode, payload);
        self.core.queue(frame, self.now, self.limits)?;
        if let Some(rest) = rest {
            self.core.queue(rest, self.now, self.limits)?;
        }
        Ok(())
    }
}

impl<H: Handler> Conn<H> {
    /// Makes an accepted connection a WebSocket session: it reads its
    /// upgrade request first (after its PROXY header, behind a proxy).
    pub(crate) fn with_websocket(mut self, config: Arc<WebSocketConfig>) -> Self {
        let deadline = self.core.opened.after(config.handshake_timeout);
        self.core.rare().ws = Some(Box::new(Layer::server(config)));
        if self.core.phase == Phase::Open {
            self.core.phase = Phase::Upgrading;
            self.core.timer_at = deadline;
        }
        self
    }

    /// Makes an outbound connection a WebSocket client: once connected it
    /// sends its upgrade request and opens when the server's 101 is read.
    pub(crate) fn with_websocket_client(mut self, config: Arc<WebSocketConfig>) -> Self {
        self.core.rare().ws = Some(Box::new(Layer::client(config)));
        self
    }

    /// A client's connect completed: the upgrade request goes out, the
    /// answer is awaited within the handshake timeout.
    pub(super) fn begin_client_upgrade(&mut self, cx: Context<'_>) {
        let host = self.core.peer.to_string();
        let Some(ws) = self.core.rare().ws.as_mut() else {
            return;
        };
        let request = ws.request(&host);
        let timeout = ws.config.handshake_timeout;
        self.core.phase = Phase::Upgrading;
        self.core.flow.insert(Flow::WS_CLIENT);
        self.core.timer_at = cx.now.after(timeout);
        self.core.last_active = cx.now;
        let _ = self.core.queue(request, cx.now, cx.limits);
    }

    /// A session admitted after its PROXY header reads its upgrade request.
    pub(super) fn begin_upgrade(&mut self, cx: Context<'_>) {
        let timeout = match &self.core.rare().ws {
            Some(ws) => ws.config.handshake_timeout,
            None => return,
        };
        self.core.phase = Phase::Upgrading;
        self.core.timer_at = cx.now.after(timeout);
        if !self.recv.is_empty() {
            self.try_upgrade(cx);
        }
    }

    /// Bytes of the upgrade request arrived.
    #[cold]
    pub(super) fn upgrade_input(&mut self, data: &[u8], cx: Context<'_>) {
        // At most one read beyond the request's limit: then it is refused.
        let _ = self.recv.extend(data, usize::MAX);
        self.try_upgrade(cx);
    }

    pub(super) fn try_upgrade(&mut self, cx: Context<'_>) {
        let client = self.core.flow.contains(Flow::WS_CLIENT);
        let Some(ws) = &self.core.rare().ws else {
            return;
        };
        if client {
            match ws.answer(self.recv.data()) {
                Ok(None) => {}
                Ok(Some(len)) => {
                    self.recv.consume(len);
                    self.ws_open(cx);
                }
                Err(e) => {
                    self.recv.clear();
                    self.core
                        .abort_with(CloseReason::HandshakeInvalid(e.reason.into()), false);
                }
            }
            return;
        }
        match ws.upgrade(self.recv.data()) {
            Upgrade::More => {}
            Upgrade::Accepted { answer, len } => {
                self.recv.consume(len);
                if self.core.queue(answer, cx.now, cx.limits).is_ok() {
                    self.ws_open(cx);
                }
            }
            Upgrade::Answered { answer, reason } => {
                self.recv.clear();
                self.core.timer_at = Tick::NEVER;
                let reason = match reason {
                    Some(e) => CloseReason::HandshakeInvalid(e.reason.into()),
                    None => CloseReason::LocalClose,
                };
                if self.core.queue(answer, cx.now, cx.limits).is_ok() {
                    self.core.phase = Phase::Closing;
                    self.core.set_reason(reason);
                }
            }
        }
    }

    /// The handshake is done: the session opens, its handler hears of it,
    /// and what came after the handshake is decoded.
    fn ws_open(&mut self, cx: Context<'_>) {
        self.core.flow.insert(Flow::WS);
        self.open(cx);
    }

    /// A read arrived on an open WebSocket session.
    pub(super) fn ws_received(&mut self, data: &[u8], cx: Context<'_>) {
        if !self.recv.is_empty() || !self.takes_input() {
            let _ = self.recv.extend(data, usize::MAX);
            return self.ws_buffered(cx);
        }
        // Frames are unmasked in place: in the worker's scratch buffer,
        // and only a partial frame's bytes are kept by the session.
        let mut scratch = std::mem::take(&mut *cx.hub.scratch.borrow_mut());
        scratch.clear();
        scratch.extend_from_slice(data);
        let used = self.ws_decode(&mut scratch, cx);
        if self.is_open() && used < scratch.len() {
            let _ = self.recv.extend(&scratch[used..], usize::MAX);
        }
        if scratch.capacity() <= SCRATCH_KEPT {
            *cx.hub.scratch.borrow_mut() = scratch;
        }
    }

    /// Offers what the handler left, then decodes the bytes the session
    /// holds.
    pub(super) fn ws_buffered(&mut self, cx: Context<'_>) {
        let Some(mut ws) = self.core.rare().ws.take() else {
            return;
        };
        if !ws.held.is_empty() {
            self.ws_message(&mut ws.held, None, cx);
        }
        self.core.rare().ws = Some(ws);
        if !self.takes_input() || self.recv.is_empty() {
            return;
        }
        let mut raw = std::mem::take(&mut self.recv);
        let used = self.ws_decode(raw.data_mut(), cx);
        if self.is_open() {
            raw.consume(used);
            self.recv = raw;
        }
    }

    /// Whether the handler left bytes of a message it was offered.
    pub(super) fn ws_holds(&self) -> bool {
        self.core
            .rare
            .as_ref()
            .and_then(|r| r.ws.as_ref())
            .is_some_and(|ws| !ws.held.is_empty())
    }

    /// Decodes the frames at the start of `buf` while the handler takes
    /// input: messages go to the handler, pings are answered, a close is
    /// answered and closes the session. Returns how many bytes it used.
    fn ws_decode(&mut self, buf: &mut [u8], cx: Context<'_>) -> usize {
        let Some(mut ws) = self.core.rare().ws.take() else {
            return buf.len();
        };
        let mut used = 0;
        while self.takes_input() && used < buf.len() {
            let (n, event) = match ws.decoder.decode(&mut buf[used..]) {
                Ok(None) => break,
                Ok(Some(found)) => found,
                Err(e) => {
                    self.core.ws_close_with(e.code, e.reason);
                    self.core.close(CloseReason::protocol(e.reason));
                    used = buf.len();
                    break;
                }
            };
            match event {
                Some(Event::Text(t)) => {
                    self.core.flow.insert(Flow::WS_TEXT);
                    self.ws_message(&mut ws.held, Some(t.as_bytes()), cx)
                }
                Some(Event::Binary(b)) => {
                    self.core.flow.remove(Flow::WS_TEXT);
                    self.ws_message(&mut ws.held, Some(b), cx)
                }
                Some(Event::Ping(p)) => {
                    let pong = frame_as(self.core.ws_role(), Opcode::Pong, p);
                    let _ = self.core.queue(pong, cx.now, cx.limits);
                }
                Some(Event::Close(said)) => {
                    // The peer's code is said back (RFC 6455 §5.5.1).
                    let code = said.map_or(CloseCode::NORMAL, |(code, _)| code);
                    match said {
                        Some(_) => self.core.ws_close_with(code, ""),
                        None => {
                            self.core.flow.insert(Flow::WS_CLOSE_SENT);
                            let close = frame_as(self.core.ws_role(), Opcode::Close, &[]);
                            self.core.push_control(close);
                        }
                    }
                    self.core.close(CloseReason::PeerClosed);
                }
                Some(Event::Pong(_)) | None => {}
            }
            used += n;
        }
        self.core.rare().ws = Some(ws);
        used
    }

    /// Offers one message (or, with `None`, what the handler left) to the
    /// handler, keeping what it does not consume.
    fn ws_message(&mut self, held: &mut Vec<u8>, message: Option<&[u8]>, cx: Context<'_>) {
        let mut offer = |core: &mut Core, data: &[u8]| {
            Self::callback(core, 0, |core| {
                self.handler.on_recv(&mut Self::session(core, &cx), data)
            })
        };
        if let (true, Some(message)) = (held.is_empty(), message) {
            let n = offer(&mut self.core, message);
            if n < message.len() && self.core.phase == Phase::Open {
                held.extend_from_slice(&message[n..]);
            }
        } else {
            if let Some(message) = message {
                held.extend_from_slice(message);
            }
            let mut start = 0;
            while start < held.len()
                && self.core.phase == Phase::Open
                && !self.core.flow.contains(Flow::PAUSED)
            {
                let n = offer(&mut self.core, &held[start..]);
                if n == 0 {
                    break;
                }
                start += n.min(held.len() - start);
            }
            held.drain(..start);
        }
        if held.is_empty() {
            // An idle session keeps no buffer.
            *held = Vec::new();
        } else if self.core.phase == Phase::Open && held.len() >= cx.limits.max_recv_buffer {
            self.core.abort(CloseReason::RecvBufferFull);
        }
    }
}
