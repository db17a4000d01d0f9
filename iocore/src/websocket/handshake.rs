//! The opening handshake (RFC 6455 §4): a server reads the client's HTTP/1.1
//! upgrade request and answers 101 (or refuses with a status and why); a
//! client writes the request and checks the server's answer.

use base64::Engine as _;

/// The GUID RFC 6455 §1.3 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The most headers a request or answer may have.
const MAX_HEADERS: usize = 32;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Why a handshake failed, and for a server the status to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeError {
    /// 400, 426 (another version is needed) or 431 (too large); 0 on
    /// the client side.
    pub status: u16,
    /// What was wrong.
    pub reason: &'static str,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for HandshakeError {}

fn bad(reason: &'static str) -> HandshakeError {
    HandshakeError { status: 400, reason }
}

/// What a client asked for in its upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request target (`/chat?room=a`).
    pub path: &'a str,
    /// The Host header.
    pub host: &'a str,
    /// The Origin header a browser sends.
    pub origin: Option<&'a str>,
    /// Sec-WebSocket-Key, checked to be 16 bytes in base64.
    pub key: &'a str,
    /// `Sec-WebSocket-Protocol`, in the client's order of preference.
    pub protocols: Vec<&'a str>,
}

/// Reads an upgrade request from the start of `buf`: `Ok(None)` while it
/// is incomplete (and shorter than `max`), else the request and its
/// length (any bytes after it are the client's first frames).
pub fn parse_request(buf: &[u8], max: usize) -> Result<Option<(Request<'_>, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Partial) if buf.len() < max => return Ok(None),
        Ok(_) => {
            return Err(HandshakeError {
                status: 431,
                reason: "an upgrade request over the size limit",
            })
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError {
                status: 431,
                reason: "an upgrade request with too many headers",
            })
        }
        Err(_) => return Err(bad("not an HTTP/1.1 request")),
    };
    if req.method != Some("GET") {
        return Err(bad("an upgrade request must be a GET"));
    }
    if req.version != Some(1) {
        return Err(bad("an upgrade request must be HTTP/1.1"));
    }
    let header = |name| header(req.headers, name);
    if let Some(missing) = missing_upgrade(req.headers) {
        return Err(bad(missing));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError {
            status: 426,
            reason: "a WebSocket version other than 13",
        });
    }
    let host = header("host").ok_or(bad("no Host header"))?;
    let key = header("sec-websocket-key")
        .map(str::trim)
        .ok_or(bad("no Sec-WebSocket-Key header"))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return Err(bad("a Sec-WebSocket-Key that is not 16 bytes in base64"));
    }
    let protocols = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let request = Request {
        path: req.path.unwrap_or("/"),
        host,
        origin: header("origin"),
        key,
        protocols,
    };
    Ok(Some((request, len)))
}

/// The path of a plain `GET` at the start of `buf` (a whole HTTP/1.x
/// request without an upgrade), for a server that answers such requests
/// with a page.
pub fn plain_get(buf: &[u8]) -> Option<&str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) if req.method == Some("GET") => {}
        _ => return None,
    }
    // Only a request that is not an upgrade.
    missing_upgrade(req.headers)?;
    req.path
}

/// The value of header `name` (any case), if it is there and UTF-8.
fn header<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Which of the two headers that make an upgrade is missing, if one is
/// (both sides send `Upgrade: websocket` and `Connection: Upgrade`).
fn missing_upgrade(headers: &[httparse::Header<'_>]) -> Option<&'static str> {
    if !header(headers, "upgrade").is_some_and(|v| has_token(v, "websocket")) {
        return Some("no `Upgrade: websocket` header");
    }
    if !header(headers, "connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Some("no `Connection: Upgrade` header");
    }
    None
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The server's 101 answer to a request with `key`, naming the chosen
/// subprotocol if there is one.
pub fn accept(key: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(p) = protocol {
        answer.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    answer.push_str("\r\n");
    answer.into_bytes()
}

/// The server's refusal of a bad request: its status, and the version it
/// speaks when that was the problem; the connection closes after it.
pub fn refuse(error: &HandshakeError) -> Vec<u8> {
    let status = match error.status {
        426 => "426 Upgrade Required\r\nSec-WebSocket-Version: 13",
        431 => "431 Request Header Fields Too Large",
        _ => "400 Bad Request",
    };
    answer_and_close(status, "text/plain", format!("{}\n", error.reason).as_bytes())
}

/// An HTTP answer that is not an upgrade: `status` (with any further
/// header lines), `body` of type `kind`, and the connection closes after it.
pub(crate) fn answer_and_close(status: &str, kind: &str, body: &[u8]) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

/// A client's upgrade request for `path` on `host`, with a key made from
/// 16 bytes the caller drew at random.
pub fn request(host: &str, path: &str, nonce: [u8; 16], protocols: &[&str]) -> (Vec<u8>, String) {
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if !protocols.is_empty() {
        req.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", protocols.join(", ")));
    }
    req.push_str("\r\n");
    (req.into_bytes(), key)
}

/// Reads the server's answer to a request made with `key` and
/// `protocols`: `Ok(None)` while incomplete, else the subprotocol the
/// server chose and the answer's length.
pub fn parse_answer<'a>(
    buf: &'a [u8],
    key: &str,
    protocols: &[&str],
    max: usize,
) -> Result<Option<(Option<&'a str>, usize)>, HandshakeError> {
    let client = |reason| HandshakeError { status: 0, reason };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Partial) if buf.len() < max => return Ok(None),
        Ok(_) => return Err(client("the server's answer is over the size limit")),
        Err(_) => return Err(client("the server's answer is not HTTP/1.1")),
    };
    if res.code != Some(101) {
        return Err(client("the server did not switch protocols (no 101)"));
    }
    let header = |name| header(res.headers, name);
    if let Some(missing) = missing_upgrade(res.headers) {
        return Err(client(missing));
    }
    if header("sec-websocket-accept").map(str::trim) != Some(accept_key(key).as_str()) {
        return Err(client("the server's Sec-WebSocket-Accept does not match the key"));
    }
    let chosen = header("sec-websocket-protocol").map(str::trim);
    if chosen.is_some_and(|p| !protocols.contains(&p)) {
        return Err(client("the server chose a subprotocol the client did not offer"));
    }
    Ok(Some((chosen, len)))
}
