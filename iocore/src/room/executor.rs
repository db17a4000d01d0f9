//! One worker's rooms of one kind: their queues, timers and ticks, and the
//! turn that runs them (see the module's documentation for the rules).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Exchange, Job, Room, RoomCx, RunRooms, Shared, TickInfo, TimerId, What, WorkerRoomStats};
use crate::session::{catch_panic, CloseReason, SessionId};

/// What the rooms of a worker sent during a run, for the engine to carry
/// out: bytes to queue on sessions, sessions to close.
#[derive(Default)]
pub(crate) struct RoomOutput {
    pub sends: Vec<(SessionId, Bytes)>,
    pub closes: Vec<(SessionId, CloseReason)>,
}

pub(crate) enum Timer<M> {
    /// A message the room posted itself ([`RoomCx::after`]).
    After(M),
    Tick,
    /// Whether the room has been empty long enough to dispose of it.
    Dispose,
}

/// A tick's schedule: tick `n` is due at `start + n·period`.
pub(crate) struct TickPlan {
    pub start: Duration,
    pub period: Duration,
    /// The first tick not run yet.
    pub next: u64,
    /// Its timer.
    pub key: TimerId,
}

impl TickPlan {
    fn due(&self, n: u64) -> Duration {
        self.start + self.period.saturating_mul(n.min(u32::MAX as u64) as u32)
    }
}

/// A worker's timers of all its rooms of one kind, in time order.
pub(crate) struct Timers<M> {
    map: BTreeMap<(Duration, u64), (u64, Timer<M>)>,
    seq: u64,
    /// [`Timer::After`] timers per room (they keep a room from disposal).
    pending: HashMap<u64, usize>,
}

impl<M> Timers<M> {
    fn new() -> Timers<M> {
        Timers {
            map: BTreeMap::new(),
            seq: 0,
            pending: HashMap::new(),
        }
    }

    pub(crate) fn add(&mut self, due: Duration, room: u64, timer: Timer<M>) -> TimerId {
        self.seq += 1;
        if matches!(timer, Timer::After(_)) {
            *self.pending.entry(room).or_default() += 1;
        }
        self.map.insert((due, self.seq), (room, timer));
        TimerId { due, seq: self.seq }
    }

    /// Removes a timer of `room`; whether it was there.
    pub(crate) fn cancel(&mut self, id: TimerId, room: u64) -> bool {
        match self.map.get(&(id.due, id.seq)) {
            Some((r, Timer::After(_))) if *r == room => {
                self.remove(id);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn remove(&mut self, id: TimerId) {
        if let Some((room, timer)) = self.map.remove(&(id.due, id.seq)) {
            if matches!(timer, Timer::After(_)) {
                self.fired(room);
            }
        }
    }

    fn fired(&mut self, room: u64) {
        if let Some(n) = self.pending.get_mut(&room) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&room);
            }
        }
    }

    fn pop_due(&mut self, now: Duration) -> Option<(u64, Timer<M>)> {
        let entry = self.map.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let (room, timer) = entry.remove();
        if matches!(timer, Timer::After(_)) {
            self.fired(room);
        }
        Some((room, timer))
    }

    fn next(&self) -> Option<Duration> {
        self.map.first_key_value().map(|(k, _)| k.0)
    }

    fn has_pending(&self, room: u64) -> bool {
        self.pending.contains_key(&room)
    }

    /// Drops every timer of `room` (a room ended by a panic).
    fn purge(&mut self, room: u64) {
        self.map.retain(|_, (r, _)| *r != room);
        self.pending.remove(&room);
    }
}

struct Slot<R: Room> {
    room: R,
    shared: Arc<Shared<R::Msg>>,
    members: Vec<SessionId>,
    /// Jobs to run, each with whether it counts against the inbox limit
    /// (a timer's message does not).
    jobs: VecDeque<(What<R::Msg>, bool)>,
    ready: bool,
    tick: Option<TickPlan>,
    tick_due: bool,
    deferred: BytesMut,
    /// Since when the room has had no member, job or timer.
    empty_since: Option<Duration>,
    dispose_check: Option<TimerId>,
}

/// How many jobs the buffer of posted jobs keeps room for between turns.
const INTAKE_KEPT: usize = 256;

