//! Worker threads shared by [`crate::Server`] and [`crate::Client`]: one
//! engine loop per thread, each owning its sessions; a stop request goes to
//! every worker's inbox.

use std::fmt;
use std::io;
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::{
    self, Control, EngineKind, Inbox, IpGate, Remote, SessionGate, Settings, Stats, Worker, WorkerStats,
};
use crate::session::{Handler, SessionId};
use crate::topic::Registry;

/// Why a request to a session or topic from outside its worker could not
/// be handed over. (A session that has ended meanwhile is found out by its
/// worker, which drops the request and counts it in
/// [`Stats::stale_requests`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToSessionError {
    /// The server or client has stopped: its workers take no more.
    Stopped,
    /// The id names a worker this server or client does not have (it is
    /// another one's id).
    NoSuchWorker,
}

impl fmt::Display for ToSessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ToSessionError::Stopped => "the server or client has stopped",
            ToSessionError::NoSuchWorker => "no such worker: the session id belongs to another server",
        })
    }
}

impl std::error::Error for ToSessionError {}

impl From<ToSessionError> for io::Error {
    fn from(e: ToSessionError) -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, e)
    }
}

/// Closes a worker's inbox when its thread ends, however it ends.
struct CloseOnExit<H>(Arc<Inbox<H>>);

impl<H> Drop for CloseOnExit<H> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The running workers of one service.
pub(crate) struct Runtime {
    engine: EngineKind,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// Every worker's inbox, by index.
    controls: Vec<Arc<dyn Control>>,
    stats: Vec<Arc<WorkerStats>>,
    registry: Arc<Registry>,
    /// The rooms that run on the workers.
    rooms: Arc<[crate::room::Attached]>,
}

/// What each worker is started with, besides its index.
pub(crate) struct WorkerSpec<H> {
    pub listener: Option<crate::sys::OwnedSocket>,
    pub factory: Option<engine::Factory<H>>,
}

impl Runtime {
    /// Starts one worker thread per spec with the resolved `engine`, and
    /// returns once every worker's loop is set up (or the first failure).
    /// With `hand_off`, the worker that accepts deals connections out to
    /// all workers in turn.
    pub(crate) fn start<H: Handler>(
        name: &str,
        engine: EngineKind,
        specs: Vec<WorkerSpec<H>>,
        settings: Settings,
        hand_off: bool,
    ) -> io::Result<(Runtime, Vec<Arc<Inbox<H>>>)> {
        let gate = Arc::new(SessionGate::new(settings.max_sessions));
        let ip_gate = settings.max_sessions_per_ip.map(|max| Arc::new(IpGate::new(max)));
        let epoch = Instant::now();
        let registry = settings.registry.clone();
        let mut rt = Runtime {
            engine,
            threads: Vec::new(),
            controls: Vec::new(),
            stats: Vec::new(),
            registry: registry.clone(),
            rooms: Arc::new([]),
        };
        let inboxes = specs
            .iter()
            .map(|_| Inbox::new().map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let workers: Arc<[Arc<Inbox<H>>]> = inboxes.clone().into();
        let runtime = engine::next_runtime_id();
        let wakes = || {
            inboxes
                .iter()
                .map(|i| i.clone() as Arc<dyn engine::Wake>)
                .collect()
        };
        let rooms: Arc<[crate::room::Attached]> = settings
            .rooms
            .0
            .iter()
            .map(|kind| kind.attach(runtime, wakes()))
            .collect::<io::Result<Vec<_>>>()?
            .into();
        rt.rooms = rooms.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let count = specs.len();
        for (index, spec) in specs.into_iter().enumerate() {
            let inbox = inboxes[index].clone();
            let stats = Arc::new(WorkerStats::default());
            let worker = Worker {
                index,
                runtime,
                rooms: rooms.clone(),
                listener: spec.listener,
                workers: workers.clone(),
                hand_off,
                registry: registry.clone(),
                factory: spec.factory,
                inbox: inbox.clone(),
                limits: settings.limits.clone(),
                keepalive: settings.keepalive,
                stats: stats.clone(),
                gate: gate.clone(),
                ip_gate: ip_gate.clone(),
                proxy: settings.proxy.clone(),
                websocket: settings.websocket.clone(),
                tls: settings.tls.clone(),
                epoch,
                ready: ready_tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn({
                    let _close = CloseOnExit(inbox.clone());
                    move || {
                        let _close = _close;
                        engine::run(engine, worker)
                    }
                })?;
            rt.threads.push(thread);
            rt.controls.push(inbox);
            rt.stats.push(stats);
        }
        drop(ready_tx);
        for _ in 0..count {
            // A worker that dies before reporting drops its sender; the
            // channel then ends and join() below tells what happened.
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    rt.stop(Duration::ZERO);
                    let _ = rt.join();
                    return Err(e);
                }
                Err(_) => {
                    rt.stop(Duration::ZERO);
                    return Err(rt
                        .join()
                        .err()
                        .unwrap_or_else(|| io::Error::other("worker exited at start")));
                }
            }
        }
        Ok((rt, inboxes))
    }

