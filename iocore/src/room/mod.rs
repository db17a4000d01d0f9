//! Rooms: state that many sessions act on, run one job at a time, with
//! timers and a tick on a fixed schedule (the course's JobQueue and
//! JobTimer).
//!
//! A [`Room`] is the application's state plus its callbacks; [`Rooms`]
//! holds every room of one kind, made on demand by key. Anything posts
//! to a room through a [`RoomRef`]: a session's handler on any worker, a
//! thread of the application, the room's own timers. The room's jobs run
//! one at a time, in the order each poster posted them, never two at once,
//! and no lock is held while they run.
//!
//! # Where rooms run
//!
//! On the server's I/O workers: a room lives on the worker its key hashes
//! to, for its whole life (as a session lives on one worker). A job posted
//! from that worker costs a push on a queue and no wake-up; from another
//! thread, a push and at most one wake-up per batch. What a room sends to
//! members on its own worker is queued on them directly, and for the
//! members on each other worker it is one inbox command per turn; every
//! member gets what the room sent it during a turn with one write. There
//! is no global lock: the directory of keys is sharded and touched only
//! when a room is looked up by key or disposed.
//!
//! The price of sharing a thread: a room's job runs to its end. A job that
//! takes 30 ms delays the other rooms *of its worker* (and that worker's
//! sessions) by those 30 ms; rooms on other workers are not delayed. A
//! room runs at most [`Rooms::jobs_per_turn`] jobs, and no further job once
//! it has used [`Rooms::turn_budget`], before every other ready room of
//! its worker has had its turn and the worker has polled its sockets: a
//! room flooded with jobs, or a slow one, delays another room by at most
//! one turn of each ready room.
//!
//! # Timers and the tick
//!
//! [`RoomCx::after`] posts a message to the room itself after a delay.
//! [`RoomCx::set_tick`] starts a tick on absolute times: tick `n` is due
//! at `start + n·period`, whenever the ticks before it ran, so ticks do
//! not drift. A tick that runs late runs once, and [`TickInfo`] says how
//! late; if the next ones' times have passed too, they are skipped and
//! counted ([`TickInfo::missed`], [`RoomStats::ticks_missed`]) rather than
//! run back to back. The lateness of every tick is recorded
//! ([`RoomStats::tick_lateness`]).
//!
//! # Limits and lifecycle
//!
//! A room's inbox holds at most [`Rooms::inbox_limit`] jobs; a post over it
//! is refused with [`PostError::Full`] (the poster decides: drop it, or
//! close its session). A leave is never refused. A room with no member, no
//! queued job and no timer (its tick aside) for [`Rooms::dispose_after`] is
//! disposed: [`Room::on_dispose`], then its state, timers and key go; a
//! [`RoomRef`] to it then gets [`PostError::Gone`], and [`Rooms::get`]
//! makes a new room. When the server stops, its rooms are dropped with
//! their workers.
//!
//! # Panics
//!
//! A panic in a room's callback ends that room: it is removed (without
//! `on_dispose`), its members' sessions are closed with
//! [`crate::CloseReason::HandlerPanicked`], and its [`RoomRef`]s get
//! [`PostError::Gone`]. The worker and its other rooms go on.

mod executor;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::config::{ConfigError, Setting};
use crate::session::{CloseReason, SessionId};

pub(crate) use executor::{Executor, RoomOutput};

/// A room's state and logic. All calls for one room happen on the worker
/// that owns it, one at a time; a callback never blocks.
pub trait Room: 'static {
    /// What is posted to the room (besides joins and leaves).
    type Msg: Send + 'static;

    /// `member` joined (it was not a member). Refuse it with
    /// [`RoomCx::kick`].
    fn on_join(&mut self, cx: &mut RoomCx<'_, Self::Msg>, member: SessionId) {
        let _ = (cx, member);
    }

    /// `member` left (it was a member; not called for a member the room
    /// kicked).
    fn on_leave(&mut self, cx: &mut RoomCx<'_, Self::Msg>, member: SessionId) {
        let _ = (cx, member);
    }

    /// A message posted to the room: `from` is the session that posted it,
    /// if it said so; `None` for the room's own timers and other threads.
    fn on_message(&mut self, cx: &mut RoomCx<'_, Self::Msg>, from: Option<SessionId>, msg: Self::Msg);

    /// The tick set with [`RoomCx::set_tick`] is due.
    fn on_tick(&mut self, cx: &mut RoomCx<'_, Self::Msg>, tick: TickInfo) {
        let _ = (cx, tick);
    }

    /// The room is being disposed (empty for [`Rooms::dispose_after`]).
    fn on_dispose(&mut self) {}
}

