//! Non-blocking TCP sockets: listen, accept, connect, read, gather-send,
//! shutdown and abort, over raw file descriptors owned by [`OwnedFd`].

use std::io::{self, IoSlice};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Several listening sockets can share one address (`SO_REUSEPORT`).
pub(crate) const REUSE_PORT: bool = true;

/// A `sockaddr_storage` big enough for IPv4 and IPv6 plus its used length.
pub(crate) struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    /// An empty address for the kernel to fill (accept, getsockname).
    pub(crate) fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid
            // (AF_UNSPEC) value.
            storage: unsafe { mem::zeroed() },
            len: mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// Encodes a Rust socket address.
    pub(crate) fn from_addr(addr: &SocketAddr) -> RawAddr {
        let mut raw = RawAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and suitably
                // aligned for sockaddr_in.
                unsafe { std::ptr::write(&mut raw.storage as *mut _ as *mut libc::sockaddr_in, sin) };
                raw.len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and suitably
                // aligned for sockaddr_in6.
                unsafe { std::ptr::write(&mut raw.storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                raw.len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }

    /// Pointer and length for calls that read an address.
    pub(crate) fn as_ptr(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        (&self.storage as *const _ as *const libc::sockaddr, self.len)
    }

    /// Pointers for calls that write an address (the length is in/out).
    pub(crate) fn as_mut_ptr(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        (&mut self.storage as *mut _ as *mut libc::sockaddr, &mut self.len)
    }

    /// Decodes the address the kernel wrote.
    pub(crate) fn to_addr(&self) -> io::Result<SocketAddr> {
        match self.storage.ss_family as libc::c_int {
            libc::AF_INET if self.len as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in and
                // the length covers it.
                let sin: libc::sockaddr_in =
                    unsafe { std::ptr::read(&self.storage as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 if self.len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family says the storage holds a sockaddr_in6
                // and the length covers it.
                let sin6: libc::sockaddr_in6 =
                    unsafe { std::ptr::read(&self.storage as *const _ as *const libc::sockaddr_in6) };
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            family => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unsupported address family {family}"),
            )),
        }
    }
}

fn domain(addr: &SocketAddr) -> libc::c_int {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

/// A new non-blocking, close-on-exec TCP socket for `addr`'s family.
fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments only.
    let fd = syscall!(socket(
        domain(addr),
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        0
    ))?;
    // SAFETY: socket() just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, a live c_int.
    syscall!(setsockopt(
        fd,
        level,
        name,
        &value as *const libc::c_int as *const libc::c_void,
        mem::size_of::<libc::c_int>() as libc::socklen_t
    ))?;
    Ok(())
}

/// A non-blocking listening socket bound to `addr`.
///
/// With `reuse_port`, several such sockets (one per worker thread) can share
/// one address and the kernel spreads incoming connections among them.
pub(crate) fn listen(addr: &SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<OwnedFd> {
    let fd = tcp_socket(addr)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let raw = RawAddr::from_addr(addr);
    let (ptr, len) = raw.as_ptr();
    // SAFETY: ptr/len describe `raw`, which outlives the call.
    syscall!(bind(fd.as_raw_fd(), ptr, len))?;
    syscall!(listen(fd.as_raw_fd(), backlog))?;
    Ok(fd)
}

/// The address a socket is bound to.
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let mut raw = RawAddr::empty();
    let (ptr, len) = raw.as_mut_ptr();
    // SAFETY: ptr/len point into `raw`, whose length field says how much
    // the kernel may write.
    syscall!(getsockname(fd.as_raw_fd(), ptr, len))?;
    raw.to_addr()
}

/// Accepts one connection as a non-blocking, close-on-exec socket.
/// `WouldBlock` means the accept queue is empty.
pub(crate) fn accept(listener: &OwnedFd) -> io::Result<(OwnedFd, SocketAddr)> {
    let mut raw = RawAddr::empty();
    let (ptr, len) = raw.as_mut_ptr();
    // SAFETY: ptr/len point into `raw`, whose length field says how much
    // the kernel may write.
    let fd = syscall!(accept4(
        listener.as_raw_fd(),
        ptr,
        len,
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
    ))?;
    // SAFETY: accept4() just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((fd, raw.to_addr()?))
}

/// Takes ownership of a descriptor a completion returned (an accepted
/// socket). `fd` must be the non-negative result of such a completion.
pub(crate) fn take_completed_fd(fd: i32) -> OwnedFd {
    assert!(fd >= 0, "not a descriptor: {fd}");
    // SAFETY: the kernel just created this descriptor for us in a
    // completion; nothing else knows or owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The address of a connected socket's peer.
pub(crate) fn peer_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let mut raw = RawAddr::empty();
    let (ptr, len) = raw.as_mut_ptr();
    // SAFETY: ptr/len point into `raw`, whose length field says how much
    // the kernel may write.
    syscall!(getpeername(fd.as_raw_fd(), ptr, len))?;
    raw.to_addr()
}

/// A new non-blocking TCP socket for connecting to `addr` with a
/// completion engine (which posts the connect itself).
pub(crate) fn stream_for(addr: &SocketAddr) -> io::Result<OwnedFd> {
    tcp_socket(addr)
}

/// Starts a non-blocking connect. Returns the socket and whether the
/// connection is still in progress (then wait for writability and call
/// [`take_error`]).
pub(crate) fn connect(addr: &SocketAddr) -> io::Result<(OwnedFd, bool)> {
    let fd = tcp_socket(addr)?;
    let raw = RawAddr::from_addr(addr);
    let (ptr, len) = raw.as_ptr();
    // SAFETY: ptr/len describe `raw`, which outlives the call.
    match syscall!(connect(fd.as_raw_fd(), ptr, len)) {
        Ok(_) => Ok((fd, false)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((fd, true)),
        Err(e) => Err(e),
    }
}

/// The pending socket error (`SO_ERROR`), cleared by reading it.
pub(crate) fn take_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the pointers describe `value` and `len`, live locals.
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        &mut value as *mut libc::c_int as *mut libc::c_void,
        &mut len
    ))?;
    Ok((value != 0).then(|| io::Error::from_raw_os_error(value)))
}

