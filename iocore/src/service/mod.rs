//! The service layer: [`Server`] and [`Client`] — binding or connecting,
//! worker threads (one engine loop each, sessions owned by their thread),
//! limits, graceful stop, counters.

mod client;
mod runtime;
mod server;

pub use client::{Client, ClientBuilder, ClientHandle};
pub use runtime::ToSessionError;
pub use server::{Accept, Server, ServerBuilder, ServerHandle};
