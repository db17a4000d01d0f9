//! Who becomes a session: the admission policy, as decisions. Nothing here
//! touches a socket or reads a clock: a refused connection is reset by the
//! engine that holds it ([`super::sockets`]), and the time is the loop's
//! [`Core::now`]. Decided here: the server-wide `max_sessions`, the
//! per-address `max_sessions_per_ip` (behind a proxy, on the client's
//! address once its header named it), whether a proxy is trusted, the
//! hand-off of accepted connections to the workers in turn, and a stopping
//! worker's refusal of what it is handed. Warnings that a storm could
//! repeat for every connection are rate-limited ([`Quiet`]).

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use std::sync::Arc;

use super::core::Core;
use super::{TlsCfg, WsConfig};
use crate::session::{catch_panic, CloseReason, Conn, Handler, Tick};

/// Least time between two warnings of one kind from one worker.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// A warning that a storm could repeat for every connection: said at most
/// once per [`WARN_EVERY`], with how many were held back meanwhile.
#[derive(Default)]
pub(super) struct Quiet {
    next: Cell<Tick>,
    held_back: Cell<u64>,
}

impl Quiet {
    /// Whether to warn now; if so, how many warnings were held back.
    pub(super) fn allow(&self, now: Tick) -> Option<u64> {
        if now < self.next.get() {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.next.set(now.after(WARN_EVERY));
        Some(self.held_back.replace(0))
    }
}

impl<H: Handler, S> Core<H, S> {
    /// Takes a place under `max_sessions`, or counts a rejection.
    pub(super) fn admit(&self) -> bool {
        let ok = self.w.gate.try_acquire();
        if !ok {
            self.w.stats.rejected();
        }
        ok
    }

    /// With the hand-off accept strategy, the worker the next accepted
    /// connection goes to, if not this one (the workers take them in
    /// turn, this one included); `None`: it stays here.
    pub(super) fn hand_off_to(&mut self) -> Option<usize> {
        if !self.w.hand_off {
            return None;
        }
        let to = self.next_worker;
        self.next_worker = (to + 1) % self.w.workers.len();
        (to != self.w.index).then_some(to)
    }

    /// Whether a connection from `peer`, accepted here or handed over by
    /// the worker that accepted it, becomes a session here, and the
    /// session if so. `None`: refused and counted (a stopping worker, no
    /// place under `max_sessions` or `max_sessions_per_ip`, an untrusted
    /// proxy); the engine resets the connection.
    pub(super) fn admit_accepted(
        &self,
        peer: SocketAddr,
        websocket: Option<&Arc<WsConfig>>,
        tls: Option<&Arc<TlsCfg>>,
    ) -> Option<Conn<H>> {
        if self.stopping() {
            self.w.stats.rejected();
            return None;
        }
        if !self.admit() {
            tracing::debug!(%peer, "session limit reached: connection reset");
            return None;
        }
        // Behind a proxy, the limit per address applies to the client's,
        // once its header has named it (see `admit_proxied`).
        if self.w.proxy.is_none() && !self.admit_ip(peer.ip()) {
            self.w.gate.release();
            return None;
        }
        let factory = self.w.factory.as_ref().expect("a listening worker has a factory");
        let Some(handler) = self.make_handler(|| factory()) else {
            self.w.stats.rejected();
            self.w.gate.release();
            if self.w.proxy.is_none() {
                if let Some(ip_gate) = &self.w.ip_gate {
                    ip_gate.release(peer.ip());
                }
            }
            return None;
        };
        self.w.stats.accepted();
        let conn = match &self.w.proxy {
            None => Conn::accepted(peer, handler, self.now),
            Some(proxy) => Conn::behind_proxy(peer, handler, self.now, self.now.after(proxy.header_timeout)),
        };
        // TLS under WebSocket: the upgrade is read from the plaintext.
        #[cfg(feature = "tls")]
        let conn = match tls {
            Some(tls) => conn.with_tls(tls.clone()),
            None => conn,
        };
        #[cfg(feature = "websocket")]
        let conn = match websocket {
            Some(ws) => conn.with_websocket(ws.clone()),
            None => conn,
        };
        #[cfg(not(feature = "websocket"))]
        let _ = websocket;
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        let Some(proxy) = &self.w.proxy else {
            return Some(conn);
        };
        if !proxy.trusts(peer.ip()) {
            self.finish(None, conn, CloseReason::ProxyUntrusted);
            return None;
        }
        Some(conn)
    }

