//! What the load clients (echo, chat, churn) share: the shape of a load
//! ([`Load`]), how a client for it starts, and how their summaries keep
//! error lines.

use std::io;
use std::time::Duration;

use iocore::{Client, ClientHandle, EngineKind, Handler};

/// Most error lines a summary keeps.
pub const MAX_ERRORS: usize = 20;

/// The shape of a load, whatever the scenario.
#[derive(Clone, Debug)]
pub struct Load {
    /// The client's I/O model.
    pub engine: EngineKind,
    /// Client worker threads.
    pub threads: usize,
    /// Sessions at once (echo: connections; chat: members; churn: lanes).
    pub connections: usize,
    /// Bytes per message.
    pub size: usize,
    /// Messages per session (churn: connections in all); `None`: until
    /// `duration` or a stop.
    pub count: Option<u64>,
    /// Stop sending after this long, warmup included; `None`: until
    /// `count` or a stop.
    pub duration: Option<Duration>,
    /// What happens in this first stretch is not measured.
    pub warmup: Duration,
    /// After sending stopped, how long to wait for the last replies before
    /// counting them lost (churn: how long one connection may take in all).
    pub drain_timeout: Duration,
    /// Measure this process's (the server's) CPU time and memory.
    pub server_pid: Option<u32>,
}

impl Default for Load {
    /// The seed's: one session, 100-byte messages, no end but a stop.
    fn default() -> Load {
        Load {
            engine: EngineKind::Auto,
            threads: 1,
            connections: 1,
            size: 100,
            count: None,
            duration: None,
            warmup: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            server_pid: None,
        }
    }
}

impl Load {
    /// Starts the client workers for this load: its engine and threads,
    /// room for `connections` sessions.
    pub fn start_client<H: Handler>(&self) -> io::Result<ClientHandle<H>> {
        Client::builder()
            .engine(self.engine)
            .threads(self.threads)
            .max_sessions(self.connections)
            .start::<H>()
    }
}

/// Counts an error and keeps its line, up to [`MAX_ERRORS`] lines.
pub fn note_error(errors: &mut u64, lines: &mut Vec<String>, line: String) {
    *errors += 1;
    if lines.len() < MAX_ERRORS {
        lines.push(line);
    }
}

/// Keeps a session's first problem (a mismatch, a loss) as a line, even
/// when the lines are full (the last one gives way).
pub fn note_problem(lines: &mut Vec<String>, line: String) {
    lines.truncate(MAX_ERRORS - 1);
    lines.push(line);
}

/// An invalid option, as an error.
pub fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}
