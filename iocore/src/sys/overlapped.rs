//! Overlapped I/O with event objects — the second seed: `WSARecv` and
//! `WSASend` take a `WSAOVERLAPPED` whose `hEvent` the system signals when
//! the operation completes; `WSA_IO_PENDING` means "later"; then
//! `WSAGetOverlappedResult` gives the byte count. Sends pass `WSABUF`
//! arrays (scatter-gather).
//!
//! # Ownership rules
//!
//! An [`OvSocket`] owns its socket and every operation posted on it, each
//! boxed (its OVERLAPPED at a stable address) with the memory it uses (the
//! buffers of a send). A finished operation is taken back by polling it;
//! dropping an [`OvSocket`] cancels what is still posted and waits
//! (bounded) for the cancellations, leaking an operation rather than free
//! it while the kernel may still use it. The event object belongs to the
//! caller's slot and must outlive the socket.
//!
//! # One event, several operations
//!
//! Every operation of a socket signals the same event, and *starting* an
//! overlapped operation resets its event (Windows does this for every
//! `WSARecv`/`WSASend`/`ConnectEx` given an `hEvent`). So posting a send
//! right after a receive finished would erase the receive's signal and the
//! receive would never be looked at. After each post the socket therefore
//! checks its other operations and signals the event again if one of them
//! has finished; an operation finishing later signals by itself.

use std::io;
use std::net::SocketAddr;
use std::os::windows::io::OwnedSocket;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Networking::WinSock::{SO_UPDATE_CONNECT_CONTEXT, WSABUF, WSA_IO_INCOMPLETE};
use windows_sys::Win32::System::Threading::SetEvent;
use windows_sys::Win32::System::IO::{CancelIoEx, OVERLAPPED};

use super::iocp::{self, raw, started, SendOp};
use super::wsaevent::{NetEvent, Waitable};

/// One posted operation: its OVERLAPPED and, for a send, its buffers.
struct Op {
    ov: OVERLAPPED,
    _wsabufs: Vec<WSABUF>,
    send: Option<Box<SendOp>>,
}

impl Op {
    fn new(event: HANDLE) -> Box<Op> {
        // SAFETY: OVERLAPPED is plain old data; zero is its initial state.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        ov.hEvent = event;
        Box::new(Op {
            ov,
            _wsabufs: Vec::new(),
            send: None,
        })
    }
}

/// A socket doing overlapped I/O signaled through one event object.
pub(crate) struct OvSocket {
    socket: OwnedSocket,
    event: HANDLE,
    recv: Option<Box<Op>>,
    send: Option<Box<Op>>,
    connect: Option<Box<Op>>,
}

impl OvSocket {
    /// Takes `socket`; completions will signal `event` (which must outlive
    /// this socket).
    pub(crate) fn new(socket: OwnedSocket, event: &NetEvent) -> OvSocket {
        OvSocket {
            socket,
            event: event.handle(),
            recv: None,
            send: None,
            connect: None,
        }
    }

    /// The socket.
    pub(crate) fn socket(&self) -> &OwnedSocket {
        &self.socket
    }

    /// A receive or send or connect is posted.
    pub(crate) fn recv_posted(&self) -> bool {
        self.recv.is_some()
    }

    /// A send is posted.
    pub(crate) fn send_posted(&self) -> bool {
        self.send.is_some()
    }

    /// Posts a zero-byte WSARecv: it completes when data is there, holding
    /// no buffer meanwhile.
    pub(crate) fn post_recv(&mut self) -> io::Result<()> {
        let mut op = Op::new(self.event);
        // SAFETY: the boxed OVERLAPPED is kept in self until the operation
        // is polled complete or cancelled (see Drop).
        unsafe { iocp::start_zero_byte_recv(raw(&self.socket), &mut op.ov) }?;
        self.recv = Some(op);
        self.resignal_if_finished();
        Ok(())
    }

    /// Posts one gather WSASend of `send`'s buffers; if it cannot start,
    /// the buffers come back with the error.
    #[allow(clippy::result_large_err)]
    pub(crate) fn post_send(&mut self, send: Box<SendOp>) -> Result<(), (io::Error, Box<SendOp>)> {
        let mut op = Op::new(self.event);
        let wsabufs = iocp::wsabufs(&send);
        // SAFETY: the WSABUF array and the buffers it points to are moved
        // into the boxed op, kept in self until the send is polled complete
        // or cancelled (see Drop); moving the Vec and Box keeps their heap
        // memory in place.
        let sent = unsafe { iocp::start_send(raw(&self.socket), &wsabufs, &mut op.ov) };
        op._wsabufs = wsabufs;
        op.send = Some(send);
        if let Err(e) = sent {
            // Not started: nothing refers to the op; give the buffers back.
            return Err((e, op.send.take().expect("set above")));
        }
        self.send = Some(op);
        self.resignal_if_finished();
        Ok(())
    }

