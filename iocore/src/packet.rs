//! Packets on top of the byte stream: the course's `PacketHeader`.
//!
//! ```text
//! | size: u16 LE | id: u16 LE | body: size - 4 bytes |
//! ```
//!
//! `size` counts the whole packet, header included. [`Packets`] adapts a
//! [`PacketHandler`] into a [`Handler`]: it hands over each whole packet
//! once, as `(id, body)`, wherever TCP cut the stream. A packet that
//! arrived in one piece is handed over where it lies, without a copy; the
//! session layer keeps the first part of a cut packet and offers it again,
//! joined, when the rest arrives. A size below the header or over the
//! limit ([`Packets::max_packet`], 4096 by default, at most 65535) closes
//! that session with [`CloseReason::ProtocolViolation`].
//!
//! [`encode`] builds a packet to send as one [`Bytes`]: built once, it can
//! be queued on many sessions (or published to a topic) without a copy.
//!
//! ```
//! use iocore::packet::{self, PacketHandler, Packets};
//! use iocore::Session;
//!
//! const PING: u16 = 1;
//! const PONG: u16 = 2;
//!
//! struct Game;
//! impl PacketHandler for Game {
//!     fn on_packet(&mut self, s: &mut Session<'_>, id: u16, body: &[u8]) {
//!         if id == PING {
//!             let _ = s.send(packet::encode(PONG, body).expect("fits"));
//!         }
//!     }
//! }
//!
//! let handler = Packets::new(Game).max_packet(1024);
//! # let _ = handler;
//! ```

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::session::{CloseReason, Handler, Session};

/// Bytes of the header: `u16` size, `u16` id.
pub const HEADER: usize = 4;
/// The size limit a [`Packets`] starts with.
pub const DEFAULT_MAX_PACKET: usize = 4096;
/// The largest size the header can state.
pub const MAX_PACKET: usize = u16::MAX as usize;

/// Why the bytes at the front of a stream are not a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The size field is smaller than the header itself.
    TooSmall {
        /// The size the header stated.
        size: u16,
    },
    /// The size field is over the limit.
    TooLarge {
        /// The size the header stated.
        size: u16,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooSmall { size } => {
                write!(f, "packet size {size} is smaller than its {HEADER}-byte header")
            }
            FrameError::TooLarge { size, max } => write!(f, "packet size {size} is over the limit of {max}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A whole packet found at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The packet's id.
    pub id: u16,
    /// Its body, a slice of the buffer.
    pub body: &'a [u8],
    /// Bytes it takes in the buffer, header included (its size).
    pub len: usize,
}

/// The packet at the front of `buf`, if it is all there; `Ok(None)` while
/// more bytes are needed; an error when the header states a size below
/// [`HEADER`] or over `max`. Looks at nothing past the packet.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(header) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let size = u16::from_le_bytes([header[0], header[1]]);
    let id = u16::from_le_bytes([header[2], header[3]]);
    if (size as usize) < HEADER {
        return Err(FrameError::TooSmall { size });
    }
    if size as usize > max {
        return Err(FrameError::TooLarge { size, max });
    }
    Ok(buf.get(HEADER..size as usize).map(|body| Frame {
        id,
        body,
        len: size as usize,
    }))
}

/// A body too long for the header's `u16` size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketTooLarge {
    /// The packet's size, header included.
    pub size: usize,
}

impl fmt::Display for PacketTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a packet of {} bytes does not fit the u16 size field",
            self.size
        )
    }
}

impl std::error::Error for PacketTooLarge {}

/// One packet, header and `body`, in one buffer.
pub fn encode(id: u16, body: &[u8]) -> Result<Bytes, PacketTooLarge> {
    encode_parts(id, &[body])
}

/// One packet whose body is `parts` one after the other, in one buffer
/// (say a fixed field and then a text).
pub fn encode_parts(id: u16, parts: &[&[u8]]) -> Result<Bytes, PacketTooLarge> {
    let size = HEADER + parts.iter().map(|p| p.len()).sum::<usize>();
    if size > MAX_PACKET {
        return Err(PacketTooLarge { size });
    }
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u16_le(size as u16);
    buf.put_u16_le(id);
    for p in parts {
        buf.put_slice(p);
    }
    Ok(buf.freeze())
}

