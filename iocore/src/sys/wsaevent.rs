//! WSAEventSelect: the readiness mechanism of the first seed. A socket is
//! tied to an event object with `WSAEventSelect`; the event is signaled
//! when one of the chosen network events happens; `WSAEnumNetworkEvents`
//! says which (with an error code each) and resets the event; and
//! `WSAWaitForMultipleEvents` waits for any of at most 64 events.

use std::io;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::windows::io::{AsRawSocket, OwnedSocket};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use windows_sys::Win32::Foundation::{HANDLE, WAIT_OBJECT_0};
use windows_sys::Win32::Networking::WinSock::{
    WSACloseEvent, WSACreateEvent, WSAEnumNetworkEvents, WSAEventSelect, WSAGetLastError, WSAResetEvent,
    WSASetEvent, WSAWaitForMultipleEvents, FD_ACCEPT, FD_ACCEPT_BIT, FD_CLOSE, FD_CLOSE_BIT, FD_CONNECT,
    FD_CONNECT_BIT, FD_READ, FD_READ_BIT, FD_WRITE, FD_WRITE_BIT, WSANETWORKEVENTS, WSA_INFINITE,
    WSA_WAIT_FAILED, WSA_WAIT_TIMEOUT,
};
use windows_sys::Win32::System::Threading::WaitForSingleObject;

/// Most events one wait can watch (Winsock's WSA_MAXIMUM_WAIT_EVENTS).
pub(crate) const MAX_WAIT: usize = 64;

fn last_error() -> io::Error {
    // SAFETY: reads the calling thread's last Winsock error.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// A manual-reset event object (WSACreateEvent), closed on drop.
pub(crate) struct NetEvent(isize);

// SAFETY: an event object's handle may be used from any thread.
unsafe impl Send for NetEvent {}
// SAFETY: all operations on an event object are thread-safe.
unsafe impl Sync for NetEvent {}

impl NetEvent {
    /// A new, non-signaled event.
    pub(crate) fn new() -> io::Result<NetEvent> {
        // SAFETY: no arguments; returns a handle or WSA_INVALID_EVENT (0).
        let h = unsafe { WSACreateEvent() };
        if h == 0 {
            return Err(last_error());
        }
        Ok(NetEvent(h))
    }

    /// Signals the event.
    pub(crate) fn set(&self) {
        // SAFETY: the handle is live while self is.
        unsafe { WSASetEvent(self.0) };
    }

    /// Makes the event non-signaled.
    pub(crate) fn reset(&self) {
        // SAFETY: the handle is live while self is.
        unsafe { WSAResetEvent(self.0) };
    }

    /// Whether the event is signaled now (does not wait or reset).
    pub(crate) fn is_set(&self) -> bool {
        // SAFETY: the handle is live; a zero timeout only tests it.
        unsafe { WaitForSingleObject(self.0 as HANDLE, 0) == WAIT_OBJECT_0 }
    }
}

impl Drop for NetEvent {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by self and closed once.
        unsafe { WSACloseEvent(self.0) };
    }
}

/// Which network events to report.
#[derive(Clone, Copy)]
pub(crate) struct Interest(i32);

impl Interest {
    /// A listener: FD_ACCEPT | FD_CLOSE (as in the seed).
    pub(crate) const LISTENER: Interest = Interest((FD_ACCEPT | FD_CLOSE) as i32);
    /// A session: FD_READ | FD_WRITE | FD_CLOSE (as in the seed).
    pub(crate) const SESSION: Interest = Interest((FD_READ | FD_WRITE | FD_CLOSE) as i32);
    /// A session still connecting: also FD_CONNECT.
    pub(crate) const CONNECTING: Interest = Interest((FD_CONNECT | FD_READ | FD_WRITE | FD_CLOSE) as i32);
}

