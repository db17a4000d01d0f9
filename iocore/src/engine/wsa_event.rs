//! The WSAEventSelect engine — the first seed, literally: each socket is
//! tied to an event object (`WSAEventSelect` with FD_READ | FD_WRITE |
//! FD_CLOSE, FD_ACCEPT | FD_CLOSE for the listener), a wait returns the
//! signaled event, `WSAEnumNetworkEvents` tells which network events (with
//! their error codes), and the matching socket call follows — after
//! FD_READ a `recv`, or FD_READ would not come again; WOULDBLOCK is no
//! error. Removing sessions on error and on FD_CLOSE (the seed's TODOs) is
//! the session layer's lifecycle.
//!
//! One wait takes at most 64 events, so sessions live in **groups** of 63
//! event objects, each watched by a waiter thread, as production
//! WSAEventSelect servers do. A waiter only waits: it reports the signaled
//! slots of its group to the worker and parks until the worker has run
//! `WSAEnumNetworkEvents` on them (which resets the events). The worker
//! owns every socket and session and waits on three events of its own:
//! its inbox, "a group reported", and the listener. Event objects are
//! reused by the slot and never closed while a waiter may wait on them.
//!
//! A session that does not want input (paused by its handler, or its send
//! queue over the high watermark) is not read after FD_READ. FD_READ then
//! stays disabled (it is re-enabled only by a `recv`), so the worker
//! remembers that it stopped — and an FD_CLOSE seen meanwhile — and calls
//! `recv` itself when input is wanted again.

use std::io;
use std::net::SocketAddr;

use crate::session::{CloseReason, Conn, Handler};
use crate::sys::wsaevent::{self as wsa, Interest};
use crate::sys::OwnedSocket;

use super::core::Core;
use super::driver::{CloseAtOnce, Driver};
use super::groups::{EventEngine, Shell};
use super::readiness::{flush_gather, read_into_scratch, ReadEnd};
use super::sockets::io_close_reason;
use super::{EngineKind, Worker};

const SCRATCH: usize = 64 * 1024;
const READ_BUDGET: usize = 16;

struct Sock {
    socket: OwnedSocket,
    group: usize,
    slot: usize,
    write_blocked: bool,
    /// FD_READ came (or may have) but was not followed by a recv because
    /// input was not wanted: recv when it is.
    read_stalled: bool,
    /// FD_CLOSE came, with its error, and the socket has not been found
    /// drained since: the peer's FIN (or reset) is still to be applied.
    close_pending: Option<Option<io::Error>>,
}

struct Loop<H> {
    core: Core<H, Sock>,
    shell: Shell,
    scratch: Box<[u8]>,
}

/// Runs the worker until it is stopped.
pub(crate) fn run<H: Handler>(w: Worker<H>) -> io::Result<()> {
    let shell = Shell::new(w.listener.as_ref(), format!("iocore-wsa-wait-{}", w.index));
    let shell = w.report_setup(EngineKind::WsaEvent, shell)?;
    let mut lp = Loop {
        core: Core::new(w),
        shell,
        scratch: vec![0; SCRATCH].into_boxed_slice(),
    };
    lp.run_loop()
}

impl<H: Handler> Loop<H> {
    fn open(&mut self, conn: Conn<H>, s: OwnedSocket, interest: Interest) -> io::Result<()> {
        let (g, slot) = self.shell.groups.acquire()?;
        if let Err(e) = wsa::select(&s, self.shell.groups.event(g, slot), interest) {
            self.shell.groups.release(g, slot);
            let reason = match conn.is_connecting() {
                true => CloseReason::ConnectFailed(e),
                false => CloseReason::Io(e),
            };
            self.core.finish(None, conn, reason);
            return Ok(());
        }
        let token = self.core.insert(
            conn,
            Sock {
                socket: s,
                group: g,
                slot,
                write_blocked: false,
                read_stalled: false,
                close_pending: None,
            },
        );
        self.shell.groups.assign(g, slot, token);
        let (cx, slot) = self.core.slot(token).expect("just inserted");
        if !slot.conn.is_connecting() {
            slot.conn.start(cx);
            // Bytes that arrived before the socket was tied to its event
            // may not raise FD_READ (Wine does not); a recv re-enables it.
            self.recv_after_fd_read(token);
        }
        self.settle(token)
    }

