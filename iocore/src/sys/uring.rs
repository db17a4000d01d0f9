//! io_uring: the completion mechanism behind the `uring` engine — the
//! Linux counterpart of overlapped I/O and IOCP. Operations are posted to
//! a submission queue with a 64-bit `user_data`; their results arrive later
//! on a completion queue carrying the same value.
//!
//! # Ownership rules
//!
//! 1. **Memory an operation uses belongs to the kernel until its
//!    completion arrives, so the ring holds it.** [`Uring::send`] takes the
//!    [`SendOp`] (header, gather array and the buffers themselves) by
//!    value and keeps it until the send's completion, when
//!    [`Uring::take_send`] hands it back; [`Uring::connect`] keeps the
//!    address likewise. Callers never hold memory the kernel may touch, so
//!    every function here is safe to call.
//! 2. **Receive memory is the ring's own** (a provided-buffer ring): a
//!    receive picks a free buffer only when data arrives, so an idle
//!    socket holds none. A completion names the buffer it filled; the
//!    caller reads it with [`Uring::buffer`] and gives it back with
//!    [`Uring::recycle`]. Until then the kernel will not reuse it.
//! 3. **Closing a session cancels its operations** ([`Uring::cancel_fd`])
//!    and the caller frees the session only after the last of its
//!    completions (each posted operation yields exactly one final
//!    completion: one without [`Completion::more`]).
//! 4. **No memory is freed while the kernel may still use it.** Drop
//!    cancels what is still posted and waits for the completions; if they
//!    do not come within a second it leaks the memory rather than free it
//!    under the kernel. It unregisters the buffer ring before freeing it.
//! 5. A full submission queue is flushed to the kernel and the push
//!    retried; an empty buffer ring makes a receive complete with
//!    `ENOBUFS`, which the caller treats as "post the receive again".

use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Buffer group id of the worker's provided-buffer ring.
const BGID: u16 = 0;

/// Most bytes one multishot receive takes before it ends (a completion
/// without [`Completion::more`]) and must be posted again: the kernel's
/// read-ahead for a session is bounded by this (plus one buffer).
pub const RECV_CAP: u32 = 64 * 1024;

/// Byte offset of `optlen` in the kernel's 64-byte `io_uring_sqe`
/// (`include/uapi/linux/io_uring.h`), the field Linux 6.17 reads as a
/// multishot receive's total-byte cap.
const SQE_OPTLEN: usize = 44;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// `entry` with the SQE's `optlen` field set: the io-uring crate builds
/// multishot receives without it.
fn with_optlen(entry: squeue::Entry, optlen: u32) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is a `#[repr(C)]` wrapper of the kernel's
    // `io_uring_sqe`, 64 plain bytes (size checked above), so its bytes are
    // the SQE's; every byte pattern is a valid SQE, so writing `optlen`
    // at its ABI offset and converting back yields a valid entry.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[SQE_OPTLEN..SQE_OPTLEN + 4].copy_from_slice(&optlen.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// Opcodes the engine cannot work without.
const REQUIRED: [(u8, &str); 7] = [
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Shutdown::CODE, "SHUTDOWN"),
];

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The value given when the operation was posted.
    pub user_data: u64,
    /// The result: a count or a new descriptor (≥ 0), or `-errno`.
    pub result: i32,
    flags: u32,
}

impl Completion {
    /// A multishot operation stays posted and will complete again.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
    /// The provided buffer this receive filled.
    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
    /// The result as an I/O result.
    pub fn io_result(&self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }
}

/// One gather send: the buffers and the `sendmsg` header pointing into
/// them. Boxed, so the header's pointer to its own gather array stays
/// valid while the ring holds it.
pub struct SendOp {
    msg: libc::msghdr,
    iov: [libc::iovec; SendOp::MAX_IOV],
    /// The buffers to send, in order (at most [`SendOp::MAX_IOV`]).
    pub bufs: Vec<Bytes>,
    /// Bytes of `bufs[0]` already sent before.
    pub offset: usize,
}

impl SendOp {
    /// Most buffers gathered into one send.
    pub const MAX_IOV: usize = 64;

    /// An empty operation.
    pub fn new() -> Box<SendOp> {
        Box::new(SendOp {
            // SAFETY: msghdr and iovec are plain old data; zero is valid.
            msg: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            iov: unsafe { std::mem::zeroed() },
            bufs: Vec::with_capacity(Self::MAX_IOV),
            offset: 0,
        })
    }

