//! The IOCP engine: a completion port per worker thread — the model the
//! seeds' series ends at. Accepts are `AcceptEx` (several posted ahead);
//! a session posts a zero-byte overlapped `WSARecv` that completes when
//! data is there (so an idle session holds no receive buffer), then reads
//! without blocking into the worker's scratch buffer; sends are one gather
//! `WSASend` at a time over buffers lent by the session's queue; outbound
//! connects are `ConnectEx`. A closing session cancels what it has posted
//! and is freed after the last completion. A session that does not want
//! input (paused by its handler, or its send queue over the high
//! watermark) stops reading and posts no receive until it wants input
//! again. Accepts that cannot be posted (out of memory or sockets) are
//! counted and retried after a pause.

use std::io;
use std::net::SocketAddr;

use crate::session::{CloseReason, Conn, Handler, Tick};
use crate::sys::iocp::{self, Done, Port, SendOp};
use crate::sys::{socket, OwnedSocket};

use super::completion::{CloseAfterLast, Posted};
use super::core::Core;
use super::driver::Driver;
use super::readiness::read_into_scratch;
use super::sockets::{io_close_reason, ACCEPT_BACKOFF};
use super::{EngineKind, Worker};

/// Accepts kept posted on the listener.
const ACCEPTS: usize = 16;
/// The shared receive buffer.
const SCRATCH: usize = 64 * 1024;
/// Reads per readiness before the session is put back in line.
const READ_BUDGET: usize = 16;

struct Sock {
    socket: OwnedSocket,
    recv_posted: bool,
    sending: bool,
    /// Operations in flight and the session's end (freed after the last
    /// completion).
    posted: Posted,
}

struct Loop<H> {
    core: Core<H, Sock>,
    port: Port,
    listen_addr: Option<SocketAddr>,
    accepts_posted: usize,
    /// Posting accepts failed: try again at this time.
    accept_retry_at: Option<Tick>,
    scratch: Box<[u8]>,
    /// Boxed on purpose: the port takes and returns them by box.
    #[allow(clippy::vec_box)]
    spare_sends: Vec<Box<SendOp>>,
    done: Vec<Done>,
}

/// Runs the worker until it is stopped.
pub(crate) fn run<H: Handler>(w: Worker<H>) -> io::Result<()> {
    let setup = || -> io::Result<(Port, Option<SocketAddr>)> {
        let port = Port::new()?;
        let addr = match &w.listener {
            Some(l) => {
                port.associate(l)?;
                Some(socket::local_addr(l)?)
            }
            None => None,
        };
        w.inbox.waker().attach_port(Some(port.waker()));
        Ok((port, addr))
    };
    let (port, listen_addr) = match setup() {
        Ok(p) => p,
        Err(e) => return w.report_setup(EngineKind::Iocp, Err(e)),
    };
    let mut lp = Loop {
        core: Core::new(w),
        port,
        listen_addr,
        accepts_posted: 0,
        accept_retry_at: None,
        scratch: vec![0; SCRATCH].into_boxed_slice(),
        spare_sends: Vec::new(),
        done: Vec::new(),
    };
    let started = lp.post_accepts();
    lp.core.w.report_setup(EngineKind::Iocp, started)?;
    let result = lp.run();
    lp.core.w.inbox.waker().attach_port(None);
    result
}

impl<H: Handler> Loop<H> {
    fn run(&mut self) -> io::Result<()> {
        loop {
            let timeout = self.core.timeout(self.accept_retry_at);
            let mut done = std::mem::take(&mut self.done);
            self.port.wait(timeout, &mut done)?;
            self.core.tick();
            self.core.w.stats.turn(done.len());
            for d in done.drain(..) {
                self.complete(d)?;
            }
            self.done = done;
            if self.accept_retry_at.is_some_and(|t| t <= self.core.now) {
                self.accept_retry_at = None;
                self.post_accepts()?;
            }
            self.after_events()?;
            if self.core.finished() && self.port.outstanding() == 0 {
                return Ok(());
            }
        }
    }

