//! The close protocol of the completion engines (uring, iocp), in one
//! place: a session counts the operations it has posted; a session that
//! ends cancels what it has posted (once) and is freed only after the
//! kernel's last completion, for the kernel owns the operations' memory
//! until then (rule 3 of `sys::uring`; IOCP's overlapped structures
//! alike). [`CloseAfterLast`] is to these engines what
//! [`super::driver::CloseAtOnce`] is to the engines that may close a
//! socket as soon as its session is done.

use std::io;

use super::driver::Driver;
use super::sockets::io_close_reason;
use crate::session::{CloseReason, Handler, Step};

/// What a completion engine keeps per session about its posted
/// operations and its end.
#[derive(Debug, Default)]
pub(super) struct Posted {
    /// The session ended (why, and whether with RST): it is freed when
    /// nothing is in flight any more.
    closing: Option<Box<(CloseReason, bool)>>,
    /// Operations posted and not finally completed.
    inflight: u8,
    /// Its operations were cancelled (done once).
    cancelled: bool,
}

impl Posted {
    /// An operation was posted.
    pub(super) fn posted(&mut self) {
        self.inflight += 1;
    }

    /// An operation completed for the last time (a multishot one's final
    /// completion).
    pub(super) fn completed(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// The session has ended and waits for its operations.
    pub(super) fn is_closing(&self) -> bool {
        self.closing.is_some()
    }
}

/// The settle of the completion engines: [`CloseAfterLast::settle_after_last`]
/// over the hooks an engine supplies.
pub(super) trait CloseAfterLast<H: Handler>: Driver<H> {
    /// The session's [`Posted`].
    fn posted(io: &mut Self::Io) -> &mut Posted;

    /// Posts what the session has queued (one send at a time).
    fn flush(&mut self, token: u64) -> io::Result<()>;

    /// Sends FIN.
    fn shutdown_write(io: &Self::Io) -> io::Result<()>;

    /// A live session whose steps are done: posts or cancels its receive
    /// as its input is wanted or not.
    fn sync_input(&mut self, token: u64) -> io::Result<()>;

    /// Cancels everything posted on session `token`'s socket.
    fn cancel_all(&mut self, token: u64) -> io::Result<()>;

    /// The kernel has let go of the session's operations: closes its
    /// socket (with RST if `rst`).
    fn release(&mut self, io: Self::Io, rst: bool) -> io::Result<()>;

    /// Brings session `token` up to date: post its send, act on its next
    /// steps, post or cancel its receive, and free it once it is closed
    /// and the kernel has let go of it (cancelling what it posted first).
    fn settle_after_last(&mut self, token: u64) -> io::Result<()> {
        loop {
            self.flush(token)?;
            let Some((cx, slot)) = self.core().slot(token) else {
                return Ok(());
            };
            if Self::posted(&mut slot.io).is_closing() {
                break;
            }
            match slot.conn.step(cx) {
                Step::Wait => break,
                Step::Continue => {}
                Step::Admit => self.core().admit_proxied(token),
                Step::Fin => {
                    if let Err(e) = Self::shutdown_write(&slot.io) {
                        slot.conn.failed(io_close_reason(e));
                    }
                }
                Step::Close { reason, rst } => {
                    Self::posted(&mut slot.io).closing = Some(Box::new((reason, rst)));
                }
            }
        }
        let Some((_, slot)) = self.core().slot(token) else {
            return Ok(());
        };
        let posted = Self::posted(&mut slot.io);
        if !posted.is_closing() {
            self.sync_input(token)?;
            self.core().settled(token);
        } else if posted.inflight == 0 {
            let slot = self.core().remove(token).expect("present above");
            let mut io = slot.io;
            let (reason, rst) = *Self::posted(&mut io).closing.take().expect("closing");
            let released = self.release(io, rst);
            self.core().finish(Some(token), slot.conn, reason);
            released?;
        } else if !posted.cancelled {
            posted.cancelled = true;
            self.cancel_all(token)?;
        }
        Ok(())
    }
}
