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

use std::io;
use std::net::SocketAddr;

use crate::session::{CloseReason, Conn, Handler};
use crate::sys::wsaevent::{self as wsa, Interest};
use crate::sys::OwnedSocket;

use super::core::{flush_gather, io_close_reason, read_into_scratch, CloseAtOnce, Core, Driver};
use super::groups::{EventEngine, Shell};
use super::{EngineKind, Worker};

const SCRATCH: usize = 64 * 1024;
const READ_BUDGET: usize = 16;

struct Sock {
    socket: OwnedSocket,
    group: usize,
    slot: usize,
    write_blocked: bool,
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
            self.core.finish(conn, reason);
            return Ok(());
        }
        let token = self.core.insert(
            conn,
            Sock {
                socket: s,
                group: g,
                slot,
                write_blocked: false,
            },
        );
        self.shell.groups.assign(g, slot, token);
        let (cx, slot) = self.core.slot(token).expect("just inserted");
        if !slot.conn.is_connecting() {
            slot.conn.start(cx);
            self.read_now(token);
        }
        self.settle(token)
    }

    /// Reads whatever is already there. Called when a session opens:
    /// bytes that arrived before its socket was tied to its event may not
    /// raise FD_READ (Wine does not), and a recv re-enables it anyway.
    fn read_now(&mut self, token: u64) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        if slot.conn.is_open() {
            read_after_fd_read(slot, &mut self.scratch, stats, cx);
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
        if let Some(result) = ne.connect {
            match result {
                Ok(()) if slot.conn.is_connecting() => {
                    slot.conn.connected(cx);
                    stats.connected();
                    read_after_fd_read(slot, &mut self.scratch, stats, cx);
                }
                Ok(()) => {}
                Err(e) => slot.conn.failed(CloseReason::ConnectFailed(e)),
            }
        }
        if ne.write {
            slot.io.write_blocked = false;
        }
        if (ne.read || ne.close) && !slot.conn.is_connecting() {
            let drained = read_after_fd_read(slot, &mut self.scratch, stats, cx);
            if ne.close && drained && slot.conn.is_open() {
                // FD_CLOSE with nothing left to read (Wine: also a reset).
                match ne.close_error {
                    Some(e) => slot.conn.failed(io_close_reason(e)),
                    None => slot.conn.eof(),
                }
            }
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
        flush_gather(&mut slot.conn, write_blocked, stats, cx, |iov| {
            wsa::send_vectored(socket, iov)
        });
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
}

/// After FD_READ, recv — or FD_READ will not come again. Returns whether
/// the socket was drained (FD_READ is raised again while data remains).
fn read_after_fd_read<H: Handler>(
    slot: &mut super::core::Slot<H, Sock>,
    scratch: &mut [u8],
    stats: &super::WorkerStats,
    cx: crate::session::Context<'_>,
) -> bool {
    let socket = &slot.io.socket;
    read_into_scratch(&mut slot.conn, scratch, stats, cx, READ_BUDGET, |buf| {
        wsa::read(socket, buf)
    })
}
