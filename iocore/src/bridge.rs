//! Topics across server instances through Redis pub/sub (cargo feature
//! `redis`).
//!
//! A server started with [`crate::ServerBuilder::redis`] runs a bridge of
//! two threads beside its workers, each with its own Redis connection
//! (the `redis` crate's synchronous API; no async runtime):
//!
//! - the **subscriber** subscribes to the channel of every topic that has
//!   a subscriber on this server (`{prefix}{topic}`, prefix `iocore:topic:`
//!   by default), unsubscribes when its last one leaves, and hands every
//!   message another instance published to the workers' fan-out, as a
//!   publish from another thread would be;
//! - the **publisher** publishes every message published here (by a
//!   session or [`crate::ServerHandle::publish`]) to the topic's channel.
//!
//! Each message carries this instance's id (random, made at start), so an
//! instance skips its own messages when Redis echoes them: local members
//! get a message once, from the local fan-out, and every other instance
//! once, from Redis. Messages from one publisher keep their order (one
//! queue, one connection, one subscriber thread, one inbox per worker).
//!
//! When Redis goes away, local delivery goes on. The bridge logs it once
//! per connection, counts every message it could not relay
//! ([`BridgeStats::unrelayed`]: Redis pub/sub keeps nothing for later, so
//! neither do we), retries with backoff (0.1 s doubling to 5 s), and after
//! reconnecting subscribes again to every topic that has subscribers.
//! [`crate::Session::topic_ready`] tells whether a topic's subscription is
//! in place (or Redis is away), so that an application can wait for it
//! before telling a member "joined".

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::topic::{Registry, Relay};

/// Where a server's topics meet those of its other instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisBridge {
    /// The Redis server: `redis://host:port[/db]`.
    pub url: String,
    /// Put before a topic's name to make its Redis channel. Instances
    /// share topics when they share the prefix.
    pub channel_prefix: String,
    /// Most messages waiting to be published; beyond it (Redis slower
    /// than the publishes) messages are counted as unrelayed.
    pub queue: usize,
}

impl RedisBridge {
    /// A bridge through the Redis server at `url`, with the default
    /// channel prefix (`iocore:topic:`) and queue (65,536 messages).
    pub fn new(url: impl Into<String>) -> RedisBridge {
        RedisBridge {
            url: url.into(),
            channel_prefix: "iocore:topic:".into(),
            queue: 65_536,
        }
    }

    /// Checks the URL (without connecting): `redis://HOST[:PORT][/DB]`,
    /// with `USER:PASSWORD@` if needed, `rediss://` for TLS (if the
    /// `redis` crate was built with it) or `unix:///PATH`.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        self.client().map(drop)
    }

    fn client(&self) -> Result<redis::Client, crate::ConfigError> {
        redis::Client::open(self.url.as_str()).map_err(|_| {
            crate::ConfigError::new(
                crate::Setting::RedisUrl,
                format!(
                    "'{}' is not a Redis URL: use redis://HOST[:PORT][/DB] (with USER:PASSWORD@ before HOST if needed) or unix:///PATH",
                    self.url
                ),
            )
        })
    }
}

/// A bridge's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeStats {
    /// Both connections are up (the subscriber's and the publisher's).
    pub connected: bool,
    /// Channels the subscriber is subscribed to now.
    pub channels: u64,
    /// Messages published here and published to Redis.
    pub relayed_out: u64,
    /// Messages from other instances handed to the local fan-out.
    pub relayed_in: u64,
    /// Messages published here that could not be published to Redis
    /// (Redis away, or the queue full): delivered locally only.
    pub unrelayed: u64,
    /// This instance's own messages, echoed by Redis and skipped.
    pub own_skipped: u64,
    /// Connections made again after losing one.
    pub reconnects: u64,
}

/// Bytes before a relayed message's body: a tag, a format version, the
/// publishing instance's id.
const MAGIC: &[u8; 3] = b"IC\x01";
const HEADER: usize = MAGIC.len() + 16;
/// How often the subscriber looks at its subscription changes while no
/// message comes.
const POLL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MOST: Duration = Duration::from_secs(5);
/// How long the publisher's connection may sit unused before it is
/// checked with a PING.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A message published here, on its way to Redis.
type Outgoing = (Arc<str>, Bytes);

