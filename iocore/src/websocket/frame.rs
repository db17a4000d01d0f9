//! Frames (RFC 6455 §5): the header's encoding, and a decoder that turns
//! bytes from a peer into whole messages and control frames.
//!
//! The decoder works on the bytes it is given and keeps only what a
//! fragmented message needs across frames: a message in one frame is
//! unmasked in place and handed out as a slice of the caller's buffer.

use super::{CloseCode, Role};

/// What a frame carries (RFC 6455 §5.2; the reserved opcodes are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// A later fragment of a message.
    Continuation,
    /// A text message (UTF-8).
    Text,
    /// A binary message.
    Binary,
    /// The close handshake.
    Close,
    /// A ping, to be answered with a pong carrying its payload.
    Ping,
    /// The answer to a ping (or a heartbeat on its own).
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;

/// Writes the header of one final frame of `len` payload bytes into
/// `out`, returning how many bytes it took. A server's frames are not
/// masked (`mask: None`), so one header and payload serve every peer; a
/// client's are, and the payload must then be masked with
/// [`apply_mask`].
pub fn encode_header(opcode: Opcode, len: usize, mask: Option<[u8; 4]>, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x80 | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    at
}

/// One final frame, header and payload (masked with `mask` if given).
pub fn encode(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut header = [0; MAX_HEADER];
    let n = encode_header(opcode, payload.len(), mask, &mut header);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&header[..n]);
    frame.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut frame[n..], key, 0);
    }
    frame
}

/// The payload of a close frame: the code, then the reason (cut to fit
/// the 125 bytes of a control frame, at a character boundary).
pub fn close_payload(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.0.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// XORs `data` with the mask `key`, `data[0]` being byte `offset` of the
/// payload (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    // The key turned to start at `offset`, then eight bytes at a time.
    let mut k = [0; 4];
    for (i, b) in k.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    let wide = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// What a peer sent that breaks the protocol: the close code to answer
/// with and why, in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// The code to close with.
    pub code: CloseCode,
    /// What was wrong.
    pub reason: &'static str,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (close code {})", self.reason, self.code.0)
    }
}

impl std::error::Error for ProtocolError {}

fn protocol(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: CloseCode::PROTOCOL_ERROR,
        reason,
    }
}

fn invalid_data(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: CloseCode::INVALID_DATA,
        reason,
    }
}

