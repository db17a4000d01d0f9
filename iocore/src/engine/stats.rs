//! Counters each worker keeps about its sessions, readable from any thread.
//!
//! A worker is the only writer of its counters, so it updates them with a
//! plain load and store (no read-modify-write, no lock) on the hot path;
//! readers (`ServerHandle::stats`, the metrics endpoint) sum the workers'
//! snapshots when they ask.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::session::CloseKind;

/// Why an accept failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AcceptErrorKind {
    /// The process or the system was out of file descriptors (EMFILE,
    /// ENFILE; WSAEMFILE).
    Descriptors,
    /// The system was out of memory or buffers (ENOMEM, ENOBUFS).
    Memory,
    /// The connection was gone before it was accepted (ECONNABORTED and
    /// the like): that one connection only.
    Aborted,
    /// Anything else.
    Other,
}

impl AcceptErrorKind {
    /// Every kind, in declaration order (the index used by counters).
    pub const ALL: &'static [AcceptErrorKind] = &[
        AcceptErrorKind::Descriptors,
        AcceptErrorKind::Memory,
        AcceptErrorKind::Aborted,
        AcceptErrorKind::Other,
    ];

    /// Position in [`AcceptErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short `snake_case` name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            AcceptErrorKind::Descriptors => "descriptors",
            AcceptErrorKind::Memory => "memory",
            AcceptErrorKind::Aborted => "aborted",
            AcceptErrorKind::Other => "other",
        }
    }
}

/// One worker's counters. Only the worker writes them (plain load+store,
/// no read-modify-write on the hot path); anyone may read.
#[derive(Default, Debug)]
pub(crate) struct WorkerStats {
    accepted: AtomicU64,
    connected: AtomicU64,
    rejected: AtomicU64,
    rejected_per_ip: AtomicU64,
    accept_errors: [AtomicU64; AcceptErrorKind::ALL.len()],
    accept_shed: AtomicU64,
    accept_shortage: AtomicU64,
    live: AtomicU64,
    paused: AtomicU64,
    loop_turns: AtomicU64,
    events: AtomicU64,
    uring_submissions: AtomicU64,
    uring_completions: AtomicU64,
    uring_retries: AtomicU64,
    uring_unexpected: AtomicU64,
    stale_requests: AtomicU64,
    publishes: AtomicU64,
    deliveries: AtomicU64,
    closed_at_cap: AtomicU64,
    queued_bytes: AtomicU64,
    recv_buffer_bytes: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    buffers_held: AtomicU64,
    closed: [AtomicU64; CloseKind::ALL.len()],
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Adds the change from `before` to `after` to a gauge.
fn change(gauge: &AtomicU64, before: usize, after: usize) {
    if before != after {
        bump(gauge, (after as u64).wrapping_sub(before as u64));
    }
}

impl WorkerStats {
    pub(crate) fn accepted(&self) {
        bump(&self.accepted, 1);
        bump(&self.live, 1);
    }
    pub(crate) fn connected(&self) {
        bump(&self.connected, 1);
    }
    pub(crate) fn opened_outbound(&self) {
        bump(&self.live, 1);
    }
    pub(crate) fn rejected(&self) {
        bump(&self.rejected, 1);
    }
    pub(crate) fn rejected_per_ip(&self) {
        bump(&self.rejected_per_ip, 1);
    }
    pub(crate) fn accept_error(&self, kind: AcceptErrorKind) {
        bump(&self.accept_errors[kind.index()], 1);
    }
    #[cfg_attr(not(unix), allow(dead_code))] // the descriptor shortage of Unix
    pub(crate) fn accept_shed(&self, n: usize) {
        bump(&self.accept_shed, n as u64);
    }
    /// A shortage of descriptors or memory began (`true`) or ended.
    pub(crate) fn set_accept_shortage(&self, on: bool) {
        self.accept_shortage.store(u64::from(on), Relaxed);
    }
    /// A request from another thread named a session that has ended.
    pub(crate) fn stale_request(&self) {
        bump(&self.stale_requests, 1);
    }
    /// A session on this worker published a message.
    pub(crate) fn published(&self) {
        bump(&self.publishes, 1);
    }
    /// A fan-out queued `n` deliveries here.
    pub(crate) fn delivered(&self, n: u64) {
        if n > 0 {
            bump(&self.deliveries, n);
        }
    }
    /// `n` subscribers were closed because a delivery took them over
    /// their cap.
    pub(crate) fn closed_at_cap(&self, n: u64) {
        if n > 0 {
            bump(&self.closed_at_cap, n);
        }
    }
    /// One turn of the worker's loop (one wait returned) that brought
    /// `events` events or completions.
    pub(crate) fn turn(&self, events: usize) {
        bump(&self.loop_turns, 1);
        bump(&self.events, events as u64);
    }
    /// The io_uring engine's totals of entries submitted and completions
    /// reaped.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // uring only
    pub(crate) fn set_uring(&self, submissions: u64, completions: u64) {
        self.uring_submissions.store(submissions, Relaxed);
        self.uring_completions.store(completions, Relaxed);
    }
    /// The kernel gave an io_uring operation back with "not now" (EAGAIN,
    /// EINTR, ENOBUFS) and it is posted again.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // uring only
    pub(crate) fn uring_retry(&self) {
        bump(&self.uring_retries, 1);
    }
    /// A completion named no operation the engine had posted (logged and
    /// dropped instead of ending the worker).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // uring only
    pub(crate) fn uring_unexpected(&self) {
        bump(&self.uring_unexpected, 1);
    }
    /// A session's input became paused (`true`) or resumed.
    pub(crate) fn paused_changed(&self, paused: bool) {
        bump(&self.paused, if paused { 1 } else { u64::MAX });
    }
    pub(crate) fn closed(&self, kind: CloseKind) {
        bump(&self.closed[kind.index()], 1);
        bump(&self.live, u64::MAX); // -1
    }
    /// Adds the change in one session's queued bytes.
    pub(crate) fn queued_changed(&self, before: usize, after: usize) {
        change(&self.queued_bytes, before, after);
    }
    /// Adds the change in one session's receive-buffer memory.
    pub(crate) fn recv_buffer_changed(&self, before: usize, after: usize) {
        change(&self.recv_buffer_bytes, before, after);
    }
    pub(crate) fn read(&self, n: usize) {
        bump(&self.reads, 1);
        bump(&self.bytes_received, n as u64);
    }
    /// Messages the sessions counted in and buffers they queued.
    pub(crate) fn messages(&self, received: u64, sent: u64) {
        if received > 0 {
            bump(&self.messages_received, received);
        }
        if sent > 0 {
            bump(&self.messages_sent, sent);
        }
    }
    pub(crate) fn read_attempt(&self) {
        bump(&self.reads, 1);
    }
    pub(crate) fn wrote(&self, n: usize) {
        bump(&self.writes, 1);
        bump(&self.bytes_sent, n as u64);
    }
    pub(crate) fn write_attempt(&self) {
        bump(&self.writes, 1);
    }
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // uring only
    pub(crate) fn set_buffers_held(&self, n: usize) {
        self.buffers_held.store(n as u64, Relaxed);
    }

