//! The WebSocket codec against RFC 6455's own examples and the faults a
//! peer can send (each refused with the close code the RFC names).

use iocore::websocket::frame::{self, encode, Decoder, Event, Opcode};
use iocore::websocket::handshake::{self, accept_key, parse_answer, parse_request};
use iocore::websocket::{CloseCode, Role};

const MAX: usize = 16 * 1024;

/// Decodes every frame in `bytes`, returning the events (owned) or the
/// first error's close code.
fn decode_all(role: Role, bytes: &[u8]) -> Result<Vec<String>, u16> {
    let mut d = Decoder::new(role, MAX);
    let mut buf = bytes.to_vec();
    let mut at = 0;
    let mut out = Vec::new();
    while at < buf.len() {
        match d.decode(&mut buf[at..]) {
            Ok(Some((n, event))) => {
                if let Some(e) = event {
                    out.push(describe(&e));
                }
                at += n;
            }
            Ok(None) => break,
            Err(e) => return Err(e.code.0),
        }
    }
    Ok(out)
}

fn describe(e: &Event<'_>) -> String {
    match e {
        Event::Text(t) => format!("text {t}"),
        Event::Binary(b) => format!("binary {}", b.len()),
        Event::Ping(p) => format!("ping {}", String::from_utf8_lossy(p)),
        Event::Pong(p) => format!("pong {}", String::from_utf8_lossy(p)),
        Event::Close(None) => "close".into(),
        Event::Close(Some((code, reason))) => format!("close {} {reason}", code.0),
    }
}

const MASKED_HELLO: [u8; 11] = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];

#[test]
fn rfc_6455_examples_decode_and_encode() {
    // §5.7: an unmasked and a masked "Hello".
    assert_eq!(encode(Opcode::Text, b"Hello", None), b"\x81\x05Hello");
    assert_eq!(
        encode(Opcode::Text, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d])),
        MASKED_HELLO
    );
    assert_eq!(
        decode_all(Role::Server, &MASKED_HELLO),
        Ok(vec!["text Hello".into()])
    );
    assert_eq!(
        decode_all(Role::Client, b"\x81\x05Hello"),
        Ok(vec!["text Hello".into()])
    );
    // A fragmented text message with a ping between its fragments.
    assert_eq!(
        decode_all(Role::Client, b"\x01\x03Hel\x89\x05Hello\x80\x02lo"),
        Ok(vec!["ping Hello".into(), "text Hello".into()])
    );
    // A masked pong, and 256 and 65536 bytes of binary.
    let pong = [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    assert_eq!(decode_all(Role::Server, &pong), Ok(vec!["pong Hello".into()]));
    let b256 = encode(Opcode::Binary, &[7; 256], None);
    assert_eq!(&b256[..4], &[0x82, 0x7E, 0x01, 0x00]);
    assert_eq!(decode_all(Role::Client, &b256), Ok(vec!["binary 256".into()]));
    let big = encode(Opcode::Binary, &vec![7; 65536], None);
    assert_eq!(&big[..10], &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
    let mut d = Decoder::new(Role::Client, 1 << 20);
    let mut buf = big.clone();
    let (n, e) = d.decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        (n, e.map(|e| describe(&e))),
        (big.len(), Some("binary 65536".into()))
    );
}

#[test]
fn a_frame_trickled_byte_by_byte_waits_for_its_last_byte() {
    let frame = encode(Opcode::Binary, &[1; 300], Some([9, 8, 7, 6]));
    let mut d = Decoder::new(Role::Server, MAX);
    for end in 0..frame.len() {
        let mut part = frame[..end].to_vec();
        assert_eq!(d.decode(&mut part), Ok(None), "{end} of {} bytes", frame.len());
    }
    let mut whole = frame.clone();
    let (n, e) = d.decode(&mut whole).unwrap().unwrap();
    assert_eq!((n, e), (frame.len(), Some(Event::Binary(&[1; 300]))));
}

