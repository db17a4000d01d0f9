//! Fuzz targets for the WebSocket codec (feature `websocket`): the frame
//! decoder and the upgrade request parser. Whatever the bytes, neither
//! panics; the decoder gives the same messages however the bytes are cut
//! into reads; what is encoded decodes back to itself.

use std::time::Duration;

use iocore::websocket::frame::{encode, Decoder, Event, Opcode};
use iocore::websocket::handshake::{parse_request, plain_get};
use iocore::websocket::Role;

/// What decoding `bytes` gives, fed in reads of the sizes `cuts` names
/// (cycled; a whole read when empty), as the session's buffer would:
/// the events in order, then the error's close code if one came.
fn drive(role: Role, max: usize, bytes: &[u8], cuts: &[u8]) -> (Vec<String>, Option<u16>) {
    let mut d = Decoder::new(role, max);
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let mut fed = 0;
    let mut cut = cuts.iter().cycle();
    while fed < bytes.len() {
        let n = if cuts.is_empty() {
            bytes.len()
        } else {
            (*cut.next().unwrap() as usize).max(1)
        };
        let end = (fed + n).min(bytes.len());
        buf.extend_from_slice(&bytes[fed..end]);
        fed = end;
        loop {
            match d.decode(&mut buf) {
                Ok(Some((taken, event))) => {
                    events.extend(event.map(|e| describe(&e)));
                    assert!(taken >= 2 && taken <= buf.len());
                    buf.drain(..taken);
                }
                Ok(None) => break,
                Err(e) => return (events, Some(e.code.0)),
            }
        }
    }
    (events, None)
}

fn describe(e: &Event<'_>) -> String {
    match e {
        Event::Text(t) => format!("text {t:?}"),
        Event::Binary(b) => format!("binary {b:?}"),
        Event::Ping(p) => format!("ping {p:?}"),
        Event::Pong(p) => format!("pong {p:?}"),
        Event::Close(c) => format!("close {c:?}"),
    }
}

#[test]
fn websocket_decoder() {
    bolero::check!()
        .with_type::<(bool, u16, Vec<u8>, Vec<u8>)>()
        .with_test_time(Duration::from_secs(3))
        .for_each(|(server, max, bytes, cuts)| {
            let role = if *server { Role::Server } else { Role::Client };
            let max = *max as usize;
            let whole = drive(role, max, bytes, &[]);
            assert_eq!(
                drive(role, max, bytes, cuts),
                whole,
                "the same bytes in other reads"
            );
        });
}

#[test]
fn websocket_round_trip() {
    bolero::check!()
        .with_type::<(bool, Vec<u8>, [u8; 4], u8)>()
        .with_test_time(Duration::from_secs(2))
        .for_each(|(text, payload, mask, pieces)| {
            // A message in 1 to 4 frames, masked as a client sends it.
            let payload: Vec<u8> = if *text {
                String::from_utf8_lossy(payload).into_owned().into_bytes()
            } else {
                payload.clone()
            };
            let pieces = (*pieces as usize % 4) + 1;
            let step = payload.len().div_ceil(pieces).max(1);
            let chunks: Vec<&[u8]> = if payload.is_empty() {
                vec![&[]]
            } else {
                payload.chunks(step).collect()
            };
            let mut bytes = Vec::new();
            for (i, chunk) in chunks.iter().enumerate() {
                let opcode = match (i, *text) {
                    (0, true) => Opcode::Text,
                    (0, false) => Opcode::Binary,
                    _ => Opcode::Continuation,
                };
                let mut frame = encode(opcode, chunk, Some(*mask));
                if i + 1 < chunks.len() {
                    frame[0] &= 0x7F; // not the last fragment
                }
                bytes.extend_from_slice(&frame);
            }
            let want = if *text {
                describe(&Event::Text(std::str::from_utf8(&payload).unwrap()))
            } else {
                describe(&Event::Binary(&payload))
            };
            assert_eq!(drive(Role::Server, 1 << 20, &bytes, &[]), (vec![want], None));
        });
}

#[test]
fn websocket_upgrade_request() {
    bolero::check!()
        .with_type::<(u16, Vec<u8>)>()
        .with_test_time(Duration::from_secs(2))
        .for_each(|(max, bytes)| {
            let max = *max as usize;
            match parse_request(bytes, max) {
                Ok(Some((req, len))) => {
                    assert!(len <= bytes.len() && len <= max);
                    assert!(!req.key.is_empty() && !req.host.is_empty());
                }
                Ok(None) => assert!(bytes.len() < max, "waits only below the limit"),
                Err(e) => assert!([400, 426, 431].contains(&e.status), "{e:?}"),
            }
            // A plain GET (a page request) is never an upgrade.
            if let Some(path) = plain_get(bytes) {
                assert!(!matches!(parse_request(bytes, usize::MAX), Ok(Some(_))), "{path}");
            }
        });
}
