//! I/O completion ports: the mechanism behind the `iocp` engine — the last
//! model of the seeds' series. Overlapped operations (`AcceptEx`,
//! `WSARecv`, `WSASend`, `ConnectEx`) are posted with an `OVERLAPPED`;
//! their completions are queued on the worker's port and taken with
//! `GetQueuedCompletionStatusEx`.
//!
//! # Ownership rules
//!
//! 1. Every posted operation is a boxed [`Op`] whose first field is its
//!    `OVERLAPPED`. Posting hands the box to the kernel (`Box::into_raw`);
//!    the completion gives the pointer back and [`Port::wait`] takes the
//!    box back (`Box::from_raw`), with whatever memory the operation used
//!    (accept buffer, gather array, the buffers being sent). Callers never
//!    hold memory the kernel may touch, so every function here is safe.
//! 2. A receive is posted with zero bytes: it completes when data is
//!    there and holds no buffer meanwhile; the caller then reads with
//!    non-blocking [`read`] into memory of its own.
//! 3. Closing a socket's session: [`Port::cancel`] (`CancelIoEx`) makes
//!    every posted operation complete (aborted); the caller frees the
//!    session after the last completion and only then closes the socket.
//! 4. A port dropped with operations still posted leaks their boxes
//!    rather than free memory the kernel may still write.

use std::io;
use std::net::SocketAddr;
use std::os::windows::io::{AsRawSocket, OwnedSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE, WAIT_TIMEOUT};
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, AcceptEx, GetAcceptExSockaddrs, WSAGetLastError, WSAGetOverlappedResult, WSAIoctl, WSARecv,
    WSASend, LPFN_CONNECTEX, SIO_GET_EXTENSION_FUNCTION_POINTER, SOCKADDR, SOCKADDR_STORAGE, SOCKET,
    SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, SO_UPDATE_CONNECT_CONTEXT, WSABUF, WSAID_CONNECTEX, WSA_IO_PENDING,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus, OVERLAPPED,
    OVERLAPPED_ENTRY,
};

/// Completion key of wake-ups posted by [`PortWaker::wake`].
const WAKE_KEY: usize = usize::MAX;
/// Bytes AcceptEx needs per address: the largest sockaddr plus 16.
const ADDR_LEN: u32 = (std::mem::size_of::<SOCKADDR_STORAGE>() + 16) as u32;
/// Most buffers gathered into one send.
pub(crate) const MAX_BUFS: usize = 64;

pub(crate) fn raw(s: &OwnedSocket) -> SOCKET {
    s.as_raw_socket() as SOCKET
}

