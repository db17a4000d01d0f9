//! Winsock sockets for the Windows engines: the calls the shared layers
//! make (listen, options, error kinds), through socket2. The engines' own
//! Winsock calls (WSAEventSelect, overlapped WSARecv/WSASend, IOCP) will
//! live beside this file.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};

use super::OwnedSocket;

/// Several listening sockets cannot share an address here: a server with
/// several workers needs one listener handing connections off.
pub(crate) const REUSE_PORT: bool = false;

/// A non-blocking listening socket bound to `addr`. `reuse_port` is not
/// available on Windows and is refused.
pub(crate) fn listen(addr: &SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<OwnedSocket> {
    if reuse_port {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_REUSEPORT does not exist on Windows",
        ));
    }
    let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    socket.bind(&(*addr).into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The address a socket is bound to.
pub(crate) fn local_addr(s: &OwnedSocket) -> io::Result<SocketAddr> {
    SockRef::from(s)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
}

/// Disables Nagle's algorithm.
pub(crate) fn set_nodelay(s: &OwnedSocket) -> io::Result<()> {
    SockRef::from(s).set_tcp_nodelay(true)
}

/// Linux's `TCP_USER_TIMEOUT` has no Winsock equal that takes effect on
/// a connected socket: the send stall timeout covers iocore's own queue
/// only.
pub(crate) fn set_user_timeout(_: &OwnedSocket, _: std::time::Duration) -> io::Result<()> {
    Ok(())
}

/// Turns on TCP keepalive: after `idle` without traffic the system probes
/// the peer every `interval`, and `count` unanswered probes reset the
/// connection.
pub(crate) fn set_keepalive(
    s: &OwnedSocket,
    idle: Duration,
    interval: Duration,
    count: u32,
) -> io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(count);
    SockRef::from(s).set_tcp_keepalive(&ka)
}

/// Windows has no per-process descriptor limit, so there is no spare
/// descriptor to keep (see the Unix `Spare`).
pub(crate) struct Spare;

impl Spare {
    /// Nothing to reserve.
    pub(crate) fn new() -> Spare {
        Spare
    }
}

/// Nothing to do on Windows (no descriptor limit): always `None`.
pub(crate) fn shed_backlog(_listener: &OwnedSocket, _spare: &mut Spare) -> Option<usize> {
    None
}

/// Makes the next close send RST and drop unsent data.
pub(crate) fn set_linger_zero(s: &OwnedSocket) -> io::Result<()> {
    SockRef::from(s).set_linger(Some(std::time::Duration::ZERO))
}

/// Whether an error means the peer reset or aborted the connection.
pub(crate) fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

/// Whether an accept error concerns only that one connection.
#[allow(dead_code)] // for the Windows engines' accept loops
pub(crate) fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// Whether an accept error means a resource limit.
#[allow(dead_code)] // for the Windows engines' accept loops
pub(crate) fn is_resource_exhausted(err: &io::Error) -> bool {
    // WSAEMFILE, WSAENOBUFS
    matches!(err.raw_os_error(), Some(10024) | Some(10055))
}

/// Whether an error means the process is out of sockets (WSAEMFILE).
pub(crate) fn is_out_of_descriptors(err: &io::Error) -> bool {
    err.raw_os_error() == Some(10024)
}
