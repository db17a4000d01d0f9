//! The worker's cork: replies a session copies out while it is handed its
//! input are gathered in one buffer of the worker's and written by that
//! session's own flush (see [`Cork`]).

/// The worker's cork, after uWebSockets': while a readiness engine hands
/// one session its input, the bytes that session's handler copies out
/// ([`crate::Session::send_copy`]) with nothing queued before them are
/// gathered here instead of in a buffer of their own, and the engine's
/// flush of that same session writes them straight from here; only what
/// the kernel does not take is copied into the session's queue (and
/// counts against its limits there). So an echo costs no allocation, and
/// several replies of one dispatch leave in one write.
///
/// The engine opens the cork for one session ([`Cork::open_for`]) right
/// before giving it input and takes it back in that session's flush, so
/// the cork never holds bytes of another session: a session that finds it
/// open for someone else queues as usual. Any other queueing by the owner
/// (a shared buffer, a delivery) first moves the corked bytes into the
/// queue, so order is kept.
#[derive(Debug)]
pub(crate) struct Cork {
    /// The session the cork is open for, if any.
    owner: Option<u64>,
    /// Its bytes (capacity kept between dispatches).
    pub buf: Vec<u8>,
}

impl Cork {
    /// An empty cork, open for no session.
    pub(crate) fn new() -> Cork {
        Cork {
            owner: None,
            buf: Vec::new(),
        }
    }

    /// Most bytes one dispatch gathers; beyond, they go to the queue.
    pub(crate) const MAX: usize = 64 * 1024;

    /// Opens the cork for session `token` (a readiness engine, before
    /// handing it input).
    #[inline]
    pub(crate) fn open_for(&mut self, token: u64) {
        if !self.buf.is_empty() {
            // Its owner's flush has not taken it (a bug): keep it for that
            // owner rather than hand it to another session; this one
            // queues as usual.
            debug_assert!(false, "a cork left full");
            return;
        }
        self.owner = Some(token);
    }

    /// Whether the cork is open for `token`.
    #[inline]
    pub(crate) fn is_open_for(&self, token: u64) -> bool {
        self.owner == Some(token)
    }

    /// Closes the cork if it is open for `token`; returns its bytes (to
    /// write, then to give back with [`Cork::give_back`]) if it holds any.
    #[inline]
    pub(crate) fn close_for(&mut self, token: u64) -> Option<Vec<u8>> {
        if self.owner != Some(token) {
            return None;
        }
        self.owner = None;
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }

    /// Returns the buffer [`Cork::close_for`] took, emptied, for its
    /// capacity (kept up to [`Cork::MAX`]).
    #[inline]
    pub(crate) fn give_back(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() <= Cork::MAX && self.buf.capacity() == 0 {
            self.buf = buf;
        }
    }
}
