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
//!    [`Uring::take_send`] hands it back (a slab of in-flight sends, keyed
//!    by the [`SendKey`] that `send` returned); [`Uring::connect`] keeps
//!    the address likewise. Callers never hold memory the kernel may touch, so
//!    every function here is safe to call.
//! 2. **Receive memory is the ring's own** (a provided-buffer ring): a
//!    receive picks a free buffer only when data arrives, so an idle
//!    socket holds none. A completion names the buffers it filled (one,
//!    or with a receive bundle several, which the kernel takes in ring
//!    order: the ring resolves which when it reaps the completion, right
//!    after the `io_uring_enter` that completed it and before any buffer
//!    is put back, so the entries it reads are still the ones the kernel
//!    took); the caller reads them with [`Uring::buffers`] and gives them
//!    back with [`Uring::recycle`]. Until then the kernel will not reuse
//!    them.
//! 3. **Closing a session cancels its operations** ([`Uring::cancel_file`])
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
//! 6. **A socket in the registered file table stays there until the
//!    caller detaches it**, after its last completion ([`Uring::attach`],
//!    [`Uring::detach`]). The table holds its own reference to the socket,
//!    so the socket closes when both the caller's descriptor is closed and
//!    the detach has reached the kernel (at the next submit).
//! 7. **EAGAIN, EINTR and ENOBUFS from an operation on a session's socket
//!    mean "not now", never "failed"**: the caller posts the operation
//!    again, with the same bytes in the same order. The kernel does return
//!    them: a send (plain or gather, by slot or by descriptor) whose socket
//!    polls writable while `tcp_sendmsg` still finds no room (seen with a
//!    peer that advertises a 4 KiB window) is retried by io_uring's poll
//!    128 times (`APOLL_MAX_RETRY`); then io_uring gives up polling and
//!    issues it once more from an io-wq worker in blocking mode, where a
//!    socket opened `O_NONBLOCK` answers EAGAIN, and that result is final
//!    (traced with the `io_uring_local_work_run` and
//!    `io_uring_queue_async_work` events: 127 task-work runs between the
//!    submit and the punt, then -11). A receive can end the same way;
//!    ENOBUFS is an empty buffer ring (rule 5); EINTR an interrupted
//!    worker. A caller that posts again at once may meet the same state
//!    again: [`Uring::delay`] paces the retry.

mod bufring;
mod enter;
mod features;
mod files;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use bufring::BufRing;
use enter::{enter, register_ring_fd, unregister_ring_fd};
pub use features::{Features, FEATURES_OFF_VAR};
use files::{file_table_size, FileTable, NO_FILE};
pub(crate) use files::{FileRef, FileSlot};

/// Buffer group id of the worker's provided-buffer ring.
const BGID: u16 = 0;

/// Most bytes one multishot receive takes before it ends (a completion
/// without [`Completion::more`]) and must be posted again: the kernel's
/// read-ahead for a session is bounded by this (plus one buffer).
pub(crate) const RECV_CAP: u32 = 64 * 1024;

/// How long [`Uring::delay`] waits: an operation refused with "not now"
/// is posted again after this (rule 7), so that a state the kernel keeps
/// for a while costs a thousand retries a second, not a busy loop.
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(1);

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
const REQUIRED: [(u8, &str); 8] = [
    (opcode::Timeout::CODE, "TIMEOUT"),
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Shutdown::CODE, "SHUTDOWN"),
];

/// Whether an operation's error means "not now" (rule 7): post it again
/// rather than fail the session.
pub(crate) fn is_not_now(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOBUFS)
    )
}

/// Identifies a send in flight (rule 1): where the ring keeps its
/// operation until [`Uring::take_send`]. Its slab index plus one, so that
/// an `Option<SendKey>` in a session's state takes four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SendKey(std::num::NonZeroU32);

impl SendKey {
    fn new(index: u32) -> SendKey {
        SendKey(std::num::NonZeroU32::MIN.saturating_add(index))
    }

    fn index(self) -> u32 {
        self.0.get() - 1
    }
}

/// Builds an entry with `$file` as a `types::Fixed` slot or a `types::Fd`
/// (the opcode builders take either, as different types).
macro_rules! on_file {
    ($file:expr, |$t:ident| $build:expr) => {
        match $file.slot.get() {
            Some(slot) => {
                let $t = types::Fixed(slot);
                $build
            }
            None => {
                let $t = types::Fd($file.fd);
                $build
            }
        }
    };
}