#[test]
fn faults_are_refused_with_the_code_the_rfc_names() {
    let masked = |bytes: &[u8]| -> Vec<u8> {
        // Sets the mask bit with a zero key (payload unchanged).
        let (head, rest) = bytes.split_at(2);
        let mut f = vec![head[0], head[1] | 0x80, 0, 0, 0, 0];
        f.extend_from_slice(rest);
        f
    };
    let cases: &[(&str, Vec<u8>, u16)] = &[
        ("unmasked from a client", b"\x81\x05Hello".to_vec(), 1002),
        ("an RSV bit", masked(b"\xC1\x05Hello"), 1002),
        ("a reserved opcode", masked(b"\x83\x00"), 1002),
        ("a fragmented ping", masked(b"\x09\x00"), 1002),
        (
            "a ping over 125",
            {
                let mut f = vec![0x89, 0xFE, 0, 126, 0, 0, 0, 0];
                f.extend_from_slice(&[0; 126]);
                f
            },
            1002,
        ),
        ("a continuation first", masked(b"\x80\x00"), 1002),
        (
            "a new message mid-message",
            [masked(b"\x01\x01a"), masked(b"\x81\x01b")].concat(),
            1002,
        ),
        ("text that is not UTF-8", masked(b"\x81\x02\xC3\x28"), 1007),
        (
            "a bad sequence in a first fragment",
            masked(b"\x01\x02\xFF\x61"),
            1007,
        ),
        (
            "UTF-8 cut at the message's end",
            [masked(b"\x01\x01\xC3"), masked(b"\x80\x00")].concat(),
            1007,
        ),
        ("a one-byte close", masked(b"\x88\x01\x03"), 1002),
        ("close code 1005", masked(b"\x88\x02\x03\xED"), 1002),
        ("close code 999", masked(b"\x88\x02\x03\xE7"), 1002),
        ("a close reason not UTF-8", masked(b"\x88\x03\x03\xE8\xFF"), 1007),
        (
            "a length with its top bit",
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        assert_eq!(decode_all(Role::Server, bytes), Err(*code), "{what}");
    }
    // A masked frame to a client.
    assert_eq!(decode_all(Role::Client, &MASKED_HELLO), Err(1002));
}

#[test]
fn an_oversize_message_is_refused_at_its_header() {
    // Only the header of a 1 MiB frame has arrived: refused already.
    let header = [0x82, 0xFF, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4];
    let mut d = Decoder::new(Role::Server, MAX);
    let mut buf = header.to_vec();
    assert_eq!(d.decode(&mut buf).unwrap_err().code, CloseCode::TOO_BIG);
    // Fragments that add up to more than the limit.
    let half = encode(Opcode::Binary, &vec![0; MAX / 2 + 1], Some([1, 2, 3, 4]));
    let mut first = half.clone();
    first[0] &= 0x7F; // not final
    let mut rest = half;
    rest[0] = 0x80; // a final continuation
    let mut d = Decoder::new(Role::Server, MAX);
    assert_eq!(d.decode(&mut first.clone()).unwrap().unwrap().1, None);
    assert_eq!(d.decode(&mut rest).unwrap_err().code, CloseCode::TOO_BIG);
}

#[test]
fn utf8_split_across_fragments_is_whole_text() {
    // "é" is C3 A9: its two bytes in two fragments.
    let frames = [
        encode(Opcode::Text, b"caf\xC3", Some([5, 6, 7, 8])),
        encode(Opcode::Continuation, b"\xA9!", Some([5, 6, 7, 8])),
    ];
    let mut first = frames[0].clone();
    first[0] &= 0x7F;
    assert_eq!(
        decode_all(Role::Server, &[first, frames[1].clone()].concat()),
        Ok(vec!["text café!".into()])
    );
}

#[test]
fn a_close_frame_carries_its_code_and_a_reason_cut_at_a_character() {
    let payload = frame::close_payload(CloseCode::GOING_AWAY, &"é".repeat(100));
    assert_eq!(payload.len(), 2 + 122, "123 bytes would split an é");
    let frame = encode(Opcode::Close, &payload, Some([1, 1, 1, 1]));
    let events = decode_all(Role::Server, &frame).unwrap();
    assert_eq!(events, vec![format!("close 1001 {}", "é".repeat(61))]);
}

const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn the_rfc_handshake_is_accepted_and_answered() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let bytes = [RFC_REQUEST.as_bytes(), &MASKED_HELLO].concat();
    let (req, len) = parse_request(&bytes, 8192).unwrap().unwrap();
    assert_eq!(
        len,
        RFC_REQUEST.len(),
        "the first frame is not part of the request"
    );
    assert_eq!(
        (req.path, req.host, req.origin, req.protocols.as_slice()),
        (
            "/chat",
            "server.example.com",
            Some("http://example.com"),
            &["chat", "superchat"][..]
        )
    );
    let answer = String::from_utf8(handshake::accept(req.key, Some("chat"))).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Sec-WebSocket-Protocol: chat\r\n"), "{answer}");
    // Every prefix is incomplete, not an error.
    for end in 0..RFC_REQUEST.len() {
        assert_eq!(
            parse_request(&RFC_REQUEST.as_bytes()[..end], 8192),
            Ok(None),
            "{end}"
        );
    }
}