    /// A copy of the counters.
    pub(crate) fn snapshot(&self) -> Stats {
        let closed = std::array::from_fn(|i| self.closed[i].load(Relaxed));
        let accept_errors: [u64; AcceptErrorKind::ALL.len()] =
            std::array::from_fn(|i| self.accept_errors[i].load(Relaxed));
        Stats {
            accepted: self.accepted.load(Relaxed),
            connected: self.connected.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            rejected_per_ip: self.rejected_per_ip.load(Relaxed),
            accept_failed: accept_errors.iter().sum(),
            accept_errors,
            accept_shed: self.accept_shed.load(Relaxed),
            accept_shortage: self.accept_shortage.load(Relaxed),
            live_sessions: self.live.load(Relaxed),
            paused_sessions: self.paused.load(Relaxed),
            loop_turns: self.loop_turns.load(Relaxed),
            events: self.events.load(Relaxed),
            uring_submissions: self.uring_submissions.load(Relaxed),
            uring_completions: self.uring_completions.load(Relaxed),
            uring_retries: self.uring_retries.load(Relaxed),
            uring_unexpected: self.uring_unexpected.load(Relaxed),
            stale_requests: self.stale_requests.load(Relaxed),
            publishes: self.publishes.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            closed_at_cap: self.closed_at_cap.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
            recv_buffer_bytes: self.recv_buffer_bytes.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            messages_sent: self.messages_sent.load(Relaxed),
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            recv_buffers_held: self.buffers_held.load(Relaxed),
            closed,
        }
    }
}

/// Counters of a server or client, summed over its workers (or of one
/// worker: see `ServerHandle::worker_stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Outbound connections established.
    pub connected: u64,
    /// Connections refused because `max_sessions` were live.
    pub rejected: u64,
    /// Connections refused because their address already had
    /// `max_sessions_per_ip` sessions.
    pub rejected_per_ip: u64,
    /// Accepts that failed, of every kind (the sum of `accept_errors`):
    /// connections lost before they could be accepted, accepts that could
    /// not be posted, shortages.
    pub accept_failed: u64,
    /// Accepts that failed, by [`AcceptErrorKind`] (index with
    /// [`AcceptErrorKind::index`]).
    pub(crate) accept_errors: [u64; AcceptErrorKind::ALL.len()],
    /// Connections closed right after accept because the process was out
    /// of file descriptors (EMFILE/ENFILE): accepted with the spare
    /// descriptor and closed, so that they do not hang in the backlog.
    pub accept_shed: u64,
    /// Workers in a shortage of descriptors or memory now: accepting
    /// fails, and new connections are closed at once (descriptors) or wait
    /// (memory) until an accept succeeds again. 0 or 1 for one worker.
    pub accept_shortage: u64,
    /// Sessions not yet finished (including those still connecting or
    /// closing).
    pub live_sessions: u64,
    /// Open sessions whose input is paused: by their handler, or because
    /// their send queue is over its high watermark.
    pub paused_sessions: u64,
    /// Turns of the workers' event loops (waits that returned): how often
    /// the engines woke up.
    pub loop_turns: u64,
    /// Events (readiness reports, completions, signaled event objects)
    /// the loop turns brought: `events / loop_turns` is the batch a wake-up
    /// serves.
    pub events: u64,
    /// io_uring submission entries pushed (uring engine only).
    pub uring_submissions: u64,
    /// io_uring completions reaped (uring engine only).
    pub uring_completions: u64,
    /// io_uring operations the kernel gave back with "not now" (EAGAIN,
    /// EINTR, ENOBUFS) that were posted again, the bytes kept in order
    /// (uring engine only).
    pub uring_retries: u64,
    /// io_uring completions that named no operation the engine had
    /// posted: logged and dropped (uring engine only; 0 unless the kernel
    /// or the engine has a bug).
    pub uring_unexpected: u64,
    /// Requests from other threads (`send`, `close`) that named a session
    /// that had ended (its slot free or reused): dropped, never delivered
    /// to another session.
    pub stale_requests: u64,
    /// Messages the sessions published (`Session::publish`; publishes from
    /// other threads are counted per topic only).
    pub publishes: u64,
    /// Messages topics queued on subscribers, one per subscriber (the
    /// publisher's own copy included, as in [`crate::TopicStats`]).
    pub deliveries: u64,
    /// Subscribers closed because a delivery took their send queue over
    /// its cap.
    pub closed_at_cap: u64,
    /// Bytes queued for sending and not yet taken by the kernel.
    pub queued_bytes: u64,
    /// Memory the sessions hold in receive buffers (bytes a handler left
    /// unconsumed: partial messages).
    pub recv_buffer_bytes: u64,
    /// Bytes read from sockets.
    pub bytes_received: u64,
    /// Bytes the kernel took for sending.
    pub bytes_sent: u64,
    /// Messages received, as framing layers count them
    /// ([`crate::Session::count_received_message`]; one per packet with
    /// [`crate::packet::Packets`]).
    pub messages_received: u64,
    /// Buffers queued for sending: [`crate::Session::send`], sends from
    /// other threads, and fan-out deliveries.
    pub messages_sent: u64,
    /// Read system calls (or receive completions).
    pub reads: u64,
    /// Send system calls (or send submissions), including ones that found
    /// the socket full.
    pub writes: u64,
    /// Provided receive buffers (uring) taken by completions and not yet
    /// returned to the kernel at the end of a loop turn; always 0 on epoll.
    pub recv_buffers_held: u64,
    /// Finished sessions by [`CloseKind`] (index with [`CloseKind::index`]).
    pub(crate) closed: [u64; CloseKind::ALL.len()],
}