    /// Runs the application's factory of handlers; if it panics, logs it
    /// (rate-limited) and returns `None`: the connection is refused, the
    /// worker goes on.
    pub(super) fn make_handler(&self, make: impl FnOnce() -> H) -> Option<H> {
        match catch_panic(make) {
            Ok(handler) => Some(handler),
            Err(what) => {
                if let Some(held_back) = self.panic_warning.allow(self.now) {
                    tracing::error!(
                        worker = self.w.index,
                        panic = %what,
                        held_back,
                        "a handler factory panicked: the connection was refused, the worker goes on"
                    );
                }
                None
            }
        }
    }

    /// Takes a place for `ip` under `max_sessions_per_ip` (if set), or
    /// counts a rejection and warns (rate-limited).
    fn admit_ip(&self, ip: IpAddr) -> bool {
        let Some(ip_gate) = &self.w.ip_gate else {
            return true;
        };
        if ip_gate.try_acquire(ip) {
            return true;
        }
        self.w.stats.rejected_per_ip();
        if let Some(held_back) = self.per_ip_warning.allow(self.now) {
            tracing::warn!(
                worker = self.w.index,
                %ip,
                held_back,
                "max_sessions_per_ip reached: connection reset"
            );
        }
        false
    }

    /// A session behind a proxy has read its PROXY header
    /// ([`crate::session::Step::Admit`]): admitted under
    /// `max_sessions_per_ip` for the client's address, it opens; otherwise
    /// it is reset.
    pub(super) fn admit_proxied(&mut self, token: u64) {
        let Some(ip) = self.sessions.get_mut(token).map(|s| s.conn.peer_addr().ip()) else {
            return;
        };
        let admitted = self.admit_ip(ip);
        let Some((cx, slot)) = self.slot(token) else {
            return;
        };
        match admitted {
            true => {
                if let Some(p) = slot.conn.proxy() {
                    tracing::debug!(
                        worker = cx.id.worker(),
                        session = %cx.id,
                        peer = %slot.conn.peer_addr(),
                        proxy = %p.proxy,
                        version = p.version,
                        local = p.local,
                        "session opened behind a proxy"
                    );
                }
                slot.conn.admit(cx)
            }
            false => slot
                .conn
                .refuse(CloseReason::custom("max_sessions_per_ip reached")),
        }
    }

    /// An outbound connection was asked for: admits it under
    /// `max_sessions` and makes its session, or tells the handler at once
    /// that the connect failed.
    pub(super) fn admit_outbound(&self, addr: SocketAddr, handler: H) -> Option<Conn<H>> {
        let conn = Conn::connecting(addr, handler, self.now, &self.w.limits);
        #[cfg(feature = "tls")]
        let conn = match &self.w.tls {
            Some(tls) => conn.with_tls(tls.clone()),
            None => conn,
        };
        #[cfg(feature = "websocket")]
        let conn = match &self.w.websocket {
            // An outbound connection of a client whose sessions speak it.
            Some(ws) => conn.with_websocket_client(ws.clone()),
            None => conn,
        };
        if !self.admit() {
            let err = std::io::Error::new(std::io::ErrorKind::OutOfMemory, "session limit reached");
            conn.finish(CloseReason::ConnectFailed(err));
            return None;
        }
        self.w.stats.opened_outbound();
        Some(conn)
    }
}
