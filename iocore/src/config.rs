//! Why a configuration cannot be used: [`ConfigError`] names the
//! [`Setting`] at fault, so that a front end can say it in its own words
//! (the `iocore` command names its flag, `--max-send-queue`).

use std::fmt;
use std::io;

/// A setting of [`crate::Limits`], [`crate::ServerBuilder`] or
/// [`crate::ClientBuilder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// Worker threads.
    Threads,
    /// The accept strategy ([`crate::Accept`]).
    Accept,
    /// [`crate::ServerBuilder::max_sessions`].
    MaxSessions,
    /// [`crate::ServerBuilder::max_sessions_per_ip`].
    MaxSessionsPerIp,
    /// [`crate::Limits::max_recv_buffer`].
    MaxRecvBuffer,
    /// [`crate::Limits::max_send_queue`].
    MaxSendQueue,
    /// [`crate::Limits::send_high_watermark`].
    SendHighWatermark,
    /// [`crate::Limits::send_low_watermark`].
    SendLowWatermark,
    /// [`crate::Limits::send_stall_timeout`].
    SendStallTimeout,
    /// [`crate::Limits::idle_timeout`].
    IdleTimeout,
    /// [`crate::Limits::linger`].
    Linger,
    /// [`crate::Limits::connect_timeout`].
    ConnectTimeout,
    /// The networks trusted to send PROXY headers.
    TrustedProxies,
    /// How long a PROXY header may take.
    ProxyHeaderTimeout,
    /// The Redis server of the topic bridge (feature `redis`).
    RedisUrl,
    /// [`crate::room::Rooms::inbox_limit`].
    RoomInboxLimit,
    /// [`crate::room::Rooms::jobs_per_turn`].
    RoomJobsPerTurn,
    /// The largest WebSocket message (feature `websocket`).
    WebSocketMaxMessage,
    /// The largest WebSocket upgrade request (feature `websocket`).
    WebSocketMaxRequest,
    /// How long a transport's opening handshake may take.
    HandshakeTimeout,
    /// A WebSocket client's request target (feature `websocket`).
    WebSocketPath,
    /// The TLS configuration (feature `tls`).
    Tls,
}

impl Setting {
    /// The library's name for it (the builder method or field).
    pub fn name(self) -> &'static str {
        match self {
            Setting::Threads => "threads",
            Setting::Accept => "accept",
            Setting::MaxSessions => "max_sessions",
            Setting::MaxSessionsPerIp => "max_sessions_per_ip",
            Setting::MaxRecvBuffer => "max_recv_buffer",
            Setting::MaxSendQueue => "max_send_queue",
            Setting::SendHighWatermark => "send_high_watermark",
            Setting::SendLowWatermark => "send_low_watermark",
            Setting::SendStallTimeout => "send_stall_timeout",
            Setting::IdleTimeout => "idle_timeout",
            Setting::Linger => "linger",
            Setting::ConnectTimeout => "connect_timeout",
            Setting::TrustedProxies => "proxy_protocol trusted networks",
            Setting::ProxyHeaderTimeout => "proxy_protocol header_timeout",
            Setting::RedisUrl => "redis URL",
            Setting::RoomInboxLimit => "rooms inbox_limit",
            Setting::RoomJobsPerTurn => "rooms jobs_per_turn",
            Setting::WebSocketMaxMessage => "websocket max_message",
            Setting::WebSocketMaxRequest => "websocket max_request",
            Setting::HandshakeTimeout => "handshake_timeout",
            Setting::WebSocketPath => "websocket path",
            Setting::Tls => "tls",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A setting that cannot be used, and why: `problem` completes a sentence
/// that starts with the setting's name ("must be at least 1").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting at fault.
    pub setting: Setting,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(setting: Setting, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            problem: problem.into(),
        }
    }

    /// Finds the `ConfigError` inside an error a builder's `start`
    /// returned, if that is why it failed.
    pub fn of(e: &io::Error) -> Option<&ConfigError> {
        e.get_ref()?.downcast_ref::<ConfigError>()
    }
}

/// Worker threads: 1 to 255 (a worker's index rides in a session id's
/// byte), for servers and clients alike.
pub(crate) fn check_threads(threads: usize) -> Result<(), ConfigError> {
    match threads {
        1..=255 => Ok(()),
        _ => Err(ConfigError::new(Setting::Threads, "must be between 1 and 255")),
    }
}

/// A name that names nothing of its kind (an accept strategy, say): what
/// was given and the names known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// What kind of thing was named ("accept strategy").
    pub kind: &'static str,
    /// The name given.
    pub given: String,
    /// The names of that kind.
    pub known: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} '{}' (expected one of: {})",
            self.kind,
            self.given,
            self.known.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for io::Error {
    fn from(e: ConfigError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}
