//! Chat rooms on iocore's packets and topics.
//!
//! - [`protocol`] — the packets (JOIN, SAY, LEAVE; JOINED, MSG, LEFT,
//!   ERROR).
//! - [`server`] — the server's session (`iocore serve --app chat`).
//! - [`term`] — a terminal client for people (`iocore chat`).
//! - [`load`] — the fan-out load client (`iocore client --scenario chat`).

pub mod load;
pub mod page;
pub mod protocol;
pub mod server;
pub mod term;