/// A room's callback panicked.
struct Panicked(std::borrow::Cow<'static, str>);

pub(crate) struct Executor<R: Room> {
    ex: Arc<Exchange<R::Msg>>,
    factory: Arc<dyn Fn(&str) -> R + Send + Sync>,
    index: usize,
    rooms: HashMap<u64, Slot<R>>,
    ready: VecDeque<u64>,
    timers: Timers<R::Msg>,
    intake: Vec<Job<R::Msg>>,
    /// Jobs waiting in this worker's rooms.
    queued: usize,
    progress: u64,
}

impl<R: Room> Executor<R> {
    pub(super) fn new(
        ex: Arc<Exchange<R::Msg>>,
        factory: Arc<dyn Fn(&str) -> R + Send + Sync>,
        index: usize,
    ) -> Executor<R> {
        Executor {
            ex,
            factory,
            index,
            rooms: HashMap::new(),
            ready: VecDeque::new(),
            timers: Timers::new(),
            intake: Vec::new(),
            queued: 0,
            progress: 0,
        }
    }

    fn stats(&self) -> &WorkerRoomStats {
        &self.ex.stats.get().expect("attached rooms have counters")[self.index]
    }

    fn mark_ready(ready: &mut VecDeque<u64>, slot: &mut Slot<R>) {
        slot.empty_since = None;
        if !slot.ready {
            slot.ready = true;
            ready.push_back(slot.shared.id);
        }
    }

    /// Takes the jobs posted to this worker into their rooms' queues.
    fn take_posted(&mut self, now: Duration) {
        let workers = self.ex.workers.get().expect("attached rooms have queues");
        std::mem::swap(&mut workers[self.index].lock().jobs, &mut self.intake);
        let mut intake = std::mem::take(&mut self.intake);
        for job in intake.drain(..) {
            let id = job.room.id;
            match job.what {
                What::Open => {
                    job.room.queued.fetch_sub(1, SeqCst);
                    self.open(job.room, now);
                }
                what => match self.rooms.get_mut(&id) {
                    Some(slot) => {
                        slot.jobs.push_back((what, true));
                        self.queued += 1;
                        Self::mark_ready(&mut self.ready, slot);
                    }
                    // Disposed meanwhile, or ended by a panic.
                    None => {
                        job.room.queued.fetch_sub(1, SeqCst);
                    }
                },
            }
        }
        // A burst (thousands of rooms opened at once) leaves a large
        // buffer; this one goes to the posters next turn, so it is given
        // back now (a steady load of more pays a few reallocations a turn).
        if intake.capacity() > INTAKE_KEPT {
            intake.shrink_to(INTAKE_KEPT);
        }
        self.intake = intake;
    }

    /// Makes the state of a room [`super::Rooms::get`] made.
    fn open(&mut self, shared: Arc<Shared<R::Msg>>, now: Duration) {
        let factory = &self.factory;
        match catch_panic(|| factory(&shared.key)) {
            Ok(room) => {
                let id = shared.id;
                let mut slot = Slot {
                    room,
                    shared,
                    members: Vec::new(),
                    jobs: VecDeque::new(),
                    ready: false,
                    tick: None,
                    tick_due: false,
                    deferred: BytesMut::new(),
                    empty_since: None,
                    dispose_check: None,
                };
                self.check_empty(&mut slot, now);
                self.rooms.insert(id, slot);
                bump(&self.stats().rooms, 1);
            }
            Err(what) => {
                tracing::error!(room = %shared.key, panic = %what, "a room factory panicked: the room was not made");
                self.stats().panics.fetch_add(1, Relaxed);
                self.forget(&shared);
            }
        }
    }

    /// Marks the room gone and takes its key out of the directory.
    fn forget(&self, shared: &Arc<Shared<R::Msg>>) {
        let mut shard = self.ex.shard(&shared.key);
        shared.gone.store(true, SeqCst);
        if shard.get(&shared.key).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            shard.remove(&shared.key);
            shrink(&mut shard);
        }
    }

    /// Notes whether the room is empty now, and arranges the check that
    /// disposes of it once it has been empty for the grace period.
    fn check_empty(&mut self, slot: &mut Slot<R>, now: Duration) {
        let empty = slot.members.is_empty()
            && slot.jobs.is_empty()
            && !slot.tick_due
            && !self.timers.has_pending(slot.shared.id);
        if !empty {
            slot.empty_since = None;
            return;
        }
        if slot.empty_since.is_none() {
            slot.empty_since = Some(now);
        }
        if slot.dispose_check.is_none() {
            let at = slot.empty_since.unwrap_or(now) + self.ex.config.dispose_after;
            slot.dispose_check = Some(self.timers.add(at, slot.shared.id, Timer::Dispose));
        }
    }

    /// The dispose check of room `id` is due.
    fn dispose_check(&mut self, id: u64, now: Duration) {
        let Some(mut slot) = self.rooms.remove(&id) else {
            return;
        };
        slot.dispose_check = None;
        let grace = self.ex.config.dispose_after;
        match slot.empty_since {
            Some(since) if now >= since + grace => {
                if self.dispose(&mut slot) {
                    bump_down(&self.stats().rooms);
                    if let Some(t) = slot.tick.take() {
                        self.timers.remove(t.key);
                    }
                    let room = &mut slot.room;
                    if let Err(what) = catch_panic(|| room.on_dispose()) {
                        tracing::error!(room = %slot.shared.key, panic = %what, "a room panicked in on_dispose");
                        self.stats().panics.fetch_add(1, Relaxed);
                    }
                    shrink_map(&mut self.rooms);
                    return;
                }
                // A post is on its way: not empty after all.
                slot.empty_since = None;
            }
            Some(since) => {
                slot.dispose_check = Some(self.timers.add(since + grace, id, Timer::Dispose));
            }
            None => {}
        }
        self.rooms.insert(id, slot);
    }

    /// Takes the room out of the directory, unless a post to it is on its
    /// way; whether it did.
    fn dispose(&self, slot: &mut Slot<R>) -> bool {
        let s = &slot.shared;
        let mut shard = self.ex.shard(&s.key);
        // First gone, then the count: a poster counts first, then reads
        // gone (see `RoomRef::send`), so one of the two sees the other.
        s.gone.store(true, SeqCst);
        if s.queued.load(SeqCst) != 0 {
            s.gone.store(false, SeqCst);
            return false;
        }
        if shard.get(&s.key).is_some_and(|x| Arc::ptr_eq(x, s)) {
            shard.remove(&s.key);
            shrink(&mut shard);
        }
        true
    }

    /// Ends a room whose callback panicked: its members are closed, its
    /// posts refused from now on.
    fn ended_by_panic(
        &mut self,
        mut slot: Slot<R>,
        what: std::borrow::Cow<'static, str>,
        out: &mut RoomOutput,
    ) {
        tracing::error!(
            worker = self.index,
            room = %slot.shared.key,
            panic = %what,
            members = slot.members.len(),
            "a room panicked: it was ended and its members closed"
        );
        self.stats().panics.fetch_add(1, Relaxed);
        bump_down(&self.stats().rooms);
        self.forget(&slot.shared);
        for (_, counted) in slot.jobs.drain(..) {
            if counted {
                slot.shared.queued.fetch_sub(1, SeqCst);
                self.queued -= 1;
            }
        }
        self.timers.purge(slot.shared.id);
        let reason = format!("room {} panicked: {what}", slot.shared.key);
        for m in slot.members.drain(..) {
            out.closes
                .push((m, CloseReason::HandlerPanicked(reason.clone().into())));
        }
        shrink_map(&mut self.rooms);
    }

    /// One room's turn: its tick if due, then its jobs within the limits.
    /// Whether jobs are left.
    fn turn(&mut self, slot: &mut Slot<R>, now: Duration, out: &mut RoomOutput) -> Result<bool, Panicked> {
        let started = Instant::now();
        let id = slot.shared.id;
        if std::mem::take(&mut slot.tick_due) {
            if let Some(info) = self.next_tick(slot, now) {
                self.stats().tick(info.lateness, info.missed);
                self.progress += 1;
                let (room, mut cx) = cx(slot, now, out, &mut self.timers, id);
                catch_panic(|| room.on_tick(&mut cx, info)).map_err(Panicked)?;
                flush_deferred(slot, out);
            }
        }
        let (limit, budget) = (self.ex.config.jobs_per_turn, self.ex.config.turn_budget);
        let mut ran = 0;
        while let Some((what, counted)) = slot.jobs.pop_front() {
            if counted {
                slot.shared.queued.fetch_sub(1, SeqCst);
                self.queued -= 1;
            }
            ran += 1;
            self.run_job(slot, what, now, out)?;
            if ran >= limit || started.elapsed() >= budget {
                break;
            }
        }
        self.progress += ran as u64;
        bump(&self.stats().jobs_run, ran as u64);
        if slot.tick.is_none() {
            flush_deferred(slot, out);
        }
        Ok(!slot.jobs.is_empty())
    }

    fn run_job(
        &mut self,
        slot: &mut Slot<R>,
        what: What<R::Msg>,
        now: Duration,
        out: &mut RoomOutput,
    ) -> Result<(), Panicked> {
        let id = slot.shared.id;
        let result = match what {
            What::Open => Ok(()),
            What::Join(member) => {
                if slot.members.contains(&member) {
                    return Ok(());
                }
                // What was said before it joined is not its.
                flush_deferred(slot, out);
                slot.members.push(member);
                let (room, mut cx) = cx(slot, now, out, &mut self.timers, id);
                catch_panic(|| room.on_join(&mut cx, member))
            }
            What::Leave(member) => {
                let Some(i) = slot.members.iter().position(|&m| m == member) else {
                    return Ok(());
                };
                // What was said while it was a member is its.
                flush_deferred(slot, out);
                slot.members.remove(i);
                let (room, mut cx) = cx(slot, now, out, &mut self.timers, id);
                catch_panic(|| room.on_leave(&mut cx, member))
            }
            What::Message(from, msg) => {
                let (room, mut cx) = cx(slot, now, out, &mut self.timers, id);
                catch_panic(|| room.on_message(&mut cx, from, msg))
            }
        };
        result.map_err(Panicked)
    }

    /// The tick to run now, if its time has come: the latest due, having
    /// skipped (and counted) those whose time passed while it waited; the
    /// next one's timer is set.
    fn next_tick(&mut self, slot: &mut Slot<R>, now: Duration) -> Option<TickInfo> {
        let plan = slot.tick.as_mut()?;
        let first = plan.due(plan.next);
        if first > now {
            return None;
        }
        let elapsed = (now - plan.start).as_nanos();
        let latest = ((elapsed / plan.period.as_nanos()) as u64).max(plan.next);
        let info = TickInfo {
            n: latest,
            due: plan.due(latest),
            lateness: now - first,
            missed: latest - plan.next,
        };
        plan.next = latest + 1;
        plan.key = self.timers.add(plan.due(plan.next), slot.shared.id, Timer::Tick);
        Some(info)
    }
}

