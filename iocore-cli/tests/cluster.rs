//! Beyond one machine, with the real programs (Debian packages `haproxy`
//! and `redis-server`, started by the tests on free loopback ports and
//! stopped by them; `.ci/run` installs them and in CI a missing one fails):
//!
//! - three `iocore serve --app chat --proxy-protocol --redis` instances
//!   behind HAProxy (`examples/cluster/haproxy.cfg`: send-proxy-v2,
//!   health checks with LOCAL headers): clients bound to 127.0.0.2 and
//!   127.0.0.3 are seen by the instances with those addresses, not
//!   HAProxy's; sessions spread over all three; a killed instance is
//!   taken out by HAProxy's checks and new clients are served by the
//!   other two;
//! - chat across instances: 60 members of one room spread over three
//!   instances each get every message exactly once, in each sender's
//!   order; a message said while Redis is down reaches its own instance
//!   only and is counted, and delivery resumes after Redis restarts.
#![cfg(unix)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use iocore::packet::HEADER;
use iocore::EngineKind;
use iocore_cli::chat::load::{self, ChatOptions};
use iocore_cli::chat::protocol::{self as chat, FromServer};
use iocore_cli::load::Load;
use iocore_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_iocore");

/// A chat instance of the cluster.
fn instance(engine: EngineKind, redis: &RedisServer, extra: &[&str]) -> CliServer {
    let url = redis.url();
    let mut args = vec![
        "--app",
        "chat",
        "--engine",
        engine.name(),
        "--threads",
        "2",
        "--redis",
        &url,
        "--metrics",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    CliServer::start(BIN, &args, &[])
}

fn scrape(metrics: SocketAddr, name: &str) -> f64 {
    let a = http_get(metrics, "/metrics", &[]);
    assert_eq!(a.status, 200);
    metric(&a.body, name, &[]).unwrap_or_else(|| panic!("no {name}"))
}

/// The next packet, as text: `joined ROOM` or `msg TEXT`.
fn next(s: &mut TcpStream) -> String {
    let (id, body) = read_packet(s);
    match chat::from_server(id, &body).unwrap() {
        FromServer::Joined { room, .. } => format!("joined {room}"),
        FromServer::Msg { text, .. } => format!("msg {text}"),
        other => format!("{other:?}"),
    }
}

/// Connects to `to` from `from` (a loopback address of this machine).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// `n` bytes, or `None` if the connection ended (or was reset) first.
fn read_exact_or_end(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).ok().map(|()| buf)
}

fn join(s: &mut TcpStream, room: &str) {
    s.write_all(&chat::join(room)).unwrap();
    assert_eq!(next(s), format!("joined {room}"));
}

