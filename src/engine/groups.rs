//! Event-object groups for the Windows event engines (`wsa-event`,
//! `overlapped`): one wait takes at most 64 events, so sessions live in
//! groups of 63 reusable event objects, each watched by a waiter thread,
//! as production WSAEventSelect servers do.
//!
//! A waiter only waits: it reports the signaled slots of its group to the
//! worker and parks until the worker has handled them (which resets their
//! events), then waits again. The worker owns every socket and session.
//! Event objects belong to their slot and are never closed while a waiter
//! may wait on them; a slot is reused by the next session.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::sys::wsaevent::{self as wsa, NetEvent, Waitable};

/// Session slots per group: one wait's 64 events, less the group's own.
pub(crate) const GROUP: usize = wsa::MAX_WAIT - 1;

/// What a group's waiter and the worker share.
struct Shared {
    events: Vec<NetEvent>,
    /// Signaled by the worker: "handled; wait again" (or stop).
    resume: NetEvent,
    stop: AtomicBool,
    /// Slots the waiter found signaled, for the worker.
    ready: Mutex<Vec<usize>>,
}

struct Group {
    shared: Arc<Shared>,
    slots: Vec<Option<u64>>,
    free: Vec<usize>,
    waiter: Option<JoinHandle<()>>,
}

/// Groups that reported, shared by the worker and every waiter.
struct Reports {
    event: NetEvent,
    groups: Mutex<Vec<usize>>,
}

/// A worker's event groups.
pub(crate) struct Groups {
    groups: Vec<Group>,
    reports: Arc<Reports>,
    name: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Groups {
    /// No groups yet; waiter threads are named `name-<group>`.
    pub fn new(name: String) -> io::Result<Groups> {
        Ok(Groups {
            groups: Vec::new(),
            reports: Arc::new(Reports {
                event: NetEvent::new()?,
                groups: Mutex::new(Vec::new()),
            }),
            name,
        })
    }

    /// Signaled when a group has reported; the worker waits on it.
    pub fn report_event(&self) -> &NetEvent {
        &self.reports.event
    }

    /// A free slot `(group, slot)`, adding a group (and its waiter) when
    /// all are full.
    pub fn acquire(&mut self) -> io::Result<(usize, usize)> {
        if let Some(g) = self.groups.iter().position(|g| !g.free.is_empty()) {
            return Ok((g, self.groups[g].free.pop().expect("has a free slot")));
        }
        let shared = Arc::new(Shared {
            events: (0..GROUP).map(|_| NetEvent::new()).collect::<io::Result<_>>()?,
            resume: NetEvent::new()?,
            stop: AtomicBool::new(false),
            ready: Mutex::new(Vec::new()),
        });
        let index = self.groups.len();
        let (s, r) = (shared.clone(), self.reports.clone());
        let waiter = std::thread::Builder::new()
            .name(format!("{}-{index}", self.name))
            .spawn(move || waiter(index, s, r))?;
        self.groups.push(Group {
            shared,
            slots: vec![None; GROUP],
            free: (0..GROUP).rev().collect(),
            waiter: Some(waiter),
        });
        Ok((index, self.groups[index].free.pop().expect("new group")))
    }

    /// The event object of a slot.
    pub fn event(&self, group: usize, slot: usize) -> &NetEvent {
        &self.groups[group].shared.events[slot]
    }

    /// Records that session `token` uses the slot.
    pub fn assign(&mut self, group: usize, slot: usize, token: u64) {
        self.groups[group].slots[slot] = Some(token);
    }

    /// Frees a slot (its socket no longer signals the event).
    pub fn release(&mut self, group: usize, slot: usize) {
        let g = &mut self.groups[group];
        g.shared.events[slot].reset();
        g.slots[slot] = None;
        g.free.push(slot);
    }

    /// The sessions whose events the waiters reported, by group. Call
    /// [`Groups::resume`] for each group once they are handled.
    pub fn take_reports(&mut self) -> Vec<(usize, Vec<u64>)> {
        self.reports.event.reset();
        let groups = std::mem::take(&mut *lock(&self.reports.groups));
        groups
            .into_iter()
            .map(|g| {
                let ready = std::mem::take(&mut *lock(&self.groups[g].shared.ready));
                (
                    g,
                    ready
                        .into_iter()
                        .filter_map(|k| self.groups[g].slots[k])
                        .collect(),
                )
            })
            .collect()
    }

    /// Lets group `g`'s waiter wait again.
    pub fn resume(&self, g: usize) {
        self.groups[g].shared.resume.set();
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for g in &self.groups {
            g.shared.stop.store(true, Ordering::Release);
            g.shared.resume.set();
        }
        for g in &mut self.groups {
            if let Some(t) = g.waiter.take() {
                let _ = t.join();
            }
        }
    }
}

/// A group's waiter: waits on its events, reports, parks until resumed.
fn waiter(index: usize, shared: Arc<Shared>, reports: Arc<Reports>) {
    let mut set: Vec<&dyn Waitable> = vec![&shared.resume];
    set.extend(shared.events.iter().map(|e| e as &dyn Waitable));
    loop {
        let hit = match wsa::wait_any(&set, None) {
            Ok(Some(i)) => i,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "event-group waiter failed");
                return;
            }
        };
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        if hit == 0 {
            shared.resume.reset();
            continue;
        }
        // Report every slot signaled now, not only the first.
        let signaled: Vec<usize> = (0..GROUP).filter(|&k| shared.events[k].is_set()).collect();
        if signaled.is_empty() {
            continue;
        }
        lock(&shared.ready).extend(signaled);
        lock(&reports.groups).push(index);
        reports.event.set();
        // Park: the events stay signaled until the worker handles them.
        let _ = wsa::wait_any(&[&shared.resume], None);
        shared.resume.reset();
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
    }
}
