//! The server of the overlapped-event seed: reads and discards, logging
//! `Data Recv Len = N` for each read at debug level. The per-second totals
//! at info level come from the server's counters (see the CLI).

use iocore::{Handler, Session};

/// Counts and discards every received byte.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sink {
    /// Bytes this session received.
    pub received: u64,
}

impl Handler for Sink {
    fn on_recv(&mut self, session: &mut Session<'_>, data: &[u8]) -> usize {
        tracing::debug!(session = %session.id(), "Data Recv Len = {}", data.len());
        self.received += data.len() as u64;
        data.len()
    }
}
