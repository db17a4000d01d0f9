//! WebSocket sessions (feature `websocket`) over real sockets on every
//! engine: a real client (tungstenite) exchanges text and binary messages
//! with an echo handler; fragments, pings and the close handshake are
//! handled by the session; hostile input (oversize messages, unmasked
//! frames, bad UTF-8, reserved opcodes, a frame trickled byte by byte, an
//! upgrade request over its limit, garbage, a client that never upgrades)
//! closes only its own session, with a named reason, while another client
//! is served throughout; a topic's publish reaches WebSocket subscribers
//! as one frame; a plain GET gets the configured page.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use iocore::websocket::frame::{encode, Decoder, Event, Opcode};
use iocore::websocket::{handshake, CloseCode, Role, WebSocketConfig};
use iocore::{CloseKind, EngineKind, Handler, ServerHandle, Session};
use iocore_testkit::*;

/// Echoes each message with its type.
struct WsEcho;

impl Handler for WsEcho {
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let _ = match s.received_text() {
            true => s.send_text(std::str::from_utf8(data).expect("checked UTF-8")),
            false => s.send_copy(data),
        };
        data.len()
    }
}

fn start(engine: EngineKind, config: WebSocketConfig) -> (ServerHandle, std::sync::Arc<Events>) {
    let (events, factory) = recorded(|| WsEcho);
    let server = server(engine).websocket(Some(config)).start(factory).unwrap();
    (server, events)
}