/// One run of a room's tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TickInfo {
    /// Which tick: due at the tick's start plus `n` periods (the first is 1).
    pub n: u64,
    /// When it was due, on the room clock ([`RoomCx::now`]).
    pub due: Duration,
    /// How late it runs: from the earliest tick that was due and had not
    /// run, to now.
    pub lateness: Duration,
    /// Ticks whose time passed while this one waited, skipped (not run):
    /// this one is the latest due.
    pub missed: u64,
}

/// Why a post to a room was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PostError {
    /// The room's inbox holds [`Rooms::inbox_limit`] jobs.
    Full,
    /// The room was disposed (or ended by a panic): get it again by key.
    Gone,
    /// The server the rooms run on has not started yet, or has stopped.
    Stopped,
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PostError::Full => "the room's inbox is full",
            PostError::Gone => "the room is gone (disposed): get it again by key",
            PostError::Stopped => "the rooms' server is not running",
        })
    }
}

impl std::error::Error for PostError {}

/// A timer set with [`RoomCx::after`], to cancel it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    due: Duration,
    seq: u64,
}

/// Counters of all rooms of one kind (or of several, summed), over the
/// workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoomStats {
    /// Rooms alive now.
    pub rooms: u64,
    /// Jobs waiting in rooms' inboxes (as of each worker's last turn).
    pub jobs_queued: u64,
    /// Jobs run (joins, leaves, messages, timers).
    pub jobs_run: u64,
    /// Posts refused because an inbox was full.
    pub posts_refused: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Ticks skipped because their time had passed (see [`TickInfo`]).
    pub ticks_missed: u64,
    /// Rooms ended by a panic in their callbacks.
    pub panics: u64,
    /// Ticks by lateness: `tick_lateness[i]` counts ticks at most
    /// [`LATENESS_BUCKETS`]`[i]` late (not cumulative); the last entry
    /// counts the later ones.
    pub tick_lateness: [u64; LATENESS_BUCKETS.len() + 1],
    /// The sum of all ticks' lateness, in microseconds.
    pub tick_lateness_sum_us: u64,
}

/// The upper bounds of [`RoomStats::tick_lateness`]'s buckets.
pub const LATENESS_BUCKETS: [Duration; 10] = [
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(1000),
];

impl RoomStats {
    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &RoomStats) {
        self.rooms += other.rooms;
        self.jobs_queued += other.jobs_queued;
        self.jobs_run += other.jobs_run;
        self.posts_refused += other.posts_refused;
        self.ticks += other.ticks;
        self.ticks_missed += other.ticks_missed;
        self.panics += other.panics;
        for (a, b) in self.tick_lateness.iter_mut().zip(other.tick_lateness) {
            *a += b;
        }
        self.tick_lateness_sum_us += other.tick_lateness_sum_us;
    }

    /// The tick lateness at quantile `q` (0..=1), as the upper bound of
    /// the bucket it falls in (`None`: no tick yet, or beyond the last
    /// bound).
    pub fn lateness_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.tick_lateness.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.tick_lateness.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LATENESS_BUCKETS.get(i).copied();
            }
        }
        None
    }
}

/// One worker's room counters (written by that worker only).
#[derive(Default, Debug)]
pub(crate) struct WorkerRoomStats {
    rooms: AtomicU64,
    jobs_queued: AtomicU64,
    jobs_run: AtomicU64,
    ticks: AtomicU64,
    ticks_missed: AtomicU64,
    panics: AtomicU64,
    lateness: [AtomicU64; LATENESS_BUCKETS.len() + 1],
    lateness_sum_us: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl WorkerRoomStats {
    fn tick(&self, lateness: Duration, missed: u64) {
        bump(&self.ticks, 1);
        bump(&self.ticks_missed, missed);
        let i = LATENESS_BUCKETS
            .iter()
            .position(|b| lateness <= *b)
            .unwrap_or(LATENESS_BUCKETS.len());
        bump(&self.lateness[i], 1);
        bump(&self.lateness_sum_us, lateness.as_micros() as u64);
    }

    fn snapshot(&self) -> RoomStats {
        let mut s = RoomStats {
            rooms: self.rooms.load(Relaxed),
            jobs_queued: self.jobs_queued.load(Relaxed),
            jobs_run: self.jobs_run.load(Relaxed),
            posts_refused: 0,
            ticks: self.ticks.load(Relaxed),
            ticks_missed: self.ticks_missed.load(Relaxed),
            panics: self.panics.load(Relaxed),
            tick_lateness: Default::default(),
            tick_lateness_sum_us: self.lateness_sum_us.load(Relaxed),
        };
        for (a, b) in s.tick_lateness.iter_mut().zip(&self.lateness) {
            *a = b.load(Relaxed);
        }
        s
    }
}

/// How rooms of one kind are run.
#[derive(Clone, Debug)]
struct Config {
    inbox_limit: usize,
    dispose_after: Duration,
    jobs_per_turn: usize,
    turn_budget: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            inbox_limit: 1024,
            dispose_after: Duration::from_secs(10),
            jobs_per_turn: 64,
            turn_budget: Duration::from_millis(2),
        }
    }
}

