//! The service layer: [`Server`] and [`Client`] — binding or connecting,
//! worker threads (one engine loop each, sessions owned by their thread),
//! limits, graceful stop, counters.

#[cfg(feature = "websocket")]
mod acceptor;
mod client;
mod runtime;
mod server;
mod workers;

pub use client::{Client, ClientBuilder, ClientHandle, ConnectError};
pub use runtime::ToSessionError;
pub use server::{Accept, Server, ServerBuilder, ServerHandle};

#[cfg(test)]
mod tests {
    /// Handles are shared between threads (a stop from a signal handler's
    /// thread, sends from game-logic threads), with every feature.
    #[test]
    fn handles_are_send_and_sync() {
        struct Quiet;
        impl crate::Handler for Quiet {
            fn on_recv(&mut self, _: &mut crate::Session<'_>, data: &[u8]) -> usize {
                data.len()
            }
        }
        fn check<T: Send + Sync>() {}
        check::<super::ServerHandle>();
        check::<super::ClientHandle<Quiet>>();
    }
}