/// Per-session application logic for a packet protocol: a [`Handler`]
/// that gets whole packets instead of bytes. Wrap it in [`Packets`].
pub trait PacketHandler: 'static {
    /// See [`Handler::on_connected`].
    fn on_connected(&mut self, session: &mut Session<'_>) {
        let _ = session;
    }

    /// A whole packet arrived: `id` and `body` (`size - 4` bytes). Called
    /// once per packet, in order. Pausing input ([`Session::pause_recv`])
    /// or closing the session here stops the packets that follow.
    fn on_packet(&mut self, session: &mut Session<'_>, id: u16, body: &[u8]);

    /// The stream broke the framing (`why`: a size below the header or
    /// over the limit): the session is closed with
    /// [`CloseReason::ProtocolViolation`] right after this returns. A
    /// handler may queue a last packet saying why (it is sent before the
    /// FIN).
    fn on_malformed(&mut self, session: &mut Session<'_>, why: &str) {
        let _ = (session, why);
    }

    /// See [`Handler::on_sent`].
    fn on_sent(&mut self, session: &mut Session<'_>) {
        let _ = session;
    }

    /// See [`Handler::on_writable`].
    fn on_writable(&mut self, session: &mut Session<'_>) {
        let _ = session;
    }

    /// See [`Handler::on_timer`].
    fn on_timer(&mut self, session: &mut Session<'_>) {
        let _ = session;
    }

    /// See [`Handler::on_disconnected`].
    fn on_disconnected(&mut self, reason: CloseReason) {
        let _ = reason;
    }
}

/// A [`Handler`] that frames the byte stream into packets for a
/// [`PacketHandler`]; see the module notes.
pub struct Packets<P> {
    inner: P,
    max: usize,
}

impl<P: PacketHandler> Packets<P> {
    /// Frames packets of at most [`DEFAULT_MAX_PACKET`] bytes for `inner`.
    pub fn new(inner: P) -> Packets<P> {
        Packets {
            inner,
            max: DEFAULT_MAX_PACKET,
        }
    }

    /// The largest packet accepted, header included (between 4 and
    /// 65535). The session's [`crate::Limits::max_recv_buffer`] (64 KiB by
    /// default) must hold one.
    ///
    /// # Panics
    /// If `max` is outside 4..=65535.
    pub fn max_packet(mut self, max: usize) -> Packets<P> {
        assert!(
            (HEADER..=MAX_PACKET).contains(&max),
            "max_packet must be between {HEADER} and {MAX_PACKET}, not {max}"
        );
        self.max = max;
        self
    }

    /// The wrapped handler.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped handler, mutably.
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }
}