pub(crate) fn last_error() -> io::Error {
    // SAFETY: reads the calling thread's last Winsock error.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// Whether a post call started its overlapped operation: it returned
/// success (completed at once; the completion is still delivered) or
/// failed with WSA_IO_PENDING (completes later).
pub(crate) fn started(ok: bool) -> io::Result<()> {
    if ok {
        return Ok(());
    }
    let err = last_error();
    match err.raw_os_error() {
        Some(WSA_IO_PENDING) => Ok(()),
        _ => Err(err),
    }
}

/// Starts a zero-byte overlapped `WSARecv` on `s`: it completes when data
/// is there, holding no buffer meanwhile.
///
/// # Safety
/// `ov` points at an OVERLAPPED that stays valid and untouched until the
/// operation's completion is taken (also after a cancel).
pub(crate) unsafe fn start_zero_byte_recv(s: SOCKET, ov: *mut OVERLAPPED) -> io::Result<()> {
    let buf = WSABUF {
        len: 0,
        buf: std::ptr::null_mut(),
    };
    let mut flags = 0;
    // SAFETY: `ov` as the contract says; the one empty WSABUF is read
    // during the call only.
    let rc = unsafe { WSARecv(s, &buf, 1, std::ptr::null_mut(), &mut flags, ov, None) };
    started(rc == 0)
}

/// Starts an overlapped gather `WSASend` of `bufs` on `s`.
///
/// # Safety
/// `ov`, the `bufs` array and the memory it points into stay valid and
/// untouched until the operation's completion is taken (also after a
/// cancel).
pub(crate) unsafe fn start_send(s: SOCKET, bufs: &[WSABUF], ov: *mut OVERLAPPED) -> io::Result<()> {
    // SAFETY: as the contract says.
    let rc = unsafe {
        WSASend(
            s,
            bufs.as_ptr(),
            bufs.len() as u32,
            std::ptr::null_mut(),
            0,
            ov,
            None,
        )
    };
    started(rc == 0)
}

/// The WSABUF array for a gather send of `send`'s buffers (at most
/// [`MAX_BUFS`]); it points into them, so it must not outlive them.
pub(crate) fn wsabufs(send: &SendOp) -> Vec<WSABUF> {
    send.bufs
        .iter()
        .take(MAX_BUFS)
        .enumerate()
        .map(|(i, b)| {
            let skip = if i == 0 { send.offset } else { 0 };
            WSABUF {
                len: (b.len() - skip) as u32,
                buf: b[skip..].as_ptr() as *mut u8,
            }
        })
        .collect()
}

/// Buffers for one gather send; see [`Port::send`].
#[derive(Default)]
pub(crate) struct SendOp {
    /// The buffers, in order (at most [`MAX_BUFS`]).
    pub bufs: Vec<Bytes>,
    /// Bytes of `bufs[0]` already sent before.
    pub offset: usize,
}

enum Kind {
    Accept {
        socket: OwnedSocket,
        buf: Box<[u8; 2 * ADDR_LEN as usize]>,
    },
    Recv,
    Send {
        op: Box<SendOp>,
        wsabufs: Vec<WSABUF>,
    },
    Connect,
}

/// One posted operation. `ov` first: the kernel's OVERLAPPED pointer is
/// also the pointer to the whole `Op`.
#[repr(C)]
struct Op {
    ov: OVERLAPPED,
    socket: SOCKET,
    token: u64,
    kind: Kind,
}

/// What completed.
pub(crate) enum Done {
    /// A [`PortWaker`] woke the loop.
    Wake,
    /// An accept finished: the new socket and its peer.
    Accepted(io::Result<(OwnedSocket, SocketAddr)>),
    /// The zero-byte receive of session `token` finished: data (or FIN or
    /// an error) is there to read.
    Readable { token: u64, result: io::Result<()> },
    /// The send of session `token` finished; its buffers come back.
    Sent {
        token: u64,
        result: io::Result<usize>,
        op: Box<SendOp>,
    },
    /// The connect of session `token` finished.
    Connected { token: u64, result: io::Result<()> },
}

/// Wakes a port's loop from any thread.
#[derive(Clone)]
pub(crate) struct PortWaker {
    port: Arc<AtomicUsize>,
}

impl PortWaker {
    /// Posts a wake-up, unless the port is gone.
    pub(crate) fn wake(&self) -> io::Result<()> {
        let port = self.port.load(Ordering::Acquire);
        if port == 0 {
            return Ok(());
        }
        // SAFETY: `port` is the live port handle: Port::drop clears it
        // before closing the handle.
        if unsafe { PostQueuedCompletionStatus(port as HANDLE, 0, WAKE_KEY, std::ptr::null()) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A completion port with the operations posted to it.
pub(crate) struct Port {
    handle: HANDLE,
    shared: Arc<AtomicUsize>,
    outstanding: usize,
    entries: Vec<OVERLAPPED_ENTRY>,
    connect_ex: Option<ConnectExFn>,
}

/// The ConnectEx function.
pub(crate) type ConnectExFn = unsafe extern "system" fn(
    SOCKET,
    *const SOCKADDR,
    i32,
    *const core::ffi::c_void,
    u32,
    *mut u32,
    *mut OVERLAPPED,
) -> windows_sys::core::BOOL;

/// Looks up ConnectEx (an extension function) through `s`.
pub(crate) fn connect_ex_fn(s: &OwnedSocket) -> io::Result<ConnectExFn> {
    let mut f: LPFN_CONNECTEX = None;
    let mut bytes = 0;
    // SAFETY: asks for the ConnectEx pointer: the in buffer is the GUID,
    // the out buffer the function pointer slot.
    let rc = unsafe {
        WSAIoctl(
            raw(s),
            SIO_GET_EXTENSION_FUNCTION_POINTER,
            &WSAID_CONNECTEX as *const _ as *const _,
            std::mem::size_of_val(&WSAID_CONNECTEX) as u32,
            &mut f as *mut _ as *mut _,
            std::mem::size_of::<LPFN_CONNECTEX>() as u32,
            &mut bytes,
            std::ptr::null_mut(),
            None,
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    f.ok_or_else(|| io::Error::other("ConnectEx unavailable"))
}

/// Binds `s` to the unspecified address of `addr`'s family (ConnectEx
/// needs a bound socket).
pub(crate) fn bind_any(s: &OwnedSocket, addr: &SocketAddr) -> io::Result<()> {
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    SockRef::from(s).bind(&any.into())
}

impl Port {
    /// A new port for one thread.
    pub(crate) fn new() -> io::Result<Port> {
        // SAFETY: creating a new port: no file handle, no existing port.
        let handle = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, std::ptr::null_mut(), 0, 1) };
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Port {
            handle,
            shared: Arc::new(AtomicUsize::new(handle as usize)),
            outstanding: 0,
            entries: vec![OVERLAPPED_ENTRY::default(); 256],
            connect_ex: None,
        })
    }

    /// A handle that wakes this port's loop from another thread.
    pub(crate) fn waker(&self) -> PortWaker {
        PortWaker {
            port: self.shared.clone(),
        }
    }

    /// Routes `s`'s completions to this port.
    pub(crate) fn associate(&self, s: &OwnedSocket) -> io::Result<()> {
        // SAFETY: `s` is a live socket; the port is live.
        if unsafe { CreateIoCompletionPort(raw(s) as HANDLE, self.handle, 0, 0) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes ownership of a posted op's box back after a failed post.
    fn reclaim(&mut self, op: *mut Op) {
        // SAFETY: `op` came from Box::into_raw in this call and the kernel
        // refused it, so nothing else refers to it.
        drop(unsafe { Box::from_raw(op) });
        self.outstanding -= 1;
    }

    fn post(&mut self, socket: SOCKET, token: u64, kind: Kind) -> *mut Op {
        // SAFETY: OVERLAPPED is plain old data; zero is its initial state.
        let ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        self.outstanding += 1;
        Box::into_raw(Box::new(Op {
            ov,
            socket,
            token,
            kind,
        }))
    }

    /// Posts an AcceptEx on `listener` (associated with this port) for a
    /// new socket of the listener's family.
    pub(crate) fn accept(&mut self, listener: &OwnedSocket, addr: &SocketAddr) -> io::Result<()> {
        let socket: OwnedSocket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?.into();
        let accepted = raw(&socket);
        let buf = Box::new([0u8; 2 * ADDR_LEN as usize]);
        let op = self.post(raw(listener), 0, Kind::Accept { socket, buf });
        // SAFETY: `op` is a live box handed to the kernel until its
        // completion (rule 1); the output buffer lives inside it.
        let ok = unsafe {
            let Kind::Accept { buf, .. } = &mut (*op).kind else {
                unreachable!()
            };
            let mut received = 0;
            AcceptEx(
                raw(listener),
                accepted,
                buf.as_mut_ptr().cast(),
                0,
                ADDR_LEN,
                ADDR_LEN,
                &mut received,
                &mut (*op).ov,
            )
        };
        if let Err(e) = started(ok != 0) {
            self.reclaim(op);
            return Err(e);
        }
        Ok(())
    }

    /// Posts a zero-byte receive on session `token`'s socket (rule 2).
    pub(crate) fn recv(&mut self, s: &OwnedSocket, token: u64) -> io::Result<()> {
        let op = self.post(raw(s), token, Kind::Recv);
        // SAFETY: `op` is handed to the kernel until its completion.
        if let Err(e) = unsafe { start_zero_byte_recv(raw(s), &mut (*op).ov) } {
            self.reclaim(op);
            return Err(e);
        }
        Ok(())
    }

    /// Posts a gather send of `send`'s buffers on session `token`'s socket.
    pub(crate) fn send(&mut self, s: &OwnedSocket, send: Box<SendOp>, token: u64) -> io::Result<()> {
        let wsabufs = wsabufs(&send);
        let op = self.post(raw(s), token, Kind::Send { op: send, wsabufs });
        // SAFETY: `op` owns the buffers and the WSABUF array that points
        // into them, and is handed to the kernel until its completion.
        let sent = unsafe {
            let Kind::Send { wsabufs, .. } = &(*op).kind else {
                unreachable!()
            };
            start_send(raw(s), wsabufs, &mut (*op).ov)
        };
        if let Err(e) = sent {
            self.reclaim(op);
            return Err(e);
        }
        Ok(())
    }

    /// Binds `s` (associated with this port) and posts a ConnectEx to
    /// `addr` for session `token`.
    pub(crate) fn connect(&mut self, s: &OwnedSocket, addr: &SocketAddr, token: u64) -> io::Result<()> {
        bind_any(s, addr)?;
        let connect_ex = match self.connect_ex {
            Some(f) => f,
            None => {
                let f = connect_ex_fn(s)?;
                self.connect_ex = Some(f);
                f
            }
        };
        let target = SockAddr::from(*addr);
        let op = self.post(raw(s), token, Kind::Connect);
        // SAFETY: the address is read during the call; `op` is handed to
        // the kernel until its completion.
        let ok = unsafe {
            connect_ex(
                raw(s),
                target.as_ptr() as *const SOCKADDR,
                target.len(),
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                &mut (*op).ov,
            )
        };
        if let Err(e) = started(ok != 0) {
            self.reclaim(op);
            return Err(e);
        }
        Ok(())
    }

    /// Makes every operation posted on `s` complete, aborted (rule 3).
    pub(crate) fn cancel(&self, s: &OwnedSocket) {
        // SAFETY: `s` is a live socket; a null OVERLAPPED means "all".
        unsafe { CancelIoEx(raw(s) as HANDLE, std::ptr::null()) };
    }

    /// Operations posted and not completed.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Waits up to `timeout` (`None`: forever) for completions.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Done>) -> io::Result<()> {
        let ms = timeout.map_or(u32::MAX, |t| t.as_millis().min(u32::MAX as u128 - 1) as u32);
        let mut n = 0;
        // SAFETY: the entries buffer is writable for its length.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.handle,
                self.entries.as_mut_ptr(),
                self.entries.len() as u32,
                &mut n,
                ms,
                0,
            )
        };
        if ok == 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(e) if e == WAIT_TIMEOUT as i32 => Ok(()),
                _ => Err(err),
            };
        }
        for i in 0..n as usize {
            let e = self.entries[i];
            if e.lpCompletionKey == WAKE_KEY {
                out.push(Done::Wake);
                continue;
            }
            // SAFETY: every OVERLAPPED posted to this port is the first
            // field of an Op boxed by `post` (rule 1); its completion is
            // delivered exactly once, so the box is taken back once.
            let op = unsafe { Box::from_raw(e.lpOverlapped as *mut Op) };
            self.outstanding -= 1;
            let result = overlapped_result(&op);
            out.push(match op.kind {
                Kind::Accept { socket, buf } => {
                    Done::Accepted(result.and_then(|_| accepted(op.socket, socket, &buf[..])))
                }
                Kind::Recv => Done::Readable {
                    token: op.token,
                    result: result.map(drop),
                },
                Kind::Send { op: send, .. } => Done::Sent {
                    token: op.token,
                    result,
                    op: send,
                },
                Kind::Connect => Done::Connected {
                    token: op.token,
                    result: result.and_then(|_| set_socket_opt(op.socket, SO_UPDATE_CONNECT_CONTEXT, None)),
                },
            });
        }
        Ok(())
    }
}

