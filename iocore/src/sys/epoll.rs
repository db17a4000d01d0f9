//! epoll: the readiness mechanism behind the `epoll` engine, the Linux
//! counterpart of `WSAEventSelect` + `WSAWaitForMultipleEvents` without the
//! 64-handle limit. Interest is registered once per socket; a wait returns
//! only the sockets that became ready, each with the 64-bit token given at
//! registration (the session's slab slot), so nothing is rebuilt per loop
//! as with `select`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Readiness interest and results, as epoll bit flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interest(u32);

impl Interest {
    /// Readable or peer closed (the seed's `FD_READ | FD_CLOSE`) and
    /// writable (`FD_WRITE`), edge-triggered: registered once per session
    /// and never modified, since with edge triggering an unused write edge
    /// costs nothing.
    pub(crate) const READ_WRITE_EDGE: Interest =
        Interest((libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLOUT | libc::EPOLLET) as u32);
    /// Readable, edge-triggered (listeners and wake-up descriptors).
    pub(crate) const READ_EDGE: Interest = Interest((libc::EPOLLIN | libc::EPOLLET) as u32);
}

/// One readiness report.
#[derive(Clone, Copy)]
pub(crate) struct Event {
    /// The token given at registration.
    pub token: u64,
    bits: u32,
}

impl Event {
    /// Readable, or the peer closed/reset: a read will not block and
    /// reports what happened.
    pub(crate) fn is_readable(&self) -> bool {
        self.bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
    /// Writable, or the socket failed: a send will not block.
    pub(crate) fn is_writable(&self) -> bool {
        self.bits & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
    /// The peer's FIN or an error was seen: reading must go on until it
    /// reports that (end of file or the error), not stop at a short read.
    pub(crate) fn is_read_closed(&self) -> bool {
        self.bits & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
    /// The socket has a pending error (`SO_ERROR`).
    pub(crate) fn is_error(&self) -> bool {
        self.bits & libc::EPOLLERR as u32 != 0
    }
}

/// An epoll instance, closed on drop.
pub(crate) struct Epoll {
    fd: OwnedFd,
    buf: Vec<libc::epoll_event>,
    /// `epoll_pwait2` (Linux 5.11) is there: timeouts to the nanosecond,
    /// not rounded up to the millisecond (a room's tick is not late by
    /// the rounding).
    pwait2: bool,
}

impl Epoll {
    /// A new epoll instance whose waits return up to `capacity` events.
    pub(crate) fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY (syscall): a plain flag argument only.
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: epoll_create1() just returned this descriptor; we own it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let buf = vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)];
        Ok(Epoll {
            fd,
            buf,
            pwait2: true,
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.0,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event for the duration of the call.
        syscall!(epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev))?;
        Ok(())
    }

    /// Starts watching `fd`, reporting `token` with its events.
    pub(crate) fn add(&self, fd: &impl AsRawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), token, interest)
    }

    /// Stops watching `fd` (closing it does this too).
    pub(crate) fn delete(&self, fd: &impl AsRawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, Interest(0))
    }

    /// Waits until at least one watched descriptor is ready or `timeout`
    /// passes (`None`: forever) and returns how many reports there are;
    /// read them with [`Epoll::event`]. An interrupted wait reports none.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        if let (Some(t), true) = (timeout, self.pwait2) {
            let ts = libc::timespec {
                tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            };
            // SAFETY: as for epoll_pwait below; `ts` is a live timespec for
            // the duration of the call.
            match raw_syscall!(SYS_epoll_pwait2(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr(),
                self.buf.len(),
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                8
            )) {
                Ok(n) => return Ok(n as usize),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
                // An older kernel (or a sandbox that forbids the call):
                // milliseconds from now on.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => self.pwait2 = false,
                Err(e) => return Err(e),
            }
        }
        let ms = match timeout {
            None => -1,
            // Round up so that a wait for 0.4 ms does not spin at 0 ms.
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
        };
        // SAFETY: the pointer and length describe `self.buf`, writable for
        // the call; the kernel writes at most `len` entries. No signal mask
        // (null), so this is epoll_wait; 8 is the kernel's sigset size.
        match raw_syscall!(SYS_epoll_pwait(
            self.fd.as_raw_fd(),
            self.buf.as_mut_ptr(),
            self.buf.len(),
            ms,
            std::ptr::null::<libc::sigset_t>(),
            8
        )) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The `i`-th report of the last [`Epoll::wait`].
    pub(crate) fn event(&self, i: usize) -> Event {
        let e = self.buf[i];
        Event {
            token: e.u64,
            bits: e.events,
        }
    }
}