/// A raw client: the upgrade done by hand, frames written and read with
/// the codec (client side: masked out, unmasked in).
struct Raw {
    s: TcpStream,
    decoder: Decoder,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let mut s = connect(addr);
        s.set_nodelay(true).unwrap();
        let (request, key) = handshake::request("localhost", "/", [7; 16], &[]);
        s.write_all(&request).unwrap();
        let mut raw = Raw {
            s,
            decoder: Decoder::new(Role::Client, 1 << 24),
            buf: Vec::new(),
        };
        loop {
            if let Some((_, len)) = handshake::parse_answer(&raw.buf, &key, &[], 8192).unwrap() {
                raw.buf.drain(..len);
                return raw;
            }
            raw.fill();
        }
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0; 65536];
        let n = self.s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    fn send(&mut self, opcode: Opcode, payload: &[u8]) {
        self.s
            .write_all(&encode(opcode, payload, Some([1, 2, 3, 4])))
            .unwrap();
    }

    /// A frame written as given: `first` is the byte with FIN, RSV and
    /// the opcode.
    fn send_raw_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut f = encode(Opcode::Binary, payload, masked.then_some([9, 8, 7, 6]));
        f[0] = first;
        self.s.write_all(&f).unwrap();
    }

    /// The next message or control frame: (opcode, payload); `None` at EOF.
    fn next(&mut self) -> Option<(Opcode, Vec<u8>)> {
        loop {
            let mut buf = self.buf.clone();
            if let Some((n, event)) = self
                .decoder
                .decode(&mut buf)
                .expect("the server's frames are valid")
            {
                let got = event.map(|e| match e {
                    Event::Text(t) => (Opcode::Text, t.as_bytes().to_vec()),
                    Event::Binary(b) => (Opcode::Binary, b.to_vec()),
                    Event::Ping(p) => (Opcode::Ping, p.to_vec()),
                    Event::Pong(p) => (Opcode::Pong, p.to_vec()),
                    Event::Close(c) => (
                        Opcode::Close,
                        c.map(|(code, _)| code.0.to_be_bytes().to_vec())
                            .unwrap_or_default(),
                    ),
                });
                self.buf.drain(..n);
                if got.is_some() {
                    return got;
                }
                continue;
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// Expects the server's close frame with `code`, then EOF.
    fn expect_close(&mut self, code: CloseCode) {
        let (op, payload) = self.next().expect("a close frame");
        assert_eq!(op, Opcode::Close);
        assert_eq!(payload[..2], code.0.to_be_bytes(), "close code");
        let mut rest = Vec::new();
        let _ = self.s.read_to_end(&mut rest);
        // Our FIN ends the server's linger at once.
        let _ = self.s.shutdown(std::net::Shutdown::Both);
    }
}

/// A well-behaved client, checked after each hostile one: the server
/// still serves.
fn still_served(addr: SocketAddr) {
    let mut c = Raw::connect(addr);
    c.send(Opcode::Text, "still here".as_bytes());
    assert_eq!(c.next(), Some((Opcode::Text, b"still here".to_vec())));
    c.send(Opcode::Close, &1000u16.to_be_bytes());
    c.expect_close(CloseCode::NORMAL);
}

fn a_real_client_gets_each_message_back_whole(engine: EngineKind) {
    let (server, events) = start(engine, WebSocketConfig::new());
    let url = format!("ws://{}/", server.local_addr());
    let stream = connect(server.local_addr());
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    use tungstenite::Message;
    let big: Vec<u8> = (0..16 * 1024).map(|i| pattern_byte(3, i)).collect();
    let messages = [
        Message::text("hello"),
        Message::binary(vec![0u8; 0]),
        Message::binary(vec![1u8; 100]),
        Message::text("ü€𝄞".repeat(300)),
        Message::binary(big),
    ];
    for m in &messages {
        ws.send(m.clone()).unwrap();
    }
    for m in &messages {
        assert_eq!(&ws.read().unwrap(), m);
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => continue,
            Ok(other) => panic!("after close: {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
    assert_eq!(events.wait_closed(1), vec![CloseKind::PeerClosed]);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

fn fragments_pings_and_the_close_handshake(engine: EngineKind) {
    let (server, events) = start(engine, WebSocketConfig::new());
    let mut c = Raw::connect(server.local_addr());
    // A text message in three fragments, a ping between two of them.
    c.send_raw_frame(0x01, "frag".as_bytes(), true);
    c.send_raw_frame(0x00, "ment".as_bytes(), true);
    c.send(Opcode::Ping, b"are you there");
    c.send_raw_frame(0x80, "ed".as_bytes(), true);
    assert_eq!(c.next(), Some((Opcode::Pong, b"are you there".to_vec())));
    assert_eq!(c.next(), Some((Opcode::Text, b"fragmented".to_vec())));
    // A message trickled a byte at a time.
    let frame = encode(Opcode::Binary, &[5; 300], Some([1, 2, 3, 4]));
    for b in &frame {
        c.s.write_all(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(c.next(), Some((Opcode::Binary, vec![5; 300])));
    // The peer's close code is said back.
    c.send(Opcode::Close, &4321u16.to_be_bytes());
    c.expect_close(CloseCode(4321));
    assert_eq!(events.wait_closed(1), vec![CloseKind::PeerClosed]);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

fn hostile_input_closes_only_its_session_with_a_reason(engine: EngineKind) {
    let config = WebSocketConfig::new()
        .max_message(1024)
        .handshake_timeout(Duration::from_millis(300));
    let (server, events) = start(engine, config);
    let addr = server.local_addr();
    // A witness connected throughout.
    let mut witness = Raw::connect(addr);
    let mut expected = Vec::new();
    let mut check = |what: &str, kind: CloseKind, reason: &str, expected: &mut Vec<CloseKind>| {
        expected.push(kind);
        let n = expected.len();
        events.wait_closed(n);
        assert_eq!(events.closed()[n - 1], kind, "{what}");
        let said = events.reasons.lock().unwrap()[n - 1].clone();
        assert!(said.contains(reason), "{what}: {said}");
        witness.send(Opcode::Binary, what.as_bytes());
        assert_eq!(witness.next(), Some((Opcode::Binary, what.as_bytes().to_vec())));
    };

    let mut c = Raw::connect(addr);
    c.send(Opcode::Binary, &[0; 1025]);
    c.expect_close(CloseCode::TOO_BIG);
    check(
        "oversize",
        CloseKind::ProtocolViolation,
        "size limit",
        &mut expected,
    );

    let mut c = Raw::connect(addr);
    c.send_raw_frame(0x82, b"not masked", false);
    c.expect_close(CloseCode::PROTOCOL_ERROR);
    check("unmasked", CloseKind::ProtocolViolation, "mask", &mut expected);

    let mut c = Raw::connect(addr);
    c.send(Opcode::Text, &[0x66, 0xff, 0x6f]);
    c.expect_close(CloseCode::INVALID_DATA);
    check("bad utf-8", CloseKind::ProtocolViolation, "UTF-8", &mut expected);

    let mut c = Raw::connect(addr);
    c.send_raw_frame(0x83, b"?", true);
    c.expect_close(CloseCode::PROTOCOL_ERROR);
    check(
        "reserved opcode",
        CloseKind::ProtocolViolation,
        "opcode",
        &mut expected,
    );

    let mut c = connect(addr);
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
    request.resize(9000, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let _ = c.write_all(&request);
    let (answer, _) = read_to_end(&mut c);
    drop(c);
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    check(
        "over 8 KiB",
        CloseKind::HandshakeInvalid,
        "size limit",
        &mut expected,
    );

    let mut c = connect(addr);
    c.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
    let (answer, _) = read_to_end(&mut c);
    drop(c);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    check("garbage", CloseKind::HandshakeInvalid, "HTTP", &mut expected);

    let mut c = connect(addr);
    let (answer, _) = read_to_end(&mut c);
    assert!(answer.is_empty());
    check("silent", CloseKind::HandshakeTimeout, "timeout", &mut expected);

    server.shutdown(Duration::from_secs(5)).unwrap();
}

fn a_publish_reaches_websocket_subscribers_as_one_frame(engine: EngineKind) {
    struct Subscriber;
    impl Handler for Subscriber {
        fn on_connected(&mut self, s: &mut Session<'_>) {
            s.subscribe("news");
            let _ = s.send_text("subscribed");
        }
        fn on_recv(&mut self, _: &mut Session<'_>, data: &[u8]) -> usize {
            data.len()
        }
    }
    let server = server(engine)
        .websocket(Some(WebSocketConfig::new()))
        .start(|| Subscriber)
        .unwrap();
    let mut clients: Vec<Raw> = (0..8).map(|_| Raw::connect(server.local_addr())).collect();
    for c in &mut clients {
        assert_eq!(c.next(), Some((Opcode::Text, b"subscribed".to_vec())));
    }
    let news: Vec<u8> = (0..3000).map(|i| pattern_byte(9, i)).collect();
    server.publish("news", news.clone()).unwrap();
    for c in &mut clients {
        assert_eq!(c.next(), Some((Opcode::Binary, news.clone())));
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
    for c in &mut clients {
        c.expect_close(CloseCode::GOING_AWAY);
    }
}

fn a_plain_get_gets_the_page(engine: EngineKind) {
    let page = "<!doctype html><title>t</title>hello";
    let (server, _) = start(engine, WebSocketConfig::new().page(page));
    let mut c = connect(server.local_addr());
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, _) = read_to_end(&mut c);
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("text/html") && answer.ends_with(page), "{answer}");
    let mut c = connect(server.local_addr());
    c.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, _) = read_to_end(&mut c);
    assert!(answer.starts_with(b"HTTP/1.1 404"));
    still_served(server.local_addr());
    server.shutdown(Duration::from_secs(5)).unwrap();
}

fn tcp_and_websocket_clients_share_the_servers_topics(engine: EngineKind) {
    /// Publishes what it receives to everyone in the one room, itself
    /// included (its own copy is queued at once: framed too).
    struct Member;
    impl Handler for Member {
        fn on_connected(&mut self, s: &mut Session<'_>) {
            s.subscribe("room");
            let _ = s.send_text("joined");
        }
        fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
            s.publish("room", data.to_vec());
            data.len()
        }
    }
    let server = server(engine)
        .websocket_listener("127.0.0.1:0".parse().unwrap(), WebSocketConfig::new())
        .start(|| Member)
        .unwrap();
    let ws_addr = server.websocket_addrs()[0];
    let mut tcp = connect(server.local_addr());
    assert_eq!(read_exact(&mut tcp, 6), b"joined");
    let mut browser = Raw::connect(ws_addr);
    assert_eq!(browser.next(), Some((Opcode::Text, b"joined".to_vec())));
    tcp.write_all(b"from tcp").unwrap();
    assert_eq!(read_exact(&mut tcp, 8), b"from tcp");
    assert_eq!(browser.next(), Some((Opcode::Binary, b"from tcp".to_vec())));
    browser.send(Opcode::Binary, b"from the browser");
    assert_eq!(
        browser.next(),
        Some((Opcode::Binary, b"from the browser".to_vec()))
    );
    assert_eq!(read_exact(&mut tcp, 16), b"from the browser");
    server.shutdown(Duration::from_secs(5)).unwrap();
    browser.expect_close(CloseCode::GOING_AWAY);
    // The listener is closed with the server.
    assert!(TcpStream::connect(ws_addr).is_err());
}

/// What a client session saw: messages (text or not) and how it ended.
#[derive(Default)]
struct ClientSaw {
    messages: Vec<(bool, Vec<u8>)>,
    closed: Option<CloseKind>,
}

/// Sends `send` on connect, collects the answers, closes once as many
/// came back.
struct WsClient {
    send: Vec<(bool, Vec<u8>)>,
    saw: std::sync::Arc<std::sync::Mutex<ClientSaw>>,
}

impl Handler for WsClient {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        assert!(s.is_websocket());
        for (text, m) in &self.send {
            let _ = match text {
                true => s.send_text(std::str::from_utf8(m).unwrap()),
                false => s.send(m.clone()),
            };
        }
    }
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut saw = self.saw.lock().unwrap();
        saw.messages.push((s.received_text(), data.to_vec()));
        if saw.messages.len() == self.send.len() {
            s.close();
        }
        data.len()
    }
    fn on_disconnected(&mut self, reason: iocore::CloseReason) {
        self.saw.lock().unwrap().closed = Some(reason.kind());
    }
}

fn an_iocore_client_talks_to_a_real_server(engine: EngineKind) {
    // tungstenite's server refuses unmasked frames from a client.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut ws = tungstenite::accept(stream).expect("the upgrade request");
        loop {
            match ws.read() {
                Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => {
                    ws.send(m).unwrap()
                }
                Ok(tungstenite::Message::Close(frame)) => {
                    let code = frame.map(|f| u16::from(f.code));
                    // Flushes the close reply.
                    while ws.read().is_ok() {}
                    return code;
                }
                Ok(_) => {}
                Err(e) => panic!("server: {e}"),
            }
        }
    });
    let saw = std::sync::Arc::new(std::sync::Mutex::new(ClientSaw::default()));
    let send = vec![
        (true, "héllo".as_bytes().to_vec()),
        (false, vec![1, 2, 3]),
        (false, (0..16 * 1024).map(|i| pattern_byte(4, i)).collect()),
    ];
    let client = iocore::Client::builder()
        .engine(engine)
        .websocket(Some(WebSocketConfig::new()))
        .start::<WsClient>()
        .unwrap();
    let (sent, s) = (send.clone(), saw.clone());
    client
        .connect(addr, move || WsClient { send: sent, saw: s })
        .unwrap();
    wait_until("the client's session ended", || {
        saw.lock().unwrap().closed.is_some()
    });
    assert_eq!(server.join().unwrap(), Some(1000), "the client's close code");
    let saw = saw.lock().unwrap();
    assert_eq!(saw.messages, send);
    assert_eq!(saw.closed, Some(CloseKind::LocalClose));
    client.shutdown(Duration::from_secs(5)).unwrap();
}

fn a_client_refuses_a_server_that_does_not_upgrade(engine: EngineKind) {
    // A TCP echo server says the request back: no 101.
    let (tcp, _) = {
        let (events, factory) = recorded(|| Echo);
        (server(engine).start(factory).unwrap(), events)
    };
    let saw = std::sync::Arc::new(std::sync::Mutex::new(ClientSaw::default()));
    let client = iocore::Client::builder()
        .engine(engine)
        .websocket(Some(WebSocketConfig::new()))
        .start::<WsClient>()
        .unwrap();
    let s = saw.clone();
    client
        .connect(tcp.local_addr(), move || WsClient { send: vec![], saw: s })
        .unwrap();
    wait_until("the client's session ended", || {
        saw.lock().unwrap().closed.is_some()
    });
    assert_eq!(saw.lock().unwrap().closed, Some(CloseKind::HandshakeInvalid));
    client.shutdown(Duration::from_secs(5)).unwrap();
    tcp.shutdown(Duration::from_secs(5)).unwrap();
}

engine_suite!(
    an_iocore_client_talks_to_a_real_server,
    a_client_refuses_a_server_that_does_not_upgrade,
    tcp_and_websocket_clients_share_the_servers_topics,
    a_real_client_gets_each_message_back_whole,
    fragments_pings_and_the_close_handshake,
    hostile_input_closes_only_its_session_with_a_reason,
    a_publish_reaches_websocket_subscribers_as_one_frame,
    a_plain_get_gets_the_page,
);