/// The room and the context its callbacks get, borrowed from its slot.
fn cx<'a, R: Room>(
    slot: &'a mut Slot<R>,
    now: Duration,
    out: &'a mut RoomOutput,
    timers: &'a mut Timers<R::Msg>,
    room: u64,
) -> (&'a mut R, RoomCx<'a, R::Msg>) {
    let cx = RoomCx {
        key: &slot.shared.key,
        now,
        members: &mut slot.members,
        out,
        timers,
        room,
        tick: &mut slot.tick,
        deferred: &mut slot.deferred,
    };
    (&mut slot.room, cx)
}

/// Sends the coalesced broadcast, as one buffer to every member.
fn flush_deferred<R: Room>(slot: &mut Slot<R>, out: &mut RoomOutput) {
    if slot.deferred.is_empty() {
        return;
    }
    let buf = slot.deferred.split().freeze();
    for &m in &slot.members {
        out.sends.push((m, buf.clone()));
    }
}

fn bump(counter: &std::sync::atomic::AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

fn bump_down(counter: &std::sync::atomic::AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_sub(1), Relaxed);
}

/// Gives memory back once a map holds far fewer entries than it has room
/// for (after many rooms came and went).
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

fn shrink_map<V>(map: &mut HashMap<u64, V>) {
    shrink(map)
}

