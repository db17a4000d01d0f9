//! Prometheus metrics of a server (cargo feature `metrics`).
//!
//! The counters are the workers' own ([`crate::Stats`]): each worker is the
//! only writer of its counters and updates them with a plain store on the
//! hot path; nothing is summed, locked or formatted until a scrape asks.
//! A scrape reads every worker's snapshot and encodes it with the official
//! [`prometheus_client`] crate, per worker (label `worker`) where it
//! matters.
//!
//! [`crate::ServerBuilder::metrics`] serves them over HTTP at
//! `GET /metrics` — from a small iocore server of its own on the same
//! engine, one worker thread, no async runtime. [`crate::ServerHandle::metrics_text`]
//! returns the same text without HTTP.
//!
//! Two formats, picked by the scraper's `Accept` header
//! ([`Format::from_accept`]): the Prometheus text format 0.0.4 (the
//! default; what `promtool check metrics` reads) and OpenMetrics 1.0 text
//! (what Prometheus asks for first).
//!
//! # The metrics
//!
//! Per worker (label `worker`, `0..threads`); `_total` are counters:
//!
//! | metric | meaning |
//! |---|---|
//! | `iocore_sessions_open` | sessions not yet finished (connecting and closing ones included) |
//! | `iocore_sessions_accepted_total` | connections accepted and admitted |
//! | `iocore_sessions_connected_total` | outbound connections established |
//! | `iocore_sessions_closed_total{reason}` | finished sessions, by [`crate::CloseKind`] name (`peer_closed`, `protocol_violation`, ...) |
//! | `iocore_sessions_rejected_total{limit}` | connections reset at accept: `limit="max_sessions"` or `"max_sessions_per_ip"` |
//! | `iocore_sessions_paused` | open sessions whose input is paused (by the handler or send backpressure) |
//! | `iocore_send_queue_bytes` | bytes queued for sending, not yet taken by the kernel |
//! | `iocore_recv_buffer_bytes` | memory held in receive buffers (unconsumed partial messages) |
//! | `iocore_received_bytes_total`, `iocore_sent_bytes_total` | bytes read from sockets; bytes the kernel took |
//! | `iocore_received_messages_total` | messages framing layers counted ([`crate::Session::count_received_message`]; one per packet with [`crate::packet::Packets`]) |
//! | `iocore_sent_messages_total` | buffers queued for sending (sends, sends from other threads, fan-out deliveries) |
//! | `iocore_reads_total`, `iocore_writes_total` | receive and send system calls (or submissions) |
//! | `iocore_accept_errors_total{kind}` | failed accepts: `descriptors` (EMFILE/ENFILE), `memory`, `aborted`, `other` |
//! | `iocore_accept_shed_total` | connections closed at once during a descriptor shortage |
//! | `iocore_accept_shortage` | 1 while the worker is out of descriptors or memory for accepts |
//! | `iocore_loop_wakeups_total`, `iocore_loop_events_total` | event-loop turns and the events they brought (events per wake-up = the ratio of their rates) |
//! | `iocore_uring_submissions_total`, `iocore_uring_completions_total` | io_uring entries submitted and completions reaped (uring engine only) |
//! | `iocore_uring_retries_total` | io_uring operations the kernel gave back with "not now" (EAGAIN, EINTR, ENOBUFS), posted again (uring engine only) |
//! | `iocore_uring_unexpected_completions_total` | io_uring completions naming no posted operation, logged and dropped (uring engine only; 0 unless something has a bug) |
//! | `iocore_recv_buffers_held` | provided receive buffers held at the end of a loop turn (uring engine only) |
//! | `iocore_stale_requests_total` | sends and closes from other threads naming a session that had ended (dropped) |
//! | `iocore_topic_publishes_total` | messages the worker's sessions published |
//! | `iocore_topic_deliveries_total` | messages topics queued on the worker's subscribers |
//! | `iocore_topic_closed_at_cap_total` | subscribers closed because a delivery went over their send-queue cap |
//!
//! Server-wide: `iocore_workers`, `iocore_topics` (topics with a
//! subscriber), `iocore_topic_subscriptions`, and `iocore_build_info`
//! (always 1; labels `version`, `engine`). Topics get no per-topic label:
//! a server whose rooms come and go would grow the series without bound.
//!
//! With rooms ([`crate::room`]), summed over every kind and worker, again
//! with no label per room: `iocore_rooms`, `iocore_room_jobs_queued`,
//! `iocore_room_jobs_total`, `iocore_room_posts_refused_total`,
//! `iocore_room_ticks_total`, `iocore_room_ticks_missed_total`,
//! `iocore_room_panics_total`, and the histogram
//! `iocore_room_tick_lateness_seconds` (how late ticks ran).
//!
//! Applications add their own metrics with
//! [`crate::ServerBuilder::metrics_registry`]: give a
//! [`prometheus_client::registry::Registry`] (this crate re-exports the
//! version it uses as [`prometheus_client`]) and the endpoint serves both.

