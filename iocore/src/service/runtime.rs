//! Worker threads shared by [`crate::Server`] and [`crate::Client`]: one
//! engine loop per thread, each owning its sessions; a stop request goes to
//! every worker's inbox.

use std::io;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::{
    self, Command, EngineKind, Inbox, IpGate, SessionGate, Settings, Stats, Worker, WorkerStats,
};
use crate::session::Handler;

/// Something that can be told to stop (a worker's inbox, whatever its
/// handler type).
trait Stop: Send + Sync {
    fn stop(&self, grace: Duration);
}

impl<H> Stop for Inbox<H> {
    fn stop(&self, grace: Duration) {
        // A worker that already ended has nothing left to stop.
        let _ = self.push(Command::Stop { grace });
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
    stoppers: Vec<Arc<dyn Stop>>,
    stats: Vec<Arc<WorkerStats>>,
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
        let mut rt = Runtime {
            engine,
            threads: Vec::new(),
            stoppers: Vec::new(),
            stats: Vec::new(),
        };
        let inboxes = specs
            .iter()
            .map(|_| Inbox::new().map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        let shared: Option<Arc<[Arc<Inbox<H>>]>> = hand_off.then(|| inboxes.clone().into());
        let (ready_tx, ready_rx) = mpsc::channel();
        let count = specs.len();
        for (index, spec) in specs.into_iter().enumerate() {
            let inbox = inboxes[index].clone();
            let stats = Arc::new(WorkerStats::default());
            let worker = Worker {
                index,
                listener: spec.listener,
                hand_off: shared.clone(),
                factory: spec.factory,
                inbox: inbox.clone(),
                limits: settings.limits.clone(),
                keepalive: settings.keepalive,
                stats: stats.clone(),
                gate: gate.clone(),
                ip_gate: ip_gate.clone(),
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
            rt.stoppers.push(inbox);
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

    /// Counters summed over the workers.
    pub(crate) fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for s in &self.stats {
            total.add(&s.snapshot());
        }
        total
    }

    /// Asks every worker to stop: no new sessions; queued data is flushed
    /// for up to `grace`, then everything left is reset.
    pub(crate) fn stop(&self, grace: Duration) {
        for s in &self.stoppers {
            s.stop(grace);
        }
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
