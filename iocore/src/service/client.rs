//! [`Client`]: outbound connections served by the same engines and the
//! same [`Handler`] API as the server (the seed client's non-blocking
//! connect, or `ConnectEx` in the IOCP series).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::runtime::{Runtime, ToSessionError, WorkerSpec};
use crate::config::{check_threads, ConfigError, Setting};
use crate::engine::{Command, EngineKind, Inbox, Keepalive, Remote, Settings, Stats};
use crate::session::{Handler, Limits, SessionId};

/// Entry point: `Client::builder()`.
pub struct Client;

impl Client {
    /// A builder with the defaults: engine `auto`, one worker thread, no
    /// session limit beyond the system's, default [`Limits`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            engine: EngineKind::Auto,
            threads: 1,
            max_sessions: usize::MAX,
            keepalive: None,
            limits: Limits::default(),
        }
    }
}

/// Configures and starts a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    engine: EngineKind,
    threads: usize,
    max_sessions: usize,
    keepalive: Option<Keepalive>,
    limits: Limits,
}

impl ClientBuilder {
    /// The I/O model.
    pub fn engine(mut self, engine: EngineKind) -> Self {
        self.engine = engine;
        self
    }
    /// Worker threads; connections are spread over them in turn (≥ 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
    /// Most sessions live at once; more connects fail at once.
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }
    /// Per-session limits (including [`Limits::connect_timeout`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// TCP keepalive on every session's socket (see [`Keepalive`]);
    /// `None` (the default): off.
    pub fn tcp_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Checks the configuration without starting anything; the error
    /// names the setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_threads(self.threads)?;
        if self.max_sessions == 0 {
            return Err(ConfigError::new(Setting::MaxSessions, "must be at least 1"));
        }
        self.limits.validate()
    }

    /// Starts the workers. `H` is the handler type of every connection;
    /// use `Box<dyn Handler>` to mix kinds.
    pub fn start<H: Handler>(self) -> io::Result<ClientHandle<H>> {
        self.validate()?;
        let engine = self.engine.resolve()?;
        let specs = (0..self.threads)
            .map(|_| WorkerSpec {
                listener: None,
                factory: None,
            })
            .collect();
        let settings = Settings {
            limits: self.limits,
            max_sessions: self.max_sessions,
            max_sessions_per_ip: None,
            keepalive: self.keepalive,
            proxy: None,
            registry: Arc::new(crate::topic::Registry::default()),
        };
        let (runtime, inboxes) = Runtime::start("iocore-client", engine, specs, settings, false)?;
        Ok(ClientHandle {
            runtime,
            inboxes,
            next: AtomicUsize::new(0),
        })
    }
}

/// Running client workers. Dropping it stops them at once; call
/// [`ClientHandle::shutdown`] for a graceful stop.
pub struct ClientHandle<H> {
    runtime: Runtime,
    inboxes: Vec<Arc<Inbox<H>>>,
    next: AtomicUsize,
}

impl<H: Handler> ClientHandle<H> {
    /// Connects to `addr` without blocking. `make` builds the handler on
    /// the worker that will own the session; the handler then hears
    /// `on_connected`, or only `on_disconnected` with
    /// [`crate::CloseReason::ConnectFailed`] if the connection fails.
    pub fn connect(&self, addr: SocketAddr, make: impl FnOnce() -> H + Send + 'static) -> io::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
        let connect = Command::Connect {
            addr,
            make: Box::new(make),
        };
        self.inboxes[i]
            .push(connect)
            .map_err(|_| io::Error::other("the client has stopped: its worker has ended"))
    }

    /// The engine serving.
    pub fn engine(&self) -> EngineKind {
        self.runtime.engine()
    }

    /// Counters summed over the workers.
    pub fn stats(&self) -> Stats {
        self.runtime.stats()
    }

    /// Queues `buf` on session `id` from any thread; see
    /// [`crate::ServerHandle::send`].
    pub fn send(&self, id: SessionId, buf: impl Into<Bytes>) -> Result<(), ToSessionError> {
        self.runtime.to_session(id, Remote::Send { id, buf: buf.into() })
    }

    /// Closes session `id` gracefully from any thread; see
    /// [`crate::ServerHandle::close`].
    pub fn close(&self, id: SessionId) -> Result<(), ToSessionError> {
        self.runtime.to_session(id, Remote::Close { id })
    }

    /// Publishes `buf` to every subscriber of `topic` among this client's
    /// sessions; see [`crate::ServerHandle::publish`].
    pub fn publish(&self, topic: &str, buf: impl Into<Bytes>) -> Result<(), ToSessionError> {
        self.runtime.publish(topic, buf.into())
    }

    /// Starts a graceful stop; see [`crate::ServerHandle::stop`].
    pub fn stop(&self, grace: Duration) {
        self.runtime.stop(grace)
    }

    /// Whether every worker has finished (after a stop).
    pub fn is_finished(&self) -> bool {
        self.runtime.is_finished()
    }

    /// Waits until every worker has finished (after a stop).
    pub fn join(mut self) -> io::Result<()> {
        self.runtime.join()
    }

    /// [`stop`](ClientHandle::stop) then [`join`](ClientHandle::join).
    pub fn shutdown(self, grace: Duration) -> io::Result<()> {
        self.stop(grace);
        self.join()
    }
}