/// A subscription change for the subscriber thread.
enum Change {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
}

/// What the threads and the workers share.
struct Shared {
    instance: [u8; 16],
    prefix: String,
    client: redis::Client,
    stop: AtomicBool,
    changes: mpsc::Sender<Change>,
    outbox: mpsc::SyncSender<Outgoing>,
    /// Topics whose subscription Redis confirmed.
    confirmed: Mutex<HashSet<Arc<str>>>,
    sub_up: AtomicBool,
    pub_up: AtomicBool,
    relayed_out: AtomicU64,
    relayed_in: AtomicU64,
    unrelayed: AtomicU64,
    own_skipped: AtomicU64,
    reconnects: AtomicU64,
}

impl Shared {
    fn channel(&self, topic: &str) -> Vec<u8> {
        let mut c = Vec::with_capacity(self.prefix.len() + topic.len());
        c.extend_from_slice(self.prefix.as_bytes());
        c.extend_from_slice(topic.as_bytes());
        c
    }

    fn confirmed(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn change(&self, c: Change) {
        let _ = self.changes.send(c);
    }
}

impl Shared {
    fn stats(&self) -> BridgeStats {
        BridgeStats {
            connected: self.sub_up.load(Relaxed) && self.pub_up.load(Relaxed),
            channels: self.confirmed().len() as u64,
            relayed_out: self.relayed_out.load(Relaxed),
            relayed_in: self.relayed_in.load(Relaxed),
            unrelayed: self.unrelayed.load(Relaxed),
            own_skipped: self.own_skipped.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
        }
    }
}

impl Relay for Shared {
    fn joined(&self, topic: &Arc<str>) {
        self.change(Change::Subscribe(topic.clone()));
    }

    fn left(&self, topic: &Arc<str>) {
        self.change(Change::Unsubscribe(topic.clone()));
    }

    fn publish(&self, topic: &Arc<str>, buf: &Bytes) {
        if !self.pub_up.load(Relaxed) {
            self.unrelayed.fetch_add(1, Relaxed);
            return;
        }
        if self.outbox.try_send((topic.clone(), buf.clone())).is_err() {
            self.unrelayed.fetch_add(1, Relaxed);
        }
    }