/// What a worker is asked to do for a room.
pub(crate) enum What<M> {
    /// The room was made by [`Rooms::get`]: make its state.
    Open,
    Join(SessionId),
    Leave(SessionId),
    Message(Option<SessionId>, M),
}

/// A job on its way to the worker that owns its room.
pub(crate) struct Job<M> {
    room: Arc<Shared<M>>,
    what: What<M>,
}

/// One worker's queue of posted jobs, and how to wake it.
struct Post<M> {
    queue: Mutex<PostQueue<M>>,
    wake: Arc<dyn crate::engine::Wake>,
}

struct PostQueue<M> {
    jobs: Vec<Job<M>>,
    /// The worker has ended: nothing is taken any more.
    closed: bool,
}

impl<M> Post<M> {
    fn lock(&self) -> MutexGuard<'_, PostQueue<M>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the rooms of one kind are found: shared by every [`RoomRef`], the
/// [`Rooms`] handle and the workers' executors.
struct Exchange<M> {
    config: Config,
    /// Keys to rooms, sharded (touched on lookups by key and disposal).
    shards: Box<[Mutex<Directory<M>>]>,
    /// Set when the server starts: each worker's queue.
    workers: OnceLock<Box<[Post<M>]>>,
    /// The runtime the rooms run on (to tell its worker threads).
    runtime: OnceLock<usize>,
    stats: OnceLock<Box<[WorkerRoomStats]>>,
    refused: AtomicU64,
    next_id: AtomicU64,
}

const SHARDS: usize = 16;

/// One shard of the keys of the rooms alive.
type Directory<M> = HashMap<Box<str>, Arc<Shared<M>>>;

fn hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl<M> Exchange<M> {
    fn shard(&self, key: &str) -> MutexGuard<'_, Directory<M>> {
        let i = (hash(key) as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `job` to the worker that owns its room.
    fn push(&self, job: Job<M>) -> Result<(), PostError> {
        let Some(workers) = self.workers.get() else {
            return Err(PostError::Stopped);
        };
        let owner = job.room.worker;
        let post = &workers[owner];
        let first = {
            let mut q = post.lock();
            if q.closed {
                return Err(PostError::Stopped);
            }
            q.jobs.push(job);
            q.jobs.len() == 1
        };
        // The owner itself runs its rooms at the end of this turn.
        if first && crate::engine::current_worker() != self.runtime.get().map(|&r| (r, owner)) {
            post.wake.wake();
        }
        Ok(())
    }

    fn stats(&self) -> RoomStats {
        let mut total = RoomStats::default();
        for w in self.stats.get().into_iter().flat_map(|s| s.iter()) {
            total.add(&w.snapshot());
        }
        total.posts_refused = self.refused.load(Relaxed);
        total
    }
}

/// One room as posters see it.
struct Shared<M> {
    key: Box<str>,
    id: u64,
    worker: usize,
    /// Jobs posted and not yet run (the inbox limit's count).
    queued: AtomicUsize,
    /// Disposed: posts are refused.
    gone: AtomicBool,
    ex: Arc<Exchange<M>>,
}

/// A room to post to: cheap to clone, usable from any thread. Get it with
/// [`Rooms::get`].
pub struct RoomRef<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for RoomRef<M> {
    fn clone(&self) -> Self {
        RoomRef {
            shared: self.shared.clone(),
        }
    }
}

impl<M> fmt::Debug for RoomRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomRef")
            .field("key", &self.shared.key)
            .field("worker", &self.shared.worker)
            .finish()
    }
}