/// Bytes of this connection's data the peer has acknowledged so far
/// (`TCP_INFO`'s `tcpi_bytes_acked`, Linux 4.1): it moves whenever the
/// peer takes bytes, whatever the engine was told. An error on kernels
/// without the field.
pub(crate) fn bytes_acked(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: tcp_info is plain old data; zero is a valid value.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointers describe `info` and `len`, live locals; the
    // kernel writes at most `len` bytes.
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        &mut info as *mut libc::tcp_info as *mut libc::c_void,
        &mut len
    ))?;
    let end = mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + mem::size_of::<u64>();
    if (len as usize) < end {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_INFO without tcpi_bytes_acked (needs Linux 4.1)",
        ));
    }
    Ok(info.tcpi_bytes_acked)
}

/// Disables Nagle's algorithm: a session's sends go out as soon as queued.
pub(crate) fn set_nodelay(fd: &OwnedFd) -> io::Result<()> {
    set_int_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// The longest bytes the kernel holds for this socket may stay
/// unacknowledged (or unsent for a zero window) before it gives up on
/// the connection with ETIMEDOUT (`TCP_USER_TIMEOUT`): the send stall
/// timeout applied to what iocore already handed to the kernel.
pub(crate) fn set_user_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    set_int_opt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)
}

/// Turns on TCP keepalive: after `idle` without traffic the kernel probes
/// the peer every `interval`, and `count` unanswered probes reset the
/// connection (a half-open peer is found). Whole seconds, at least one.
pub(crate) fn set_keepalive(fd: &OwnedFd, idle: Duration, interval: Duration, count: u32) -> io::Result<()> {
    let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
    let fd = fd.as_raw_fd();
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(idle))?;
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(interval))?;
    set_int_opt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        count.clamp(1, i32::MAX as u32) as libc::c_int,
    )
}

