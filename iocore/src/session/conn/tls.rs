//! A session that speaks TLS (feature `tls`): rustls between the bytes the
//! engine moves and the plaintext the handler (or WebSocket) sees.
//!
//! The engine's reads go to rustls; the plaintext lands in the session's
//! receive buffer, from where it is offered exactly as a TCP session's
//! bytes are (or read as a WebSocket upgrade and frames). Every byte
//! queued for sending goes through [`Core::queue`], which seals it into
//! records first on a TLS session, so the send queue holds ciphertext and
//! its cap counts what goes on the wire; the worker's cork is not used.
//! While the handshake runs the session is `Upgrading`, within the
//! handshake timeout; its messages (and an alert, if it fails) are queued
//! as they are. A graceful close sends `close_notify` after the queue.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;

use super::{Conn, Context, Core, Flow, Phase};
use crate::session::close::{CloseReason, SendError};
use crate::session::handler::{Handler, Limits, Tick};
use crate::tls::TlsConfig;

/// One session's TLS state.
pub(crate) struct TlsLayer {
    conn: rustls::Connection,
    handshake_timeout: std::time::Duration,
    /// This end is the client.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    client: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

impl TlsLayer {
    /// The records rustls has to send (handshake messages, sealed data,
    /// an alert), in one buffer.
    fn records(&mut self) -> Bytes {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        Bytes::from(out)
    }
}

impl Core {
    /// Seals `buf` into records and queues them under the session's limits.
    #[inline(never)]
    pub(super) fn tls_queue(&mut self, buf: Bytes, now: Tick, limits: &Limits) -> Result<(), SendError> {
        match self.tls_seal(&buf) {
            Some(records) => self.queue_raw(records, now, limits),
            None => Err(SendError::Closed),
        }
    }

    pub(super) fn tls_seal(&mut self, plain: &[u8]) -> Option<Bytes> {
        let tls = self.rare.as_mut()?.tls.as_mut()?;
        tls.conn.writer().write_all(plain).ok()?;
        Some(tls.records())
    }

    /// Queues `close_notify` (a graceful close of a TLS session).
    pub(super) fn tls_close_notify(&mut self) {
        let Some(tls) = self.rare.as_mut().and_then(|r| r.tls.as_mut()) else {
            return;
        };
        tls.conn.send_close_notify();
        let records = tls.records();
        if !records.is_empty() {
            let _ = self.send.push(records, usize::MAX);
        }
    }

    /// The ALPN protocol the handshake agreed on, if any.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.rare.as_ref()?.tls.as_ref()?.conn.alpn_protocol()
    }
}

impl<H: Handler> Conn<H> {
    /// Makes a connection a TLS session: an accepted one makes its
    /// handshake first (after its PROXY header, behind a proxy), an
    /// outbound one once connected.
    pub(crate) fn with_tls(mut self, config: Arc<TlsConfig>) -> Self {
        let conn = match config.connection() {
            Ok(mut conn) => {
                // What is sealed is drained into the send queue at once,
                // whose cap bounds it: no second limit inside rustls.
                conn.set_buffer_limit(None);
                conn
            }
            Err(e) => {
                self.core
                    .abort_with(CloseReason::HandshakeInvalid(format!("TLS: {e}").into()), false);
                return self;
            }
        };
        let handshake_timeout = config.handshake_timeout;
        let client = !config.is_server();
        self.core.rare().tls = Some(Box::new(TlsLayer {
            conn,
            handshake_timeout,
            client,
        }));
        self.core.flow.insert(Flow::TLS);
        if self.core.phase == Phase::Open {
            self.core.phase = Phase::Upgrading;
            self.core.timer_at = self.core.opened.after(handshake_timeout);
        }
        self
    }