    /// Points the header at the buffers.
    fn prepare(&mut self) {
        let n = self.bufs.len().min(Self::MAX_IOV);
        for (i, (iov, b)) in self.iov.iter_mut().zip(&self.bufs[..n]).enumerate() {
            let skip = if i == 0 { self.offset } else { 0 };
            *iov = libc::iovec {
                iov_base: b[skip..].as_ptr() as *mut libc::c_void,
                iov_len: b.len() - skip,
            };
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n as _;
    }
}

/// The provided-buffer ring: `count` buffers of `size` bytes that the
/// kernel picks from when data arrives.
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: Layout,
    count: u16,
    size: usize,
    memory: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    fn new(count: u16, size: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two(), "buffer ring size must be a power of two");
        let layout =
            Layout::from_size_align(count as usize * std::mem::size_of::<types::BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let memory = vec![0u8; count as usize * size].into_boxed_slice();
        let mut ring = BufRing {
            entries,
            layout,
            count,
            size,
            memory,
            tail: 0,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Puts buffer `bid` back at the tail (visible after `publish`).
    fn push(&mut self, bid: u16) {
        let index = (self.tail & (self.count - 1)) as usize;
        // SAFETY: index < count, the number of entries allocated; only
        // this thread writes entries, and the kernel reads only entries
        // before the published tail, which this one is not yet.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(self.memory[bid as usize * self.size..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: `entries` is the ring base; the tail field lives in the
        // first entry's reserved word, written by us and read by the
        // kernel; AtomicU16 has the same layout as u16, and the release
        // store orders the entry writes before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the owner (Uring)
        // unregistered the ring from the kernel before dropping it.
        unsafe { alloc::dealloc(self.entries as *mut u8, self.layout) };
    }
}

/// An io_uring instance with its provided-buffer ring.
pub struct Uring {
    ring: IoUring,
    bufs: BufRing,
    recycled: bool,
    completions: Vec<Completion>,
    /// Posted operations whose final completion has not been taken.
    outstanding: usize,
    /// Provided buffers named by completions and not yet recycled.
    held: usize,
    /// Sends in flight, by `user_data` (rule 1).
    sends: HashMap<u64, Box<SendOp>>,
    /// Connect addresses in flight, by `user_data` (rule 1).
    connects: HashMap<u64, Box<super::socket::RawAddr>>,
    /// Submission entries the kernel took, in all.
    submitted: u64,
    /// Completions reaped, in all.
    reaped: u64,
}

impl Uring {
    /// A ring of `entries` submissions, with `buffers` receive buffers of
    /// `buffer_size` bytes. Fails if the kernel, a sandbox or the memlock
    /// limit forbids io_uring, or if it lacks an operation the engine
    /// needs; the error says which.
    pub fn new(entries: u32, buffers: u16, buffer_size: usize) -> io::Result<Uring> {
        if std::env::var_os("IOCORE_DISABLE_URING").is_some_and(|v| v != "0") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "disabled by IOCORE_DISABLE_URING",
            ));
        }
        // Completions are reaped only by this thread, in io_uring_enter:
        // no need to interrupt it to run their task work (COOP_TASKRUN,
        // 5.19) and only it submits (SINGLE_ISSUER, 6.0). Older kernels
        // reject the flags; then set up without them.
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup failed: {e}")))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring probe failed: {e}")))?;
        for (code, name) in REQUIRED {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("kernel lacks IORING_OP_{name}"),
                ));
            }
        }
        let bufs = BufRing::new(buffers, buffer_size)?;
        // SAFETY: `bufs.entries` is a page-aligned array of `count` entries
        // that stays allocated until Drop, which unregisters it first.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.entries as u64, bufs.count, BGID, 0)
        }
        .map_err(|e| io::Error::new(e.kind(), format!("provided-buffer ring unsupported: {e}")))?;
        Ok(Uring {
            ring,
            bufs,
            recycled: false,
            completions: Vec::with_capacity(1024),
            outstanding: 0,
            held: 0,
            sends: HashMap::new(),
            connects: HashMap::new(),
            submitted: 0,
            reaped: 0,
        })
    }

    /// Pushes one entry, flushing the submission queue if it is full.
    ///
    /// # Safety
    /// Whatever memory `entry` points to stays valid and untouched until
    /// its final completion is taken (rule 1).
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.outstanding += 1;
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.reap(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Accepts connections on `listener`; `multishot` keeps accepting with
    /// one posting. The result is the new socket (see
    /// [`super::socket::take_completed_fd`]).
    pub fn accept(&mut self, listener: RawFd, multishot: bool, user_data: u64) -> io::Result<()> {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let entry = match multishot {
            true => opcode::AcceptMulti::new(types::Fd(listener)).flags(flags).build(),
            false => opcode::Accept::new(types::Fd(listener), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(flags)
                .build(),
        };
        // SAFETY: no pointer into caller memory (null address pointers).
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Receives into provided buffers: with `multishot_cap`, as a
    /// multishot receive that ends after that many bytes (Linux 6.17;
    /// older kernels complete it with `EINVAL`); without, one buffer's
    /// worth.
    pub fn recv(&mut self, fd: RawFd, multishot_cap: Option<u32>, user_data: u64) -> io::Result<()> {
        let entry = match multishot_cap {
            Some(cap) => with_optlen(opcode::RecvMulti::new(types::Fd(fd), BGID).build(), cap),
            None => opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), self.bufs.size as u32)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT),
        };
        // SAFETY: the receive writes only into the ring's own provided
        // buffers, which live as long as the ring (rule 2).
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Reports readability of `fd` (the worker's wake-up eventfd).
    pub fn poll_readable(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build();
        // SAFETY: no pointer into caller memory.
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Sends `op`'s buffers with one gather `sendmsg`. The ring keeps `op`
    /// until the completion; take it back with [`Uring::take_send`].
    pub fn send(&mut self, fd: RawFd, mut op: Box<SendOp>, user_data: u64) -> io::Result<()> {
        op.prepare();
        let entry = opcode::SendMsg::new(types::Fd(fd), &op.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        // SAFETY: the header, its gather array and the buffers live in the
        // boxed `op`, which is stored below and kept until this send's
        // completion has been taken (rule 1); the box does not move.
        unsafe { self.push(&entry.user_data(user_data))? };
        let previous = self.sends.insert(user_data, op);
        assert!(previous.is_none(), "two sends in flight with one user_data");
        Ok(())
    }

    /// The operation of a completed send, with its buffers, to give back.
    /// `None` if `user_data` names no send in flight.
    pub fn take_send(&mut self, user_data: u64) -> Option<Box<SendOp>> {
        self.sends.remove(&user_data)
    }

    /// Connects the non-blocking socket `fd` to `addr`.
    pub fn connect(&mut self, fd: RawFd, addr: &SocketAddr, user_data: u64) -> io::Result<()> {
        let raw = Box::new(super::socket::RawAddr::from_addr(addr));
        let (ptr, len) = raw.as_ptr();
        let entry = opcode::Connect::new(types::Fd(fd), ptr, len).build();
        // SAFETY: the address is boxed and kept until the completion is
        // taken (rule 1).
        unsafe { self.push(&entry.user_data(user_data))? };
        self.connects.insert(user_data, raw);
        Ok(())
    }

    /// Cancels every operation on `fd` (rule 3). Completes itself too.
    pub fn cancel_fd(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
        // SAFETY: no pointer into caller memory.
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Cancels the operation posted with `target`. Completes itself too.
    pub fn cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(target).build();
        // SAFETY: no pointer into caller memory.
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Submits what was posted and waits for at least one completion or
    /// `timeout` (`None`: forever; zero: do not wait).
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.publish_buffers();
        let res = match timeout {
            Some(t) if t.is_zero() => self.ring.submit(),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match res {
            Ok(n) => {
                self.submitted += n as u64;
                Ok(())
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn reap(&mut self) {
        let start = self.completions.len();
        self.completions
            .extend(self.ring.completion().map(|c| Completion {
                user_data: c.user_data(),
                result: c.result(),
                flags: c.flags(),
            }));
        self.reaped += (self.completions.len() - start) as u64;
        for c in &self.completions[start..] {
            if c.buffer_id().is_some() {
                self.held += 1;
            }
            if !c.more() {
                self.outstanding -= 1;
                self.connects.remove(&c.user_data);
            }
        }
    }

    /// Takes every completion that arrived.
    pub fn completions(&mut self) -> Vec<Completion> {
        self.reap();
        std::mem::take(&mut self.completions)
    }

    /// Gives back the vector from [`Uring::completions`] to reuse.
    pub fn reuse(&mut self, mut v: Vec<Completion>) {
        if self.completions.is_empty() {
            v.clear();
            self.completions = v;
        }
    }

    /// The first `len` bytes of provided buffer `bid`, as filled by a
    /// receive completion (rule 2).
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.bufs.size;
        &self.bufs.memory[start..start + len.min(self.bufs.size)]
    }

    /// Returns buffer `bid` to the kernel (published at the next submit).
    pub fn recycle(&mut self, bid: u16) {
        self.bufs.push(bid);
        self.held -= 1;
        self.recycled = true;
    }

    /// Provided buffers that completions handed out and that were not
    /// recycled yet (0 whenever the caller is not in the middle of
    /// handling completions).
    pub fn buffers_held(&self) -> usize {
        self.held
    }

    /// Submission entries the kernel took and completions reaped, since
    /// the ring was made.
    pub fn totals(&self) -> (u64, u64) {
        (self.submitted, self.reaped)
    }

    fn publish_buffers(&mut self) {
        if self.recycled {
            self.bufs.publish();
            self.recycled = false;
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Rule 4: wait until the kernel has let go of everything.
        if self.outstanding > 0 {
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build();
            // SAFETY: no pointer into caller memory.
            let _ = unsafe { self.push(&entry.user_data(u64::MAX)) };
            let start = Instant::now();
            while self.outstanding > 0 && start.elapsed() < Duration::from_secs(1) {
                let _ = self.submit_and_wait(Some(Duration::from_millis(10)));
                self.reap();
                self.completions.clear();
            }
        }
        if self.outstanding > 0 {
            tracing::error!(
                outstanding = self.outstanding,
                "io_uring operations never completed: leaking their memory"
            );
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::take(&mut self.connects));
            let bufs = std::mem::replace(&mut self.bufs.memory, Box::new([]));
            std::mem::forget(bufs);
            return;
        }
        // The kernel forgets the buffer ring before its memory goes.
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}

impl AsRawFd for Uring {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// Checks that a worker could run the io_uring engine here.
pub fn probe() -> io::Result<()> {
    Uring::new(8, 1, 64).map(drop)
}