/// `user_data` of the ring's own operations (file-table updates), whose
/// completions [`Uring::completions`] does not return; and of the cancel
/// that Drop posts. Callers' `user_data` must stay below both.
const OWN_OP: u64 = u64::MAX - 1;
const DROP_CANCEL: u64 = u64::MAX;

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    /// The value given when the operation was posted.
    pub user_data: u64,
    /// The result: a count or a new descriptor (≥ 0), or `-errno`.
    pub result: i32,
    flags: u32,
    /// The provided buffers it names: `bids[first..first + count]` of the
    /// ring that reaped it.
    first: u32,
    count: u32,
}

impl Completion {
    /// A multishot operation stays posted and will complete again.
    pub(crate) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
    /// How many provided buffers this receive filled (0: none).
    pub(crate) fn buffer_count(&self) -> usize {
        self.count as usize
    }
    /// The result as an I/O result.
    pub(crate) fn io_result(&self) -> io::Result<usize> {
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
pub(crate) struct SendOp {
    msg: libc::msghdr,
    iov: [libc::iovec; SendOp::MAX_IOV],
    /// The buffers to send, in order (at most [`SendOp::MAX_IOV`]).
    pub bufs: Vec<Bytes>,
    /// Bytes of `bufs[0]` already sent before.
    pub offset: usize,
}

impl SendOp {
    /// Most buffers gathered into one send.
    pub(crate) const MAX_IOV: usize = 64;

    /// An empty operation.
    pub(crate) fn new() -> Box<SendOp> {
        Box::new(SendOp {
            // SAFETY: msghdr and iovec are plain old data; zero is valid.
            msg: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            iov: unsafe { std::mem::zeroed() },
            bufs: Vec::with_capacity(Self::MAX_IOV),
            offset: 0,
        })
    }

    /// How many bytes the operation offers the kernel.
    pub(crate) fn offered(&self) -> usize {
        self.bufs.iter().map(Bytes::len).sum::<usize>() - self.offset
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

/// An io_uring instance with its provided-buffer ring.
pub(crate) struct Uring {
    ring: IoUring,
    bufs: BufRing,
    recycled: bool,
    completions: Vec<Completion>,
    /// Posted operations whose final completion has not been taken.
    outstanding: usize,
    /// Provided buffers named by completions and not yet recycled.
    held: usize,
    /// The buffer ids that completions name (by range), resolved when
    /// reaped; cleared when no completion still refers to it.
    bids: Vec<u16>,
    /// Sends in flight, by [`SendKey`] (rule 1), and the free keys.
    #[allow(clippy::vec_box)] // boxed on purpose: the kernel points into them
    sends: Vec<Option<Box<SendOp>>>,
    free_sends: Vec<u32>,
    /// The features in use.
    features: Features,
    /// The registered ring descriptor's index, if registered.
    ring_index: Option<u32>,
    /// Connect addresses in flight, by `user_data` (rule 1).
    connects: HashMap<u64, Box<super::socket::RawAddr>>,
    /// The registered file table, with [`Features::fixed_files`].
    files: Option<FileTable>,
    /// Submission entries the kernel took, in all.
    submitted: u64,
    /// Completions reaped, in all.
    reaped: u64,
}

impl Uring {
    /// A ring of `entries` submissions, with `buffers` receive buffers of
    /// `buffer_size` bytes, using the [`Features`] the environment leaves
    /// on ([`Features::from_env`]) where the kernel has them. Fails if the
    /// kernel, a sandbox or the memlock limit forbids io_uring, if it lacks
    /// an operation the engine needs, or if [`FEATURES_OFF_VAR`] names an
    /// unknown feature; the error says which.
    pub(crate) fn new(entries: u32, buffers: u16, buffer_size: usize) -> io::Result<Uring> {
        Uring::with_features(entries, buffers, buffer_size, Features::from_env()?)
    }

    /// [`Uring::new`] with the features `asked` for.
    pub(crate) fn with_features(
        entries: u32,
        buffers: u16,
        buffer_size: usize,
        asked: Features,
    ) -> io::Result<Uring> {
        if std::env::var_os("IOCORE_DISABLE_URING").is_some_and(|v| v != "0") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "disabled by IOCORE_DISABLE_URING",
            ));
        }
        let mut features = asked;
        let ring = Uring::setup(entries, &mut features)?;
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
        if features.plain_send && !probe.is_supported(opcode::Send::CODE) {
            tracing::info!("io_uring lacks IORING_OP_SEND: one-buffer sends use SENDMSG");
            features.plain_send = false;
        }
        if features.recv_bundle && !(features.defer_taskrun && ring.params().is_feature_recvsend_bundle()) {
            tracing::info!(
                "io_uring receive bundles unused (they need Linux 6.10 and deferred task work): one buffer per receive completion"
            );
            features.recv_bundle = false;
        }
        let bufs = BufRing::new(buffers, buffer_size)?;
        // SAFETY: `bufs.entries` is a page-aligned array of `count` entries
        // that stays allocated until Drop, which unregisters it first.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.entries as u64, bufs.count, BGID, 0)
        }
        .map_err(|e| io::Error::new(e.kind(), format!("provided-buffer ring unsupported: {e}")))?;
        let mut uring = Uring {
            ring,
            bufs,
            recycled: false,
            completions: Vec::with_capacity(1024),
            outstanding: 0,
            held: 0,
            bids: Vec::with_capacity(1024),
            sends: Vec::new(),
            free_sends: Vec::new(),
            features,
            ring_index: None,
            connects: HashMap::new(),
            files: None,
            submitted: 0,
            reaped: 0,
        };
        if features.fixed_files {
            let size = file_table_size();
            match uring.ring.submitter().register_files_sparse(size) {
                Ok(()) => {
                    uring.files = Some(FileTable {
                        fds: vec![-1; size as usize].into_boxed_slice(),
                        free: (0..size).rev().collect(),
                        full_logged: false,
                    })
                }
                Err(e) => {
                    tracing::info!(error = %e, "io_uring cannot register a file table (needs Linux 5.19): operations name sockets by descriptor");
                    uring.features.fixed_files = false;
                }
            }
        }
        if features.ring_fd {
            match register_ring_fd(uring.ring.as_raw_fd()) {
                Ok(index) => uring.ring_index = Some(index),
                Err(e) => {
                    tracing::info!(error = %e, "io_uring cannot register its ring descriptor (needs Linux 5.18): entering by descriptor");
                    uring.features.ring_fd = false;
                }
            }
        }
        Ok(uring)
    }

