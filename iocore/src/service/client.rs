//! [`Client`]: outbound connections served by the same engines and the
//! same [`Handler`] API as the server (the seed client's non-blocking
//! connect, or `ConnectEx` in the IOCP series).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;

use super::runtime::{Runtime, ToSessionError, WorkerSpec};
use super::workers::{worker_setters, WorkerConfig};
use crate::config::ConfigError;
use crate::engine::{self, Command, EngineKind, Inbox, Remote, Settings, Stats};
use crate::session::{Handler, SessionId};

/// Entry point: `Client::builder()`.
pub struct Client;

impl Client {
    /// A builder with the defaults: engine `auto`, one worker thread, no
    /// session limit beyond the system's, default [`Limits`](crate::Limits).
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            workers: WorkerConfig::new(1, usize::MAX),
            websocket: None,
            tls: None,
        }
    }
}

/// Configures and starts a [`Client`]: the same worker settings as
/// [`crate::ServerBuilder`]'s.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until start() is called"]
pub struct ClientBuilder {
    workers: WorkerConfig,
    websocket: Option<Arc<crate::engine::WsConfig>>,
    tls: Option<Arc<crate::engine::TlsCfg>>,
}

impl ClientBuilder {
    worker_setters!();

    /// Checks the configuration without starting anything; the error
    /// names the setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.workers.validate()?;
        #[cfg(feature = "websocket")]
        if let Some(ws) = &self.websocket {
            ws.validate()?;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            tls.validate()?;
            if tls.is_server() {
                return Err(ConfigError::new(
                    crate::Setting::Tls,
                    "is a server's configuration: a client needs TlsConfig::client_pem or TlsConfig::client",
                ));
            }
        }
        Ok(())
    }

    /// Every connection speaks TLS as a client (feature `tls`): the
    /// handshake comes first (under WebSocket, before the upgrade), and
    /// [`crate::Handler::on_connected`] once it is done. `None` (the
    /// default): plain TCP.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Option<crate::tls::TlsConfig>) -> Self {
        self.tls = config.map(Arc::new);
        self
    }

    /// Every connection speaks WebSocket as a client (feature
    /// `websocket`): once connected it sends its upgrade request (for
    /// [`crate::websocket::WebSocketConfig::path`], to the address it
    /// connected to as the Host), and [`crate::Handler::on_connected`]
    /// comes with the server's 101; then each `on_recv` is one message's
    /// payload and each [`crate::Session::send`] one masked binary
    /// message. `None` (the default): plain TCP.
    #[cfg(feature = "websocket")]
    pub fn websocket(mut self, config: Option<crate::websocket::WebSocketConfig>) -> Self {
        self.websocket = config.map(Arc::new);
        self
    }

    /// Starts the workers. `H` is the handler type of every connection;
    /// use `Box<dyn Handler>` to mix kinds.
    pub fn start<H: Handler>(self) -> io::Result<ClientHandle<H>> {
        self.validate()?;
        let engine = self.workers.engine.resolve()?;
        let specs = (0..self.workers.threads)
            .map(|_| WorkerSpec {
                listener: None,
                factory: None,
            })
            .collect();
        let settings = Settings {
            limits: self.workers.limits,
            max_sessions: self.workers.max_sessions,
            max_sessions_per_ip: None,
            keepalive: self.workers.keepalive,
            proxy: None,
            websocket: self.websocket.clone(),
            tls: self.tls.clone(),
            registry: Arc::new(crate::topic::Registry::default()),
            rooms: Default::default(),
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
#[must_use = "dropping the handle stops the client at once: keep it, or call shutdown() or join()"]
pub struct ClientHandle<H> {
    runtime: Runtime,
    inboxes: Vec<Arc<Inbox<H>>>,
    next: AtomicUsize,
}

impl<H: Handler> ClientHandle<H> {
    /// Connects to `addr` and returns the new session's id once its worker
    /// has opened it (one hand-over to the worker and back; the connection
    /// itself completes later). `make` builds the handler on that worker;
    /// the handler then hears `on_connected`, or only `on_disconnected`
    /// with [`crate::CloseReason::ConnectFailed`] if the connection fails.
    ///
    /// Handlers run on worker threads, where waiting for a worker could
    /// wait forever: there this returns [`ConnectError::OnWorkerThread`];
    /// use [`ClientHandle::connect_later`] (the handler learns its id in
    /// `on_connected`).
    pub fn connect(
        &self,
        addr: SocketAddr,
        make: impl FnOnce() -> H + Send + 'static,
    ) -> Result<SessionId, ConnectError> {
        if engine::on_worker_thread() {
            return Err(ConnectError::OnWorkerThread);
        }
        let (reply, id) = mpsc::sync_channel(1);
        self.push_connect(addr, Box::new(make), Some(reply))?;
        match id.recv() {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(ConnectError::NotOpened),
            // The worker ended with the request still queued.
            Err(_) => Err(ConnectError::Stopped),
        }
    }

    /// Connects to `addr` without waiting for the worker, from any thread
    /// (a handler's included); otherwise as [`ClientHandle::connect`]. A
    /// connection the worker cannot open is told to its handler only.
    pub fn connect_later(
        &self,
        addr: SocketAddr,
        make: impl FnOnce() -> H + Send + 'static,
    ) -> Result<(), ConnectError> {
        self.push_connect(addr, Box::new(make), None)
    }

    fn push_connect(
        &self,
        addr: SocketAddr,
        make: Box<dyn FnOnce() -> H + Send>,
        reply: Option<mpsc::SyncSender<Option<SessionId>>>,
    ) -> Result<(), ConnectError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
        let connect = Command::Connect { addr, make, reply };
        self.inboxes[i].push(connect).map_err(|_| ConnectError::Stopped)
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

/// Why [`ClientHandle::connect`] returned no session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The client has stopped: its workers take no more.
    Stopped,
    /// The worker did not open the connection: the client is stopping, the
    /// session limit is reached, or no socket could be made. The handler
    /// heard why in `on_disconnected`.
    NotOpened,
    /// Called on a worker thread, where waiting for a worker could wait
    /// forever; use [`ClientHandle::connect_later`] there.
    OnWorkerThread,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectError::Stopped => "the client has stopped",
            ConnectError::NotOpened => "the connection was not opened (its handler was told why)",
            ConnectError::OnWorkerThread => {
                "connect() waits for a worker and cannot be called on one: use connect_later()"
            }
        })
    }
}

impl std::error::Error for ConnectError {}

impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> io::Error {
        let kind = match e {
            ConnectError::Stopped => io::ErrorKind::NotConnected,
            ConnectError::NotOpened => io::ErrorKind::Other,
            ConnectError::OnWorkerThread => io::ErrorKind::WouldBlock,
        };
        io::Error::new(kind, e)
    }
}