/// Ties `s`'s network events to `event` (and makes `s` non-blocking).
pub(crate) fn select(s: &OwnedSocket, event: &NetEvent, interest: Interest) -> io::Result<()> {
    // SAFETY: live socket and event.
    if unsafe { WSAEventSelect(s.as_raw_socket() as usize, event.0, interest.0) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Unties `s` from any event (before it leaves its event's slot).
pub(crate) fn deselect(s: &OwnedSocket) {
    // SAFETY: a null event and no events cancel the association.
    unsafe { WSAEventSelect(s.as_raw_socket() as usize, 0, 0) };
}

/// What happened on a socket since the last look, with the error code of
/// each event (the seed's `WSANETWORKEVENTS`).
#[derive(Debug, Default)]
pub(crate) struct NetEvents {
    /// FD_READ: data waits.
    pub read: bool,
    /// FD_WRITE: the send buffer has room.
    pub write: bool,
    /// FD_CLOSE: the peer closed (or reset: `close_error`).
    pub close: bool,
    /// FD_CLOSE's error, if any.
    pub close_error: Option<io::Error>,
    /// FD_CONNECT: `Some(Ok)` connected, `Some(Err)` failed.
    pub connect: Option<io::Result<()>>,
    /// FD_READ / FD_WRITE / FD_ACCEPT errors.
    pub error: Option<io::Error>,
}

/// Reads and clears `s`'s network events and resets `event`.
pub(crate) fn enumerate(s: &OwnedSocket, event: &NetEvent) -> io::Result<NetEvents> {
    let mut ne = WSANETWORKEVENTS::default();
    // SAFETY: live socket and event; `ne` is writable for the call.
    if unsafe { WSAEnumNetworkEvents(s.as_raw_socket() as usize, event.0, &mut ne) } != 0 {
        return Err(last_error());
    }
    let has = |bit: u32| ne.lNetworkEvents & (1 << bit) != 0;
    let err = |bit: u32| match ne.iErrorCode[bit as usize] {
        0 => None,
        e => Some(io::Error::from_raw_os_error(e)),
    };
    let mut out = NetEvents {
        read: has(FD_READ_BIT),
        write: has(FD_WRITE_BIT),
        close: has(FD_CLOSE_BIT),
        ..NetEvents::default()
    };
    if out.close {
        out.close_error = err(FD_CLOSE_BIT);
    }
    if has(FD_CONNECT_BIT) {
        out.connect = Some(err(FD_CONNECT_BIT).map_or(Ok(()), Err));
    }
    for bit in [FD_READ_BIT, FD_WRITE_BIT, FD_ACCEPT_BIT] {
        if has(bit) && out.error.is_none() {
            out.error = err(bit);
        }
    }
    Ok(out)
}

/// Something `wait_any` can wait on.
pub(crate) trait Waitable {
    /// The event handle.
    fn handle(&self) -> HANDLE;
}

impl Waitable for NetEvent {
    fn handle(&self) -> HANDLE {
        self.0 as HANDLE
    }
}

impl Waitable for super::event::Event {
    fn handle(&self) -> HANDLE {
        std::os::windows::io::AsRawHandle::as_raw_handle(self) as HANDLE
    }
}

/// Waits until one of `events` (at most [`MAX_WAIT`]) is signaled or
/// `timeout` passes (`None`: forever); returns the lowest signaled index.
pub(crate) fn wait_any(events: &[&dyn Waitable], timeout: Option<Duration>) -> io::Result<Option<usize>> {
    assert!(events.len() <= MAX_WAIT, "at most {MAX_WAIT} events per wait");
    let handles: Vec<HANDLE> = events.iter().map(|e| e.handle()).collect();
    let ms = timeout.map_or(WSA_INFINITE, |t| {
        t.as_millis().min(WSA_INFINITE as u128 - 1) as u32
    });
    // SAFETY: the handles are live events borrowed for the call.
    let r = unsafe { WSAWaitForMultipleEvents(handles.len() as u32, handles.as_ptr(), 0, ms, 0) };
    match r {
        WSA_WAIT_TIMEOUT => Ok(None),
        WSA_WAIT_FAILED => Err(last_error()),
        i => Ok(Some(i as usize)),
    }
}

/// Accepts one connection (`WouldBlock` when none waits).
pub(crate) fn accept(listener: &OwnedSocket) -> io::Result<(OwnedSocket, SocketAddr)> {
    let (s, addr) = SockRef::from(listener).accept()?;
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a non-IP peer"))?;
    Ok((s.into(), addr))
}

/// Starts a non-blocking connect; completion comes as FD_CONNECT.
pub(crate) fn connect(addr: &SocketAddr) -> io::Result<OwnedSocket> {
    let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    match s.connect(&(*addr).into()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

/// Reads without blocking; `Ok(0)` is FIN.
pub(crate) fn read(s: &OwnedSocket, buf: &mut [u8]) -> io::Result<usize> {
    std::io::Read::read(&mut &*SockRef::from(s), buf)
}

/// Gather-sends without blocking (WSASend with a WSABUF array).
pub(crate) fn send_vectored(s: &OwnedSocket, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    SockRef::from(s).send_vectored(bufs)
}

/// Sends FIN.
pub(crate) fn shutdown_write(s: &OwnedSocket) -> io::Result<()> {
    SockRef::from(s).shutdown(std::net::Shutdown::Write)
}
