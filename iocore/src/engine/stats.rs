//! Counters each worker keeps about its sessions, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::session::CloseKind;

/// One worker's counters. Only the worker writes them (plain load+store,
/// no read-modify-write on the hot path); anyone may read.
#[derive(Default, Debug)]
pub struct WorkerStats {
    accepted: AtomicU64,
    connected: AtomicU64,
    rejected: AtomicU64,
    rejected_per_ip: AtomicU64,
    accept_failed: AtomicU64,
    accept_shed: AtomicU64,
    live: AtomicU64,
    paused: AtomicU64,
    loop_turns: AtomicU64,
    stale_requests: AtomicU64,
    publishes: AtomicU64,
    deliveries: AtomicU64,
    queued_bytes: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    buffers_held: AtomicU64,
    closed: [AtomicU64; CloseKind::ALL.len()],
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
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
    #[cfg_attr(not(unix), allow(dead_code))] // the descriptor shortage of Unix
    pub(crate) fn accept_shed(&self, n: usize) {
        bump(&self.accept_shed, n as u64);
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
        bump(&self.deliveries, n);
    }
    /// One turn of the worker's loop (one wait returned).
    pub(crate) fn turn(&self) {
        bump(&self.loop_turns, 1);
    }
    /// A session's input became paused (`true`) or resumed.
    pub(crate) fn paused_changed(&self, paused: bool) {
        bump(&self.paused, if paused { 1 } else { u64::MAX });
    }
    #[cfg_attr(not(windows), allow(dead_code))] // the Windows engines
    pub(crate) fn accept_failed(&self) {
        bump(&self.accept_failed, 1);
    }
    pub(crate) fn closed(&self, kind: CloseKind) {
        bump(&self.closed[kind.index()], 1);
        bump(&self.live, u64::MAX); // -1
    }
    /// Adds the change in one session's queued bytes.
    pub(crate) fn queued_changed(&self, before: usize, after: usize) {
        if before != after {
            bump(&self.queued_bytes, (after as u64).wrapping_sub(before as u64));
        }
    }
    pub(crate) fn read(&self, n: usize) {
        bump(&self.reads, 1);
        bump(&self.bytes_received, n as u64);
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
    pub fn snapshot(&self) -> Stats {
        let mut closed = [0; CloseKind::ALL.len()];
        for (c, a) in closed.iter_mut().zip(&self.closed) {
            *c = a.load(Relaxed);
        }
        Stats {
            accepted: self.accepted.load(Relaxed),
            connected: self.connected.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            rejected_per_ip: self.rejected_per_ip.load(Relaxed),
            accept_failed: self.accept_failed.load(Relaxed),
            accept_shed: self.accept_shed.load(Relaxed),
            live_sessions: self.live.load(Relaxed),
            paused_sessions: self.paused.load(Relaxed),
            loop_turns: self.loop_turns.load(Relaxed),
            stale_requests: self.stale_requests.load(Relaxed),
            publishes: self.publishes.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            recv_buffers_held: self.buffers_held.load(Relaxed),
            closed,
        }
    }
}

/// Counters of a server or client, summed over its workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// Connections lost before they could be accepted (reset while in the
    /// listen backlog; Windows drops these, so AcceptEx fails), or accepts
    /// that could not be posted.
    pub accept_failed: u64,
    /// Connections closed right after accept because the process was out
    /// of file descriptors (EMFILE/ENFILE): accepted with the spare
    /// descriptor and closed, so that they do not hang in the backlog.
    pub accept_shed: u64,
    /// Sessions not yet finished (including those still connecting or
    /// closing).
    pub live_sessions: u64,
    /// Open sessions whose input is paused: by their handler, or because
    /// their send queue is over its high watermark.
    pub paused_sessions: u64,
    /// Turns of the workers' event loops (waits that returned): how often
    /// the engines woke up.
    pub loop_turns: u64,
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
    /// Bytes queued for sending and not yet taken by the kernel.
    pub queued_bytes: u64,
    /// Bytes read from sockets.
    pub bytes_received: u64,
    /// Bytes the kernel took for sending.
    pub bytes_sent: u64,
    /// Read system calls (or receive completions).
    pub reads: u64,
    /// Send system calls (or send submissions), including ones that found
    /// the socket full.
    pub writes: u64,
    /// Provided receive buffers (uring) taken by completions and not yet
    /// returned to the kernel at the end of a loop turn; always 0 on epoll.
    pub recv_buffers_held: u64,
    /// Finished sessions by [`CloseKind`] (index with [`CloseKind::index`]).
    pub closed: [u64; CloseKind::ALL.len()],
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

    /// Adds another worker's counters.
    pub fn add(&mut self, o: &Stats) {
        self.accepted += o.accepted;
        self.connected += o.connected;
        self.rejected += o.rejected;
        self.rejected_per_ip += o.rejected_per_ip;
        self.accept_failed += o.accept_failed;
        self.accept_shed += o.accept_shed;
        self.live_sessions = self.live_sessions.wrapping_add(o.live_sessions);
        self.paused_sessions = self.paused_sessions.wrapping_add(o.paused_sessions);
        self.loop_turns += o.loop_turns;
        self.stale_requests += o.stale_requests;
        self.publishes += o.publishes;
        self.deliveries += o.deliveries;
        self.queued_bytes = self.queued_bytes.wrapping_add(o.queued_bytes);
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.reads += o.reads;
        self.writes += o.writes;
        self.recv_buffers_held += o.recv_buffers_held;
        for (a, b) in self.closed.iter_mut().zip(&o.closed) {
            *a += b;
        }
    }
}
