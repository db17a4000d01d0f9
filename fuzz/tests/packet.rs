//! Fuzz target for the packet decoder. Under `cargo test` bolero feeds it
//! random inputs for a bounded time; `cargo bolero test` runs it
//! coverage-guided (see README, "Fuzzing"). Whatever the bytes, decoding
//! never panics, never reads past a packet, and agrees with the header.

use std::time::Duration;

use iocore::packet::{decode, encode, Frame, FrameError, HEADER};

/// Decodes `bytes` packet by packet with limit `max`, checking every
/// answer against the header it was given.
fn check_stream(max: usize, bytes: &[u8]) {
    let mut rest = bytes;
    loop {
        let header = rest.get(..HEADER).map(|h| {
            (
                u16::from_le_bytes([h[0], h[1]]) as usize,
                u16::from_le_bytes([h[2], h[3]]),
            )
        });
        match (decode(rest, max), header) {
            (Ok(None), None) => return,
            (Ok(None), Some((size, _))) => {
                assert!(
                    (HEADER..=max).contains(&size) && size > rest.len(),
                    "waits only for a body"
                );
                return;
            }
            (Ok(Some(Frame { id, body, len: n })), Some((size, want_id))) => {
                assert_eq!((n, id), (size, want_id));
                assert_eq!(body, &rest[HEADER..size]);
                assert!(size <= max);
                // What it decoded encodes back to the same bytes.
                assert_eq!(&encode(id, body).unwrap()[..], &rest[..n]);
                rest = &rest[n..];
            }
            (Err(FrameError::TooSmall { size }), Some((s, _))) => {
                assert!((size as usize) < HEADER && size as usize == s);
                return;
            }
            (Err(FrameError::TooLarge { size, max: m }), Some((s, _))) => {
                assert!(size as usize > max && size as usize == s && m == max);
                return;
            }
            (answer, header) => panic!("{answer:?} for header {header:?}"),
        }
    }
}

#[test]
fn packet_decoder() {
    bolero::check!()
        .with_type::<(u16, Vec<u8>)>()
        .with_test_time(Duration::from_secs(3))
        .for_each(|(max, bytes)| {
            let max = (*max as usize).max(HEADER);
            check_stream(max, bytes);
        });
}
