//! TLS sessions (feature `tls`) over real sockets on every engine, with a
//! certificate made for the test: a rustls client (blocking, independent
//! of the session layer) gets every byte echoed and the server's
//! `close_notify` at the end; an iocore client and server speak TLS to
//! each other, with ALPN; `wss` (WebSocket over TLS) works with
//! tungstenite over rustls and with iocore's own client; a bad handshake
//! (garbage, plaintext HTTP, an old protocol version) and one that never
//! ends close only their own sessions, with named reasons, while a
//! witness is served throughout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iocore::tls::TlsConfig;
use iocore::websocket::WebSocketConfig;
use iocore::{CloseKind, EngineKind, Handler, Session};
use iocore_testkit::*;

/// A certificate for localhost and 127.0.0.1, written as PEM files under
/// the test's own directory: (certificate, key).
fn certificate(tag: &str) -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A blocking rustls client that trusts `cert`.
fn rustls_client(
    addr: SocketAddr,
    cert: &PathBuf,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}

/// Echoes, each WebSocket message with its type.
struct Echo2;
impl Handler for Echo2 {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        assert!(s.is_tls());
        let _ = match (s.received_text(), std::str::from_utf8(data)) {
            (true, Ok(text)) => s.send_text(text),
            _ => s.send_copy(data),
        };
        data.len()
    }
}

fn a_rustls_client_gets_every_byte_back_then_close_notify(engine: EngineKind) {
    let (cert, key) = certificate(engine.name());
    let (events, factory) = recorded(|| Echo2);
    let server = server(engine)
        .tls(Some(TlsConfig::server_pem(&cert, &key).unwrap()))
        .start(factory)
        .unwrap();
    let mut c = rustls_client(server.local_addr(), &cert);
    let mut rng = Rng::new(11);
    let mut sent = Vec::new();
    for _ in 0..40 {
        let len = rng.range(1, 40_000);
        let chunk = rng.bytes(len);
        c.write_all(&chunk).unwrap();
        sent.extend_from_slice(&chunk);
    }
    let mut got = vec![0; sent.len()];
    c.read_exact(&mut got).unwrap();
    assert!(got == sent, "every byte echoed in order");
    // The server closes (stop): its close_notify ends the stream cleanly.
    server.stop(Duration::from_secs(5));
    let mut rest = Vec::new();
    let end = c.read_to_end(&mut rest);
    assert!(end.is_ok() && rest.is_empty(), "a clean TLS close: {end:?}");
    server.join().unwrap();
    assert_eq!(events.closed(), vec![CloseKind::ServerShutdown]);
}

/// What a client session got: the bytes, the ALPN protocol, how it ended.
type Got = Arc<Mutex<(Vec<u8>, Option<Vec<u8>>, Option<CloseKind>)>>;

/// Sends `send` on connect, collects what comes back, closes when all has.
struct Collect {
    send: Vec<u8>,
    got: Got,
}

impl Handler for Collect {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.got.lock().unwrap().1 = s.alpn_protocol().map(<[u8]>::to_vec);
        let _ = s.send(self.send.clone());
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut got = self.got.lock().unwrap();
        got.0.extend_from_slice(data);
        if got.0.len() >= self.send.len() {
            s.close();
        }
        data.len()
    }
    fn on_disconnected(&mut self, reason: iocore::CloseReason) {
        self.got.lock().unwrap().2 = Some(reason.kind());
    }
}

fn iocore_client_and_server_speak_tls_and_wss(engine: EngineKind) {
    let (cert, key) = certificate(&format!("both-{}", engine.name()));
    let server_tls = TlsConfig::server_pem(&cert, &key)
        .unwrap()
        .alpn(["chat/1", "echo/1"]);
    let server = server(engine)
        .tls(Some(server_tls))
        .websocket_listener(
            "127.0.0.1:0".parse().unwrap(),
            WebSocketConfig::new().max_message(1 << 20),
        )
        .start(|| Echo2)
        .unwrap();
    let message: Vec<u8> = (0..300_000).map(|i| pattern_byte(8, i)).collect();
    for (addr, ws) in [(server.local_addr(), false), (server.websocket_addrs()[0], true)] {
        let got = Arc::new(Mutex::new((Vec::new(), None, None)));
        let tls = TlsConfig::client_pem(&cert, "localhost")
            .unwrap()
            .alpn(["echo/1"]);
        let ws_config = ws.then(|| WebSocketConfig::new().max_message(1 << 20));
        let client = iocore::Client::builder()
            .engine(engine)
            .tls(Some(tls))
            .websocket(ws_config)
            .start::<Collect>()
            .unwrap();
        let (send, g) = (message.clone(), got.clone());
        client.connect(addr, move || Collect { send, got: g }).unwrap();
        wait_until("the client's session ended", || got.lock().unwrap().2.is_some());
        let got = got.lock().unwrap();
        assert!(got.0 == message, "ws={ws}: every byte back");
        assert_eq!(got.1.as_deref(), Some(&b"echo/1"[..]), "ALPN");
        assert_eq!(got.2, Some(CloseKind::LocalClose));
        client.shutdown(Duration::from_secs(5)).unwrap();
    }
    // wss with tungstenite over rustls.
    let stream = rustls_client(server.websocket_addrs()[0], &cert);
    let url = format!("wss://localhost:{}/", server.websocket_addrs()[0].port());
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("the wss upgrade");
    for m in [
        tungstenite::Message::text("hello over wss"),
        tungstenite::Message::binary(vec![7u8; 5000]),
    ] {
        ws.send(m.clone()).unwrap();
        assert_eq!(ws.read().unwrap(), m);
    }
    ws.close(None).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// A TLS 1.0 ClientHello offering only TLS_RSA_WITH_AES_128_CBC_SHA.
fn tls10_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[0x42; 32]);
    body.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

