//! What the two Windows event-object engines (`wsa-event`, `overlapped`)
//! share around their sessions' I/O: the event-object groups, the
//! listener's event, and the loop that waits on the inbox, the groups'
//! reports and the listener ([`EventEngine`]).
//!
//! One wait takes at most 64 events, so sessions live in groups of 63
//! reusable event objects, each watched by a waiter thread, as production
//! WSAEventSelect servers do.
//!
//! A waiter only waits: it reports the signaled slots of its group to the
//! worker and parks until the worker has handled them (which resets their
//! events), then waits again. The worker owns every socket and session.
//! Event objects belong to their slot and are never closed while a waiter
//! may wait on them; a slot is reused by the next session.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::session::Handler;
use crate::sys::wsaevent::{self as wsa, Interest, NetEvent, Waitable};
use crate::sys::OwnedSocket;

use super::core::Core;
use super::driver::Driver;

/// How often a listening worker also tries to accept: under Wine a
/// listener's FD_ACCEPT can be lost (its event is shared with freshly
/// accepted sockets until they are re-selected).
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// Failed accepts in a row before the worker stops trying until the next
/// FD_ACCEPT (each failure concerns one connection).
const ACCEPT_ERRORS: usize = 64;

/// The groups and the listener's event of one worker.
pub(crate) struct Shell {
    pub groups: Groups,
    listen_event: NetEvent,
}

impl Shell {
    /// Ties `listener` (if any) to its event for FD_ACCEPT; waiter threads
    /// are named `name-<group>`.
    pub(super) fn new(listener: Option<&OwnedSocket>, name: String) -> io::Result<Shell> {
        let listen_event = NetEvent::new()?;
        if let Some(l) = listener {
            wsa::select(l, &listen_event, Interest::LISTENER)?;
        }
        Ok(Shell {
            groups: Groups::new(name)?,
            listen_event,
        })
    }

    /// Stops watching the listener and closes it.
    pub(super) fn close_listener(&self, listener: OwnedSocket) {
        wsa::deselect(&listener);
        drop(listener);
        self.listen_event.reset();
    }
}

/// An engine whose sessions signal event objects in a [`Shell`]'s groups:
/// it supplies what a signaled session means; the loop around it is here.
pub(crate) trait EventEngine<H: Handler>: Driver<H> {
    /// The loop's core and shell, borrowed together.
    fn parts(&mut self) -> (&mut Core<H, Self::Io>, &mut Shell);

    /// Session `token`'s event object was signaled.
    fn session_event(&mut self, token: u64) -> io::Result<()>;

    /// Readies a freshly accepted socket, which inherits the listener's
    /// event selection.
    fn prepare_accepted(&self, _socket: &OwnedSocket) {}

    /// Waits on the inbox, the groups' reports and the listener, and
    /// handles whichever are signaled, until the worker has stopped and
    /// its sessions are gone.
    fn run_loop(&mut self) -> io::Result<()> {
        loop {
            let (core, shell) = self.parts();
            let poll = core.w.listener.as_ref().map(|_| core.now.after(ACCEPT_POLL));
            let timeout = core.timeout(poll);
            let inbox = core.w.inbox.clone();
            let set: [&dyn Waitable; 3] = [inbox.waker(), shell.groups.report_event(), &shell.listen_event];
            let hit = wsa::wait_any(&set, timeout)?;
            core.tick();
            core.w.stats.turn(usize::from(hit.is_some()));
            // Check all three, whichever woke the wait.
            let listener_set = shell.listen_event.is_set();
            if hit == Some(0) || inbox.waker().handle_is_set() {
                self.commands()?;
            }
            if listener_set || hit.is_none() {
                self.accept()?;
            }
            if self.parts().1.groups.report_event().is_set() {
                let reports = self.parts().1.groups.take_reports();
                for (g, tokens) in reports {
                    for token in tokens {
                        self.session_event(token)?;
                    }
                    self.parts().1.groups.resume(g);
                }
            }
            self.after_events()?;
            if self.parts().0.finished() {
                return Ok(());
            }
        }
    }

    /// Accepts what the listener has (resetting its event: FD_ACCEPT is
    /// raised again after WOULDBLOCK), then serves each connection.
    fn accept(&mut self) -> io::Result<()> {
        let mut accepted: Vec<(OwnedSocket, SocketAddr)> = Vec::new();
        {
            let (core, shell) = self.parts();
            let Some(l) = &core.w.listener else {
                shell.listen_event.reset();
                return Ok(());
            };
            let _ = wsa::enumerate(l, &shell.listen_event);
            let mut errors = 0;
            loop {
                match wsa::accept(l) {
                    Ok(pair) => accepted.push(pair),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if crate::sys::socket::is_resource_exhausted(&e) => {
                        // Logged once per shortage; the listener is tried
                        // again within ACCEPT_POLL.
                        let _ = core.accept_shortage(&e);
                        break;
                    }
                    Err(e) if errors < ACCEPT_ERRORS => {
                        errors += 1;
                        core.accept_error(&e);
                        tracing::debug!(error = %e, "accept failed");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept keeps failing");
                        break;
                    }
                }
            }
        }
        if !accepted.is_empty() {
            self.parts().0.accept_ok();
        }
        for (socket, peer) in accepted {
            self.prepare_accepted(&socket);
            self.serve_accepted(socket, peer)?;
        }
        Ok(())
    }
}

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
    pub(super) fn new(name: String) -> io::Result<Groups> {
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
    pub(super) fn report_event(&self) -> &NetEvent {
        &self.reports.event
    }

    /// A free slot `(group, slot)`, adding a group (and its waiter) when
    /// all are full.
    pub(super) fn acquire(&mut self) -> io::Result<(usize, usize)> {
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
    pub(super) fn event(&self, group: usize, slot: usize) -> &NetEvent {
        &self.groups[group].shared.events[slot]
    }

    /// Records that session `token` uses the slot.
    pub(super) fn assign(&mut self, group: usize, slot: usize, token: u64) {
        self.groups[group].slots[slot] = Some(token);
    }

    /// Frees a slot (its socket no longer signals the event).
    pub(super) fn release(&mut self, group: usize, slot: usize) {
        let g = &mut self.groups[group];
        g.shared.events[slot].reset();
        g.slots[slot] = None;
        g.free.push(slot);
    }

    /// The sessions whose events the waiters reported, by group. Call
    /// [`Groups::resume`] for each group once they are handled.
    pub(super) fn take_reports(&mut self) -> Vec<(usize, Vec<u64>)> {
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
    pub(super) fn resume(&self, g: usize) {
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