use std::fmt;
use std::sync::Arc;

pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::{AcceptErrorKind, EngineKind, WorkerStats};
use crate::room::{RoomStats, LATENESS_BUCKETS};
use crate::session::CloseKind;
use crate::{topic, Stats};

pub(crate) mod http;

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    #[default]
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format to answer a request with this `Accept` header:
    /// OpenMetrics if the client lists it (Prometheus does, first),
    /// otherwise the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.is_some_and(|a| {
            a.split(',').any(|part| {
                part.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/openmetrics-text")
            })
        });
        match wants_openmetrics {
            true => Format::OpenMetrics,
            false => Format::Prometheus,
        }
    }
}

/// What a scrape encodes: the server's metrics and the application's.
pub(crate) struct Exporter {
    ours: Registry,
    app: Option<Arc<Registry>>,
}

impl Exporter {
    /// An exporter of `source`'s metrics, with `app`'s (if any) after them.
    pub(crate) fn new(source: Source, app: Option<Arc<Registry>>) -> Exporter {
        let mut ours = Registry::default();
        ours.register_collector(Box::new(source));
        Exporter { ours, app }
    }

    /// The text of a scrape.
    pub(crate) fn encode(&self, format: Format) -> String {
        use prometheus_client::encoding::{prometheus_text, text};
        let mut out = String::with_capacity(16 * 1024);
        let registries = std::iter::once(&self.ours).chain(self.app.as_deref());
        let mut done = Ok(());
        for r in registries {
            done = done.and_then(|()| match format {
                Format::Prometheus => prometheus_text::encode(&mut out, r),
                Format::OpenMetrics => text::encode_registry(&mut out, r),
            });
        }
        if format == Format::OpenMetrics {
            done = done.and_then(|()| text::encode_eof(&mut out));
        }
        // Writing to a String fails only if a metric's encoder does; ours
        // do not, and an application's error should not kill the scrape.
        if let Err(e) = done {
            tracing::warn!(error = %e, "encoding metrics failed: the scrape is cut short");
        }
        out
    }
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

/// The server's counters, read at scrape time.
pub(crate) struct Source {
    pub workers: Vec<Arc<WorkerStats>>,
    pub topics: Arc<topic::Registry>,
    pub engine: EngineKind,
    /// The Redis bridge's counters, if the server has one.
    #[cfg(feature = "redis")]
    pub bridge: Option<Arc<dyn Fn() -> crate::bridge::BridgeStats + Send + Sync>>,
    /// The rooms' counters, if the server runs rooms.
    pub rooms: Option<Arc<dyn Fn() -> RoomStats + Send + Sync>>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("workers", &self.workers.len())
            .field("engine", &self.engine)
            .finish()
    }
}

/// Writes metric families, one series per worker.
struct Families<'a, 'e> {
    enc: &'a mut DescriptorEncoder<'e>,
    workers: &'a [Stats],
}

