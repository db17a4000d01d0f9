//! eventfd: a counter descriptor used to wake a worker's event loop from
//! another thread (its inbox), like `PostQueuedCompletionStatus` or
//! `WSASetEvent` on Windows.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd, closed on drop.
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd with counter 0.
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY (syscall): plain integer arguments only.
        let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
        // SAFETY: eventfd() just returned this descriptor; we own it.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds one to the counter, making the descriptor readable.
    pub(crate) fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: the pointer and length describe `one`, a live u64.
        match syscall!(write(
            self.fd.as_raw_fd(),
            &one as *const u64 as *const libc::c_void,
            8
        )) {
            Ok(_) => Ok(()),
            // The counter is saturated: the reader is woken anyway.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Resets the counter to 0 so the next `wake` makes a new edge.
    pub(crate) fn drain(&self) -> io::Result<()> {
        let mut value: u64 = 0;
        // SAFETY: the pointer and length describe `value`, a live u64.
        match syscall!(read(
            self.fd.as_raw_fd(),
            &mut value as *mut u64 as *mut libc::c_void,
            8
        )) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