impl<M: Send + 'static> RoomRef<M> {
    /// The room's key.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The index of the worker the room runs on.
    pub fn worker(&self) -> usize {
        self.shared.worker
    }

    /// Posts `msg` from `from` (a session, or `None`): the room's
    /// [`Room::on_message`] runs it after the jobs posted before it.
    pub fn post(&self, from: Option<SessionId>, msg: M) -> Result<(), PostError> {
        self.send(What::Message(from, msg), true)
    }

    /// `member` joins: the room's [`Room::on_join`] runs, unless it is a
    /// member already. Refused over the inbox limit like a message.
    pub fn join(&self, member: SessionId) -> Result<(), PostError> {
        self.send(What::Join(member), true)
    }

    /// `member` leaves (say from its handler's `on_disconnected`): never
    /// refused for a full inbox, so a room never keeps a member that left.
    pub fn leave(&self, member: SessionId) -> Result<(), PostError> {
        self.send(What::Leave(member), false)
    }

    fn send(&self, what: What<M>, limited: bool) -> Result<(), PostError> {
        let s = &self.shared;
        let before = s.queued.fetch_add(1, SeqCst);
        if limited && before >= s.ex.config.inbox_limit {
            s.queued.fetch_sub(1, SeqCst);
            s.ex.refused.fetch_add(1, Relaxed);
            return Err(PostError::Full);
        }
        // After the count (see `Executor::dispose`): a room being disposed
        // either sees this job counted, or this post sees it gone.
        if s.gone.load(SeqCst) {
            s.queued.fetch_sub(1, SeqCst);
            return Err(PostError::Gone);
        }
        let job = Job {
            room: s.clone(),
            what,
        };
        s.ex.push(job).inspect_err(|_| {
            s.queued.fetch_sub(1, SeqCst);
        })
    }
}

/// Every room of one kind: made on demand by key with a factory, run on
/// the workers of the server this is given to
/// ([`crate::ServerBuilder::rooms`]). Cheap to clone (one shared set of
/// rooms); usable from any thread.
pub struct Rooms<R: Room> {
    ex: Arc<Exchange<R::Msg>>,
    factory: Arc<dyn Fn(&str) -> R + Send + Sync>,
}

impl<R: Room> Clone for Rooms<R> {
    fn clone(&self) -> Self {
        Rooms {
            ex: self.ex.clone(),
            factory: self.factory.clone(),
        }
    }
}

impl<R: Room> fmt::Debug for Rooms<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rooms")
            .field("config", &self.ex.config)
            .field("started", &self.ex.workers.get().is_some())
            .finish()
    }
}

impl<R: Room> Rooms<R> {
    /// Rooms made by `factory` from their key, with the defaults: an inbox
    /// of 1,024 jobs, disposed after 10 s empty, 64 jobs or 2 ms per turn.
    pub fn new(factory: impl Fn(&str) -> R + Send + Sync + 'static) -> Rooms<R> {
        Rooms {
            ex: Arc::new(Exchange {
                config: Config::default(),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                workers: OnceLock::new(),
                runtime: OnceLock::new(),
                stats: OnceLock::new(),
                refused: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
            }),
            factory: Arc::new(factory),
        }
    }

    fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        let ex = Arc::get_mut(&mut self.ex).expect("configure rooms before cloning or starting them");
        f(&mut ex.config);
        self
    }

    /// Most jobs a room's inbox holds (default 1,024); a post over it is
    /// refused with [`PostError::Full`].
    pub fn inbox_limit(self, jobs: usize) -> Self {
        self.config(|c| c.inbox_limit = jobs)
    }

    /// How long a room stays with no member, no job and no timer before it
    /// is disposed (default 10 s).
    pub fn dispose_after(self, grace: Duration) -> Self {
        self.config(|c| c.dispose_after = grace)
    }

    /// Most jobs a room runs before the other ready rooms of its worker get
    /// theirs (default 64).
    pub fn jobs_per_turn(self, jobs: usize) -> Self {
        self.config(|c| c.jobs_per_turn = jobs)
    }

    /// After a job that brings a room's turn to this much time, the room
    /// yields to the other ready rooms of its worker (default 2 ms).
    pub fn turn_budget(self, budget: Duration) -> Self {
        self.config(|c| c.turn_budget = budget)
    }

    /// Checks the configuration; the error names the setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.ex.config;
        if c.inbox_limit == 0 {
            return Err(ConfigError::new(Setting::RoomInboxLimit, "must be at least 1"));
        }
        if c.jobs_per_turn == 0 {
            return Err(ConfigError::new(Setting::RoomJobsPerTurn, "must be at least 1"));
        }
        Ok(())
    }

    /// The room with `key`, made (on its worker) if there is none. Only
    /// once the server runs: before, or after it stopped,
    /// [`PostError::Stopped`].
    pub fn get(&self, key: &str) -> Result<RoomRef<R::Msg>, PostError> {
        let Some(workers) = self.ex.workers.get() else {
            return Err(PostError::Stopped);
        };
        let mut shard = self.ex.shard(key);
        if let Some(s) = shard.get(key) {
            if !s.gone.load(SeqCst) {
                return Ok(RoomRef { shared: s.clone() });
            }
        }
        let shared = Arc::new(Shared {
            key: key.into(),
            id: self.ex.next_id.fetch_add(1, Relaxed),
            worker: (hash(key) as usize) % workers.len(),
            queued: AtomicUsize::new(1),
            gone: AtomicBool::new(false),
            ex: self.ex.clone(),
        });
        // Under the shard's lock: the open is the room's first job.
        let open = Job {
            room: shared.clone(),
            what: What::Open,
        };
        self.ex.push(open)?;
        shard.insert(key.into(), shared.clone());
        Ok(RoomRef { shared })
    }

    /// Counters of these rooms, summed over the workers.
    pub fn stats(&self) -> RoomStats {
        self.ex.stats()
    }

    /// The workers' side: called by the server as it starts.
    pub(crate) fn attach(
        &self,
        runtime: usize,
        wakes: Vec<Arc<dyn crate::engine::Wake>>,
    ) -> io::Result<Attached> {
        self.validate()?;
        let n = wakes.len();
        let posts: Box<[Post<R::Msg>]> = wakes
            .into_iter()
            .map(|wake| Post {
                queue: Mutex::new(PostQueue {
                    jobs: Vec::new(),
                    closed: false,
                }),
                wake,
            })
            .collect();
        if self.ex.workers.set(posts).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "these rooms already run on a server: make one Rooms per server",
            ));
        }
        let _ = self.ex.runtime.set(runtime);
        let _ = self
            .ex
            .stats
            .set((0..n).map(|_| WorkerRoomStats::default()).collect());
        let rooms = self.clone();
        Ok(Attached {
            make: Box::new(move |index| {
                Box::new(Executor::new(rooms.ex.clone(), rooms.factory.clone(), index))
            }),
            stats: Box::new({
                let ex = self.ex.clone();
                move || ex.stats()
            }),
        })
    }
}

/// Rooms given to a server, before it starts ([`crate::ServerBuilder::rooms`]).
pub(crate) trait Attach: Send + Sync {
    fn attach(&self, runtime: usize, wakes: Vec<Arc<dyn crate::engine::Wake>>) -> io::Result<Attached>;
}

impl<R: Room> Attach for Rooms<R> {
    fn attach(&self, runtime: usize, wakes: Vec<Arc<dyn crate::engine::Wake>>) -> io::Result<Attached> {
        Rooms::attach(self, runtime, wakes)
    }
}

/// Attached rooms: how each worker makes its executor (on its own
/// thread: a room's state need not be `Send`), and their counters.
pub(crate) struct Attached {
    pub make: Box<dyn Fn(usize) -> Box<dyn RunRooms> + Send + Sync>,
    pub stats: Box<dyn Fn() -> RoomStats + Send + Sync>,
}

impl Attached {
    /// The counters of these kinds of rooms, summed.
    pub(crate) fn sum(kinds: &[Attached]) -> RoomStats {
        let mut total = RoomStats::default();
        for kind in kinds {
            total.add(&(kind.stats)());
        }
        total
    }
}

/// A worker's executor of one kind of rooms, as the engine drives it.
pub(crate) trait RunRooms {
    /// Takes in posted jobs, runs due timers and ticks, then gives each
    /// ready room its turn; what the rooms send goes to `out`.
    fn run(&mut self, now: Duration, out: &mut RoomOutput);
    /// When it must run again: now if a room is still ready, else its
    /// earliest timer; `None` if nothing waits.
    fn next_due(&self, now: Duration) -> Option<Duration>;
    /// Jobs and ticks run so far (for a simulation to see progress).
    fn progress(&self) -> u64;
}

