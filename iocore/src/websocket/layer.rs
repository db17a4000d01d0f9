//! WebSocket as a session's transport: what a server session does with
//! the bytes of its upgrade request, and the frames it writes. The
//! session layer (`session/conn/ws.rs`) calls these; nothing here touches
//! a socket or a session.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::frame::{self, Decoder, Opcode, MAX_HEADER};
use super::handshake::{self, HandshakeError};
use super::{CloseCode, Role, WebSocketConfig};

/// One WebSocket session's inbound state: its settings, its frame
/// decoder, and the bytes of messages its handler left unconsumed.
pub(crate) struct Layer {
    pub(crate) config: Arc<WebSocketConfig>,
    pub(crate) decoder: Decoder,
    /// A client's `Sec-WebSocket-Key`, until the server's answer is read.
    pub(crate) key: Option<Box<str>>,
    /// What the handler left of the messages offered to it: the next
    /// message is offered behind it (a byte stream of messages).
    pub(crate) held: Vec<u8>,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer").field("held", &self.held.len()).finish()
    }
}

/// What a server made of the start of a connection.
pub(crate) enum Upgrade {
    /// Not a whole request yet.
    More,
    /// A valid upgrade: send `answer` (101); the request took `len` bytes.
    Accepted { answer: Bytes, len: usize },
    /// Not an upgrade: send `answer` (an HTTP error status, or the page),
    /// then close for `reason` (`None`: the page was served).
    Answered {
        answer: Bytes,
        reason: Option<HandshakeError>,
    },
}

impl Layer {
    pub(crate) fn server(config: Arc<WebSocketConfig>) -> Layer {
        Layer {
            decoder: Decoder::new(Role::Server, config.max_message),
            config,
            key: None,
            held: Vec::new(),
        }
    }

    pub(crate) fn client(config: Arc<WebSocketConfig>) -> Layer {
        Layer {
            decoder: Decoder::new(Role::Client, config.max_message),
            config,
            key: None,
            held: Vec::new(),
        }
    }

    /// A client's upgrade request to `host`; the layer keeps its key to
    /// check the answer with.
    pub(crate) fn request(&mut self, host: &str) -> Bytes {
        let mut nonce = [0; 16];
        nonce[..8].copy_from_slice(&random_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&random_u64().to_le_bytes());
        let protocols: Vec<&str> = self.config.protocols.iter().map(String::as_str).collect();
        let (request, key) = handshake::request(host, &self.config.path, nonce, &protocols);
        self.key = Some(key.into());
        Bytes::from(request)
    }

    /// Reads the server's answer to a client's request at the start of
    /// `buf`: `Ok(None)` while incomplete, else its length.
    pub(crate) fn answer(&self, buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
        let key = self.key.as_deref().unwrap_or_default();
        let protocols: Vec<&str> = self.config.protocols.iter().map(String::as_str).collect();
        Ok(handshake::parse_answer(buf, key, &protocols, self.config.max_request)?.map(|(_, len)| len))
    }

    /// Reads the upgrade request at the start of `buf`.
    pub(crate) fn upgrade(&self, buf: &[u8]) -> Upgrade {
        let error = match handshake::parse_request(buf, self.config.max_request) {
            Ok(None) => return Upgrade::More,
            Ok(Some((request, len))) => {
                let chosen = self
                    .config
                    .protocols
                    .iter()
                    .find(|p| request.protocols.contains(&p.as_str()))
                    .map(String::as_str);
                let answer = Bytes::from(handshake::accept(request.key, chosen));
                return Upgrade::Accepted { answer, len };
            }
            Err(e) => e,
        };
        if let Some(page) = &self.config.page {
            if let Some(path) = handshake::plain_get(buf) {
                let answer = match path {
                    "/" | "/index.html" => {
                        handshake::answer_and_close("200 OK", "text/html; charset=utf-8", page)
                    }
                    _ => handshake::answer_and_close("404 Not Found", "text/plain", b"not found\n"),
                };
                return Upgrade::Answered {
                    answer: Bytes::from(answer),
                    reason: None,
                };
            }
        }
        Upgrade::Answered {
            answer: Bytes::from(handshake::refuse(&error)),
            reason: Some(error),
        }
    }
}

/// 64 bits no peer can predict (a client's masks and key): SipHash with
/// the process's random keys over a counter.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static KEYS: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
    }
    KEYS.with(|keys| {
        let mut h = keys.build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.finish()
    })
}

/// A frame of `payload` as the given side sends it: a client's masked
/// with a fresh key, a server's as it is.
pub(crate) fn frame_as(role: Role, opcode: Opcode, payload: &[u8]) -> Bytes {
    match role {
        Role::Server => frame_message(opcode, payload),
        Role::Client => Bytes::from(frame::encode(
            opcode,
            payload,
            Some(random_u64().to_le_bytes()[..4].try_into().expect("4 bytes")),
        )),
    }
}

/// Messages up to this long are framed into one buffer with their
/// header (one copy); longer ones are queued as a header and the payload
/// itself (no copy, one more buffer in the gather write).
const COPY_UP_TO: usize = 1024;

/// One unmasked frame (a server's) holding `payload` as one message:
/// the frame a topic's publish shares among all its WebSocket subscribers.
pub(crate) fn frame_message(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut header = [0; MAX_HEADER];
    let n = frame::encode_header(opcode, payload.len(), None, &mut header);
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out.freeze()
}

/// The buffers that send `payload` as one unmasked message: one frame, or
/// for a long payload its header and the payload itself.
pub(crate) fn frame_parts(opcode: Opcode, payload: Bytes) -> (Bytes, Option<Bytes>) {
    if payload.len() <= COPY_UP_TO {
        return (frame_message(opcode, &payload), None);
    }
    let mut header = [0; MAX_HEADER];
    let n = frame::encode_header(opcode, payload.len(), None, &mut header);
    (Bytes::copy_from_slice(&header[..n]), Some(payload))
}

/// Appends the header of an unmasked frame of `len` bytes to `out`.
pub(crate) fn put_header(opcode: Opcode, len: usize, out: &mut Vec<u8>) {
    let mut header = [0; MAX_HEADER];
    let n = frame::encode_header(opcode, len, None, &mut header);
    out.extend_from_slice(&header[..n]);
}

/// A close frame with `code` and `reason`, as `role` sends it.
pub(crate) fn close_frame(role: Role, code: CloseCode, reason: &str) -> Bytes {
    frame_as(role, Opcode::Close, &frame::close_payload(code, reason))
}