    /// Sets the ring up with the task-work mode `features` asks for, or the
    /// best the kernel has (noting in `features` what it lacked).
    fn setup(entries: u32, features: &mut Features) -> io::Result<IoUring> {
        if features.defer_taskrun {
            // Completions' task work runs only in this thread's own
            // io_uring_enter with GETEVENTS (every enter here asks for
            // events), and only this thread submits.
            match IoUring::builder()
                .setup_cqsize(entries * 4)
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(entries)
            {
                Ok(ring) => return Ok(ring),
                Err(e) => {
                    tracing::info!(error = %e, "io_uring DEFER_TASKRUN unsupported (needs Linux 6.1): cooperative task work");
                    features.defer_taskrun = false;
                }
            }
        }
        // Without deferral: no need to interrupt this thread to run the
        // completions' task work (COOP_TASKRUN, 5.19), only it submits
        // (SINGLE_ISSUER, 6.0). Older kernels reject the flags; then set
        // up without them.
        IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup failed: {e}")))
    }

    /// The optional features this ring uses.
    pub(crate) fn features(&self) -> Features {
        self.features
    }

    /// Submits every entry queued so far, without waiting.
    fn submit_queued(&mut self) -> io::Result<usize> {
        let queued = self.ring.submission().len() as u32;
        enter(self.ring.as_raw_fd(), self.ring_index, queued, 0, None)
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
            let res = self.submit_queued();
            // What the enter completed is reaped before any buffer is put
            // back (rule 2), and makes room if the queue was full (EBUSY).
            self.reap();
            match res {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Accepts connections on `listener`; `multishot` keeps accepting with
    /// one posting. The result is the new socket (see
    /// [`super::socket::take_completed_fd`]).
    pub(crate) fn accept(&mut self, listener: RawFd, multishot: bool, user_data: u64) -> io::Result<()> {
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
    pub(crate) fn recv(
        &mut self,
        file: FileRef,
        multishot_cap: Option<u32>,
        user_data: u64,
    ) -> io::Result<()> {
        let size = self.bufs.size as u32;
        let entry = match multishot_cap {
            Some(cap) if self.features.recv_bundle => with_optlen(
                on_file!(file, |f| opcode::RecvMultiBundle::new(f, BGID).build()),
                cap,
            ),
            Some(cap) => with_optlen(on_file!(file, |f| opcode::RecvMulti::new(f, BGID).build()), cap),
            None => on_file!(file, |f| opcode::Recv::new(f, std::ptr::null_mut(), size)
                .buf_group(BGID)
                .build())
            .flags(squeue::Flags::BUFFER_SELECT),
        };
        // SAFETY: the receive writes only into the ring's own provided
        // buffers, which live as long as the ring (rule 2).
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Reports readability of `fd` (the worker's wake-up eventfd).
    pub(crate) fn poll_readable(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build();
        // SAFETY: no pointer into caller memory.
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Sends `op`'s buffers: one buffer with a plain `send` (where
    /// [`Features::plain_send`]), more with one gather `sendmsg`. The ring
    /// keeps `op` until the completion; take it back with
    /// [`Uring::take_send`] and the key returned here.
    pub(crate) fn send(&mut self, file: FileRef, mut op: Box<SendOp>, user_data: u64) -> io::Result<SendKey> {
        let entry = match (self.features.plain_send, op.bufs.as_slice()) {
            (true, [only]) => {
                let rest = &only[op.offset..];
                on_file!(file, |f| opcode::Send::new(f, rest.as_ptr(), rest.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build())
            }
            _ => {
                op.prepare();
                on_file!(file, |f| opcode::SendMsg::new(f, &op.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build())
            }
        };
        // SAFETY: the bytes sent (and for SENDMSG the header and its
        // gather array) live in the boxed `op` and the buffers it owns,
        // which are stored below and kept until this send's completion has
        // been taken (rule 1); neither the box nor the buffers move.
        unsafe { self.push(&entry.user_data(user_data))? };
        let key = match self.free_sends.pop() {
            Some(k) => {
                self.sends[k as usize] = Some(op);
                k
            }
            None => {
                self.sends.push(Some(op));
                (self.sends.len() - 1) as u32
            }
        };
        Ok(SendKey::new(key))
    }

    /// The operation of a completed send, with its buffers, to give back.
    /// `None` if `key` names no send in flight.
    pub(crate) fn take_send(&mut self, key: SendKey) -> Option<Box<SendOp>> {
        let op = self.sends.get_mut(key.index() as usize)?.take()?;
        self.free_sends.push(key.index());
        Some(op)
    }

    /// Connects the non-blocking socket `fd` to `addr`.
    pub(crate) fn connect(&mut self, file: FileRef, addr: &SocketAddr, user_data: u64) -> io::Result<()> {
        let raw = Box::new(super::socket::RawAddr::from_addr(addr));
        let (ptr, len) = raw.as_ptr();
        let entry = on_file!(file, |f| opcode::Connect::new(f, ptr, len).build());
        // SAFETY: the address is boxed and kept until the completion is
        // taken (rule 1).
        unsafe { self.push(&entry.user_data(user_data))? };
        self.connects.insert(user_data, raw);
        Ok(())
    }

    /// Cancels every operation on `file` (rule 3). Completes itself too.
    pub(crate) fn cancel_file(&mut self, file: FileRef, user_data: u64) -> io::Result<()> {
        let entry = on_file!(file, |f| opcode::AsyncCancel2::new(
            types::CancelBuilder::fd(f).all()
        )
        .build());
        // SAFETY: no pointer into caller memory.
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Puts socket `fd` into a free slot of the file table, if there is a
    /// table and a free slot, so that operations name it by slot (the
    /// install reaches the kernel with the next submit, before any
    /// operation posted after it); else it stays named by descriptor
    /// ([`FileSlot::NONE`]). Operations take it as [`FileRef::new`]`(fd, slot)`.
    /// Detach it after its last completion (rule 6).
    pub(crate) fn attach(&mut self, fd: RawFd) -> io::Result<FileSlot> {
        let Some(table) = &mut self.files else {
            return Ok(FileSlot::NONE);
        };
        let Some(slot) = table.free.pop() else {
            if !table.full_logged {
                table.full_logged = true;
                tracing::info!(
                    slots = table.fds.len(),
                    "io_uring file table full: further sessions are named by descriptor"
                );
            }
            return Ok(FileSlot::NONE);
        };
        table.fds[slot as usize] = fd;
        let cell: *const RawFd = &table.fds[slot as usize];
        let entry = opcode::FilesUpdate::new(cell, 1).offset(slot as i32).build();
        // SAFETY: the kernel reads one descriptor from `cell`, a slot of
        // the table's boxed array, which lives as long as the ring (Drop
        // waits for every operation first, rule 4). The cell is written
        // again only when the slot is reused after a detach; updates are
        // applied in submission order, so even an install not yet
        // submitted then leaves the table as the last update says.
        if let Err(e) = unsafe { self.push(&entry.user_data(OWN_OP)) } {
            if let Some(table) = &mut self.files {
                table.free.push(slot);
            }
            return Err(e);
        }
        Ok(FileSlot::new(slot))
    }

    /// Takes the socket at `slot` out of the file table (rule 6), freeing
    /// the slot (nothing for [`FileSlot::NONE`]); the
    /// socket closes once the caller has closed its descriptor too. Call
    /// it after the last completion of the socket's operations.
    pub(crate) fn detach(&mut self, slot: FileSlot) -> io::Result<()> {
        let Some(slot) = slot.get() else {
            return Ok(());
        };
        let entry = opcode::FilesUpdate::new(&NO_FILE, 1).offset(slot as i32).build();
        // SAFETY: the kernel reads one descriptor from a static.
        unsafe { self.push(&entry.user_data(OWN_OP))? };
        if let Some(table) = &mut self.files {
            table.free.push(slot);
        }
        Ok(())
    }

    /// Completes after [`RETRY_DELAY`] (with `ETIME`): paces an operation
    /// the kernel gave back with "not now" (rule 7). Not tied to a socket,
    /// so [`Uring::cancel_file`] leaves it; it ends by itself.
    pub(crate) fn delay(&mut self, user_data: u64) -> io::Result<()> {
        static DELAY: types::Timespec = types::Timespec::new().nsec(RETRY_DELAY.subsec_nanos());
        let entry = opcode::Timeout::new(&DELAY).build();
        // SAFETY: the kernel copies the timespec when it takes the entry;
        // it is a static anyway.
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Cancels the operation posted with `target`. Completes itself too.
    pub(crate) fn cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(target).build();
        // SAFETY: no pointer into caller memory.
        unsafe { self.push(&entry.user_data(user_data)) }
    }

    /// Submits what was posted and waits for at least one completion or
    /// `timeout` (`None`: forever; zero: do not wait).
    pub(crate) fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.publish_buffers();
        let queued = self.ring.submission().len() as u32;
        let res = match timeout {
            Some(t) if t.is_zero() => enter(self.ring.as_raw_fd(), self.ring_index, queued, 0, None),
            Some(t) => enter(self.ring.as_raw_fd(), self.ring_index, queued, 1, Some(t)),
            None => enter(self.ring.as_raw_fd(), self.ring_index, queued, 1, None),
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
        for c in self.ring.completion() {
            let mut c = Completion {
                user_data: c.user_data(),
                result: c.result(),
                flags: c.flags(),
                first: 0,
                count: 0,
            };
            self.reaped += 1;
            if !c.more() {
                self.outstanding -= 1;
                self.connects.remove(&c.user_data);
            }
            if c.user_data == OWN_OP {
                if c.result < 0 {
                    // The session's operations then fail with EBADF and
                    // close it: nothing is sent to the wrong socket.
                    tracing::error!(error = %io::Error::from_raw_os_error(-c.result), "io_uring file table update failed");
                }
                continue;
            }
            if let Some(first) = cqueue::buffer_select(c.flags) {
                c.first = self.bids.len() as u32;
                let len = c.result.max(0) as usize;
                self.bids.extend(self.bufs.filled(first, len));
                c.count = self.bids.len() as u32 - c.first;
                self.held += c.count as usize;
            }
            self.completions.push(c);
        }
    }

    /// Takes every completion that arrived. The buffers they name can be
    /// read until the next call.
    pub(crate) fn completions(&mut self) -> Vec<Completion> {
        if self.completions.is_empty() {
            // Every completion handed out before was handled.
            self.bids.clear();
        }
        self.reap();
        std::mem::take(&mut self.completions)
    }

    /// Gives back the vector from [`Uring::completions`] to reuse.
    pub(crate) fn reuse(&mut self, mut v: Vec<Completion>) {
        if self.completions.is_empty() {
            v.clear();
            self.completions = v;
        }
    }

    /// The bytes receive completion `c` carries, in order: one slice per
    /// provided buffer it filled (rule 2).
    pub(crate) fn buffers<'a>(&'a self, c: &Completion) -> impl Iterator<Item = &'a [u8]> + 'a {
        let size = self.bufs.size;
        let mut left = c.result.max(0) as usize;
        let bids = &self.bids[c.first as usize..(c.first + c.count) as usize];
        bids.iter().map(move |&bid| {
            let n = left.min(size);
            left -= n;
            let start = bid as usize * size;
            &self.bufs.memory[start..start + n]
        })
    }

    /// Returns the buffers completion `c` named to the kernel (published
    /// at the next submit).
    pub(crate) fn recycle(&mut self, c: &Completion) {
        for i in c.first..c.first + c.count {
            self.bufs.push(self.bids[i as usize]);
        }
        self.held -= c.count as usize;
        self.recycled |= c.count > 0;
    }

    /// Provided buffers that completions handed out and that were not
    /// recycled yet (0 whenever the caller is not in the middle of
    /// handling completions).
    pub(crate) fn buffers_held(&self) -> usize {
        self.held
    }

    /// Submission entries the kernel took and completions reaped, since
    /// the ring was made.
    pub(crate) fn totals(&self) -> (u64, u64) {
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
            let _ = unsafe { self.push(&entry.user_data(DROP_CANCEL)) };
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
            std::mem::forget(self.files.take());
            let bufs = std::mem::replace(&mut self.bufs.memory, Box::new([]));
            std::mem::forget(bufs);
            return;
        }
        // The kernel forgets the buffer ring before its memory goes.
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        // A registered descriptor would keep the ring alive as long as this
        // thread lives.
        if let Some(index) = self.ring_index.take() {
            let _ = unregister_ring_fd(self.ring.as_raw_fd(), index);
        }
    }
}

impl AsRawFd for Uring {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// Checks that a worker could run the io_uring engine here.
///
/// The throwaway ring lives on a thread of its own: a thread that used a
/// ring (registering its descriptor is enough) gets task work queued by
/// the kernel's asynchronous teardown of that ring, and the signal-like
/// notification interrupts whatever that thread blocks in next — in the
/// caller's thread, a socket read with a timeout would fail with EINTR.
/// A thread that has exited has no such state left.
pub(crate) fn probe() -> io::Result<()> {
    std::thread::Builder::new()
        .name("iocore-uring-probe".into())
        .spawn(|| Uring::new(8, 1, 64).map(drop))?
        .join()
        .map_err(|_| io::Error::other("the io_uring probe thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multishot receive with bundles (where the kernel has them) takes
    /// several provided buffers per completion; the bytes of two
    /// connections come out in order even though buffers go back to the
    /// ring out of order (so the ring's order is not the ids' order), and
    /// every buffer comes back.
    #[test]
    fn receive_bundles_keep_the_bytes_in_order() {
        let one_by_one = Features::without("recv-bundle").unwrap();
        for asked in [Features::ALL, one_by_one] {
            receive_in_order(asked);
        }
    }

    fn receive_in_order(asked: Features) {
        let mut ring = Uring::with_features(8, 16, 64, asked).expect("io_uring usable here");
        const LEN: usize = 20_000;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for k in 0..2u32 {
            let mut a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (b, _) = listener.accept().unwrap();
            let slot = ring.attach(b.as_raw_fd()).unwrap();
            let file = FileRef::new(b.as_raw_fd(), slot);
            readers.push((b, file, Vec::new(), false));
            let sent: Vec<u8> = (0..LEN as u32).map(|i| (i * 7 + i / 251 + k) as u8).collect();
            writers.push(std::thread::spawn(move || {
                use std::io::Write;
                for chunk in sent.chunks(2_500) {
                    a.write_all(chunk).unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                }
                sent
            }));
        }
        let mut widest = 0;
        let start = Instant::now();
        while readers.iter().any(|r| r.2.len() < LEN) && start.elapsed() < Duration::from_secs(10) {
            for (k, (_, file, _, posted)) in readers.iter_mut().enumerate() {
                if !*posted {
                    ring.recv(*file, Some(RECV_CAP), k as u64).unwrap();
                    *posted = true;
                }
            }
            ring.submit_and_wait(Some(Duration::from_millis(100))).unwrap();
            let batch = ring.completions();
            for c in &batch {
                let (_, _, got, posted) = &mut readers[c.user_data as usize];
                *posted &= c.more();
                if c.result > 0 {
                    widest = widest.max(c.buffer_count());
                    let before = got.len();
                    for bytes in ring.buffers(c) {
                        got.extend_from_slice(bytes);
                    }
                    assert_eq!(got.len() - before, c.result as usize);
                }
            }
            for c in batch.iter().rev() {
                ring.recycle(c);
            }
            assert_eq!(ring.buffers_held(), 0);
        }
        for ((_, file, got, _), writer) in readers.iter().zip(writers) {
            let sent = writer.join().unwrap();
            assert!(
                *got == sent,
                "{} bytes of {} came in order ({asked})",
                got.len(),
                sent.len()
            );
            let _ = ring.cancel_file(*file, 9);
            ring.detach(file.slot).unwrap();
        }
        if ring.features().recv_bundle {
            assert!(widest > 1, "no completion carried a bundle");
        } else {
            assert_eq!(widest, 1);
        }
    }

    /// A ring asked for every feature and one asked for none both move
    /// bytes (a send and a receive over a socket pair through the ring).
    #[test]
    fn a_ring_with_and_without_its_features_sends_and_receives() {
        let none = Features::without(&Features::NAMES.join(",")).unwrap();
        for asked in [Features::ALL, none] {
            let mut ring = Uring::with_features(8, 4, 64, asked).expect("io_uring usable here");
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut op = SendOp::new();
            op.bufs.push(Bytes::from_static(b"xhello"));
            op.offset = 1;
            // One free slot left in the table: `a` goes in it, `b` (the
            // table full) by descriptor; both kinds move bytes together.
            if let Some(table) = &mut ring.files {
                table.free.drain(..table.free.len() - 1);
            }
            let a_slot = ring.attach(a.as_raw_fd()).unwrap();
            let b_slot = ring.attach(b.as_raw_fd()).unwrap();
            assert_eq!(a_slot.get().is_some(), asked.fixed_files && ring.files.is_some());
            assert_eq!(b_slot, FileSlot::NONE, "the table was full");
            let (a_file, b_file) = (
                FileRef::new(a.as_raw_fd(), a_slot),
                FileRef::new(b.as_raw_fd(), b_slot),
            );
            let key = ring.send(a_file, op, 1).unwrap();
            ring.recv(b_file, None, 2).unwrap();
            let mut got = Vec::new();
            let mut sent = false;
            let start = Instant::now();
            while (!sent || got.is_empty()) && start.elapsed() < Duration::from_secs(5) {
                ring.submit_and_wait(Some(Duration::from_millis(100))).unwrap();
                for c in ring.completions() {
                    match c.user_data {
                        1 => {
                            assert_eq!(c.result, 5);
                            assert!(ring.take_send(key).is_some());
                            assert!(ring.take_send(key).is_none(), "taken once");
                            sent = true;
                        }
                        _ => {
                            assert_eq!(c.buffer_count(), 1);
                            for bytes in ring.buffers(&c) {
                                got.extend_from_slice(bytes);
                            }
                            ring.recycle(&c);
                        }
                    }
                }
            }
            assert_eq!(got, b"hello", "{asked}");
            assert_eq!(
                ring.features().ring_fd,
                asked.ring_fd && ring.ring_index.is_some()
            );
            ring.detach(a_slot).unwrap();
            ring.detach(b_slot).unwrap();
        }
    }
}