    /// The handshake begins: a client's hello goes out, and bytes already
    /// read (after a PROXY header) are taken.
    pub(super) fn begin_tls(&mut self, cx: Context<'_>) {
        let Some(tls) = self.core.rare().tls.as_mut() else {
            return;
        };
        let (records, timeout) = (tls.records(), tls.handshake_timeout);
        self.core.phase = Phase::Upgrading;
        self.core.timer_at = cx.now.after(timeout);
        self.core.last_active = cx.now;
        if !records.is_empty() {
            let _ = self.core.queue_raw(records, cx.now, cx.limits);
        }
        if !self.recv.is_empty() {
            let early = std::mem::take(&mut self.recv);
            self.tls_received(early.data(), cx);
        }
    }

    /// Records arrived: decrypted into the receive buffer, then offered
    /// (or read as the WebSocket upgrade) as a TCP session's bytes are.
    pub(super) fn tls_received(&mut self, data: &[u8], cx: Context<'_>) {
        let Some(mut tls) = self.core.rare().tls.take() else {
            return;
        };
        let was_handshaking = tls.conn.is_handshaking();
        let mut input = data;
        let mut failure = None;
        let mut peer_closed = false;
        while !input.is_empty() && failure.is_none() {
            if let Err(e) = tls.conn.read_tls(&mut input) {
                failure = Some(e.to_string());
                break;
            }
            match tls.conn.process_new_packets() {
                Ok(state) => {
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let room = self.recv.spare(n, usize::MAX);
                        if tls.conn.reader().read_exact(&mut room[..n]).is_ok() {
                            self.recv.commit(n);
                        }
                    }
                    peer_closed |= state.peer_has_closed();
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        let records = tls.records();
        let handshaking = tls.conn.is_handshaking();
        self.core.rare().tls = Some(tls);
        if !records.is_empty() {
            // Handshake messages, or the alert that says why it failed.
            if self.core.send.is_empty() {
                self.core.last_sent = cx.now;
            }
            let _ = self.core.send.push(records, usize::MAX);
        }
        if let Some(why) = failure {
            self.recv.clear();
            let reason = match self.core.phase {
                Phase::Upgrading => CloseReason::HandshakeInvalid(format!("TLS: {why}").into()),
                _ => CloseReason::protocol(format!("TLS: {why}")),
            };
            // The alert is flushed, then FIN; nothing more is sealed.
            if matches!(self.core.phase, Phase::Upgrading | Phase::Open) {
                self.core.phase = Phase::Closing;
                self.core.timer_at = Tick::NEVER;
                self.core.set_reason(reason);
            }
            return;
        }
        if was_handshaking && !handshaking && self.core.phase == Phase::Upgrading {
            // It opens and is offered what came with the last handshake
            // message, or goes on to read its WebSocket upgrade.
            self.tls_established(cx);
        } else {
            self.tls_deliver(handshaking, cx);
        }
        if peer_closed {
            self.core.close(CloseReason::PeerClosed);
        }
    }

    /// Offers the plaintext, or, once the handshake is done, reads the
    /// WebSocket upgrade from it.
    #[cfg_attr(not(feature = "websocket"), allow(unused_variables))]
    fn tls_deliver(&mut self, handshaking: bool, cx: Context<'_>) {
        match self.core.phase {
            #[cfg(feature = "websocket")]
            Phase::Upgrading if !handshaking && !self.recv.is_empty() => self.try_upgrade(cx),
            Phase::Upgrading => {}
            Phase::Open => {
                self.core.last_active = cx.now;
                if !self.recv.is_empty() {
                    self.deliver_buffered(cx);
                }
            }
            _ => self.recv.clear(),
        }
    }

    /// The handshake is done: the session opens (or, under WebSocket,
    /// goes on to its upgrade).
    fn tls_established(&mut self, cx: Context<'_>) {
        #[cfg(feature = "websocket")]
        if let Some(timeout) = self.core.rare().ws.as_ref().map(|ws| ws.config.handshake_timeout) {
            if self.core.rare().tls.as_ref().is_some_and(|t| t.client) {
                return self.begin_client_upgrade(cx);
            }
            self.core.timer_at = cx.now.after(timeout);
            return self.tls_deliver(false, cx);
        }
        self.open(cx);
    }
}
