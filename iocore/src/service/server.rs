//! [`Server`]: listen, accept, and run a handler per session on worker
//! threads.
//!
//! Accept strategies ([`Accept`]):
//!
//! - [`Accept::ReusePort`] (the default where the OS has it, Linux): every
//!   worker has its own listening socket on the same address
//!   (`SO_REUSEPORT`), and the kernel spreads new connections across them.
//!   A session is accepted, served and closed on one thread: no hand-off,
//!   no locks, no acceptor to become a bottleneck.
//! - [`Accept::HandOff`] (the default elsewhere, Windows): one listener,
//!   on the first worker, which deals accepted connections out to every
//!   worker in turn (itself included) through their inboxes; each
//!   session then lives on the worker it was dealt to. The spread is
//!   exact (round-robin) rather than by the kernel's hash of addresses.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::runtime::{Runtime, ToSessionError, WorkerSpec};
use super::workers::{worker_setters, WorkerConfig};
use crate::config::{ConfigError, Setting};
use crate::engine::{EngineKind, Remote, RoomKinds, Settings, Stats};
use crate::session::Handler;
use crate::session::SessionId;
use crate::sys::socket;
use crate::topic::TopicStats;

/// Entry point: `Server::builder()`.
pub struct Server;

/// How a multi-worker server spreads connections over its workers (see the
/// module notes). With one worker both are the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Accept {
    /// A listener per worker on one address (`SO_REUSEPORT`); the kernel
    /// picks the worker. Only where the OS has `SO_REUSEPORT`.
    ReusePort,
    /// One listener; its worker hands connections to all workers in turn.
    HandOff,
}

/// `ReusePort` where the OS has it (Linux), else `HandOff` (Windows).
impl Default for Accept {
    fn default() -> Accept {
        match socket::REUSE_PORT {
            true => Accept::ReusePort,
            false => Accept::HandOff,
        }
    }
}

impl std::fmt::Display for Accept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accept::ReusePort => "reuse-port",
            Accept::HandOff => "hand-off",
        })
    }
}

impl std::str::FromStr for Accept {
    type Err = crate::UnknownName;

    fn from_str(s: &str) -> Result<Accept, crate::UnknownName> {
        match s {
            "reuse-port" => Ok(Accept::ReusePort),
            "hand-off" => Ok(Accept::HandOff),
            other => Err(crate::UnknownName {
                kind: "accept strategy",
                given: other.to_string(),
                known: &["reuse-port", "hand-off"],
            }),
        }
    }
}

impl Server {
    /// A builder with the defaults: 127.0.0.1:7777, engine `auto`, one
    /// worker per CPU, the OS's default [`Accept`], 10,000 sessions (no cap
    /// per client address), default [`Limits`](crate::Limits), no TCP keepalive.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            addr: SocketAddr::from(([127, 0, 0, 1], 7777)),
            workers: WorkerConfig::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                10_000,
            ),
            accept: Accept::default(),
            max_sessions_per_ip: None,
            backlog: 1024,
            #[cfg(feature = "metrics")]
            metrics: None,
            #[cfg(feature = "metrics")]
            metrics_registry: None,
            proxy: None,
            websocket: None,
            tls: None,
            #[cfg(feature = "websocket")]
            websocket_listeners: Vec::new(),
            #[cfg(feature = "redis")]
            redis: None,
            rooms: RoomKinds::default(),
        }
    }
}

/// Configures and starts a [`Server`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until start() is called"]
pub struct ServerBuilder {
    addr: SocketAddr,
    workers: WorkerConfig,
    accept: Accept,
    max_sessions_per_ip: Option<usize>,
    backlog: i32,
    #[cfg(feature = "metrics")]
    metrics: Option<SocketAddr>,
    #[cfg(feature = "metrics")]
    metrics_registry: Option<Arc<prometheus_client::registry::Registry>>,
    proxy: Option<Arc<crate::proxy::ProxySettings>>,
    websocket: Option<Arc<crate::engine::WsConfig>>,
    tls: Option<Arc<crate::engine::TlsCfg>>,
    #[cfg(feature = "websocket")]
    websocket_listeners: Vec<(SocketAddr, Arc<crate::engine::WsConfig>)>,
    #[cfg(feature = "redis")]
    redis: Option<crate::bridge::RedisBridge>,
    rooms: RoomKinds,
}

impl ServerBuilder {
    /// Address to listen on; port 0 picks a free port (see
    /// [`ServerHandle::local_addr`]).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }
    worker_setters!();