impl Stats {
    /// Finished sessions of one kind.
    pub fn closed(&self, kind: CloseKind) -> u64 {
        self.closed[kind.index()]
    }

    /// Finished sessions of every kind.
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().sum()
    }

    /// Accepts that failed for one reason.
    pub fn accept_errors(&self, kind: AcceptErrorKind) -> u64 {
        self.accept_errors[kind.index()]
    }

    /// Adds another worker's counters.
    pub fn add(&mut self, o: &Stats) {
        self.accepted += o.accepted;
        self.connected += o.connected;
        self.rejected += o.rejected;
        self.rejected_per_ip += o.rejected_per_ip;
        self.accept_failed += o.accept_failed;
        for (a, b) in self.accept_errors.iter_mut().zip(&o.accept_errors) {
            *a += b;
        }
        self.accept_shed += o.accept_shed;
        self.accept_shortage += o.accept_shortage;
        self.live_sessions = self.live_sessions.wrapping_add(o.live_sessions);
        self.paused_sessions = self.paused_sessions.wrapping_add(o.paused_sessions);
        self.loop_turns += o.loop_turns;
        self.events += o.events;
        self.uring_submissions += o.uring_submissions;
        self.uring_completions += o.uring_completions;
        self.uring_retries += o.uring_retries;
        self.uring_unexpected += o.uring_unexpected;
        self.stale_requests += o.stale_requests;
        self.publishes += o.publishes;
        self.deliveries += o.deliveries;
        self.closed_at_cap += o.closed_at_cap;
        self.queued_bytes = self.queued_bytes.wrapping_add(o.queued_bytes);
        self.recv_buffer_bytes = self.recv_buffer_bytes.wrapping_add(o.recv_buffer_bytes);
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.messages_received += o.messages_received;
        self.messages_sent += o.messages_sent;
        self.reads += o.reads;
        self.writes += o.writes;
        self.recv_buffers_held += o.recv_buffers_held;
        for (a, b) in self.closed.iter_mut().zip(&o.closed) {
            *a += b;
        }
    }
}