    fn ready(&self, topic: &str) -> bool {
        !self.sub_up.load(Relaxed) || self.confirmed().contains(topic)
    }
}

/// A bridge; stopped and joined on drop.
pub(crate) struct Bridge {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    /// Until [`Bridge::run`]: the receiving ends of the threads' queues.
    /// (In a mutex: a `ServerHandle` is shared between threads.)
    pending: Mutex<Option<(mpsc::Receiver<Change>, mpsc::Receiver<Outgoing>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Bridge {
    /// Makes the bridge for `registry`, its relay from now on:
    /// subscription changes and publishes wait for [`Bridge::run`]. Fails
    /// only on a malformed configuration: an unreachable Redis is retried
    /// in the background.
    pub(crate) fn new(config: &RedisBridge, registry: Arc<Registry>) -> io::Result<Bridge> {
        let client = config.client()?;
        if config.queue == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the redis relay queue must hold at least one message",
            ));
        }
        let (changes_tx, changes_rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::sync_channel(config.queue);
        let shared = Arc::new(Shared {
            instance: instance_id(),
            prefix: config.channel_prefix.clone(),
            client,
            stop: AtomicBool::new(false),
            changes: changes_tx,
            outbox: out_tx,
            confirmed: Mutex::new(HashSet::new()),
            sub_up: AtomicBool::new(false),
            // Until the first connect fails, publishes are queued.
            pub_up: AtomicBool::new(true),
            relayed_out: AtomicU64::new(0),
            relayed_in: AtomicU64::new(0),
            unrelayed: AtomicU64::new(0),
            own_skipped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        registry.set_relay(shared.clone());
        tracing::info!(url = %config.url, prefix = %config.channel_prefix, "relaying topics through redis");
        Ok(Bridge {
            shared,
            registry,
            pending: Mutex::new(Some((changes_rx, out_rx))),
            threads: Vec::new(),
        })
    }

    /// Starts the bridge's threads; messages from other instances go to
    /// `inject`.
    pub(crate) fn run(&mut self, inject: impl Fn(Arc<str>, Bytes) + Send + 'static) -> io::Result<()> {
        let pending = self.pending.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let Some((changes, outbox)) = pending else {
            return Ok(());
        };
        let (shared, registry) = (self.shared.clone(), self.registry.clone());
        self.threads.push(
            std::thread::Builder::new()
                .name("iocore-redis-sub".into())
                .spawn(move || subscriber(&shared, &registry, &changes, &inject))?,
        );
        let shared = self.shared.clone();
        self.threads.push(
            std::thread::Builder::new()
                .name("iocore-redis-pub".into())
                .spawn(move || publisher(&shared, &outbox))?,
        );
        Ok(())
    }

    /// The bridge's counters now.
    pub(crate) fn stats(&self) -> BridgeStats {
        self.shared.stats()
    }

    /// Reads the bridge's counters from anywhere (the metrics).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn stats_reader(&self) -> Arc<dyn Fn() -> BridgeStats + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || shared.stats())
    }

    /// Stops the threads (within [`POLL`] or so) and waits for them.
    pub(crate) fn stop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A random id for this instance, from the standard library's per-process
/// random hash keys, the time and the process id.
fn instance_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut id = [0u8; 16];
    for (i, half) in id.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    id
}

/// Waits out a backoff in short steps; false if stopping meanwhile.
fn pause(shared: &Shared, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shared.stop.load(Relaxed) {
            return false;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    !shared.stop.load(Relaxed)
}

/// Tracks one connection's outages: logs the first failure and the
/// recovery once each, and the backoff between attempts.
struct Outage {
    what: &'static str,
    down_since: Option<Instant>,
    backoff: Duration,
    ever_up: bool,
}

impl Outage {
    fn new(what: &'static str) -> Outage {
        Outage {
            what,
            down_since: None,
            backoff: BACKOFF_FIRST,
            ever_up: false,
        }
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) -> Duration {
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!(connection = self.what, error = %e, "redis unreachable: topics stay local until it is back; retrying");
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MOST);
        wait
    }

    fn up(&mut self, shared: &Shared) {
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                connection = self.what,
                after_ms = since.elapsed().as_millis() as u64,
                "redis is back"
            );
        }
        if self.ever_up {
            shared.reconnects.fetch_add(1, Relaxed);
        }
        self.ever_up = true;
        self.backoff = BACKOFF_FIRST;
    }
}

fn subscriber(
    shared: &Shared,
    registry: &Registry,
    changes: &mpsc::Receiver<Change>,
    inject: &dyn Fn(Arc<str>, Bytes),
) {
    let mut outage = Outage::new("subscriber");
    while !shared.stop.load(Relaxed) {
        let mut con = match shared.client.get_connection_with_timeout(CONNECT_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                let wait = outage.failed(&e);
                if !pause(shared, wait) {
                    return;
                }
                continue;
            }
        };
        let result = subscribed(shared, registry, changes, inject, &mut con, &mut outage);
        shared.sub_up.store(false, Relaxed);
        shared.confirmed().clear();
        match result {
            Ok(()) => return, // stopping
            Err(e) => {
                let wait = outage.failed(&e);
                if !pause(shared, wait) {
                    return;
                }
            }
        }
    }
}