/// One descriptor kept in reserve (`/dev/null`), so that a process out of
/// descriptors can still accept a waiting connection in order to close it
/// (see [`shed_backlog`]) — libuv's way out of EMFILE.
pub(crate) struct Spare(Option<std::fs::File>);

impl Spare {
    /// Takes the spare descriptor (none if even that fails).
    pub(crate) fn new() -> Spare {
        Spare(std::fs::File::open("/dev/null").ok())
    }
}

/// Out of descriptors: frees the spare, accepts every connection waiting
/// on `listener` and closes it at once (its client sees the connection
/// close instead of hanging in the backlog), then takes the spare again.
/// Returns how many were closed, or `None` without a spare to free.
pub(crate) fn shed_backlog(listener: &OwnedFd, spare: &mut Spare) -> Option<usize> {
    drop(spare.0.take()?);
    let mut closed = 0;
    // Each accept takes the one free descriptor and the drop frees it again.
    while let Ok((fd, _)) = accept(listener) {
        drop(fd);
        closed += 1;
    }
    *spare = Spare::new();
    Some(closed)
}

/// Reads into `buf`. `Ok(0)` is the peer's FIN (or an empty `buf`).
pub(crate) fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, writable for the call.
    let n = raw_syscall!(SYS_read(fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()))?;
    Ok(n as usize)
}

/// Sends from several buffers in order with one `sendmsg` (a gather write,
/// like the seeds' `WSABUF` arrays); one buffer with `sendto`, which spares
/// the kernel the message header and the vector (a fan-out makes one such
/// call per delivery). Never raises `SIGPIPE`.
#[inline]
pub(crate) fn send_vectored(fd: &OwnedFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    if let [one] = bufs {
        return send(fd, one);
    }
    // SAFETY: msghdr is plain old data; all-zero means no name, no control.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with struct iovec on unix.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: msg points at `bufs`, which are readable for the whole call.
    let n = raw_syscall!(SYS_sendmsg(
        fd.as_raw_fd(),
        &msg as *const libc::msghdr,
        libc::MSG_NOSIGNAL
    ))?;
    Ok(n as usize)
}

/// Sends `buf` (`sendto` without an address). Never raises `SIGPIPE`.
fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, readable for the call;
    // no address (null, length 0).
    let n = raw_syscall!(SYS_sendto(
        fd.as_raw_fd(),
        buf.as_ptr(),
        buf.len(),
        libc::MSG_NOSIGNAL,
        std::ptr::null::<libc::sockaddr>(),
        0
    ))?;
    Ok(n as usize)
}

/// Sends FIN: no more data from this side; reading still works.
pub(crate) fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain integer arguments only; `fd` is live.
    syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_WR))?;
    Ok(())
}

/// Makes the next `close` send RST and drop unsent data (`SO_LINGER` 0).
pub(crate) fn set_linger_zero(fd: &OwnedFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the pointer and length describe `linger`, a live local.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &linger as *const libc::linger as *const libc::c_void,
        mem::size_of::<libc::linger>() as libc::socklen_t
    ))?;
    Ok(())
}

/// Whether an error means the peer reset the connection.
pub(crate) fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED)
    )
}

/// Whether an `accept` error concerns only the one connection being
/// accepted (the listener is fine and accepting may go on).
pub(crate) fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED) | Some(libc::EPROTO) | Some(libc::EPERM) | Some(libc::EINTR)
    )
}

/// Whether an `accept` error means a resource limit (file descriptors or
/// kernel memory): the connection stays in the backlog, and retrying at
/// once would spin.
pub(crate) fn is_resource_exhausted(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Whether an error means the process (EMFILE) or the system (ENFILE) is
/// out of file descriptors.
pub(crate) fn is_out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
