//! PROXY protocol on accept (feature `proxy-protocol`), over real sockets
//! on every engine: v1 and v2 headers (whole, cut into single bytes, with
//! TLVs, LOCAL) give the session the client's address and keep the bytes
//! after the header; garbage, an untrusted source and a missing header
//! each close only that connection with their own reason, before the
//! handler hears of it; the limit per client address counts the
//! addresses the headers name. The server serves others throughout.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iocore::proxy::{ProxyInfo, ProxyProtocol};
use iocore::{CloseKind, EngineKind, Handler, ServerHandle, Session};
use iocore_testkit::*;

/// What a session saw when it opened: its peer, its proxy, the header.
type Seen = Arc<Mutex<Vec<(SocketAddr, Option<SocketAddr>, Option<ProxyInfo>)>>>;

/// Echoes, after noting what it was told about its peer.
struct Noted(Seen);

impl Handler for Noted {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        let proxy = s.proxy().cloned();
        self.0
            .lock()
            .unwrap()
            .push((s.peer_addr(), s.proxy_addr(), proxy));
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let _ = s.send_copy(data);
        data.len()
    }
}

struct Proxied {
    server: ServerHandle,
    seen: Seen,
    events: Arc<Events>,
}

fn start(engine: EngineKind, proxy: ProxyProtocol, per_ip: Option<usize>) -> Proxied {
    let seen = Seen::default();
    let s = seen.clone();
    let (events, factory) = recorded(move || Noted(s.clone()));
    let server = server(engine)
        .proxy_protocol(Some(proxy))
        .max_sessions_per_ip(per_ip)
        .start(factory)
        .unwrap();
    Proxied { server, seen, events }
}

const V2_SIG: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n";

/// A v2 PROXY TCP6 header from `src` to `dst` with `tlvs` (type, value).
fn v2_tcp6(src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) else {
        panic!("IPv6 addresses")
    };
    let mut body = Vec::new();
    body.extend_from_slice(&s.ip().octets());
    body.extend_from_slice(&d.ip().octets());
    body.extend_from_slice(&s.port().to_be_bytes());
    body.extend_from_slice(&d.port().to_be_bytes());
    for (t, v) in tlvs {
        body.push(*t);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    let mut h = V2_SIG.to_vec();
    h.extend_from_slice(&[0x21, 0x21]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// Sends `bytes` and expects `echo` back.
fn echoes(c: &mut TcpStream, bytes: &[u8], echo: &[u8]) {
    c.write_all(bytes).unwrap();
    assert_eq!(read_exact(c, echo.len()), echo);
}

fn headers_name_the_client(engine: EngineKind) {
    let p = start(engine, ProxyProtocol::default(), None);
    let addr = p.server.local_addr();

    // v1, whole, with the client's first bytes in the same packet.
    let mut v1 = connect(addr);
    echoes(
        &mut v1,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 7777\r\nhello",
        b"hello",
    );
    // v1 cut into single bytes.
    let mut cut = connect(addr);
    cut.set_nodelay(true).unwrap();
    for b in b"PROXY TCP4 198.51.100.9 10.0.0.1 6000 7777\r\n" {
        cut.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    echoes(&mut cut, b"after", b"after");
    // v2 TCP6 with TLVs (an authority, a custom one).
    let src: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
    let dst: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
    let mut v2 = connect(addr);
    let mut hdr = v2_tcp6(src, dst, &[(0x02, b"game.example"), (0xE1, b"\x01\x02\x03")]);
    hdr.extend_from_slice(b"v2 data");
    echoes(&mut v2, &hdr, b"v2 data");
    // v2 LOCAL, as a health check sends it: the socket's own addresses.
    let mut local = connect(addr);
    let mut hdr = V2_SIG.to_vec();
    hdr.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    hdr.extend_from_slice(b"ping");
    echoes(&mut local, &hdr, b"ping");

    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    let by_peer = |peer: &str| {
        let peer: SocketAddr = peer.parse().unwrap();
        seen.iter()
            .find(|s| s.0 == peer)
            .unwrap_or_else(|| panic!("no session from {peer}: {seen:?}"))
    };
    let (_, proxy, info) = by_peer("203.0.113.7:5555");
    assert_eq!(
        *proxy,
        Some(v1.local_addr().unwrap()),
        "the proxy is the socket's peer"
    );
    let info = info.as_ref().unwrap();
    assert_eq!((info.version, info.local), (1, false));
    assert_eq!(info.destination, Some("10.0.0.1:7777".parse().unwrap()));
    by_peer("198.51.100.9:6000");
    let (_, _, info) = by_peer("[2001:db8::1]:40000");
    let info = info.as_ref().unwrap();
    assert_eq!((info.version, info.destination), (2, Some(dst)));
    let tlvs: Vec<(u8, Vec<u8>)> = info.tlvs.iter().map(|(t, v)| (*t, v.to_vec())).collect();
    assert_eq!(
        tlvs,
        vec![(0x02, b"game.example".to_vec()), (0xE1, vec![1, 2, 3])]
    );
    let (_, proxy, info) = by_peer(&local.local_addr().unwrap().to_string());
    assert!(info.as_ref().unwrap().local);
    assert_eq!(*proxy, Some(local.local_addr().unwrap()));

    drop((v1, cut, v2, local));
    assert!(p
        .events
        .wait_closed(4)
        .iter()
        .all(|k| *k == CloseKind::PeerClosed));
    p.server.shutdown(Duration::from_secs(1)).unwrap();
}

fn bad_starts_close_only_their_connection(engine: EngineKind) {
    let proxy = ProxyProtocol {
        header_timeout: Duration::from_millis(300),
        ..ProxyProtocol::default()
    };
    let p = start(engine, proxy, None);
    let addr = p.server.local_addr();
    let mut good = connect(addr);
    echoes(
        &mut good,
        b"PROXY TCP4 203.0.113.1 10.0.0.1 1000 7777\r\nbefore",
        b"before",
    );

    // Garbage instead of a header.
    let mut garbage = connect(addr);
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_to_end(&mut garbage).0.is_empty());
    // A v2 signature with a bad version.
    let mut bad_v2 = connect(addr);
    let mut hdr = V2_SIG.to_vec();
    hdr.extend_from_slice(&[0x31, 0x11, 0x00, 0x0C]);
    hdr.extend_from_slice(&[0; 12]);
    bad_v2.write_all(&hdr).unwrap();
    assert!(read_to_end(&mut bad_v2).0.is_empty());
    // Half a header, then silence: the timeout.
    let mut slow = connect(addr);
    slow.write_all(b"PROXY TCP4 203.0.").unwrap();
    assert!(read_to_end(&mut slow).0.is_empty());
    // Nothing at all.
    let mut mute = connect(addr);
    assert!(read_to_end(&mut mute).0.is_empty());

    echoes(&mut good, b"after", b"after");
    let mut closed = p.events.wait_closed(4);
    closed.sort_by_key(|k| k.index());
    assert_eq!(
        closed,
        [
            CloseKind::ProxyInvalid,
            CloseKind::ProxyInvalid,
            CloseKind::ProxyTimeout,
            CloseKind::ProxyTimeout
        ]
    );
    assert_eq!(
        p.seen.lock().unwrap().len(),
        1,
        "only the good one reached on_connected"
    );
    let stats = p.server.stats();
    assert_eq!(stats.closed(CloseKind::ProxyInvalid), 2);
    assert_eq!(stats.closed(CloseKind::ProxyTimeout), 2);
    assert_eq!(stats.live_sessions, 1);
    p.server.shutdown(Duration::from_secs(1)).unwrap();
}

/// A peer that ends during its header (half a header, then FIN) is done at
/// once: the engine keeps reading while a header is awaited, so it sees
/// the FIN long before the header timeout.
fn a_peer_leaving_mid_header_is_closed_at_once(engine: EngineKind) {
    let proxy = ProxyProtocol {
        header_timeout: Duration::from_secs(3600),
        ..ProxyProtocol::default()
    };
    let p = start(engine, proxy, None);
    let mut c = connect(p.server.local_addr());
    c.set_nodelay(true).unwrap();
    c.write_all(b"PROXY TCP4 ").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"203.0.").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_to_end(&mut c).0.is_empty());
    assert_eq!(p.events.wait_closed(1), [CloseKind::PeerClosed]);
    assert!(p.seen.lock().unwrap().is_empty());
    p.server.shutdown(Duration::from_secs(1)).unwrap();
}