fn overlapped_result(op: &Op) -> io::Result<usize> {
    overlapped_result_of(op.socket, &op.ov)
}

/// The result of a completed overlapped operation on `socket`.
pub(crate) fn overlapped_result_of(socket: SOCKET, ov: &OVERLAPPED) -> io::Result<usize> {
    let mut bytes = 0;
    let mut flags = 0;
    // SAFETY: `ov` is the live OVERLAPPED of an operation on `socket`
    // (completed, or pending: then the call reports WSA_IO_INCOMPLETE);
    // with fWait false it only reads it and writes the two outputs.
    let ok = unsafe { WSAGetOverlappedResult(socket, ov, &mut bytes, 0, &mut flags) };
    if ok == 0 {
        return Err(last_error());
    }
    Ok(bytes as usize)
}

pub(crate) fn set_socket_opt(s: SOCKET, name: i32, value: Option<SOCKET>) -> io::Result<()> {
    let (ptr, len) = match &value {
        Some(v) => (
            v as *const SOCKET as *const u8,
            std::mem::size_of::<SOCKET>() as i32,
        ),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: the option value (if any) is a live SOCKET for the call.
    if unsafe { setsockopt(s, SOL_SOCKET, name, ptr, len) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Finishes an AcceptEx: inherits the listener's properties, reads the
/// peer address, makes the socket non-blocking for direct reads.
fn accepted(listener: SOCKET, socket: OwnedSocket, buf: &[u8]) -> io::Result<(OwnedSocket, SocketAddr)> {
    set_socket_opt(raw(&socket), SO_UPDATE_ACCEPT_CONTEXT, Some(listener))?;
    let mut local: *mut SOCKADDR = std::ptr::null_mut();
    let mut remote: *mut SOCKADDR = std::ptr::null_mut();
    let (mut local_len, mut remote_len) = (0, 0);
    // SAFETY: `buf` is the AcceptEx output buffer with the sizes given at
    // posting; the out pointers are set to addresses inside it.
    unsafe {
        GetAcceptExSockaddrs(
            buf.as_ptr().cast(),
            0,
            ADDR_LEN,
            ADDR_LEN,
            &mut local,
            &mut local_len,
            &mut remote,
            &mut remote_len,
        )
    };
    // SAFETY: `remote` points into `buf` at a sockaddr of `remote_len`
    // bytes; it is copied out at once.
    let bytes = unsafe { std::slice::from_raw_parts(remote as *const u8, remote_len.max(0) as usize) };
    let peer = decode_sockaddr(bytes).ok_or_else(|| io::Error::other("accepted a non-IP peer"))?;
    SockRef::from(&socket).set_nonblocking(true)?;
    Ok((socket, peer))
}

/// Decodes a `sockaddr_in` or `sockaddr_in6` from its bytes.
fn decode_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match family {
        2 if b.len() >= 8 => Some(SocketAddr::from(([b[4], b[5], b[6], b[7]], port))),
        23 if b.len() >= 28 => {
            let ip: [u8; 16] = b[8..24].try_into().ok()?;
            let scope = u32::from_ne_bytes(b[24..28].try_into().ok()?);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip.into(),
                port,
                0,
                scope,
            )))
        }
        _ => None,
    }
}

/// Reads what arrived on a non-blocking socket. `Ok(0)` is FIN.
pub(crate) fn read(s: &OwnedSocket, buf: &mut [u8]) -> io::Result<usize> {
    std::io::Read::read(&mut &*SockRef::from(s), buf)
}

/// A new non-blocking socket for connecting to `addr`.
pub(crate) fn stream_for(addr: &SocketAddr) -> io::Result<OwnedSocket> {
    let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl Drop for Port {
    fn drop(&mut self) {
        self.shared.store(0, Ordering::Release);
        if self.outstanding > 0 {
            // Rule 4: the kernel may still write into posted operations.
            tracing::error!(
                outstanding = self.outstanding,
                "completion port closed with operations posted: leaking them"
            );
        }
        // SAFETY: the port handle is owned by self and closed once.
        unsafe { CloseHandle(self.handle) };
    }
}