    /// Keeps [`ACCEPTS`] accepts posted. A post that fails (no memory or
    /// sockets left) is counted and retried after [`ACCEPT_BACKOFF`]; the
    /// sessions already served go on.
    fn post_accepts(&mut self) -> io::Result<()> {
        let Some(addr) = self.listen_addr else {
            return Ok(());
        };
        while self.accepts_posted < ACCEPTS && !self.core.stopping() && self.accept_retry_at.is_none() {
            let Some(l) = &self.core.w.listener else {
                return Ok(());
            };
            let Err(e) = self.port.accept(l, &addr) else {
                self.accepts_posted += 1;
                continue;
            };
            let until = match socket::is_resource_exhausted(&e) {
                true => self.core.accept_shortage(&e),
                false => {
                    self.core.accept_error(&e);
                    tracing::warn!(worker = self.core.w.index, error = %e, "cannot post accepts: retrying shortly");
                    None
                }
            };
            self.accept_retry_at = Some(until.unwrap_or_else(|| self.core.now.after(ACCEPT_BACKOFF)));
        }
        Ok(())
    }

    fn complete(&mut self, d: Done) -> io::Result<()> {
        match d {
            Done::Wake => self.commands(),
            Done::Accepted(result) => {
                self.accepts_posted -= 1;
                match result {
                    Ok((s, peer)) if !self.core.stopping() => {
                        self.core.accept_ok();
                        self.serve_accepted(s, peer)?
                    }
                    Ok(_) => {}
                    Err(_) if self.core.stopping() => {}
                    Err(e) => {
                        self.core.accept_error(&e);
                        tracing::debug!(error = %e, "accept failed");
                    }
                }
                self.post_accepts()
            }
            Done::Readable { token, result } => {
                self.finished_op(token);
                match result {
                    Ok(()) => self.readable(token),
                    Err(e) => self.fail(token, e),
                }
                self.settle(token)
            }
            Done::Sent {
                token,
                result,
                mut op,
            } => {
                self.finished_op(token);
                if let Some((cx, slot, stats)) = self.core.slot_stats(token) {
                    slot.io.sending = false;
                    let sent = match result {
                        Ok(n) => {
                            stats.wrote(n);
                            n
                        }
                        Err(e) => {
                            stats.write_attempt();
                            if !slot.io.posted.is_closing() {
                                slot.conn.failed(io_close_reason(e));
                            }
                            0
                        }
                    };
                    slot.conn.send_completed(&mut op.bufs, op.offset, sent, cx);
                }
                op.bufs.clear();
                self.spare_sends.push(op);
                self.settle(token)
            }
            Done::Connected { token, result } => {
                self.finished_op(token);
                if let Some((cx, slot, stats)) = self.core.slot_stats(token) {
                    match result {
                        Ok(()) => {
                            slot.conn.connected(cx);
                            stats.connected();
                        }
                        Err(e) => slot.conn.failed(CloseReason::ConnectFailed(e)),
                    }
                }
                self.post_recv(token)?;
                self.settle(token)
            }
        }
    }

    fn finished_op(&mut self, token: u64) {
        if let Some((_, slot)) = self.core.slot(token) {
            slot.io.posted.completed();
        }
    }

    fn fail(&mut self, token: u64, e: io::Error) {
        if let Some((_, slot)) = self.core.slot(token) {
            slot.io.recv_posted = false;
            if !slot.io.posted.is_closing() {
                slot.conn.failed(io_close_reason(e));
            }
        }
    }

    fn post_recv(&mut self, token: u64) -> io::Result<()> {
        let Some((_, slot)) = self.core.slot(token) else {
            return Ok(());
        };
        if slot.io.recv_posted || slot.io.posted.is_closing() || slot.conn.is_connecting() {
            return Ok(());
        }
        match self.port.recv(&slot.io.socket, token) {
            Ok(()) => {
                slot.io.recv_posted = true;
                slot.io.posted.posted();
            }
            Err(e) => slot.conn.failed(io_close_reason(e)),
        }
        Ok(())
    }