/// What the decoder found: a whole message, or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message (its UTF-8 checked).
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping and its payload (answer with a pong carrying it).
    Ping(&'a [u8]),
    /// A pong and its payload.
    Pong(&'a [u8]),
    /// The peer's close: its code and reason, if it gave one.
    Close(Option<(CloseCode, &'a str)>),
}

/// A message arriving in several frames.
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// How much of `data` is checked UTF-8 (text only): a text message
    /// with a bad sequence fails at the frame that carries it.
    checked: usize,
}

/// Turns bytes from a peer into [`Event`]s (RFC 6455 §5, §6.2): a server
/// requires masked frames and a client unmasked ones; no extension is
/// negotiated, so the RSV bits must be 0; control frames are final and at
/// most 125 bytes; a message longer than `max_message` is refused as soon
/// as a header announces it, before its bytes are kept.
pub struct Decoder {
    role: Role,
    max_message: usize,
    partial: Option<Partial>,
    /// The last fragmented message handed out, until the next call.
    done: Option<Vec<u8>>,
}

impl Decoder {
    /// A decoder for one connection's incoming bytes, taking messages of
    /// at most `max_message` bytes.
    pub fn new(role: Role, max_message: usize) -> Decoder {
        Decoder {
            role,
            max_message,
            partial: None,
            done: None,
        }
    }

    /// Whether a fragmented message is under way.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes the first frame in `buf`: `Ok(None)` when it is not whole
    /// yet, else how many bytes it took and what it gave (`None` for a
    /// fragment that does not end its message). The frame's payload is
    /// unmasked in place. After an error the connection must be closed
    /// with the error's code.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(usize, Option<Event<'a>>)>, ProtocolError> {
        self.done = None;
        let Some(head) = parse_header(buf, self.role)? else {
            return Ok(None);
        };
        let Some(opcode) = Opcode::from_bits(buf[0] & 0x0F) else {
            return Err(protocol("a reserved opcode"));
        };
        let fin = buf[0] & 0x80 != 0;
        if opcode.is_control() {
            if !fin {
                return Err(protocol("a fragmented control frame"));
            }
            if head.len > 125 {
                return Err(protocol("a control frame over 125 bytes"));
            }
        } else {
            let sofar = self.partial.as_ref().map_or(0, |p| p.data.len());
            match (opcode, &self.partial) {
                (Opcode::Continuation, None) => {
                    return Err(protocol("a continuation frame without a message to continue"))
                }
                (Opcode::Text | Opcode::Binary, Some(_)) => {
                    return Err(protocol("a new message before the last one ended"))
                }
                _ => {}
            }
            if head.len > (self.max_message - sofar) as u64 {
                return Err(ProtocolError {
                    code: CloseCode::TOO_BIG,
                    reason: "a message over the size limit",
                });
            }
        }
        let len = head.len as usize;
        let total = head.size + len;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = &mut buf[head.size..total];
        if let Some(key) = head.mask {
            apply_mask(payload, key, 0);
        }
        let event = match opcode {
            Opcode::Ping => Some(Event::Ping(payload)),
            Opcode::Pong => Some(Event::Pong(payload)),
            Opcode::Close => Some(Event::Close(close_frame(payload)?)),
            Opcode::Text | Opcode::Binary if fin => Some(if opcode == Opcode::Text {
                Event::Text(
                    std::str::from_utf8(payload)
                        .map_err(|_| invalid_data("a text message that is not UTF-8"))?,
                )
            } else {
                Event::Binary(payload)
            }),
            Opcode::Text | Opcode::Binary => {
                let mut partial = Partial {
                    text: opcode == Opcode::Text,
                    data: payload.to_vec(),
                    checked: 0,
                };
                check_utf8(&mut partial, false)?;
                self.partial = Some(partial);
                None
            }
            Opcode::Continuation => {
                let partial = self.partial.as_mut().expect("checked above");
                partial.data.extend_from_slice(payload);
                check_utf8(partial, fin)?;
                if !fin {
                    return Ok(Some((total, None)));
                }
                // The message is whole: it is handed out from the decoder,
                // which forgets it at the next call.
                let partial = self.partial.take().expect("checked above");
                let data: &[u8] = self.done.insert(partial.data);
                Some(if partial.text {
                    Event::Text(std::str::from_utf8(data).expect("checked as it arrived"))
                } else {
                    Event::Binary(data)
                })
            }
        };
        Ok(Some((total, event)))
    }
}

/// Checks what a text message has received so far: a bad sequence fails
/// now; an unfinished one at the end of the message fails at its last
/// frame.
fn check_utf8(partial: &mut Partial, last: bool) -> Result<(), ProtocolError> {
    if !partial.text {
        return Ok(());
    }
    match std::str::from_utf8(&partial.data[partial.checked..]) {
        Ok(_) => partial.checked = partial.data.len(),
        Err(e) => {
            if e.error_len().is_some() || last {
                return Err(invalid_data("a text message that is not UTF-8"));
            }
            partial.checked += e.valid_up_to();
        }
    }
    Ok(())
}

fn close_frame(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(protocol("a close frame with a one-byte code")),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.may_be_sent() {
                return Err(protocol("a close code that may not be sent"));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| invalid_data("a close reason that is not UTF-8"))?;
            Ok(Some((code, reason)))
        }
    }
}

/// A frame header: its size, the payload's length and mask.
struct Header {
    size: usize,
    len: u64,
    mask: Option<[u8; 4]>,
}

fn parse_header(buf: &[u8], role: Role) -> Result<Option<Header>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x70 != 0 {
        return Err(protocol("a reserved bit set with no extension agreed"));
    }
    let masked = buf[1] & 0x80 != 0;
    match role {
        Role::Server if !masked => return Err(protocol("an unmasked frame from a client")),
        Role::Client if masked => return Err(protocol("a masked frame from a server")),
        _ => {}
    }
    let (len, mut size) = match buf[1] & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else { return Ok(None) };
            (u16::from_be_bytes([b[0], b[1]]) as u64, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else { return Ok(None) };
            let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(protocol("a frame length with its top bit set"));
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    let mask = if masked {
        let Some(k) = buf.get(size..size + 4) else {
            return Ok(None);
        };
        size += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Ok(Some(Header { size, len, mask }))
}
