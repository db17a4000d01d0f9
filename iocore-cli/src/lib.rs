//! The `iocore` command's applications, built on the `iocore` library:
//! each is an [`iocore::Handler`] plus the little that drives it. The
//! binary (`src/main.rs`) is a thin clap front end over this crate.
//!
//! - [`echo`] — the WSAEventSelect seed: every byte comes back.
//! - [`sink`] — the overlapped seed's server: reads and discards.
//! - [`client`] — the overlapped seed's client, grown into a load
//!   generator: open or closed loop, latency percentiles, byte-exact checks.
//! - [`chat`] — rooms on packets and topics: the server, a terminal client
//!   for people, and the fan-out load client.
//! - [`arena`] — an authoritative sample game on rooms and typed packets:
//!   the server and its bots.
//! - [`churn`] — connection churn (a login storm) for the load client.
//! - [`soak`] — the fault soak: a lossy link in a network namespace,
//!   blackholes, stops and churn, every byte checked.
//! - [`load`] — what the load clients share: a load's shape, error lines.
//! - [`report`] — latency percentiles and server usage, for the load
//!   clients.
//! - [`bench`](mod@bench) — iocore against tokio, monoio, compio and an epoll floor.
//! - [`usage`] — a server process's CPU and memory, for the reports.

pub mod arena;
pub mod bench;
pub mod chat;
pub mod churn;
pub mod client;
pub mod echo;
pub mod load;
pub mod report;
pub mod sink;
pub mod soak;
pub mod top;
pub mod usage;

use std::fmt;
use std::str::FromStr;

/// The server applications the CLI can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum App {
    /// [`echo::Echo`].
    #[default]
    Echo,
    /// [`sink::Sink`].
    Sink,
    /// [`chat::server`]: rooms on packets and topics.
    Chat,
    /// [`arena::server`]: a game on rooms with a tick and typed packets.
    Arena,
}

impl FromStr for App {
    type Err = String;
    fn from_str(s: &str) -> Result<App, String> {
        match s {
            "echo" => Ok(App::Echo),
            "sink" => Ok(App::Sink),
            "chat" => Ok(App::Chat),
            "arena" => Ok(App::Arena),
            _ => Err(format!("unknown app '{s}' (expected echo, sink, chat or arena)")),
        }
    }
}

impl fmt::Display for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            App::Echo => "echo",
            App::Sink => "sink",
            App::Chat => "chat",
            App::Arena => "arena",
        })
    }
}
