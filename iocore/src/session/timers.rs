//! Per-worker deadlines: one min-heap of (time, session token).
//!
//! A connection keeps at most one live entry (the earliest of its handler
//! timer, idle, connect and linger deadlines; see `Conn::arm`). Moving a
//! deadline later leaves the old entry in place; it is recognised as stale
//! when it fires, so no entry is ever searched for or removed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::handler::Tick;

/// Deadlines of the sessions on one worker.
#[derive(Default, Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Tick, u64)>>,
}

impl Timers {
    /// Wakes `token` at `at`.
    pub(crate) fn schedule(&mut self, at: Tick, token: u64) {
        if at != Tick::NEVER {
            self.heap.push(Reverse((at, token)));
        }
    }

    /// The earliest scheduled time.
    pub(crate) fn next(&self) -> Option<Tick> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns an entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Tick) -> Option<(Tick, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}
