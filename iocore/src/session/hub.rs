//! The worker's context a session's callbacks reach ([`Hub`]).

use std::cell::RefCell;
use std::sync::Arc;

use super::cork::Cork;
use crate::topic::{Pending, Registry, Topics};

/// What a worker's sessions reach during their callbacks: its cork, its
/// counters of messages, and its topics (subscriptions take effect at
/// once) with the publishes waiting to be fanned out. The topic tables are
/// [`crate::topic`]'s (topics sit on top of sessions: this is where the
/// worker's tables hang on the context a session is handed; the session's
/// topic methods are in `topic.rs`).
pub(crate) struct Hub {
    pub topics: RefCell<Topics>,
    pub pending: RefCell<Vec<Pending>>,
    /// Publishers' own copies queued since the worker last counted them.
    pub own_deliveries: std::cell::Cell<u64>,
    /// Messages the sessions counted in ([`crate::Session::count_received_message`])
    /// and buffers they queued, since the worker last counted them.
    pub messages: std::cell::Cell<(u64, u64)>,
    /// Replies copied during one session's dispatch, written with its
    /// flush (see [`Cork`]).
    pub cork: RefCell<Cork>,
    /// Where a transport unmasks a read's frames (WebSocket).
    #[cfg(feature = "websocket")]
    pub scratch: RefCell<Vec<u8>>,
}

impl Hub {
    /// A session queued a buffer for sending.
    #[inline]
    pub(crate) fn message_sent(&self) {
        let (i, o) = self.messages.get();
        self.messages.set((i, o + 1));
    }
}

impl Hub {
    pub(crate) fn new(registry: Arc<Registry>) -> Hub {
        Hub {
            topics: RefCell::new(Topics::new(registry)),
            pending: RefCell::new(Vec::new()),
            own_deliveries: std::cell::Cell::new(0),
            messages: std::cell::Cell::new((0, 0)),
            cork: RefCell::new(Cork::new()),
            #[cfg(feature = "websocket")]
            scratch: RefCell::new(Vec::new()),
        }
    }
}