fn bad_handshakes_close_only_their_sessions(engine: EngineKind) {
    let (cert, key) = certificate(&format!("bad-{}", engine.name()));
    let (events, factory) = recorded(|| Echo2);
    let tls = TlsConfig::server_pem(&cert, &key)
        .unwrap()
        .handshake_timeout(Duration::from_millis(300));
    let server = server(engine).tls(Some(tls)).start(factory).unwrap();
    let addr = server.local_addr();
    // The witness makes its handshake now, well within the timeout.
    let mut witness = rustls_client(addr, &cert);
    witness.write_all(b"hi").unwrap();
    let mut hi = [0; 2];
    witness.read_exact(&mut hi).unwrap();
    let mut n = 0;
    let mut check = |what: &str, kind: CloseKind, said: &str| {
        n += 1;
        events.wait_closed(n);
        assert_eq!(events.closed()[n - 1], kind, "{what}");
        let reason = events.reasons.lock().unwrap()[n - 1].clone();
        assert!(reason.contains(said), "{what}: {reason}");
        witness.write_all(what.as_bytes()).unwrap();
        let mut back = vec![0; what.len()];
        witness.read_exact(&mut back).unwrap();
        assert_eq!(back, what.as_bytes());
    };
    for (what, bytes) in [
        ("garbage", b"\x00\x01\x02 not TLS at all \xff\xfe".to_vec()),
        (
            "plaintext HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("TLS 1.0", tls10_client_hello()),
    ] {
        let mut c = connect(addr);
        c.write_all(&bytes).unwrap();
        // Answered with an alert (or nothing), then closed.
        let (answer, _) = read_to_end(&mut c);
        assert!(
            answer.len() < 64,
            "{what}: an alert at most, got {} bytes",
            answer.len()
        );
        drop(c);
        check(what, CloseKind::HandshakeInvalid, "TLS");
    }
    // A client that starts and never finishes.
    let mut c = connect(addr);
    c.write_all(&tls10_client_hello()[..20]).unwrap();
    let (answer, _) = read_to_end(&mut c);
    assert!(answer.is_empty());
    drop(c);
    check("half a hello", CloseKind::HandshakeTimeout, "timeout");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// Behind a load balancer: the PROXY header in the clear, then the TLS
/// handshake on the same connection; the session sees the client's
/// address and echoes through TLS.
#[cfg(feature = "proxy-protocol")]
fn a_proxy_header_comes_before_the_handshake(engine: EngineKind) {
    struct Peer(Arc<Mutex<Option<SocketAddr>>>);
    impl Handler for Peer {
        fn on_connected(&mut self, s: &mut Session<'_>) {
            *self.0.lock().unwrap() = Some(s.peer_addr());
        }
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            let _ = s.send_copy(data);
            data.len()
        }
    }
    let (cert, key) = certificate(&format!("proxy-{}", engine.name()));
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let server = server(engine)
        .proxy_protocol(Some(iocore::proxy::ProxyProtocol::default()))
        .tls(Some(TlsConfig::server_pem(&cert, &key).unwrap()))
        .start(move || Peer(s.clone()))
        .unwrap();
    let mut c = rustls_client(server.local_addr(), &cert);
    c.sock
        .write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 80\r\n")
        .unwrap();
    c.write_all(b"through the proxy").unwrap();
    let mut back = [0; 17];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"through the proxy");
    assert_eq!(*seen.lock().unwrap(), Some("10.1.2.3:5555".parse().unwrap()));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[cfg(feature = "proxy-protocol")]
mod behind_a_proxy {
    use super::*;
    engine_suite!(a_proxy_header_comes_before_the_handshake);
}

engine_suite!(
    a_rustls_client_gets_every_byte_back_then_close_notify,
    iocore_client_and_server_speak_tls_and_wss,
    bad_handshakes_close_only_their_sessions,
);
