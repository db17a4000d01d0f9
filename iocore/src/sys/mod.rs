//! The system-call layer: the only place in iocore with `unsafe` and, with
//! engine selection, with `cfg(target_os)`.
//!
//! # Contract
//!
//! Everything exported from here is safe to call. Each wrapper owns the
//! kernel resource it creates ([`std::os::fd::OwnedFd`] closes on drop) and
//! turns the C convention "-1 and errno" into [`std::io::Error`] through one
//! helper, `syscall!`. No wrapper keeps a pointer into a caller's buffer
//! past the call that received it: where a kernel operation outlives the
//! call (io_uring, IOCP, overlapped I/O), the wrapper takes ownership of
//! the memory the operation uses and gives it back with the completion
//! (rules written at the top of `uring/mod.rs`, `iocp.rs`, `overlapped.rs`).
//!
//! Readiness (epoll) and completion (io_uring) differ in who owns the buffer
//! while an operation is pending: with readiness the kernel only says "try
//! now" and the copy happens inside our `read`/`sendmsg` call; with
//! completion the kernel writes into or reads from the buffer *after* the
//! submitting call returned, so the buffer must stay alive and untouched
//! until its completion arrives.

/// Calls a libc function and turns a `-1` result into the thread's `errno`
/// as an [`std::io::Error`].
#[allow(unused_macros)]
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: every use passes arguments that satisfy the named libc
        // function's contract; the call site documents anything beyond
        // plain values (pointers and their lengths).
        #[allow(unused_unsafe)]
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Makes a Linux system call directly through `syscall(2)`, turning `-1`
/// into `errno` like `syscall!`. For the per-message calls only (`read`,
/// `sendmsg`, `epoll_pwait`): libc's own wrappers of these are thread
/// cancellation points and pay two extra calls each time, a twentieth of
/// iocore's user-space work per echoed message; iocore never cancels
/// threads. Every argument is passed as a `c_long`, as the kernel reads it.
#[cfg(target_os = "linux")]
macro_rules! raw_syscall {
    ($nr:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: every use passes arguments that satisfy the named system
        // call's contract; the call site documents pointers and lengths.
        #[allow(unused_unsafe)]
        let res = unsafe { libc::syscall(libc::$nr, $($arg as libc::c_long),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

#[cfg(target_os = "linux")]
pub(crate) mod epoll;
#[cfg(target_os = "linux")]
pub(crate) mod eventfd;
#[cfg(target_os = "linux")]
pub(crate) mod socket;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

#[cfg(windows)]
pub(crate) mod event;
#[cfg(windows)]
pub(crate) mod iocp;
#[cfg(windows)]
pub(crate) mod overlapped;
#[cfg(windows)]
#[path = "winsock.rs"]
pub(crate) mod socket;
#[cfg(windows)]
pub(crate) mod wsaevent;

/// An owned socket of this OS: closed on drop.
#[cfg(target_os = "linux")]
pub(crate) type OwnedSocket = std::os::fd::OwnedFd;
/// An owned socket of this OS: closed on drop.
#[cfg(windows)]
pub(crate) type OwnedSocket = std::os::windows::io::OwnedSocket;

/// What wakes a worker's loop from another thread.
#[cfg(windows)]
pub(crate) use event::Event as Waker;
/// What wakes a worker's loop from another thread.
#[cfg(target_os = "linux")]
pub(crate) use eventfd::EventFd as Waker;
