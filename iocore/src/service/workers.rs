//! What servers and clients configure alike — the engine, the worker
//! threads, the number of sessions, TCP keepalive and the per-session
//! limits — as one [`WorkerConfig`], checked in one place, with one set of
//! setters ([`worker_setters!`]) on both builders.

use crate::config::{check_threads, ConfigError, Setting};
use crate::engine::{EngineKind, Keepalive};
use crate::session::Limits;

/// The workers' side of a server's or client's configuration.
#[derive(Clone, Debug)]
pub(crate) struct WorkerConfig {
    pub(crate) engine: EngineKind,
    pub(crate) threads: usize,
    pub(crate) max_sessions: usize,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) limits: Limits,
}

impl WorkerConfig {
    /// The defaults: engine `auto`, default [`Limits`], no keepalive, and
    /// the given threads and session cap.
    pub(crate) fn new(threads: usize, max_sessions: usize) -> WorkerConfig {
        WorkerConfig {
            engine: EngineKind::Auto,
            threads,
            max_sessions,
            keepalive: None,
            limits: Limits::default(),
        }
    }

    /// Checks these settings; the error names the one at fault.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_threads(self.threads)?;
        if self.max_sessions == 0 {
            return Err(ConfigError::new(Setting::MaxSessions, "must be at least 1"));
        }
        self.limits.validate()
    }
}

/// The setters of a builder's [`WorkerConfig`] (its field `workers`), the
/// same on [`crate::ServerBuilder`] and [`crate::ClientBuilder`].
macro_rules! worker_setters {
    () => {
        /// The I/O model ([`EngineKind::Auto`](crate::EngineKind::Auto)
        /// by default).
        pub fn engine(mut self, engine: crate::EngineKind) -> Self {
            self.workers.engine = engine;
            self
        }
        /// Worker threads, each with its own event loop and sessions (1 to
        /// 255).
        pub fn threads(mut self, threads: usize) -> Self {
            self.workers.threads = threads;
            self
        }
        /// Most sessions live at once, across the workers: beyond it a
        /// server resets new connections, and a client's connects fail at
        /// once (at least 1).
        pub fn max_sessions(mut self, max: usize) -> Self {
            self.workers.max_sessions = max;
            self
        }
        /// TCP keepalive on every session's socket (see
        /// [`Keepalive`](crate::Keepalive)); `None` (the default): off.
        pub fn tcp_keepalive(mut self, keepalive: Option<crate::Keepalive>) -> Self {
            self.workers.keepalive = keepalive;
            self
        }
        /// All per-session limits at once.
        pub fn limits(mut self, limits: crate::Limits) -> Self {
            self.workers.limits = limits;
            self
        }
        /// See [`Limits::max_send_queue`](crate::Limits::max_send_queue).
        pub fn max_send_queue(mut self, bytes: usize) -> Self {
            self.workers.limits.max_send_queue = bytes;
            self
        }
        /// See [`Limits::max_recv_buffer`](crate::Limits::max_recv_buffer).
        pub fn max_recv_buffer(mut self, bytes: usize) -> Self {
            self.workers.limits.max_recv_buffer = bytes;
            self
        }
        /// See [`Limits::send_high_watermark`](crate::Limits::send_high_watermark)
        /// and [`Limits::send_low_watermark`](crate::Limits::send_low_watermark).
        pub fn send_watermarks(mut self, high: usize, low: usize) -> Self {
            self.workers.limits.send_high_watermark = high;
            self.workers.limits.send_low_watermark = low;
            self
        }
        /// See [`Limits::send_stall_timeout`](crate::Limits::send_stall_timeout).
        pub fn send_stall_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
            self.workers.limits.send_stall_timeout = timeout;
            self
        }
        /// See [`Limits::idle_timeout`](crate::Limits::idle_timeout).
        pub fn idle_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
            self.workers.limits.idle_timeout = timeout;
            self
        }
        /// See [`Limits::linger`](crate::Limits::linger).
        pub fn linger(mut self, linger: std::time::Duration) -> Self {
            self.workers.limits.linger = linger;
            self
        }
        /// See [`Limits::connect_timeout`](crate::Limits::connect_timeout).
        pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.workers.limits.connect_timeout = timeout;
            self
        }
    };
}
pub(crate) use worker_setters;