impl<R: Room> RunRooms for Executor<R> {
    fn run(&mut self, now: Duration, out: &mut RoomOutput) {
        self.take_posted(now);
        while let Some((id, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Dispose => self.dispose_check(id, now),
                Timer::Tick => {
                    if let Some(slot) = self.rooms.get_mut(&id) {
                        slot.tick_due = true;
                        Self::mark_ready(&mut self.ready, slot);
                    }
                }
                Timer::After(msg) => {
                    if let Some(slot) = self.rooms.get_mut(&id) {
                        slot.jobs.push_back((What::Message(None, msg), false));
                        Self::mark_ready(&mut self.ready, slot);
                    }
                }
            }
        }
        // Each room ready now gets one turn; those with jobs left go to the
        // back of the line for the next.
        for _ in 0..self.ready.len() {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(mut slot) = self.rooms.remove(&id) else {
                continue;
            };
            slot.ready = false;
            match self.turn(&mut slot, now, out) {
                Ok(more) => {
                    if more {
                        slot.ready = true;
                        self.ready.push_back(id);
                    } else {
                        self.check_empty(&mut slot, now);
                    }
                    self.rooms.insert(id, slot);
                }
                Err(Panicked(what)) => self.ended_by_panic(slot, what, out),
            }
        }
        if self.ready.is_empty() && self.ready.capacity() > 64 {
            self.ready.shrink_to(64);
        }
        shrink(&mut self.timers.pending);
        self.stats().jobs_queued.store(self.queued as u64, Relaxed);
    }

    fn next_due(&self, now: Duration) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(now);
        }
        self.timers.next()
    }

    fn progress(&self) -> u64 {
        self.progress
    }
}

impl<R: Room> Drop for Executor<R> {
    /// The worker has ended: its queue takes no more, and what was posted
    /// is dropped (posters get [`super::PostError::Stopped`]).
    fn drop(&mut self) {
        if let Some(workers) = self.ex.workers.get() {
            let mut q = workers[self.index].lock();
            q.closed = true;
            q.jobs.clear();
        }
    }
}
