//! Topics across instances through a real Redis (feature `redis`; the
//! Debian package `redis-server`, started by the test on a free loopback
//! port): two servers share a topic — every subscriber on either gets
//! every message exactly once, in publish order, from publishers on both
//! and from `ServerHandle::publish`; a server drops its subscription with
//! its last subscriber; while Redis is down, publishes reach local
//! subscribers only and are counted, and after Redis restarts the
//! bridges reconnect, subscribe again, and relay again.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use iocore::bridge::RedisBridge;
use iocore::{EngineKind, Handler, ServerHandle, Session};
use iocore_testkit::*;

/// A line protocol: `sub` subscribes to `room` and answers `ok` once the
/// subscription reaches the other instances; `pub TEXT` publishes
/// `TEXT\n`; `leave` unsubscribes and answers `left`.
struct Member {
    waiting: bool,
}

impl Handler for Member {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        while let Some(nl) = data[used..].iter().position(|&b| b == b'\n') {
            let line = std::str::from_utf8(&data[used..used + nl]).unwrap().to_string();
            used += nl + 1;
            if line == "sub" {
                s.subscribe("room");
                self.waiting = true;
                self.on_timer(s);
            } else if line == "leave" {
                s.unsubscribe("room");
                let _ = s.send_copy(b"left\n");
            } else if let Some(text) = line.strip_prefix("pub ") {
                s.publish("room", format!("{text}\n"));
            }
        }
        used
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        if !self.waiting {
            return;
        }
        if s.topic_ready("room") {
            self.waiting = false;
            let _ = s.send_copy(b"ok\n");
        } else {
            s.set_timer(Duration::from_millis(1));
        }
    }
}

fn instance(engine: EngineKind, redis: &RedisServer) -> ServerHandle {
    server(engine)
        .redis(Some(RedisBridge::new(redis.url())))
        .start(|| Member { waiting: false })
        .unwrap()
}

struct Client {
    lines: BufReader<TcpStream>,
    out: TcpStream,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let s = connect(addr);
        Client {
            out: s.try_clone().unwrap(),
            lines: BufReader::new(s),
        }
    }
    fn say(&mut self, line: &str) {
        self.out.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.lines.read_line(&mut l).unwrap();
        assert!(l.ends_with('\n'), "a whole line, got {l:?}");
        l.trim_end().to_string()
    }
    fn subscribed(addr: SocketAddr) -> Client {
        let mut c = Client::new(addr);
        c.say("sub");
        assert_eq!(c.line(), "ok");
        c
    }
}