impl Families<'_, '_> {
    fn family(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        kind: MetricType,
        value: impl Fn(&Stats) -> u64,
    ) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, unit, kind)?;
        for (worker, s) in self.workers.iter().enumerate() {
            encode_value(m.encode_family(&[("worker", worker)])?, kind, value(s))?;
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, value: impl Fn(&Stats) -> u64) -> fmt::Result {
        self.family(name, help, None, MetricType::Counter, value)
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl Fn(&Stats) -> u64) -> fmt::Result {
        self.family(name, help, None, MetricType::Gauge, value)
    }

    fn bytes(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        value: impl Fn(&Stats) -> u64,
    ) -> fmt::Result {
        self.family(name, help, Some(&Unit::Bytes), kind, value)
    }

    /// A counter with a second label, `key`, taking each of `values`.
    fn split<T: Copy>(
        &mut self,
        name: &str,
        help: &str,
        key: &'static str,
        values: &[(T, &'static str)],
        value: impl Fn(&Stats, T) -> u64,
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (worker, s) in self.workers.iter().enumerate() {
            for &(v, label) in values {
                let labels = Labels2(("worker", worker), (key, label));
                encode_value(m.encode_family(&labels)?, MetricType::Counter, value(s, v))?;
            }
        }
        Ok(())
    }
}

/// Two labels of different value types.
struct Labels2((&'static str, usize), (&'static str, &'static str));

impl EncodeLabelSet for Labels2 {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> fmt::Result {
        [self.0].encode(encoder)?;
        [self.1].encode(encoder)
    }
}

fn encode_value(m: prometheus_client::encoding::MetricEncoder<'_>, kind: MetricType, v: u64) -> fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(v).encode(m),
        _ => ConstGauge::new(v).encode(m),
    }
}

fn server_gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// The Redis bridge's counters (server-wide).
#[cfg(feature = "redis")]
fn encode_bridge(enc: &mut DescriptorEncoder<'_>, b: &crate::bridge::BridgeStats) -> fmt::Result {
    server_gauge(
        enc,
        "iocore_redis_connected",
        "1 while both of the Redis bridge's connections are up",
        u64::from(b.connected),
    )?;
    server_gauge(
        enc,
        "iocore_redis_channels",
        "Redis channels the bridge subscribes to",
        b.channels,
    )?;
    let counters = [
        (
            "iocore_redis_relayed_out",
            "Messages published here and published to Redis",
            b.relayed_out,
        ),
        (
            "iocore_redis_relayed_in",
            "Messages from other instances handed to the local fan-out",
            b.relayed_in,
        ),
        (
            "iocore_redis_unrelayed",
            "Messages published here that could not be published to Redis (delivered locally only)",
            b.unrelayed,
        ),
        (
            "iocore_redis_own_skipped",
            "This instance's own messages echoed by Redis and skipped",
            b.own_skipped,
        ),
        (
            "iocore_redis_reconnects",
            "Redis connections made again after losing one",
            b.reconnects,
        ),
    ];
    for (name, help, v) in counters {
        ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)?;
    }
    Ok(())
}

/// The rooms' counters (server-wide: no label per room, whose number
/// comes and goes).
fn encode_rooms(enc: &mut DescriptorEncoder<'_>, r: &RoomStats) -> fmt::Result {
    server_gauge(enc, "iocore_rooms", "Rooms alive", r.rooms)?;
    server_gauge(
        enc,
        "iocore_room_jobs_queued",
        "Jobs waiting in rooms' inboxes",
        r.jobs_queued,
    )?;
    let counters = [
        (
            "iocore_room_jobs",
            "Jobs rooms ran (joins, leaves, messages, timers)",
            r.jobs_run,
        ),
        (
            "iocore_room_posts_refused",
            "Posts refused because a room's inbox was full",
            r.posts_refused,
        ),
        ("iocore_room_ticks", "Room ticks run", r.ticks),
        (
            "iocore_room_ticks_missed",
            "Room ticks skipped because their time had passed",
            r.ticks_missed,
        ),
        (
            "iocore_room_panics",
            "Rooms ended by a panic in their callbacks",
            r.panics,
        ),
    ];
    for (name, help, v) in counters {
        ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)?;
    }
    let lateness = Lateness(r);
    lateness.encode(enc.encode_descriptor(
        "iocore_room_tick_lateness_seconds",
        "How late room ticks ran, from when they were due",
        None,
        MetricType::Histogram,
    )?)
}

/// The rooms' tick lateness as a Prometheus histogram.
struct Lateness<'a>(&'a RoomStats);

impl fmt::Debug for Lateness<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lateness")
    }
}

