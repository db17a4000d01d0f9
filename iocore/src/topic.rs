//! Publish/subscribe topics between sessions, in the spirit of
//! uWebSockets' `subscribe` / `publish`.
//!
//! Every worker keeps its own table of which of *its* sessions subscribe
//! to which topic, so a worker fans a message out to its
//! subscribers with no lock: it queues a clone of the same [`Bytes`] (a
//! reference count, no copy) on each. A publish reaches every other worker
//! at most once, as one inbox command carrying one `Bytes`. What the
//! workers share is only a registry of per-topic counters (subscribers
//! across the server, publishes, deliveries, subscribers closed at their
//! send-queue cap), touched under a lock when a session subscribes or
//! unsubscribes and with atomics otherwise.
//!
//! Nothing here costs a session anything until it subscribes: the tables
//! are per worker, keyed by topic and by subscribed session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Counters of one topic, summed over the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicStats {
    /// Sessions subscribed now.
    pub subscribers: u64,
    /// Messages published to it (each counted once, however many workers
    /// fanned it out).
    pub publishes: u64,
    /// Messages queued on subscribers.
    pub deliveries: u64,
    /// Subscribers closed because a delivery took their send queue over
    /// its cap ([`crate::CloseReason::SendQueueFull`]).
    pub closed_at_cap: u64,
}

/// One topic's shared counters.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    subscribers: AtomicU64,
    publishes: AtomicU64,
    deliveries: AtomicU64,
    closed_at_cap: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TopicStats {
        TopicStats {
            subscribers: self.subscribers.load(Relaxed),
            publishes: self.publishes.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            closed_at_cap: self.closed_at_cap.load(Relaxed),
        }
    }
}

/// The topics of a whole server: counters for each topic that has a
/// subscriber somewhere. An entry goes when its last subscriber does, so a
/// server whose rooms come and go does not grow.
#[derive(Default)]
pub(crate) struct Registry {
    topics: Mutex<HashMap<Arc<str>, Arc<Counters>>>,
    /// Carries the server's topics to other instances (a Redis bridge),
    /// if it has one.
    relay: std::sync::OnceLock<Arc<dyn Relay>>,
    /// The server's publish clock: every publish takes the next tick, and
    /// a subscription notes the tick it began at. A publish reaches only
    /// the subscriptions that began before it was made, even when it is
    /// fanned out on another worker after a later subscribe there.
    clock: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("topics", &self.lock().len())
            .field("relay", &self.relay.get().is_some())
            .finish()
    }
}

/// Carries topics between server instances: told when a topic gets its
/// first subscriber on this server and loses its last, and of every
/// publish made here (once per message). Calls must not block: they are
/// made from worker threads (under the registry's lock for the first two).
pub(crate) trait Relay: Send + Sync {
    /// `topic` got its first subscriber on this server.
    fn joined(&self, topic: &Arc<str>);
    /// `topic` lost its last subscriber on this server.
    fn left(&self, topic: &Arc<str>);
    /// A message was published to `topic` here.
    fn publish(&self, topic: &Arc<str>, buf: &Bytes);
    /// Whether messages published to `topic` elsewhere reach this server
    /// now.
    fn ready(&self, topic: &str) -> bool;
}

impl Registry {
    /// The tick of a publish being made now (see `clock`).
    pub(crate) fn stamp(&self) -> u64 {
        self.clock.fetch_add(1, SeqCst)
    }