fn untrusted_sources_may_not_send_a_header(engine: EngineKind) {
    let only_far = ProxyProtocol::trusting(ProxyProtocol::parse_trusted("10.0.0.0/8").unwrap());
    let p = start(engine, only_far, None);
    let mut c = connect(p.server.local_addr());
    let _ = c.write_all(b"PROXY TCP4 203.0.113.1 10.0.0.1 1000 7777\r\nhi");
    let (got, _) = read_to_end(&mut c); // reset or end of stream
    assert!(got.is_empty());
    assert_eq!(p.events.wait_closed(1), [CloseKind::ProxyUntrusted]);
    assert_eq!(p.server.stats().closed(CloseKind::ProxyUntrusted), 1);
    assert!(p.seen.lock().unwrap().is_empty());
    p.server.shutdown(Duration::from_secs(1)).unwrap();
}

fn the_limit_per_address_counts_the_clients(engine: EngineKind) {
    let p = start(engine, ProxyProtocol::default(), Some(1));
    let addr = p.server.local_addr();
    // Three connections from one proxy (127.0.0.1), two clients.
    let mut a = connect(addr);
    echoes(&mut a, b"PROXY TCP4 203.0.113.1 10.0.0.1 1000 7777\r\na", b"a");
    let mut b = connect(addr);
    echoes(&mut b, b"PROXY TCP4 203.0.113.2 10.0.0.1 1000 7777\r\nb", b"b");
    let mut again = connect(addr);
    let _ = again.write_all(b"PROXY TCP4 203.0.113.1 10.0.0.1 1001 7777\r\nc");
    assert!(
        read_to_end(&mut again).0.is_empty(),
        "a second session of 203.0.113.1 is refused"
    );
    wait_until("the refusal counted", || p.server.stats().rejected_per_ip == 1);
    // When the first leaves, its client may come back.
    drop(a);
    wait_until("a finished", || p.server.stats().live_sessions == 1);
    let mut back = connect(addr);
    echoes(&mut back, b"PROXY TCP4 203.0.113.1 10.0.0.1 1002 7777\r\nd", b"d");
    echoes(&mut b, b"e", b"e");
    assert_eq!(p.seen.lock().unwrap().len(), 3);
    p.server.shutdown(Duration::from_secs(1)).unwrap();
}

engine_suite!(
    headers_name_the_client,
    bad_starts_close_only_their_connection,
    a_peer_leaving_mid_header_is_closed_at_once,
    untrusted_sources_may_not_send_a_header,
    the_limit_per_address_counts_the_clients
);