    /// Binds and posts a ConnectEx to `addr`.
    pub(crate) fn post_connect(&mut self, addr: &SocketAddr) -> io::Result<()> {
        iocp::bind_any(&self.socket, addr)?;
        let connect_ex = iocp::connect_ex_fn(&self.socket)?;
        let target = socket2::SockAddr::from(*addr);
        let mut op = Op::new(self.event);
        // SAFETY: the address is read during the call; the boxed
        // OVERLAPPED is kept in self until polled complete or cancelled.
        let ok = unsafe {
            connect_ex(
                raw(&self.socket),
                target.as_ptr() as *const _,
                target.len(),
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                &mut op.ov,
            )
        };
        started(ok != 0)?;
        self.connect = Some(op);
        self.resignal_if_finished();
        Ok(())
    }

    /// Posting reset the shared event: signal it again if an operation has
    /// already finished (see the module notes), so its completion is seen.
    fn resignal_if_finished(&self) {
        let finished = [&self.recv, &self.send, &self.connect]
            .into_iter()
            .flatten()
            .any(|op| self.poll(op).is_some());
        if finished {
            // SAFETY: the event handle outlives this socket (see `new`).
            unsafe { SetEvent(self.event) };
        }
    }

    fn poll(&self, op: &Op) -> Option<io::Result<usize>> {
        match iocp::overlapped_result_of(raw(&self.socket), &op.ov) {
            Err(e) if e.raw_os_error() == Some(WSA_IO_INCOMPLETE) => None,
            r => Some(r),
        }
    }

    /// The posted receive's result, once it finished.
    pub(crate) fn poll_recv(&mut self) -> Option<io::Result<()>> {
        let r = self.poll(self.recv.as_ref()?)?;
        self.recv = None;
        Some(r.map(drop))
    }

    /// The posted send's result and its buffers, once it finished.
    pub(crate) fn poll_send(&mut self) -> Option<(io::Result<usize>, Box<SendOp>)> {
        let r = self.poll(self.send.as_ref()?)?;
        let mut op = self.send.take().expect("polled above");
        Some((r, op.send.take().expect("a send op has buffers")))
    }

    /// The posted connect's result, once it finished.
    pub(crate) fn poll_connect(&mut self) -> Option<io::Result<()>> {
        let r = self.poll(self.connect.as_ref()?)?;
        self.connect = None;
        Some(r.and_then(|_| iocp::set_socket_opt(raw(&self.socket), SO_UPDATE_CONNECT_CONTEXT, None)))
    }
}

impl Drop for OvSocket {
    fn drop(&mut self) {
        if self.recv.is_none() && self.send.is_none() && self.connect.is_none() {
            return;
        }
        // SAFETY: live socket; a null OVERLAPPED cancels all its operations.
        unsafe { CancelIoEx(raw(&self.socket) as HANDLE, std::ptr::null()) };
        let start = Instant::now();
        for slot in [&mut self.recv, &mut self.send, &mut self.connect] {
            let Some(op) = slot.take() else { continue };
            loop {
                match iocp::overlapped_result_of(raw(&self.socket), &op.ov) {
                    Err(e) if e.raw_os_error() == Some(WSA_IO_INCOMPLETE) => {
                        if start.elapsed() > Duration::from_secs(1) {
                            // The kernel still owns it: never free it.
                            std::mem::forget(op);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;

    fn wait_set(event: &NetEvent) -> bool {
        let start = Instant::now();
        while !event.is_set() {
            if start.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Regression: posting a send reset the event that a finished receive
    /// had signaled, so the receive was never looked at and the overlapped
    /// engine stopped reading while a large send was pending.
    #[test]
    fn posting_a_send_keeps_a_finished_receive_signaled() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        peer.write_all(b"x").unwrap(); // the receive will find data
        let event = NetEvent::new().unwrap();
        let mut socket = OvSocket::new(OwnedSocket::from(ours), &event);
        socket.post_recv().unwrap();
        assert!(wait_set(&event), "the zero-byte receive finished");
        // The peer never reads: a send this large stays pending.
        let mut send = Box::<SendOp>::default();
        send.bufs.push(Bytes::from(vec![7u8; 64 * 1024 * 1024]));
        socket.post_send(send).map_err(|(e, _)| e).unwrap();
        assert!(socket.poll_send().is_none(), "the send is still pending");
        assert!(event.is_set(), "the receive's signal survived the send's post");
        assert!(matches!(socket.poll_recv(), Some(Ok(()))));
    }
}