    /// After FD_READ (or when input is wanted again), recv — or FD_READ
    /// will not come again — unless input is not wanted now; then apply a
    /// pending FD_CLOSE once nothing is left to read.
    fn recv_after_fd_read(&mut self, token: u64) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        if slot.conn.is_connecting() {
            return;
        }
        // Replies copied out while handling this input wait in the cork for
        // this session's flush (settle follows every call).
        cx.hub.cork.borrow_mut().open_for(token);
        let socket = &slot.io.socket;
        let end = read_into_scratch(&mut slot.conn, &mut self.scratch, stats, cx, READ_BUDGET, |buf| {
            wsa::read(socket, buf)
        });
        match end {
            ReadEnd::Paused => slot.io.read_stalled = true,
            ReadEnd::Drained => {
                if let Some(error) = slot.io.close_pending.take() {
                    // FD_CLOSE with nothing left to read (Wine: also a
                    // reset), while input was wanted (open, awaiting a
                    // PROXY header, or closing and awaiting the FIN).
                    if slot.conn.wants_input() {
                        match error {
                            Some(e) => slot.conn.failed(io_close_reason(e)),
                            None => slot.conn.eof(),
                        }
                    }
                }
            }
            // FD_READ is raised again while data remains.
            ReadEnd::Budget => {}
        }
    }
}

impl<H: Handler> Driver<H> for Loop<H> {
    type Io = Sock;

    fn core(&mut self) -> &mut Core<H, Sock> {
        &mut self.core
    }

    fn open_accepted(&mut self, conn: Conn<H>, s: OwnedSocket) -> io::Result<()> {
        self.open(conn, s, Interest::SESSION)
    }

    fn connect(&mut self, addr: SocketAddr, handler: H) -> io::Result<()> {
        match self.core.outbound(addr, handler, wsa::connect) {
            Some((conn, s)) => self.open(conn, s, Interest::CONNECTING),
            None => Ok(()),
        }
    }

    fn settle(&mut self, token: u64) -> io::Result<()> {
        self.settle_at_once(token)
    }

    fn close_listener(&mut self, listener: OwnedSocket) -> io::Result<()> {
        self.shell.close_listener(listener);
        Ok(())
    }

    /// Winsock gives no acknowledged count here, and FD_WRITE may be long
    /// in coming while a slow peer reads (under Wine it is Linux's
    /// writability, a third of the buffer free): a send attempted now is
    /// the kernel's answer. Bytes it takes count as progress; WOULDBLOCK
    /// leaves FD_WRITE armed as before.
    fn before_stall_check(&mut self, token: u64) {
        if let Some((_, slot)) = self.core.slot(token) {
            slot.io.write_blocked = false;
        }
        self.flush(token);
    }
}

impl<H: Handler> EventEngine<H> for Loop<H> {
    fn parts(&mut self) -> (&mut Core<H, Sock>, &mut Shell) {
        (&mut self.core, &mut self.shell)
    }

    fn session_event(&mut self, token: u64) -> io::Result<()> {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return Ok(());
        };
        let event = self.shell.groups.event(slot.io.group, slot.io.slot);
        let ne = match wsa::enumerate(&slot.io.socket, event) {
            Ok(ne) => ne,
            Err(e) => {
                slot.conn.failed(io_close_reason(e));
                return self.settle(token);
            }
        };
        let mut read = ne.read || ne.close;
        if let Some(result) = ne.connect {
            match result {
                Ok(()) if slot.conn.is_connecting() => {
                    slot.conn.connected(cx);
                    stats.connected();
                    read = true;
                }
                Ok(()) => {}
                Err(e) => slot.conn.failed(CloseReason::ConnectFailed(e)),
            }
        }
        if ne.write {
            slot.io.write_blocked = false;
        }
        if ne.close {
            slot.io.close_pending = Some(ne.close_error);
        }
        if read {
            self.recv_after_fd_read(token);
        }
        self.settle(token)
    }
}

impl<H: Handler> CloseAtOnce<H> for Loop<H> {
    fn flush(&mut self, token: u64) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        let Sock {
            socket,
            write_blocked,
            ..
        } = &mut slot.io;
        flush_gather(
            &mut slot.conn,
            write_blocked,
            stats,
            cx,
            |iov| wsa::send_vectored(socket, iov),
            // No acknowledged count here: the stall check writes instead.
            |_| {},
        );
    }

    fn shutdown_write(io: &Sock) -> io::Result<()> {
        wsa::shutdown_write(&io.socket)
    }

    fn release(&mut self, io: Sock, rst: bool) {
        let Sock {
            socket, group, slot, ..
        } = io;
        wsa::deselect(&socket);
        if rst {
            let _ = crate::sys::socket::set_linger_zero(&socket);
        }
        drop(socket);
        self.shell.groups.release(group, slot);
    }

    fn read_stalled(io: &mut Sock) -> &mut bool {
        &mut io.read_stalled
    }

    fn read_input(&mut self, token: u64) {
        self.recv_after_fd_read(token);
    }
}