/// Serves one subscriber connection until it fails (or the bridge stops).
fn subscribed(
    shared: &Shared,
    registry: &Registry,
    changes: &mpsc::Receiver<Change>,
    inject: &dyn Fn(Arc<str>, Bytes),
    con: &mut redis::Connection,
    outage: &mut Outage,
) -> redis::RedisResult<()> {
    let mut pubsub = con.as_pubsub();
    pubsub.set_read_timeout(Some(POLL))?;
    // Every topic with subscribers here now; changes queued meanwhile are
    // applied after, in order (subscribing twice is harmless).
    for topic in registry.names() {
        pubsub.subscribe(shared.channel(&topic))?;
        shared.confirmed().insert(topic);
    }
    shared.sub_up.store(true, Relaxed);
    outage.up(shared);
    while !shared.stop.load(Relaxed) {
        while let Ok(change) = changes.try_recv() {
            match change {
                Change::Subscribe(t) => {
                    pubsub.subscribe(shared.channel(&t))?;
                    shared.confirmed().insert(t);
                }
                Change::Unsubscribe(t) => {
                    shared.confirmed().remove(&t);
                    pubsub.unsubscribe(shared.channel(&t))?;
                }
            }
        }
        let msg = match pubsub.get_message() {
            Ok(m) => m,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        };
        let Some(topic) = msg.get_channel_name().strip_prefix(shared.prefix.as_str()) else {
            continue;
        };
        let payload = msg.get_payload_bytes();
        if payload.len() < HEADER || &payload[..MAGIC.len()] != MAGIC {
            tracing::debug!(channel = msg.get_channel_name(), "not an iocore message: ignored");
            continue;
        }
        if payload[MAGIC.len()..HEADER] == shared.instance {
            shared.own_skipped.fetch_add(1, Relaxed);
            continue;
        }
        shared.relayed_in.fetch_add(1, Relaxed);
        inject(topic.into(), Bytes::copy_from_slice(&payload[HEADER..]));
    }
    Ok(())
}

fn publisher(shared: &Shared, outbox: &mpsc::Receiver<Outgoing>) {
    let mut outage = Outage::new("publisher");
    let mut con: Option<redis::Connection> = None;
    let mut retry_at = Instant::now();
    let mut last_used = Instant::now();
    let mut payload = Vec::new();
    loop {
        if shared.stop.load(Relaxed) {
            return;
        }
        if con.is_none() && Instant::now() >= retry_at {
            match connect_publisher(shared) {
                Ok(c) => {
                    con = Some(c);
                    last_used = Instant::now();
                    shared.pub_up.store(true, Relaxed);
                    outage.up(shared);
                }
                Err(e) => {
                    shared.pub_up.store(false, Relaxed);
                    retry_at = Instant::now() + outage.failed(&e);
                }
            }
        }
        let (topic, buf) = match outbox.recv_timeout(POLL) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // An idle connection is checked now and then, so that a
                // Redis gone away shows (and is retried) before the next
                // publish meets it.
                if let Some(c) = con.as_mut().filter(|_| last_used.elapsed() >= IDLE_CHECK) {
                    last_used = Instant::now();
                    if let Err(e) = redis::cmd("PING").query::<String>(c) {
                        con = None;
                        shared.pub_up.store(false, Relaxed);
                        retry_at = Instant::now() + outage.failed(&e);
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        payload.clear();
        payload.extend_from_slice(MAGIC);
        payload.extend_from_slice(&shared.instance);
        payload.extend_from_slice(&buf);
        let channel = shared.channel(&topic);
        let publish = |c: &mut redis::Connection| -> redis::RedisResult<i64> {
            redis::cmd("PUBLISH").arg(&channel).arg(&payload).query(c)
        };
        let mut sent = match con.as_mut() {
            Some(c) => publish(c),
            None => {
                shared.unrelayed.fetch_add(1, Relaxed);
                continue;
            }
        };
        if sent.is_err() {
            // A connection that died while idle: one new attempt at once.
            con = connect_publisher(shared).ok();
            if let Some(c) = con.as_mut() {
                sent = publish(c);
            }
        }
        last_used = Instant::now();
        match sent {
            Ok(_) => {
                shared.relayed_out.fetch_add(1, Relaxed);
            }
            Err(e) => {
                shared.unrelayed.fetch_add(1, Relaxed);
                shared.pub_up.store(false, Relaxed);
                con = None;
                retry_at = Instant::now() + outage.failed(&e);
            }
        }
    }
}

/// A connection for publishing, with timeouts: a Redis that hangs must not
/// hold the relay forever.
fn connect_publisher(shared: &Shared) -> redis::RedisResult<redis::Connection> {
    let c = shared.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    c.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    Ok(c)
}