    pub(crate) fn engine(&self) -> EngineKind {
        self.engine
    }

    /// Each worker's counters, by worker index.
    pub(crate) fn worker_stats(&self) -> Vec<Stats> {
        self.stats.iter().map(|s| s.snapshot()).collect()
    }

    /// What the metrics of this runtime are read from.
    #[cfg(feature = "metrics")]
    pub(crate) fn metrics_source(&self) -> crate::metrics::Source {
        crate::metrics::Source {
            workers: self.stats.clone(),
            topics: self.registry.clone(),
            engine: self.engine,
            #[cfg(feature = "redis")]
            bridge: None,
            rooms: (!self.rooms.is_empty()).then(|| {
                let rooms = self.rooms.clone();
                Arc::new(move || crate::room::Attached::sum(&rooms))
                    as Arc<dyn Fn() -> crate::room::RoomStats + Send + Sync>
            }),
        }
    }

    /// Hands a publish that came from another instance to every worker's
    /// fan-out (not counted as a publish here, not relayed again).
    #[cfg(feature = "redis")]
    pub(crate) fn injector(&self) -> impl Fn(Arc<str>, Bytes) + Send + Sync + 'static {
        let controls = self.controls.clone();
        let registry = self.registry.clone();
        move |topic, buf| {
            let stamp = registry.stamp();
            for c in &controls {
                let _ = c.remote(Remote::Publish {
                    topic: topic.clone(),
                    buf: buf.clone(),
                    stamp,
                });
            }
        }
    }

    /// Counters summed over the workers.
    pub(crate) fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for s in &self.stats {
            total.add(&s.snapshot());
        }
        total
    }

    /// The counters of every kind of rooms on the workers, summed.
    pub(crate) fn room_stats(&self) -> crate::room::RoomStats {
        crate::room::Attached::sum(&self.rooms)
    }

    /// Asks every worker to stop: no new sessions; queued data is flushed
    /// for up to `grace`, then everything left is reset.
    pub(crate) fn stop(&self, grace: Duration) {
        for c in &self.controls {
            // A worker that already ended has nothing left to stop.
            let _ = c.remote(Remote::Stop { grace });
        }
    }

    /// Hands `r` to the worker that owns session `id`.
    pub(crate) fn to_session(&self, id: SessionId, r: Remote) -> Result<(), ToSessionError> {
        let control = self
            .controls
            .get(id.worker())
            .ok_or(ToSessionError::NoSuchWorker)?;
        control.remote(r).map_err(|_| ToSessionError::Stopped)
    }

    /// Publishes `buf` to `topic` on every worker.
    pub(crate) fn publish(&self, topic: &str, buf: Bytes) -> Result<(), ToSessionError> {
        let workers = self.controls.iter().map(|c| &**c);
        match engine::publish_everywhere(&self.registry, workers, topic, buf) {
            true => Ok(()),
            false => Err(ToSessionError::Stopped),
        }
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Waits for every worker to finish; the first error wins.
    pub(crate) fn join(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("worker thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop(Duration::ZERO);
            let _ = self.join();
        }
    }
}