#[test]
fn bad_upgrade_requests_are_refused_with_a_status() {
    let without = |line: &str| RFC_REQUEST.replace(line, "");
    let cases = [
        ("no Upgrade", without("Upgrade: websocket\r\n"), 400),
        ("no Connection", without("Connection: Upgrade\r\n"), 400),
        ("no Host", without("Host: server.example.com\r\n"), 400),
        (
            "no key",
            without("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            400,
        ),
        (
            "a short key",
            RFC_REQUEST.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            400,
        ),
        ("version 8", RFC_REQUEST.replace("Version: 13", "Version: 8"), 426),
        ("a POST", RFC_REQUEST.replace("GET", "POST"), 400),
        ("HTTP/1.0", RFC_REQUEST.replace("HTTP/1.1", "HTTP/1.0"), 400),
        (
            "not HTTP",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x03\x03".to_string(),
            400,
        ),
    ];
    for (what, req, status) in cases {
        let err = parse_request(req.as_bytes(), 8192).unwrap_err();
        assert_eq!(err.status, status, "{what}: {err}");
        let answer = String::from_utf8(handshake::refuse(&err)).unwrap();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
    }
    // Over 8 KiB without its end: refused, not waited for.
    let long = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(9000));
    assert_eq!(parse_request(long.as_bytes(), 8192).unwrap_err().status, 431);
}

#[test]
fn a_client_checks_the_servers_answer() {
    let (req, key) = handshake::request("localhost:7777", "/", [42; 16], &["chat"]);
    let (parsed, _) = parse_request(&req, 8192).unwrap().unwrap();
    assert_eq!(parsed.protocols, ["chat"]);
    let answer = handshake::accept(parsed.key, Some("chat"));
    assert_eq!(
        parse_answer(&answer, &key, &["chat"], 8192),
        Ok(Some((Some("chat"), answer.len())))
    );
    // Another key's answer, or a protocol not offered, is refused.
    let (_, other) = handshake::request("localhost:7777", "/", [43; 16], &[]);
    assert!(parse_answer(&answer, &other, &["chat"], 8192).is_err());
    assert!(parse_answer(&answer, &key, &["other"], 8192).is_err());
    let refused = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    assert!(parse_answer(refused, &key, &[], 8192).is_err());
}

/// Masking eight bytes at a time gives what the RFC's byte-by-byte rule
/// gives (`j`-th byte XOR `key[j % 4]`), for every length and offset.
#[test]
fn masking_matches_the_rfc_rule_at_every_length_and_offset() {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    for len in 0..70 {
        for offset in 0..8 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + offset) as u8).collect();
            let mut masked = data.clone();
            frame::apply_mask(&mut masked, key, offset);
            let want: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(j, b)| b ^ key[(offset + j) % 4])
                .collect();
            assert_eq!(masked, want, "len {len}, offset {offset}");
        }
    }
}