/// What a room's callbacks may do: send to members, set timers and the
/// tick, kick.
pub struct RoomCx<'a, M> {
    key: &'a str,
    now: Duration,
    members: &'a mut Vec<SessionId>,
    out: &'a mut RoomOutput,
    timers: &'a mut executor::Timers<M>,
    room: u64,
    tick: &'a mut Option<executor::TickPlan>,
    deferred: &'a mut BytesMut,
}

impl<M> RoomCx<'_, M> {
    /// The room's key.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The time on the room clock (since the server started).
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The members, in the order they joined.
    pub fn members(&self) -> &[SessionId] {
        self.members
    }

    /// Queues `buf` on session `member` (a member or not). What the room
    /// sends a session during a turn goes out with one write.
    pub fn send(&mut self, member: SessionId, buf: impl Into<Bytes>) {
        self.out.sends.push((member, buf.into()));
    }

    /// Queues `buf` on every member: one buffer, shared.
    pub fn broadcast(&mut self, buf: impl Into<Bytes>) {
        let buf = buf.into();
        for &m in self.members.iter() {
            self.out.sends.push((m, buf.clone()));
        }
    }

    /// Queues `buf` on every member but `skip`.
    pub fn broadcast_except(&mut self, skip: SessionId, buf: impl Into<Bytes>) {
        let buf = buf.into();
        for &m in self.members.iter().filter(|&&m| m != skip) {
            self.out.sends.push((m, buf.clone()));
        }
    }

    /// Copies `bytes` into the room's coalesced broadcast: everything added
    /// until the end of the next tick goes to every member then, as one
    /// buffer (one write per member per tick however many messages). With
    /// no tick set, it goes at the end of this turn. It goes to those who
    /// were members when it was added: before a member joins or leaves,
    /// what was gathered so far is sent.
    pub fn broadcast_at_tick(&mut self, bytes: &[u8]) {
        self.deferred.extend_from_slice(bytes);
    }

    /// Sends what [`RoomCx::broadcast_at_tick`] gathered so far now, to
    /// every member, without waiting for the tick's end.
    pub fn flush_broadcast(&mut self) {
        if !self.deferred.is_empty() {
            let buf = self.deferred.split().freeze();
            for &m in self.members.iter() {
                self.out.sends.push((m, buf.clone()));
            }
        }
    }

    /// Posts `msg` to this room after `delay` (its [`Room::on_message`]
    /// gets it with `from` `None`).
    pub fn after(&mut self, delay: Duration, msg: M) -> TimerId {
        self.timers
            .add(self.now + delay, self.room, executor::Timer::After(msg))
    }

    /// Cancels a timer; `false` if it already fired or was cancelled.
    pub fn cancel(&mut self, timer: TimerId) -> bool {
        self.timers.cancel(timer, self.room)
    }

    /// Starts (or restarts) the tick: tick `n` is due `n` periods from now.
    pub fn set_tick(&mut self, period: Duration) {
        self.start_tick(Duration::ZERO, period);
    }

    /// Starts (or restarts) the tick at a phase of its own: tick `n` is due
    /// `phase + n` periods from now, the phase (less than one period)
    /// picked from the room so that rooms started together (at the
    /// server's start, in a burst of joins) tick at spread times rather
    /// than all at once — what a worker must send for them is then spread
    /// over the period, and no room's tick waits for the others' sends.
    pub fn set_tick_spread(&mut self, period: Duration) {
        let period = period.max(Duration::from_millis(1));
        // Fibonacci hashing of the room's id: rooms made one after another
        // land far apart.
        let spread = self.room.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        let phase = Duration::from_nanos(spread % period.as_nanos().max(1) as u64);
        self.start_tick(phase, period);
    }

    fn start_tick(&mut self, phase: Duration, period: Duration) {
        let period = period.max(Duration::from_millis(1));
        if let Some(old) = self.tick.take() {
            self.timers.remove(old.key);
        }
        let start = self.now + phase;
        let key = self.timers.add(start + period, self.room, executor::Timer::Tick);
        *self.tick = Some(executor::TickPlan {
            start,
            period,
            next: 1,
            key,
        });
    }

    /// Stops the tick.
    pub fn stop_tick(&mut self) {
        if let Some(old) = self.tick.take() {
            self.timers.remove(old.key);
        }
    }

    /// Removes `member` (no [`Room::on_leave`]) and closes its session
    /// with `reason` (its queued bytes are sent first).
    pub fn kick(&mut self, member: SessionId, reason: CloseReason) {
        self.flush_broadcast();
        self.members.retain(|&m| m != member);
        self.out.closes.push((member, reason));
    }
}