fn topics_span_instances_exactly_once_in_order(engine: EngineKind) {
    let redis = RedisServer::start();
    let (a, b) = (instance(engine, &redis), instance(engine, &redis));
    let mut members: Vec<Client> = (0..4)
        .map(|i| {
            Client::subscribed(if i % 2 == 0 {
                a.local_addr()
            } else {
                b.local_addr()
            })
        })
        .collect();
    assert_eq!(
        redis.subscribers("iocore:topic:room"),
        2,
        "one subscription per instance"
    );

    // Members 0 (on a) and 1 (on b) publish 100 each, interleaved.
    for k in 0..100 {
        members[0].say(&format!("pub a{k}"));
        members[1].say(&format!("pub b{k}"));
    }
    b.publish("room", "from b's handle\n").unwrap();
    for m in &mut members {
        let (mut next_a, mut next_b, mut handle) = (0, 0, 0);
        for _ in 0..201 {
            let l = m.line();
            if let Some(k) = l.strip_prefix('a') {
                assert_eq!(k.parse::<u32>().unwrap(), next_a, "a's messages in order");
                next_a += 1;
            } else if let Some(k) = l.strip_prefix('b') {
                assert_eq!(k.parse::<u32>().unwrap(), next_b, "b's messages in order");
                next_b += 1;
            } else {
                assert_eq!(l, "from b's handle");
                handle += 1;
            }
        }
        assert_eq!((next_a, next_b, handle), (100, 100, 1));
    }
    // An instance counts a relayed message when Redis answers its PUBLISH,
    // and its own copy when Redis sends it back: either may come after
    // every member has its lines (delivery does not wait for them).
    wait_until("the bridges counted every relay", || {
        let (sa, sb) = (a.bridge_stats().unwrap(), b.bridge_stats().unwrap());
        (sa.own_skipped, sb.own_skipped, sa.relayed_out, sb.relayed_out) == (100, 101, 100, 101)
    });
    let (sa, sb) = (a.bridge_stats().unwrap(), b.bridge_stats().unwrap());
    assert_eq!((sa.relayed_out, sb.relayed_out), (100, 101));
    assert_eq!((sa.relayed_in, sb.relayed_in), (101, 100));
    assert_eq!((sa.own_skipped, sb.own_skipped), (100, 101));
    assert_eq!((sa.unrelayed, sb.unrelayed), (0, 0));
    #[cfg(feature = "metrics")]
    {
        let text = a.metrics_text(iocore::metrics::Format::Prometheus);
        assert_eq!(metric(&text, "iocore_redis_relayed_out_total", &[]), Some(100.0));
        assert_eq!(metric(&text, "iocore_redis_relayed_in_total", &[]), Some(101.0));
        assert_eq!(metric(&text, "iocore_redis_connected", &[]), Some(1.0));
        assert_eq!(metric(&text, "iocore_redis_channels", &[]), Some(1.0));
    }
    // Nothing more comes (no duplicates): a marker is the next line.
    members[0].say("pub end");
    for m in &mut members {
        assert_eq!(m.line(), "end");
    }

    // The last subscriber on b leaves: b unsubscribes from the channel.
    members[1].say("leave");
    assert_eq!(members[1].line(), "left");
    members[3].say("leave");
    assert_eq!(members[3].line(), "left");
    wait_until("b unsubscribed", || b.bridge_stats().unwrap().channels == 0);
    wait_until("one instance left on the channel", || {
        redis.subscribers("iocore:topic:room") == 1
    });
    a.shutdown(Duration::from_secs(1)).unwrap();
    b.shutdown(Duration::from_secs(1)).unwrap();
}

fn redis_away_and_back(engine: EngineKind) {
    let mut redis = RedisServer::start();
    let (a, b) = (instance(engine, &redis), instance(engine, &redis));
    let mut on_a = Client::subscribed(a.local_addr());
    let mut on_b = Client::subscribed(b.local_addr());
    on_a.say("pub before");
    assert_eq!(on_a.line(), "before");
    assert_eq!(on_b.line(), "before");

    redis.kill();
    wait_until("both bridges saw Redis go", || {
        !a.bridge_stats().unwrap().connected && !b.bridge_stats().unwrap().connected
    });
    for k in 0..5 {
        on_a.say(&format!("pub down{k}"));
        assert_eq!(on_a.line(), format!("down{k}"), "local delivery goes on");
    }
    wait_until("the five counted", || a.bridge_stats().unwrap().unrelayed == 5);

    redis.restart();
    wait_until("both bridges back and subscribed", || {
        let (sa, sb) = (a.bridge_stats().unwrap(), b.bridge_stats().unwrap());
        sa.connected && sb.connected && sa.channels == 1 && sb.channels == 1
    });
    assert!(a.bridge_stats().unwrap().reconnects >= 1);
    on_a.say("pub after");
    assert_eq!(on_a.line(), "after");
    assert_eq!(
        on_b.line(),
        "after",
        "nothing from the outage, then delivery again"
    );
    on_b.say("pub back");
    assert_eq!(on_a.line(), "back");
    assert_eq!(on_b.line(), "back");
    a.shutdown(Duration::from_secs(1)).unwrap();
    b.shutdown(Duration::from_secs(1)).unwrap();
}

engine_suite!(topics_span_instances_exactly_once_in_order, redis_away_and_back);
