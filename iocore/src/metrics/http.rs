//! The `/metrics` endpoint: an iocore [`Handler`] speaking just enough
//! HTTP/1.1, with requests parsed by `httparse`.
//!
//! `GET` (or `HEAD`) `/metrics` answers with the exposition text in the
//! format the `Accept` header asks for; any other path is 404, any other
//! method 405. Connections are kept alive (HTTP/1.1) and pipelined
//! requests answered in order. A connection is closed, after an answer
//! saying why, when a request is garbage (400), has a body (400), has
//! headers over [`MAX_REQUEST`] bytes or [`MAX_HEADERS`] lines (431), or
//! does not arrive whole within [`REQUEST_TIMEOUT`] (408); an idle
//! connection is closed after the same time without a word.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Exporter, Format};
use crate::session::{CloseReason, Handler, Session};

/// Most bytes of a request head (request line and headers).
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// Most header lines of a request.
pub(crate) const MAX_HEADERS: usize = 32;
/// How long a connection may take to send a whole request, and may stay
/// idle between requests.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to the metrics endpoint.
pub(crate) struct Endpoint {
    exporter: Arc<Exporter>,
    /// Part of a request has arrived.
    partial: bool,
}

impl Endpoint {
    pub(crate) fn new(exporter: Arc<Exporter>) -> Endpoint {
        Endpoint {
            exporter,
            partial: false,
        }
    }
}

/// An answer: status, extra header lines, body; and whether the
/// connection stays open after it.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: Bytes,
    /// `HEAD`: the headers of the answer without its body.
    head_only: bool,
    keep_alive: bool,
    allow: bool,
}

impl Reply {
    fn error(status: &'static str, why: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(format!("{why}\n")),
            head_only: false,
            keep_alive: false,
            allow: false,
        }
    }

    fn send(self, s: &mut Session<'_>) {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        // A refused send has closed the session: nothing more to do.
        if s.send(head).is_ok() && !self.head_only && !self.body.is_empty() {
            let _ = s.send(self.body);
        }
        if !self.keep_alive {
            s.close();
        }
    }
}

impl Endpoint {
    /// The answer to a whole request.
    fn answer(&self, req: &httparse::Request<'_, '_>) -> Reply {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let has_body = header("transfer-encoding").is_some()
            || header("content-length").is_some_and(|v| v.trim() != "0");
        if has_body {
            return Reply::error("400 Bad Request", "request bodies are not accepted");
        }
        let connection = header("connection").map(str::to_ascii_lowercase);
        let keep_alive = match req.version {
            Some(1) => connection.as_deref() != Some("close"),
            _ => connection.as_deref() == Some("keep-alive"),
        };
        let method = req.method.unwrap_or("");
        let path = req.path.unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        if method != "GET" && method != "HEAD" {
            let mut r = Reply::error("405 Method Not Allowed", "only GET and HEAD are served");
            r.allow = true;
            r.keep_alive = keep_alive;
            return r;
        }
        if path != "/metrics" {
            let mut r = Reply::error("404 Not Found", "not found: the metrics are at /metrics");
            r.keep_alive = keep_alive;
            r.head_only = method == "HEAD";
            return r;
        }
        let format = Format::from_accept(header("accept"));
        Reply {
            status: "200 OK",
            content_type: format.content_type(),
            body: Bytes::from(self.exporter.encode(format)),
            head_only: method == "HEAD",
            keep_alive,
            allow: false,
        }
    }
}

impl Handler for Endpoint {
    fn on_connected(&mut self, s: &mut Session<'_>) {
        s.set_timer(REQUEST_TIMEOUT);
    }

    fn on_recv(&mut self, s: &mut Session<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        // Answers pipelined requests while the answers are taken; the rest
        // waits (kept by the session) until the queue drains.
        while used < data.len() && s.is_open() && s.is_writable() {
            let rest = &data[used..];
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let reply = match req.parse(rest) {
                Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST => {
                    Reply::error("431 Request Header Fields Too Large", "request head over 8 KiB")
                }
                Ok(httparse::Status::Complete(n)) => {
                    used += n;
                    self.partial = false;
                    s.set_timer(REQUEST_TIMEOUT);
                    let reply = self.answer(&req);
                    reply.send(s);
                    continue;
                }
                Ok(httparse::Status::Partial) if rest.len() > MAX_REQUEST => {
                    Reply::error("431 Request Header Fields Too Large", "request head over 8 KiB")
                }
                Ok(httparse::Status::Partial) => {
                    self.partial = true;
                    return used;
                }
                Err(httparse::Error::TooManyHeaders) => {
                    Reply::error("431 Request Header Fields Too Large", "more than 32 header lines")
                }
                Err(e) => Reply::error("400 Bad Request", &format!("malformed request: {e}")),
            };
            reply.send(s);
            return data.len();
        }
        used
    }

    fn on_timer(&mut self, s: &mut Session<'_>) {
        if self.partial {
            Reply::error("408 Request Timeout", "the request did not arrive in time").send(s);
        } else {
            s.close_with(CloseReason::IdleTimeout);
        }
    }
}