    /// How connections are spread over the workers (see [`Accept`]).
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }
    /// Most sessions live at once from one client address (IPv4-mapped
    /// IPv6 addresses count as IPv4), across all workers and with either
    /// [`Accept`] strategy; further connections from that address are
    /// reset at once and counted in [`Stats::rejected_per_ip`]. `None` (the
    /// default): no cap.
    pub fn max_sessions_per_ip(mut self, max: Option<usize>) -> Self {
        self.max_sessions_per_ip = max;
        self
    }
    /// Listen backlog.
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Serves the server's Prometheus metrics at `http://{addr}/metrics`
    /// (feature `metrics`; see [`crate::metrics`]) from a small HTTP
    /// server of its own: the same engine, one more worker thread. It
    /// starts and stops with the server; [`ServerHandle::metrics_addr`]
    /// tells where it listens (port 0 picks one).
    ///
    /// Bind it to loopback (as `iocore serve --metrics` does by default)
    /// unless the network it is exposed to is yours: the metrics tell
    /// anyone who can reach them how loaded the server is, and the
    /// endpoint has no authentication.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
        self
    }

    /// The application's own metrics, served after the server's at the
    /// same endpoint (and in [`ServerHandle::metrics_text`]). Keep the
    /// handles of the metrics registered in it to update them.
    #[cfg(feature = "metrics")]
    pub fn metrics_registry(mut self, registry: prometheus_client::registry::Registry) -> Self {
        self.metrics_registry = Some(Arc::new(registry));
        self
    }

    /// Every accepted connection must start with a PROXY protocol header
    /// (v1 or v2) from a trusted proxy: see [`crate::proxy`] (feature
    /// `proxy-protocol`). `None` (the default) reads none.
    #[cfg(feature = "proxy-protocol")]
    pub fn proxy_protocol(mut self, proxy: Option<crate::proxy::ProxyProtocol>) -> Self {
        self.proxy = proxy.map(|p| Arc::new(p.settings()));
        self
    }

    /// Every accepted connection speaks WebSocket (feature `websocket`):
    /// it sends an HTTP/1.1 upgrade request first, then each
    /// [`Handler::on_recv`] is one message's payload and each
    /// [`crate::Session::send`] one binary message; see
    /// [`crate::websocket`]. `None` (the default): plain TCP.
    #[cfg(feature = "websocket")]
    pub fn websocket(mut self, config: Option<crate::websocket::WebSocketConfig>) -> Self {
        self.websocket = config.map(Arc::new);
        self
    }

    /// Also listens on `addr` for WebSocket clients (feature
    /// `websocket`), served by the same workers, handler factory, topics
    /// and rooms as the main listener's: a chat's browser members beside
    /// its TCP ones. A thread accepts on it and hands each connection to
    /// the workers in turn. Port 0 picks a free port (see
    /// [`ServerHandle::websocket_addrs`]).
    #[cfg(feature = "websocket")]
    pub fn websocket_listener(mut self, addr: SocketAddr, config: crate::websocket::WebSocketConfig) -> Self {
        self.websocket_listeners.push((addr, Arc::new(config)));
        self
    }

    /// Every accepted connection speaks TLS (feature `tls`), on the main
    /// listener and on the WebSocket ones (`wss`): the handshake comes
    /// first (after a PROXY header, before a WebSocket upgrade), and
    /// [`Handler::on_connected`] once it is done; see [`crate::tls`].
    /// `None` (the default): plain TCP.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Option<crate::tls::TlsConfig>) -> Self {
        self.tls = config.map(Arc::new);
        self
    }

    /// Shares the server's topics with its other instances through Redis
    /// pub/sub: see [`crate::bridge`] (feature `redis`). `None` (the
    /// default) keeps them local.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, bridge: Option<crate::bridge::RedisBridge>) -> Self {
        self.redis = bridge;
        self
    }

    /// Runs `rooms` on this server's workers (see [`crate::room`]); give
    /// as many kinds of rooms as the application has. One [`Rooms`] runs
    /// on one server: starting a second server with it fails.
    ///
    /// [`Rooms`]: crate::room::Rooms
    pub fn rooms<R: crate::room::Room>(mut self, rooms: &crate::room::Rooms<R>) -> Self {
        self.rooms.0.push(Arc::new(rooms.clone()));
        self
    }

    /// The settings every worker gets, and how many workers (for the
    /// simulated engine of [`crate::testing`], which has no sockets).
    pub(crate) fn sim_settings(&self) -> (Settings, usize) {
        let settings = Settings {
            limits: self.workers.limits.clone(),
            max_sessions: self.workers.max_sessions,
            max_sessions_per_ip: self.max_sessions_per_ip,
            keepalive: None,
            proxy: self.proxy.clone(),
            websocket: self.websocket.clone(),
            tls: self.tls.clone(),
            registry: Arc::new(crate::topic::Registry::default()),
            rooms: self.rooms.clone(),
        };
        (settings, self.workers.threads)
    }

    /// Checks the configuration without starting anything; the error
    /// names the setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |setting, problem: &str| Err(ConfigError::new(setting, problem));
        self.workers.validate()?;
        if self.workers.threads > 1 && self.accept == Accept::ReusePort && !socket::REUSE_PORT {
            return bad(
                Setting::Accept,
                "reuse-port needs SO_REUSEPORT, which this OS lacks: use hand-off",
            );
        }
        if self.max_sessions_per_ip == Some(0) {
            return bad(Setting::MaxSessionsPerIp, "must be at least 1 (or no cap)");
        }
        if let Some(p) = &self.proxy {
            if p.trusted.is_empty() {
                return bad(Setting::TrustedProxies, "must name at least one network");
            }
            if p.header_timeout.is_zero() {
                return bad(Setting::ProxyHeaderTimeout, "must be above zero");
            }
        }
        #[cfg(feature = "redis")]
        if let Some(bridge) = &self.redis {
            bridge.validate()?;
        }
        #[cfg(feature = "websocket")]
        for ws in self
            .websocket
            .iter()
            .chain(self.websocket_listeners.iter().map(|(_, c)| c))
        {
            ws.validate()?;
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            tls.validate()?;
            if !tls.is_server() {
                return bad(
                    Setting::Tls,
                    "is a client's configuration: a server needs TlsConfig::server_pem or TlsConfig::server",
                );
            }
        }
        Ok(())
    }

    /// Binds, starts the workers and returns once they serve. `factory`
    /// makes one handler per accepted connection, on the worker thread that
    /// will own it.
    pub fn start<H, F>(self, factory: F) -> io::Result<ServerHandle>
    where
        H: Handler,
        F: Fn() -> H + Send + Sync + 'static,
    {
        self.start_named("iocore-server", factory)
    }

    /// [`ServerBuilder::start`], with the worker threads named `name`.
    fn start_named<H, F>(self, name: &str, factory: F) -> io::Result<ServerHandle>
    where
        H: Handler,
        F: Fn() -> H + Send + Sync + 'static,
    {
        self.validate()?;
        let engine = self.workers.engine.resolve()?;
        let hand_off = self.workers.threads > 1 && self.accept == Accept::HandOff;
        let reuse_port = self.workers.threads > 1 && !hand_off;
        let listen = |addr: &SocketAddr, reuse_port: bool| {
            socket::listen(addr, self.backlog, reuse_port)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        // Listeners sharing a chosen port: a plain bind first, so that if
        // another process (even one using SO_REUSEPORT) holds the address
        // we say so instead of silently sharing its port. Port 0 needs no
        // check (the kernel never hands out a port in use, SO_REUSEPORT or
        // not), and is bound once and kept: no window in which another
        // socket could take the port between two binds.
        if reuse_port && self.addr.port() != 0 {
            drop(listen(&self.addr, false)?);
        }
        let first = listen(&self.addr, reuse_port)?;
        let local_addr = socket::local_addr(&first)?;
        let factory: crate::engine::Factory<H> = Arc::new(factory);
        let mut first = Some(first);
        let mut specs = Vec::with_capacity(self.workers.threads);
        for _ in 0..self.workers.threads {
            let listener = match first.take() {
                Some(l) => Some(l),
                None if reuse_port => Some(listen(&local_addr, true)?),
                None => None,
            };
            specs.push(WorkerSpec {
                listener,
                factory: Some(factory.clone()),
            });
        }
        let registry = Arc::new(crate::topic::Registry::default());
        #[cfg(feature = "redis")]
        let mut bridge = match &self.redis {
            Some(config) => Some(crate::bridge::Bridge::new(config, registry.clone())?),
            None => None,
        };
        let settings = Settings {
            limits: self.workers.limits,
            max_sessions: self.workers.max_sessions,
            max_sessions_per_ip: self.max_sessions_per_ip,
            keepalive: self.workers.keepalive,
            proxy: self.proxy.clone(),
            websocket: self.websocket.clone(),
            tls: self.tls.clone(),
            registry: registry.clone(),
            rooms: self.rooms.clone(),
        };
        #[cfg(feature = "websocket")]
        let ws_listeners = self
            .websocket_listeners
            .iter()
            .map(|(addr, config)| Ok((super::acceptor::Acceptor::bind(*addr)?, config.clone())))
            .collect::<io::Result<Vec<_>>>()?;
        #[allow(unused_variables)]
        let (runtime, inboxes) = Runtime::start(name, engine, specs, settings, hand_off)?;
        #[cfg(feature = "websocket")]
        let mut acceptors = Vec::new();
        #[cfg(feature = "websocket")]
        for (listener, config) in ws_listeners {
            match super::acceptor::Acceptor::start(listener, inboxes.clone(), config, self.tls.clone()) {
                Ok(a) => acceptors.push(a),
                Err(e) => {
                    let mut runtime = runtime;
                    runtime.stop(Duration::ZERO);
                    let _ = runtime.join();
                    return Err(e);
                }
            }
        }
        #[cfg(feature = "websocket")]
        for a in &acceptors {
            tracing::info!(addr = %a.local_addr(), "serving WebSocket clients");
        }
        #[cfg(feature = "redis")]
        if let Some(b) = &mut bridge {
            b.run(runtime.injector())?;
        }
        tracing::info!(
            addr = %local_addr,
            engine = %engine,
            threads = self.workers.threads,
            accept = %self.accept,
            proxy_protocol = self.proxy.is_some(),
            websocket = self.websocket.is_some(),
            tls = self.tls.is_some(),
            "serving"
        );
        #[cfg(feature = "metrics")]
        let exporter = {
            #[allow(unused_mut)]
            let mut source = runtime.metrics_source();
            #[cfg(feature = "redis")]
            {
                source.bridge = bridge.as_ref().map(|b| b.stats_reader());
            }
            Arc::new(crate::metrics::Exporter::new(
                source,
                self.metrics_registry.clone(),
            ))
        };
        #[cfg(feature = "metrics")]
        let metrics = match self.metrics {
            Some(addr) => match start_metrics(addr, engine, exporter.clone()) {
                Ok(m) => Some(Box::new(m)),
                Err(e) => {
                    // A half-started server is no use: dropping the
                    // runtime stops its workers.
                    drop(runtime);
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(ServerHandle {
            runtime,
            local_addr,
            #[cfg(feature = "websocket")]
            acceptors,
            #[cfg(feature = "redis")]
            bridge,
            #[cfg(feature = "metrics")]
            exporter,
            #[cfg(feature = "metrics")]
            metrics,
        })
    }
}

/// Starts the `/metrics` endpoint: an iocore server of one worker.
#[cfg(feature = "metrics")]
fn start_metrics(
    addr: SocketAddr,
    engine: EngineKind,
    exporter: Arc<crate::metrics::Exporter>,
) -> io::Result<ServerHandle> {
    let limits = crate::Limits {
        // Room for a large scrape answer (many workers) queued at once.
        max_send_queue: 64 * 1024 * 1024,
        send_high_watermark: 1024 * 1024,
        send_low_watermark: 512 * 1024,
        max_recv_buffer: 2 * crate::metrics::http::MAX_REQUEST,
        ..crate::Limits::default()
    };
    let mut b = Server::builder()
        .addr(addr)
        .engine(engine)
        .threads(1)
        .max_sessions(1024)
        .limits(limits);
    b.metrics = None;
    let handle = b
        .start_named("iocore-metrics", move || {
            crate::metrics::http::Endpoint::new(exporter.clone())
        })
        .map_err(|e| io::Error::new(e.kind(), format!("metrics endpoint: {e}")))?;
    tracing::info!(url = %format_args!("http://{}/metrics", handle.local_addr()), "serving metrics");
    Ok(handle)
}

/// A running server. Dropping it stops the server at once (no grace);
/// call [`ServerHandle::shutdown`] for a graceful stop.
#[must_use = "dropping the handle stops the server at once: keep it, or call join() or shutdown()"]
pub struct ServerHandle {
    runtime: Runtime,
    local_addr: SocketAddr,
    /// The further listeners' accepting threads.
    #[cfg(feature = "websocket")]
    acceptors: Vec<super::acceptor::Acceptor>,
    /// The relay of topics to other instances, if any.
    #[cfg(feature = "redis")]
    bridge: Option<crate::bridge::Bridge>,
    #[cfg(feature = "metrics")]
    exporter: Arc<crate::metrics::Exporter>,
    /// The `/metrics` endpoint's own server, if one was asked for.
    #[cfg(feature = "metrics")]
    metrics: Option<Box<ServerHandle>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The addresses of the further WebSocket listeners
    /// ([`ServerBuilder::websocket_listener`]), in the order given.
    #[cfg(feature = "websocket")]
    pub fn websocket_addrs(&self) -> Vec<SocketAddr> {
        self.acceptors.iter().map(|a| a.local_addr()).collect()
    }

    /// The engine serving.
    pub fn engine(&self) -> EngineKind {
        self.runtime.engine()
    }

    /// Counters summed over the workers.
    pub fn stats(&self) -> Stats {
        self.runtime.stats()
    }

    /// The counters of every kind of rooms this server runs, summed (one
    /// kind's: [`crate::room::Rooms::stats`]).
    pub fn room_stats(&self) -> crate::room::RoomStats {
        self.runtime.room_stats()
    }

    /// Each worker's counters, by worker index.
    pub fn worker_stats(&self) -> Vec<Stats> {
        self.runtime.worker_stats()
    }

    /// The Redis bridge's counters, if the server has one
    /// ([`ServerBuilder::redis`]).
    #[cfg(feature = "redis")]
    pub fn bridge_stats(&self) -> Option<crate::bridge::BridgeStats> {
        self.bridge.as_ref().map(|b| b.stats())
    }

    /// Where the `/metrics` endpoint listens, if it was asked for
    /// ([`ServerBuilder::metrics`]).
    #[cfg(feature = "metrics")]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The text a scrape of the `/metrics` endpoint would get now, in
    /// `format` (whether or not the endpoint runs).
    #[cfg(feature = "metrics")]
    pub fn metrics_text(&self, format: crate::metrics::Format) -> String {
        self.exporter.encode(format)
    }

    /// Queues `buf` on session `id` from any thread, through the owning
    /// worker's inbox, as [`crate::Session::send`] would (same limits:
    /// over [`crate::Limits::max_send_queue`] the session is closed).
    ///
    /// Ordering: requests one thread makes to one session are carried out
    /// in the order made, so its sends arrive in that order. An `id` whose
    /// session has ended (its slot free or reused by a newer session — the
    /// generation in the id tells) is dropped by the worker and counted in
    /// [`Stats::stale_requests`], never delivered to another session. An
    /// error means the request could not be handed over at all.
    pub fn send(&self, id: SessionId, buf: impl Into<Bytes>) -> Result<(), ToSessionError> {
        self.runtime.to_session(id, Remote::Send { id, buf: buf.into() })
    }

    /// Closes session `id` gracefully from any thread (queued data is sent
    /// first, then FIN; the handler hears [`crate::CloseReason::LocalClose`]);
    /// ordered with [`ServerHandle::send`]s from the same thread.
    pub fn close(&self, id: SessionId) -> Result<(), ToSessionError> {
        self.runtime.to_session(id, Remote::Close { id })
    }

    /// Publishes `buf` to every subscriber of `topic` (see
    /// [`crate::Session::publish`]) from any thread: one command per
    /// worker, each fanning the one buffer out to its subscribers.
    /// Messages one thread publishes reach each subscriber in order.
    pub fn publish(&self, topic: &str, buf: impl Into<Bytes>) -> Result<(), ToSessionError> {
        self.runtime.publish(topic, buf.into())
    }

    /// Counters of `topic`, if a session subscribes to it now.
    pub fn topic(&self, topic: &str) -> Option<TopicStats> {
        self.runtime.registry().stats(topic)
    }

    /// Starts a graceful stop and returns at once: listeners close, every
    /// session flushes its queue and closes with
    /// [`crate::CloseReason::ServerShutdown`]; what is still open after
    /// `grace` is reset. [`ServerHandle::join`] waits for the end.
    pub fn stop(&self, grace: Duration) {
        #[cfg(feature = "websocket")]
        for a in &self.acceptors {
            a.stop();
        }
        self.runtime.stop(grace);
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.stop(Duration::ZERO);
        }
    }

    /// Waits until every worker has finished (after a stop).
    pub fn join(mut self) -> io::Result<()> {
        let served = self.runtime.join();
        // The bridge outlives the workers' last publishes.
        #[cfg(feature = "redis")]
        if let Some(mut b) = self.bridge.take() {
            b.stop();
        }
        // The metrics endpoint stops with the server (also when the
        // server's workers ended by themselves).
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics.take() {
            m.stop(Duration::ZERO);
            let _ = m.join();
        }
        served
    }

    /// [`stop`](ServerHandle::stop) then [`join`](ServerHandle::join).
    pub fn shutdown(self, grace: Duration) -> io::Result<()> {
        self.stop(grace);
        self.join()
    }

    /// Whether every worker has finished.
    pub fn is_finished(&self) -> bool {
        self.runtime.is_finished()
    }
}