/// The peers of the sessions the instance opened behind the proxy, from
/// its JSON debug log.
fn proxied_peers(log: &[String]) -> BTreeSet<SocketAddr> {
    log.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"] == "session opened behind a proxy" && e["local"] == false)
        .map(|e| e["peer"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn behind_haproxy(engine: EngineKind) {
    let redis = RedisServer::start();
    let proxied = [
        "--proxy-protocol",
        "--log-format",
        "json",
        "--log-level",
        "info,iocore::engine=debug",
    ];
    let mut chats: Vec<CliServer> = (0..3).map(|_| instance(engine, &redis, &proxied)).collect();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster/haproxy.cfg");
    let env: Vec<(&str, String)> = ["CHAT1_PORT", "CHAT2_PORT", "CHAT3_PORT"]
        .into_iter()
        .zip(&chats)
        .map(|(k, c)| (k, c.addr.port().to_string()))
        .collect();
    let haproxy = Haproxy::start(&config, free_port(), free_port(), &env);
    haproxy.wait_for(&["chat1", "chat2", "chat3"]);

    // Six clients from two addresses, through HAProxy.
    let mut clients: Vec<TcpStream> = (0..6)
        .map(|i| connect_from(["127.0.0.2", "127.0.0.3"][i % 2], haproxy.front))
        .collect();
    for c in &mut clients {
        join(c, "lobby");
    }
    // Round robin: two members on each instance.
    for c in &chats {
        assert_eq!(scrape(c.metrics.unwrap(), "iocore_topic_subscriptions"), 2.0);
    }
    clients[0].write_all(&chat::say("hello, everyone")).unwrap();
    for c in &mut clients {
        assert_eq!(next(c), "msg hello, everyone");
    }

    // One instance dies: HAProxy takes it out, new clients go to the rest.
    let dead = chats.pop().unwrap();
    drop(dead); // killed
    haproxy.wait_for(&["chat1", "chat2"]);
    let mut late: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.2", haproxy.front)).collect();
    for c in &mut late {
        join(c, "lobby");
    }
    let on_live: f64 = chats
        .iter()
        .map(|c| scrape(c.metrics.unwrap(), "iocore_topic_subscriptions"))
        .sum();
    assert_eq!(on_live, 8.0, "the four new members on the two live instances");
    late[0].write_all(&chat::say("after the failover")).unwrap();
    for c in &mut late {
        assert_eq!(next(c), "msg after the failover");
    }
    // The early members of the live instances hear it; those of the dead
    // one were disconnected.
    let mut heard = 0;
    for c in &mut clients {
        let (got, _) = match read_exact_or_end(c, HEADER) {
            Some(h) => (Some(h), ()),
            None => (None, ()),
        };
        if let Some(h) = got {
            let size = u16::from_le_bytes([h[0], h[1]]) as usize;
            let body = read_exact(c, size - HEADER);
            assert!(String::from_utf8_lossy(&body).ends_with("after the failover"));
            heard += 1;
        }
    }
    assert_eq!(heard, 4);

    // The instances saw the clients' own addresses.
    let expected: BTreeSet<SocketAddr> = clients
        .iter()
        .chain(&late)
        .map(|c| c.local_addr().unwrap())
        .collect();
    let mut seen = BTreeSet::new();
    for c in chats {
        let (status, rest) = c.stop();
        assert!(status.success());
        let peers = proxied_peers(&rest);
        assert!(!peers.is_empty(), "every live instance served clients");
        assert!(
            peers.iter().all(|p| p.ip() != std::net::Ipv4Addr::LOCALHOST),
            "{peers:?}"
        );
        seen.extend(peers);
    }
    let on_live_instances: BTreeSet<SocketAddr> =
        expected.iter().filter(|a| seen.contains(a)).copied().collect();
    assert_eq!(
        on_live_instances.len(),
        8,
        "the four early members of the live instances and the four late ones: {seen:?}"
    );
    assert!(seen.is_subset(&expected), "no other peer: {seen:?}");
}

fn chat_across_instances(engine: EngineKind) {
    let mut redis = RedisServer::start();
    let chats: Vec<CliServer> = (0..3).map(|_| instance(engine, &redis, &[])).collect();
    // 60 members of one room, spread over the three, 20 messages each.
    let opts = ChatOptions {
        addrs: chats.iter().map(|c| c.addr).collect(),
        load: Load {
            engine,
            connections: 60,
            size: 40,
            count: Some(20),
            ..Load::default()
        },
        rooms: 1,
        rate: 50.0,
    };
    let summary = load::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(summary.ok(), "{summary}");
    assert_eq!(summary.deliveries, 60 * 20 * 60);

    // Redis away: a message reaches its own instance only, and is counted.
    let mut a = connect(chats[0].addr);
    let mut b = connect(chats[1].addr);
    join(&mut a, "quiet");
    join(&mut b, "quiet");
    redis.kill();
    wait_until("the bridges saw Redis go", || {
        chats
            .iter()
            .all(|c| scrape(c.metrics.unwrap(), "iocore_redis_connected") == 0.0)
    });
    a.write_all(&chat::say("while redis is down")).unwrap();
    assert_eq!(next(&mut a), "msg while redis is down");
    wait_until("the message counted as unrelayed", || {
        scrape(chats[0].metrics.unwrap(), "iocore_redis_unrelayed_total") == 1.0
    });
    redis.restart();
    wait_until("the bridges back, subscribed", || {
        chats
            .iter()
            .all(|c| scrape(c.metrics.unwrap(), "iocore_redis_connected") == 1.0)
            && scrape(chats[1].metrics.unwrap(), "iocore_redis_channels") == 1.0
    });
    a.write_all(&chat::say("redis is back")).unwrap();
    assert_eq!(next(&mut a), "msg redis is back");
    assert_eq!(
        next(&mut b),
        "msg redis is back",
        "the message of the outage never came"
    );
    for c in chats {
        assert!(c.stop().0.success());
    }
}

engine_suite!(behind_haproxy, chat_across_instances);