impl EncodeMetric for Lateness<'_> {
    fn encode(&self, mut e: prometheus_client::encoding::MetricEncoder<'_>) -> fmt::Result {
        let r = self.0;
        let buckets: Vec<(f64, u64)> = LATENESS_BUCKETS
            .iter()
            .map(|b| b.as_secs_f64())
            .chain([f64::INFINITY])
            .zip(r.tick_lateness)
            .collect();
        let count = r.tick_lateness.iter().sum();
        let sum = r.tick_lateness_sum_us as f64 / 1e6;
        e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for Source {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let workers: Vec<Stats> = self.workers.iter().map(|w| w.snapshot()).collect();
        let (topics, subscriptions) = self.topics.totals();

        let info = enc.encode_descriptor(
            "iocore_build_info",
            "Always 1: the iocore version and the engine serving",
            None,
            MetricType::Gauge,
        )?;
        let mut info = info;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("engine", self.engine.name()),
        ];
        ConstGauge::new(1u64).encode(info.encode_family(&labels)?)?;
        server_gauge(
            &mut enc,
            "iocore_workers",
            "Worker threads (event loops)",
            workers.len() as u64,
        )?;
        server_gauge(
            &mut enc,
            "iocore_topics",
            "Topics with at least one subscriber",
            topics as u64,
        )?;
        server_gauge(
            &mut enc,
            "iocore_topic_subscriptions",
            "Subscriptions of sessions to topics, over all topics",
            subscriptions,
        )?;
        #[cfg(feature = "redis")]
        if let Some(bridge) = &self.bridge {
            encode_bridge(&mut enc, &bridge())?;
        }
        if let Some(rooms) = &self.rooms {
            encode_rooms(&mut enc, &rooms())?;
        }

        let mut f = Families {
            enc: &mut enc,
            workers: &workers,
        };
        f.gauge("iocore_sessions_open", "Sessions not yet finished", |s| {
            s.live_sessions
        })?;
        f.counter(
            "iocore_sessions_accepted",
            "Connections accepted and admitted",
            |s| s.accepted,
        )?;
        f.counter(
            "iocore_sessions_connected",
            "Outbound connections established",
            |s| s.connected,
        )?;
        let reasons: Vec<(CloseKind, &'static str)> = CloseKind::ALL.iter().map(|k| (*k, k.name())).collect();
        f.split(
            "iocore_sessions_closed",
            "Finished sessions, by close reason",
            "reason",
            &reasons,
            |s, k| s.closed(k),
        )?;
        f.split(
            "iocore_sessions_rejected",
            "Connections reset at accept because a session limit was reached",
            "limit",
            &[(false, "max_sessions"), (true, "max_sessions_per_ip")],
            |s, per_ip| match per_ip {
                true => s.rejected_per_ip,
                false => s.rejected,
            },
        )?;
        f.gauge(
            "iocore_sessions_paused",
            "Open sessions whose input is paused (by the handler or send backpressure)",
            |s| s.paused_sessions,
        )?;
        f.bytes(
            "iocore_send_queue",
            "Bytes queued for sending and not yet taken by the kernel",
            MetricType::Gauge,
            |s| s.queued_bytes,
        )?;
        f.bytes(
            "iocore_recv_buffer",
            "Memory held in receive buffers (unconsumed partial messages)",
            MetricType::Gauge,
            |s| s.recv_buffer_bytes,
        )?;
        f.bytes(
            "iocore_received",
            "Bytes read from sockets",
            MetricType::Counter,
            |s| s.bytes_received,
        )?;
        f.bytes(
            "iocore_sent",
            "Bytes the kernel took for sending",
            MetricType::Counter,
            |s| s.bytes_sent,
        )?;
        f.counter(
            "iocore_received_messages",
            "Messages received, as framing layers count them (one per packet)",
            |s| s.messages_received,
        )?;
        f.counter(
            "iocore_sent_messages",
            "Buffers queued for sending (sends, sends from other threads, fan-out deliveries)",
            |s| s.messages_sent,
        )?;
        f.counter("iocore_reads", "Receive system calls or completions", |s| s.reads)?;
        f.counter("iocore_writes", "Send system calls or submissions", |s| s.writes)?;
        let kinds: Vec<(AcceptErrorKind, &'static str)> =
            AcceptErrorKind::ALL.iter().map(|k| (*k, k.name())).collect();
        f.split(
            "iocore_accept_errors",
            "Failed accepts, by kind",
            "kind",
            &kinds,
            |s, k| s.accept_errors(k),
        )?;
        f.counter(
            "iocore_accept_shed",
            "Connections closed at once during a descriptor shortage",
            |s| s.accept_shed,
        )?;
        f.gauge(
            "iocore_accept_shortage",
            "1 while the worker is out of descriptors or memory for accepts",
            |s| s.accept_shortage,
        )?;
        f.counter(
            "iocore_loop_wakeups",
            "Event-loop turns (waits that returned)",
            |s| s.loop_turns,
        )?;
        f.counter(
            "iocore_loop_events",
            "Events or completions the loop turns brought",
            |s| s.events,
        )?;
        if self.engine == EngineKind::Uring {
            f.counter(
                "iocore_uring_submissions",
                "io_uring submission entries the kernel took",
                |s| s.uring_submissions,
            )?;
            f.counter("iocore_uring_completions", "io_uring completions reaped", |s| {
                s.uring_completions
            })?;
            f.counter(
                "iocore_uring_retries",
                "io_uring operations the kernel gave back with EAGAIN, EINTR or ENOBUFS, posted again",
                |s| s.uring_retries,
            )?;
            f.counter(
                "iocore_uring_unexpected_completions",
                "io_uring completions that named no posted operation (logged and dropped)",
                |s| s.uring_unexpected,
            )?;
            f.gauge(
                "iocore_recv_buffers_held",
                "Provided receive buffers held at the end of a loop turn",
                |s| s.recv_buffers_held,
            )?;
        }
        f.counter(
            "iocore_stale_requests",
            "Sends and closes from other threads that named an ended session",
            |s| s.stale_requests,
        )?;
        f.counter(
            "iocore_topic_publishes",
            "Messages the worker's sessions published",
            |s| s.publishes,
        )?;
        f.counter(
            "iocore_topic_deliveries",
            "Messages topics queued on the worker's subscribers",
            |s| s.deliveries,
        )?;
        f.counter(
            "iocore_topic_closed_at_cap",
            "Subscribers closed because a delivery went over their send-queue cap",
            |s| s.closed_at_cap,
        )?;
        Ok(())
    }
}