impl<P: PacketHandler> Handler for Packets<P> {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        self.inner.on_connected(s)
    }

    /// Hands over every whole packet in `data` and consumes them; a cut
    /// packet at the end is left for the session to offer again with the
    /// rest.
    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        loop {
            match decode(&data[used..], self.max) {
                Ok(Some(frame)) => {
                    s.count_received_message();
                    self.inner.on_packet(s, frame.id, frame.body);
                    used += frame.len;
                    if !s.is_open() || s.is_recv_paused() {
                        return used;
                    }
                }
                Ok(None) => return used,
                Err(e) => {
                    let why = e.to_string();
                    self.inner.on_malformed(s, &why);
                    s.close_with(CloseReason::protocol(why));
                    return data.len();
                }
            }
        }
    }

    fn on_sent(&mut self, s: &mut Session<'_>) {
        self.inner.on_sent(s)
    }

    fn on_writable(&mut self, s: &mut Session<'_>) {
        self.inner.on_writable(s)
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        self.inner.on_timer(s)
    }

    fn on_disconnected(&mut self, reason: CloseReason) {
        self.inner.on_disconnected(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Hub;
    use crate::session::{Conn, Context, Limits, SessionId, Step, Tick};
    use std::cell::RefCell;
    use std::rc::Rc;

    type Seen = Rc<RefCell<Vec<(u16, Vec<u8>)>>>;

    /// Records every packet.
    struct Recorder(Seen);

    impl PacketHandler for Recorder {
        fn on_packet(&mut self, _: &mut Session<'_>, id: u16, body: &[u8]) {
            self.0.borrow_mut().push((id, body.to_vec()));
        }
    }

    /// A session fed by hand, as an engine would.
    struct Feed {
        conn: Conn<Packets<Recorder>>,
        seen: Seen,
        limits: Limits,
        hub: Hub,
    }

    impl Feed {
        fn new(max: usize) -> Feed {
            let seen = Seen::default();
            let handler = Packets::new(Recorder(seen.clone())).max_packet(max);
            Feed {
                conn: Conn::accepted("127.0.0.1:1".parse().unwrap(), handler, Tick(0)),
                seen,
                limits: Limits::default(),
                hub: Hub::new(Default::default()),
            }
        }

        fn push(&mut self, bytes: &[u8]) {
            let cx = Context {
                id: SessionId::new(0, 1),
                now: Tick(0),
                limits: &self.limits,
                hub: &self.hub,
            };
            self.conn.received(bytes, cx);
        }

        fn closed_reason(&mut self) -> Option<String> {
            let cx = Context {
                id: SessionId::new(0, 1),
                now: Tick(0),
                limits: &self.limits,
                hub: &self.hub,
            };
            match self.conn.step(cx) {
                Step::Fin | Step::Close { .. } => {}
                _ => return None,
            }
            self.conn.eof();
            match self.conn.step(cx) {
                Step::Close { reason, .. } => Some(reason.to_string()),
                _ => None,
            }
        }
    }

    fn stream(packets: &[(u16, Vec<u8>)]) -> Vec<u8> {
        packets
            .iter()
            .flat_map(|(id, body)| encode(*id, body).unwrap().to_vec())
            .collect()
    }

    fn sample() -> Vec<(u16, Vec<u8>)> {
        vec![
            (1, b"join lobby".to_vec()),
            (2, vec![]),
            (0xFFFF, (0..200u8).collect()),
            (7, b"x".to_vec()),
        ]
    }

    #[test]
    fn encode_writes_the_course_header() {
        let p = encode(0x0102, b"abc").unwrap();
        assert_eq!(&p[..], [7, 0, 2, 1, b'a', b'b', b'c']);
        assert_eq!(
            encode_parts(9, &[b"ab", b"", b"c"]).unwrap(),
            encode(9, b"abc").unwrap()
        );
        assert_eq!(encode(1, &[0; 65531]).unwrap().len(), 65535);
        assert_eq!(encode(1, &[0; 65532]), Err(PacketTooLarge { size: 65536 }));
    }

    #[test]
    fn packets_cut_at_every_byte_are_reassembled() {
        let packets = sample();
        let bytes = stream(&packets);
        for cut in 0..=bytes.len() {
            let mut f = Feed::new(4096);
            f.push(&bytes[..cut]);
            f.push(&bytes[cut..]);
            assert_eq!(*f.seen.borrow(), packets, "cut at {cut}");
            assert!(f.conn.is_open());
        }
    }

    #[test]
    fn a_stream_fed_one_byte_at_a_time_gives_the_same_packets() {
        let packets = sample();
        let mut f = Feed::new(4096);
        for b in stream(&packets) {
            f.push(&[b]);
        }
        assert_eq!(*f.seen.borrow(), packets);
    }

    #[test]
    fn many_packets_in_one_read_are_each_handed_over_once() {
        let packets: Vec<_> = (0..1000u16).map(|i| (i, i.to_le_bytes().to_vec())).collect();
        let mut f = Feed::new(4096);
        f.push(&stream(&packets));
        assert_eq!(*f.seen.borrow(), packets);
    }

    #[test]
    fn sizes_below_the_header_close_with_a_protocol_violation() {
        for size in 0..HEADER as u16 {
            let mut f = Feed::new(4096);
            let mut bytes = encode(1, b"ok").unwrap().to_vec();
            bytes.extend_from_slice(&size.to_le_bytes());
            bytes.extend_from_slice(&[5, 0, 1, 2, 3]);
            f.push(&bytes);
            assert_eq!(f.seen.borrow().len(), 1, "the packet before it was handed over");
            assert!(!f.conn.is_open());
            let reason = f.closed_reason().unwrap();
            assert_eq!(
                reason,
                format!("protocol violation: packet size {size} is smaller than its 4-byte header")
            );
        }
    }

    #[test]
    fn a_size_over_the_limit_closes_before_the_body_arrives() {
        let mut f = Feed::new(100);
        f.push(&101u16.to_le_bytes());
        assert!(f.conn.is_open(), "two bytes: no size yet");
        f.push(&[9, 0]);
        assert!(!f.conn.is_open(), "closed on the header alone");
        assert_eq!(
            f.closed_reason().unwrap(),
            "protocol violation: packet size 101 is over the limit of 100"
        );
        let mut ok = Feed::new(100);
        ok.push(&encode(3, &[1; 96]).unwrap());
        assert_eq!(ok.seen.borrow().len(), 1, "exactly the limit is fine");
    }

    /// Random packet sequences, cut into random pieces, come back whole.
    #[test]
    fn random_streams_cut_randomly_give_back_the_same_packets() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..300 {
            let packets: Vec<(u16, Vec<u8>)> = (0..next(40))
                .map(|_| {
                    let len = match next(10) {
                        0 => next(4092) as usize,
                        _ => next(64) as usize,
                    };
                    (next(65536) as u16, (0..len).map(|_| next(256) as u8).collect())
                })
                .collect();
            let bytes = stream(&packets);
            let mut f = Feed::new(4096);
            let mut at = 0;
            while at < bytes.len() {
                let n = (1 + next(3000) as usize).min(bytes.len() - at);
                f.push(&bytes[at..at + n]);
                at += n;
            }
            assert_eq!(*f.seen.borrow(), packets);
        }
    }

    #[test]
    #[should_panic(expected = "max_packet must be between 4 and 65535")]
    fn a_limit_over_the_header_field_is_refused() {
        let _ = Packets::new(Recorder(Seen::default())).max_packet(70_000);
    }
}