    /// The tick a subscription beginning now notes: every publish made
    /// before has a smaller one, every publish made after at least this.
    fn now(&self) -> u64 {
        self.clock.load(SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Counters>>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A subscriber came: the topic's counters (made if new), with the
    /// topic's shared name.
    fn join(&self, name: &str) -> (Arc<str>, Arc<Counters>) {
        let mut topics = self.lock();
        let (name, counters) = match topics.get_key_value(name) {
            Some((n, c)) => (n.clone(), c.clone()),
            None => {
                let n: Arc<str> = name.into();
                let c = Arc::new(Counters::default());
                topics.insert(n.clone(), c.clone());
                if let Some(relay) = self.relay.get() {
                    relay.joined(&n);
                }
                (n, c)
            }
        };
        counters.subscribers.fetch_add(1, Relaxed);
        (name, counters)
    }

    /// A subscriber left; the entry goes with the last one.
    fn leave(&self, name: &str) {
        let mut topics = self.lock();
        if let Some(c) = topics.get(name) {
            if c.subscribers.fetch_sub(1, Relaxed) == 1 {
                if let Some((n, _)) = topics.remove_entry(name) {
                    if let Some(relay) = self.relay.get() {
                        relay.left(&n);
                    }
                }
            }
        }
    }

    /// Installs the relay to other instances (once, before any session
    /// subscribes).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the Redis bridge's
    pub(crate) fn set_relay(&self, relay: Arc<dyn Relay>) {
        let _ = self.relay.set(relay);
    }

    /// A message was published here: handed to the relay, if any.
    pub(crate) fn relay(&self, topic: &Arc<str>, buf: &Bytes) {
        if let Some(relay) = self.relay.get() {
            relay.publish(topic, buf);
        }
    }

    /// Whether messages published to `topic` on other instances reach
    /// this server now: always without a relay.
    pub(crate) fn remote_ready(&self, topic: &str) -> bool {
        self.relay.get().map_or(true, |r| r.ready(topic))
    }

    /// The topics that have a subscriber here.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the Redis bridge's
    pub(crate) fn names(&self) -> Vec<Arc<str>> {
        self.lock().keys().cloned().collect()
    }

    /// The counters of `name`, if it has a subscriber somewhere.
    pub(crate) fn stats(&self, name: &str) -> Option<TopicStats> {
        self.lock().get(name).map(|c| c.snapshot())
    }

    /// Sessions subscribed to `name` across the server.
    pub(crate) fn subscribers(&self, name: &str) -> u64 {
        self.lock().get(name).map_or(0, |c| c.subscribers.load(Relaxed))
    }

    /// Topics with a subscriber, and subscriptions over all of them.
    #[cfg(feature = "metrics")]
    pub(crate) fn totals(&self) -> (usize, u64) {
        let topics = self.lock();
        let subscriptions = topics.values().map(|c| c.subscribers.load(Relaxed)).sum();
        (topics.len(), subscriptions)
    }

    /// Counts a publish to `name` (once per message, by its publisher).
    pub(crate) fn published(&self, name: &str) {
        if let Some(c) = self.lock().get(name) {
            c.publishes.fetch_add(1, Relaxed);
        }
    }
}

/// One topic on one worker.
struct Local {
    name: Arc<str>,
    /// This worker's subscribed sessions: token, and the publish clock's
    /// tick when the subscription began.
    subscribers: Vec<(u64, u64)>,
    counters: Arc<Counters>,
}

/// A publish not yet fanned out on this worker: made during a handler's
/// callback, delivered when the worker gets to it (after the callback, in
/// the order published).
#[derive(Debug)]
pub(crate) struct Pending {
    pub topic: Arc<str>,
    pub buf: Bytes,
    /// Its tick of the publish clock (see [`Registry::stamp`]).
    pub stamp: u64,
    /// A session not to deliver to (the publisher: it skipped itself, or
    /// was served at once).
    pub skip: Option<u64>,
}

/// One worker's topics: its subscribed sessions by topic and the topics of
/// each subscribed session.
pub(crate) struct Topics {
    registry: Arc<Registry>,
    by_name: HashMap<Arc<str>, Local>,
    by_session: HashMap<u64, Vec<Arc<str>>>,
}

impl Topics {
    pub(crate) fn new(registry: Arc<Registry>) -> Topics {
        Topics {
            registry,
            by_name: HashMap::new(),
            by_session: HashMap::new(),
        }
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Subscribes session `token`; false if it already was.
    pub(crate) fn subscribe(&mut self, token: u64, name: &str) -> bool {
        if self.is_subscribed(token, name) {
            return false;
        }
        let local = match self.by_name.get_mut(name) {
            Some(local) => {
                // Counted in the registry too (another worker may be
                // subscribing at the same time).
                let (_, counters) = self.registry.join(name);
                debug_assert!(Arc::ptr_eq(&counters, &local.counters));
                local
            }
            None => {
                let (name, counters) = self.registry.join(name);
                self.by_name.entry(name.clone()).or_insert(Local {
                    name,
                    subscribers: Vec::new(),
                    counters,
                })
            }
        };
        local.subscribers.push((token, self.registry.now()));
        let name = local.name.clone();
        self.by_session.entry(token).or_default().push(name);
        true
    }

    /// Unsubscribes session `token`; false if it was not subscribed.
    pub(crate) fn unsubscribe(&mut self, token: u64, name: &str) -> bool {
        let Some(topics) = self.by_session.get_mut(&token) else {
            return false;
        };
        let Some(i) = topics.iter().position(|t| &**t == name) else {
            return false;
        };
        topics.swap_remove(i);
        if topics.is_empty() {
            self.by_session.remove(&token);
        }
        self.drop_subscriber(token, name);
        true
    }

    fn drop_subscriber(&mut self, token: u64, name: &str) {
        if let Some(local) = self.by_name.get_mut(name) {
            if let Some(i) = local.subscribers.iter().position(|&(t, _)| t == token) {
                local.subscribers.swap_remove(i);
            }
            if local.subscribers.is_empty() {
                self.by_name.remove(name);
            }
        }
        self.registry.leave(name);
    }

    /// Session `token` ended: it leaves all its topics.
    pub(crate) fn remove_session(&mut self, token: u64) {
        if let Some(topics) = self.by_session.remove(&token) {
            for name in topics {
                self.drop_subscriber(token, &name);
            }
        }
    }

    /// Whether session `token` subscribes to `name`.
    pub(crate) fn is_subscribed(&self, token: u64, name: &str) -> bool {
        self.by_session
            .get(&token)
            .is_some_and(|topics| topics.iter().any(|t| &**t == name))
    }

    /// The topics session `token` subscribes to.
    #[cfg(test)]
    pub(crate) fn topics_of(&self, token: u64) -> &[Arc<str>] {
        self.by_session.get(&token).map_or(&[], |t| t.as_slice())
    }

    /// `name` as a shared string (this worker's, if it has the topic).
    pub(crate) fn shared_name(&self, name: &str) -> Arc<str> {
        match self.by_name.get_key_value(name) {
            Some((n, _)) => n.clone(),
            None => name.into(),
        }
    }

    /// Counts a publish to `name` made on this worker: without a lock if
    /// the worker has the topic.
    pub(crate) fn count_publish(&self, name: &str) {
        match self.by_name.get(name) {
            Some(local) => {
                local.counters.publishes.fetch_add(1, Relaxed);
            }
            None => self.registry.published(name),
        }
    }

    /// The publisher's own copy of a publish was queued (`ok`) or took its
    /// queue over the cap.
    pub(crate) fn count_own_delivery(&self, name: &str, ok: bool) {
        if let Some(local) = self.by_name.get(name) {
            match ok {
                true => local.counters.delivered(1),
                false => local.counters.closed_at_cap(),
            }
        }
    }

    /// Copies into `out` (cleared first) the tokens of `name`'s
    /// subscribers on this worker that subscribed before the publish with
    /// tick `stamp` was made, and returns the topic's counters.
    pub(crate) fn subscribers_into(
        &self,
        name: &str,
        stamp: u64,
        out: &mut Vec<u64>,
    ) -> Option<Arc<Counters>> {
        out.clear();
        let local = self.by_name.get(name)?;
        out.extend(
            local
                .subscribers
                .iter()
                .filter(|&&(_, since)| since <= stamp)
                .map(|&(token, _)| token),
        );
        Some(local.counters.clone())
    }
}

impl Counters {
    pub(crate) fn delivered(&self, n: u64) {
        if n > 0 {
            self.deliveries.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn closed_at_cap(&self) {
        self.closed_at_cap.fetch_add(1, Relaxed);
    }
}

/// The topic side of a session's handle: its subscriptions and publishes
/// (topics sit on top of sessions: the session core knows nothing of them
/// but the worker's tables its context carries).
impl crate::session::Session<'_> {
    /// Subscribes this session to `topic`, at once: it gets every message
    /// published to the topic from now on, wherever it is published, until
    /// it unsubscribes or ends. False if it already was subscribed.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.hub.topics.borrow_mut().subscribe(self.id.token(), topic)
    }

    /// Ends this session's subscription to `topic`; false if it had none.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.hub.topics.borrow_mut().unsubscribe(self.id.token(), topic)
    }

    /// Whether this session subscribes to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.hub.topics.borrow().is_subscribed(self.id.token(), topic)
    }

    /// Whether messages published to `topic` on other server instances
    /// reach this server now: with a Redis bridge
    /// (`ServerBuilder::redis`, feature `redis`), once the bridge's subscription
    /// to the topic's channel is confirmed (or while Redis is away, when
    /// nothing can come); always without one. A chat server can wait for
    /// it before telling a member "joined".
    pub fn topic_ready(&self, topic: &str) -> bool {
        self.hub.topics.borrow().registry().remote_ready(topic)
    }

    /// Sessions subscribed to `topic` across the whole server now.
    pub fn subscribers(&self, topic: &str) -> u64 {
        self.hub.topics.borrow().registry().subscribers(topic)
    }

    /// Publishes `buf` to every subscriber of `topic` on every worker,
    /// this session included if it subscribes. The one buffer is shared by
    /// all (a reference count each, no copy).
    ///
    /// Ordering: messages one session publishes reach each subscriber in
    /// the order published. A subscription hears what is published after
    /// it began, and nothing published before, even a publish another
    /// worker has not fanned out yet. This session's own copy is queued at once (in
    /// order with its [`Session::send`](crate::Session::send)s); the others are queued after the
    /// callback returns. A subscriber whose send queue would go over its
    /// cap is closed ([`CloseReason::SendQueueFull`](crate::CloseReason::SendQueueFull)) without holding the
    /// others up.
    pub fn publish(&mut self, topic: &str, buf: impl Into<Bytes>) {
        let buf = buf.into();
        let me = self.id.token();
        if self.is_subscribed(topic) && self.is_open() {
            let delivered = self.queue_own(&buf);
            self.hub
                .topics
                .borrow()
                .count_own_delivery(topic, delivered.is_ok());
            if delivered.is_ok() {
                self.hub.own_deliveries.set(self.hub.own_deliveries.get() + 1);
                self.hub.message_sent();
            }
        }
        self.defer_publish(topic, buf, me);
    }

    /// Queues this session's own copy of a publish, as a fan-out would
    /// deliver it: framed on a WebSocket session.
    fn queue_own(&mut self, buf: &Bytes) -> Result<(), crate::SendError> {
        #[cfg(feature = "websocket")]
        if self.is_websocket() {
            return self.frame_ws(crate::websocket::Opcode::Binary, buf.clone());
        }
        self.core.queue(buf.clone(), self.now, self.limits)
    }

    /// Publishes `buf` to every subscriber of `topic` but this session; see
    /// [`Session::publish`](crate::Session::publish).
    pub fn publish_except_self(&mut self, topic: &str, buf: impl Into<Bytes>) {
        self.defer_publish(topic, buf.into(), self.id.token());
    }

    fn defer_publish(&mut self, topic: &str, buf: Bytes, skip: u64) {
        let topics = self.hub.topics.borrow();
        let (topic, stamp) = (topics.shared_name(topic), topics.registry().stamp());
        drop(topics);
        self.hub.pending.borrow_mut().push(Pending {
            topic,
            buf,
            stamp,
            skip: Some(skip),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_counted_across_workers_and_forgotten_with_the_last() {
        let registry = Arc::new(Registry::default());
        let mut a = Topics::new(registry.clone());
        let mut b = Topics::new(registry.clone());
        assert!(a.subscribe(1, "room"));
        assert!(!a.subscribe(1, "room"), "once per session");
        assert!(a.subscribe(2, "room"));
        assert!(b.subscribe(1, "room"));
        assert_eq!(registry.subscribers("room"), 3);
        let mut out = Vec::new();
        a.subscribers_into("room", u64::MAX, &mut out).unwrap();
        out.sort();
        assert_eq!(out, [1, 2]);
        assert!(a.unsubscribe(2, "room"));
        assert!(!a.unsubscribe(2, "room"));
        a.remove_session(1);
        assert_eq!(registry.subscribers("room"), 1);
        assert!(
            a.subscribers_into("room", u64::MAX, &mut out).is_none(),
            "no local entry left"
        );
        b.remove_session(1);
        assert_eq!(registry.stats("room"), None, "the last subscriber took the entry");
        assert!(a.by_session.is_empty() && b.by_name.is_empty());
    }

    /// A publish made before a subscription does not reach it, even when
    /// it is fanned out after (a worker that is late to a publish made on
    /// another one); one made after does.
    #[test]
    fn a_subscription_hears_only_what_is_published_after_it() {
        let registry = Arc::new(Registry::default());
        let mut t = Topics::new(registry.clone());
        t.subscribe(1, "room");
        let before = registry.stamp();
        t.subscribe(2, "room");
        let after = registry.stamp();
        let mut out = Vec::new();
        t.subscribers_into("room", before, &mut out).unwrap();
        assert_eq!(out, [1]);
        t.subscribers_into("room", after, &mut out).unwrap();
        out.sort();
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn a_session_leaves_every_topic_when_it_ends() {
        let registry = Arc::new(Registry::default());
        let mut t = Topics::new(registry.clone());
        for name in ["a", "b", "c"] {
            t.subscribe(7, name);
        }
        t.subscribe(8, "b");
        assert_eq!(t.topics_of(7).len(), 3);
        t.remove_session(7);
        assert_eq!(t.topics_of(7).len(), 0);
        assert_eq!(registry.subscribers("b"), 1);
        assert_eq!(registry.subscribers("a"), 0);
        assert!(t.is_subscribed(8, "b"));
    }
}
