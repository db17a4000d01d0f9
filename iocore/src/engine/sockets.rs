//! What the engines do to sockets for the core's decisions
//! ([`super::admission`]): an admitted connection's socket is prepared (no
//! Nagle delay, keepalive), a refused one is reset; a connection accepted
//! here goes to another worker's inbox under the hand-off strategy; an
//! outbound one gets its socket. And the listener's side of a shortage of
//! descriptors: a spare descriptor freed to shed the backlog (libuv's way
//! out of EMFILE). A socket failure becomes a close reason here too.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::core::Core;
use super::{AcceptErrorKind, Command, Keepalive, TlsCfg, WsConfig};
use crate::session::{CloseReason, Conn, Handler, Tick};
use crate::sys::{socket, OwnedSocket};

/// How long to pause accepting when out of resources and no connection
/// can be shed (no spare descriptor, or out of memory).
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The close reason for a failed socket call: a reset, or any other error.
pub(crate) fn io_close_reason(e: io::Error) -> CloseReason {
    if socket::is_reset(&e) {
        CloseReason::PeerReset
    } else {
        CloseReason::Io(e)
    }
}

/// Sets an admitted session socket's options: no Nagle delay, keepalive
/// if configured, and the send stall timeout for the bytes the kernel
/// holds (a peer that vanished while bytes were in flight is found within
/// it, not after the kernel's own retransmission limit of many minutes;
/// the session ends with the kernel's ETIMEDOUT, `CloseKind::Io`). A
/// failure leaves the socket usable, so it is only logged.
fn prepare(s: &OwnedSocket, keepalive: Option<Keepalive>, stall: Option<std::time::Duration>) {
    let _ = socket::set_nodelay(s);
    if let Some(k) = keepalive {
        if let Err(e) = socket::set_keepalive(s, k.idle, k.interval, k.count) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
    }
    if let Some(t) = stall {
        if let Err(e) = socket::set_user_timeout(s, t) {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

/// Refuses a connection: its peer sees a reset, not a close.
fn reset(s: OwnedSocket) {
    let _ = socket::set_linger_zero(&s);
}

/// A shortage of descriptors or memory that made accepts fail.
pub(super) struct Shortage {
    since: Tick,
    /// Connections accepted and closed at once meanwhile.
    shed: u64,
}

impl<H: Handler, S> Core<H, S> {
    /// A connection was accepted here: handed to the worker whose turn it
    /// is (hand-off), or admitted here (returned, its socket prepared), or
    /// refused (reset). See [`Core::admit_accepted`].
    pub(super) fn accepted(&mut self, s: OwnedSocket, peer: SocketAddr) -> Option<(Conn<H>, OwnedSocket)> {
        let (websocket, tls) = (self.w.websocket.clone(), self.w.tls.clone());
        if let Some(to) = self.hand_off_to() {
            match self.w.workers[to].push(Command::Adopt {
                socket: s,
                peer,
                websocket,
                tls,
            }) {
                Ok(()) => return None,
                // That worker has ended: serve it here.
                Err(Command::Adopt {
                    socket,
                    peer,
                    websocket,
                    tls,
                }) => return self.adopted(socket, peer, websocket.as_ref(), tls.as_ref()),
                Err(_) => unreachable!("push gives back what it was given"),
            }
        }
        self.adopted(s, peer, websocket.as_ref(), tls.as_ref())
    }

    /// A connection accepted here, or by another worker and handed here:
    /// admitted (its socket prepared) or refused (reset).
    pub(super) fn adopted(
        &self,
        s: OwnedSocket,
        peer: SocketAddr,
        websocket: Option<&Arc<WsConfig>>,
        tls: Option<&Arc<TlsCfg>>,
    ) -> Option<(Conn<H>, OwnedSocket)> {
        match self.admit_accepted(peer, websocket, tls) {
            Some(conn) => {
                prepare(&s, self.w.keepalive, self.w.limits.send_stall_timeout);
                Some((conn, s))
            }
            None => {
                reset(s);
                None
            }
        }
    }

    /// An outbound connection was asked for: admits it and makes its socket
    /// with `socket`, or tells the handler at once that the connect failed.
    pub(super) fn outbound(
        &self,
        addr: SocketAddr,
        handler: H,
        socket: impl FnOnce(&SocketAddr) -> io::Result<OwnedSocket>,
    ) -> Option<(Conn<H>, OwnedSocket)> {
        let conn = self.admit_outbound(addr, handler)?;
        match socket(&addr) {
            Ok(s) => {
                prepare(&s, self.w.keepalive, self.w.limits.send_stall_timeout);
                Some((conn, s))
            }
            Err(e) => {
                self.finish(None, conn, CloseReason::ConnectFailed(e));
                None
            }
        }
    }

    /// Counts a failed accept by its kind and returns the kind.
    pub(super) fn accept_error(&self, e: &io::Error) -> AcceptErrorKind {
        let kind = if socket::is_out_of_descriptors(e) {
            AcceptErrorKind::Descriptors
        } else if socket::is_resource_exhausted(e) {
            AcceptErrorKind::Memory
        } else if socket::is_transient_accept_error(e) {
            AcceptErrorKind::Aborted
        } else {
            AcceptErrorKind::Other
        };
        self.w.stats.accept_error(kind);
        kind
    }

    /// An accept succeeded: a shortage, if there was one, is over.
    pub(super) fn accept_ok(&mut self) {
        if let Some(s) = self.shortage.take() {
            self.w.stats.set_accept_shortage(false);
            tracing::info!(
                worker = self.w.index,
                after_ms = s.since.until(self.now).as_millis() as u64,
                closed_at_once = s.shed,
                "accepting again: the resource shortage is over"
            );
        }
    }

    /// Accepting failed with `e`, a shortage of descriptors or memory.
    /// Out of descriptors with the spare at hand, the connections waiting
    /// in the listener's backlog are accepted and closed at once (their
    /// clients see a close instead of hanging; counted as shed) until none
    /// is left: returns `None`, and the engine accepts again when a new
    /// connection is reported — not at once: the kernel takes the new
    /// descriptor before it looks for a connection, so during a shortage
    /// `accept` fails even with an empty backlog, and retrying would spin.
    /// Otherwise accepting should pause until the returned time. Logged
    /// once per shortage.
    pub(super) fn accept_shortage(&mut self, e: &io::Error) -> Option<Tick> {
        self.accept_error(e);
        if self.shortage.is_none() {
            tracing::warn!(
                worker = self.w.index,
                error = %e,
                "accept failed for lack of resources: closing new connections at once until it is over"
            );
            self.shortage = Some(Shortage {
                since: self.now,
                shed: 0,
            });
            self.w.stats.set_accept_shortage(true);
        }
        let shed = match (
            &self.w.listener,
            &mut self.spare,
            socket::is_out_of_descriptors(e),
        ) {
            (Some(listener), Some(spare), true) => socket::shed_backlog(listener, spare),
            _ => None,
        };
        match shed {
            Some(n) => {
                self.w.stats.accept_shed(n);
                if let Some(s) = &mut self.shortage {
                    s.shed += n as u64;
                }
                None
            }
            None => {
                // No spare to free (taken meanwhile), or out of memory: wait.
                self.spare = Some(socket::Spare::new());
                Some(self.now.after(ACCEPT_BACKOFF))
            }
        }
    }
}