    /// Data (or FIN, or an error) is there: read it without blocking.
    fn readable(&mut self, token: u64) {
        let Some((cx, slot, stats)) = self.core.slot_stats(token) else {
            return;
        };
        slot.io.recv_posted = false;
        let socket = &slot.io.socket;
        read_into_scratch(&mut slot.conn, &mut self.scratch, stats, cx, READ_BUDGET, |buf| {
            iocp::read(socket, buf)
        });
    }
}

impl<H: Handler> Driver<H> for Loop<H> {
    type Io = Sock;

    fn core(&mut self) -> &mut Core<H, Sock> {
        &mut self.core
    }

    fn open_accepted(&mut self, conn: Conn<H>, s: OwnedSocket) -> io::Result<()> {
        if let Err(e) = self.port.associate(&s) {
            self.core.finish(None, conn, CloseReason::Io(e));
            return Ok(());
        }
        let token = self.core.insert(conn, Sock::new(s));
        let (cx, slot) = self.core.slot(token).expect("just inserted");
        slot.conn.start(cx);
        self.post_recv(token)?;
        self.settle(token)
    }

    fn connect(&mut self, addr: SocketAddr, handler: H) -> io::Result<()> {
        let port = &self.port;
        let stream = |addr: &SocketAddr| iocp::stream_for(addr).and_then(|s| port.associate(&s).map(|()| s));
        let Some((conn, s)) = self.core.outbound(addr, handler, stream) else {
            return Ok(());
        };
        let token = self.core.insert(conn, Sock::new(s));
        let (_, slot) = self.core.slot(token).expect("just inserted");
        match self.port.connect(&slot.io.socket, &addr, token) {
            Ok(()) => slot.io.posted.posted(),
            Err(e) => slot.conn.failed(CloseReason::ConnectFailed(e)),
        }
        self.settle(token)
    }

    fn settle(&mut self, token: u64) -> io::Result<()> {
        self.settle_after_last(token)
    }

    fn close_listener(&mut self, listener: OwnedSocket) -> io::Result<()> {
        // Closing the listener completes its posted accepts, aborted.
        drop(listener);
        Ok(())
    }
}

impl<H: Handler> CloseAfterLast<H> for Loop<H> {
    fn posted(io: &mut Sock) -> &mut Posted {
        &mut io.posted
    }

    fn flush(&mut self, token: u64) -> io::Result<()> {
        let Some((_, slot)) = self.core.slot(token) else {
            return Ok(());
        };
        if slot.io.sending || slot.io.posted.is_closing() || !slot.conn.can_lend() {
            return Ok(());
        }
        let mut op = self.spare_sends.pop().unwrap_or_default();
        op.offset = slot.conn.lend_unsent(&mut op.bufs, iocp::MAX_BUFS);
        match self.port.send(&slot.io.socket, op, token) {
            Ok(()) => {
                slot.io.sending = true;
                slot.io.posted.posted();
            }
            Err(e) => slot.conn.failed(io_close_reason(e)),
        }
        Ok(())
    }

    fn shutdown_write(io: &Sock) -> io::Result<()> {
        socket2::SockRef::from(&io.socket).shutdown(std::net::Shutdown::Write)
    }

    /// Input may already be waiting (the read budget spent, or input was
    /// paused and is wanted again): post the receive again.
    fn sync_input(&mut self, token: u64) -> io::Result<()> {
        match self.core.slot(token) {
            Some((_, slot)) if !slot.io.recv_posted && slot.conn.wants_input() => self.post_recv(token),
            _ => Ok(()),
        }
    }

    fn cancel_all(&mut self, token: u64) -> io::Result<()> {
        if let Some((_, slot)) = self.core.slot(token) {
            self.port.cancel(&slot.io.socket);
        }
        Ok(())
    }

    fn release(&mut self, io: Sock, rst: bool) -> io::Result<()> {
        if rst {
            let _ = socket::set_linger_zero(&io.socket);
        }
        drop(io.socket);
        Ok(())
    }
}

impl Sock {
    fn new(socket: OwnedSocket) -> Sock {
        Sock {
            socket,
            recv_posted: false,
            sending: false,
            posted: Posted::default(),
        }
    }
}
