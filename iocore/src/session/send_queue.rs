//! The per-session send queue: shared immutable buffers waiting for the
//! socket, written with gather writes.
//!
//! The seed tracks one buffer and `sendBytes`, how much of it the socket
//! took; here the queue holds any number of [`Bytes`] (one buffer may be
//! queued on many sessions at once, e.g. a broadcast), `offset` is the
//! seed's `sendBytes` for the oldest buffer, and [`SendQueue::io_slices`]
//! hands the kernel several buffers in one call, like a `WSABUF` array.
//! The first buffer is stored inline, so the common case of one pending
//! buffer allocates nothing besides the buffer itself.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// Queued outgoing buffers with partial-send accounting.
#[derive(Default, Debug)]
pub(crate) struct SendQueue {
    head: Option<Bytes>,
    /// The buffers after `head`; boxed, so that a queue that never held
    /// two buffers at once (an idle session, a ping-pong) costs a pointer,
    /// not a whole `VecDeque`. Kept once made. (The extra allocation
    /// clippy warns of is the point: 8 bytes per idle session, not 32.)
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
    /// Bytes of `head` already sent (the seed's `sendBytes`).
    offset: u32,
    /// Unsent bytes in the whole queue (the limit is below 4 GiB).
    queued: u32,
    /// Bytes lent to a completion engine's send (see [`SendQueue::lend`]).
    lent: u32,
    /// The queue was cleared while bytes were lent.
    lent_dropped: bool,
}

/// Queuing would exceed the session's send-queue limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct QueueFull;

impl SendQueue {
    /// An empty queue that owns no memory.
    pub(crate) const fn new() -> SendQueue {
        SendQueue {
            head: None,
            rest: None,
            offset: 0,
            queued: 0,
            lent: 0,
            lent_dropped: false,
        }
    }

    /// Unsent bytes.
    pub(crate) fn len(&self) -> usize {
        self.queued as usize
    }

    /// Nothing left to send.
    pub(crate) fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Appends `buf` unless the unsent total would exceed `max`. Empty
    /// buffers are ignored.
    #[inline]
    pub(crate) fn push(&mut self, buf: Bytes, max: usize) -> Result<(), QueueFull> {
        if self.queued as usize + buf.len() > max.min(u32::MAX as usize) {
            return Err(QueueFull);
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.queued += buf.len() as u32;
        if self.head.is_none() {
            self.head = Some(buf);
        } else {
            self.push_rest(buf);
        }
        Ok(())
    }

    /// Appends `buf` behind `head` (kept out of line: a ping-pong never
    /// gets here).
    #[inline(never)]
    fn push_rest(&mut self, buf: Bytes) {
        self.rest.get_or_insert_with(Box::default).push_back(buf);
    }

    /// Takes the oldest buffer after `head`.
    #[inline]
    fn pop_rest(&mut self) -> Option<Bytes> {
        self.rest.as_mut()?.pop_front()
    }

    /// Puts `buf` back before the buffers after `head`.
    fn push_rest_front(&mut self, buf: Bytes) {
        self.rest.get_or_insert_with(Box::default).push_front(buf);
    }

    fn rest_is_empty(&self) -> bool {
        self.rest.as_ref().map_or(true, |r| r.is_empty())
    }

    /// Fills `out` with the unsent bytes in order (the first one starting
    /// at the partial-send offset) and returns how many slices it filled.
    pub(crate) fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let Some(head) = &self.head else { return 0 };
        let mut n = 0;
        let rest = self.rest.iter().flat_map(|r| r.iter());
        for buf in std::iter::once(&head[self.offset as usize..]).chain(rest.map(|b| &b[..])) {
            if n == out.len() {
                break;
            }
            out[n] = IoSlice::new(buf);
            n += 1;
        }
        n
    }

    /// The unsent bytes when they are all in one buffer (the common case:
    /// a send needs no gather array).
    pub(crate) fn sole(&self) -> Option<&[u8]> {
        match self.rest_is_empty() {
            true => self.front(),
            false => None,
        }
    }

    /// The unsent part of the oldest buffer, if any.
    pub(crate) fn front(&self) -> Option<&[u8]> {
        self.head.as_ref().map(|b| &b[self.offset as usize..])
    }

    /// Records that the socket took `n` more bytes: fully sent buffers are
    /// released, a partly sent one keeps its offset.
    pub(crate) fn advance(&mut self, n: usize) {
        assert!(
            n <= self.queued as usize,
            "advanced {n} past {} queued bytes",
            self.queued
        );
        let mut n = n as u32;
        self.queued -= n;
        while n > 0 {
            let head = self.head.as_ref().expect("queued bytes without a buffer");
            let left = head.len() as u32 - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.head = self.pop_rest();
        }
        if self
            .head
            .as_ref()
            .is_some_and(|h| h.len() == self.offset as usize)
        {
            self.offset = 0;
            self.head = self.pop_rest();
        }
    }

    /// Moves the unsent buffers at the front (at most `max`) into `out`
    /// for a completion engine's send, which owns them until it gives them
    /// back with [`SendQueue::give_back`]. Returns how much of `out[0]` was
    /// already sent. Lent bytes still count as queued. At most one lending
    /// at a time, which keeps sends in order.
    pub(crate) fn lend(&mut self, out: &mut Vec<Bytes>, max: usize) -> usize {
        assert!(self.lent == 0, "a send is already in flight");
        let offset = self.offset as usize;
        out.extend(self.head.take());
        while out.len() < max {
            match self.pop_rest() {
                Some(b) => out.push(b),
                None => break,
            }
        }
        self.head = self.pop_rest();
        self.offset = 0;
        self.lent = (out.iter().map(|b| b.len()).sum::<usize>() - offset) as u32;
        offset
    }

    /// Bytes lent out and not yet given back.
    pub(crate) fn lent(&self) -> usize {
        self.lent as usize
    }

    /// Unsent bytes not lent out: something a new send could take.
    pub(crate) fn has_unlent(&self) -> bool {
        self.head.is_some()
    }

    /// Takes back lent buffers after the send took `sent` of the lent
    /// bytes: what it did not take goes back to the front, in order. If the
    /// queue was cleared meanwhile they are dropped. Empties `bufs`.
    pub(crate) fn give_back(&mut self, bufs: &mut Vec<Bytes>, offset: usize, sent: usize) {
        let lent = std::mem::take(&mut self.lent) as usize;
        if std::mem::take(&mut self.lent_dropped) {
            bufs.clear();
            return;
        }
        assert!(sent <= lent, "sent {sent} of {lent} lent bytes");
        self.queued -= sent as u32;
        let mut skip = offset + sent;
        let done = bufs.iter().take_while(|b| {
            let whole = skip >= b.len();
            if whole {
                skip -= b.len();
            }
            whole
        });
        let done = done.count();
        if done == bufs.len() {
            bufs.clear();
            return;
        }
        // The current head was never sent from (lend left offset 0).
        if let Some(h) = self.head.take() {
            self.push_rest_front(h);
        }
        for b in bufs.drain(done..).rev() {
            self.push_rest_front(b);
        }
        bufs.clear();
        self.head = self.pop_rest();
        self.offset = skip as u32;
    }

    /// Drops everything unsent and releases the memory. Lent buffers are
    /// dropped when given back.
    pub(crate) fn clear(&mut self) {
        let lent = self.lent;
        *self = SendQueue::new();
        self.lent = lent;
        self.lent_dropped = lent > 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(q: &SendQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 64];
        let n = q.io_slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn partial_sends_keep_order_and_offset() {
        let mut q = SendQueue::new();
        q.push(Bytes::from_static(b"hello "), 100).unwrap();
        q.push(Bytes::from_static(b"wide "), 100).unwrap();
        q.push(Bytes::from_static(b"world"), 100).unwrap();
        assert_eq!(q.len(), 16);
        q.advance(3);
        assert_eq!(flatten(&q), b"lo wide world");
        q.advance(3 + 2);
        assert_eq!(flatten(&q), b"de world");
        assert_eq!(q.front(), Some(&b"de "[..]));
        q.advance(8);
        assert!(q.is_empty());
        assert_eq!(q.front(), None);
        assert_eq!(flatten(&q), b"");
    }

    #[test]
    fn sole_is_the_unsent_part_of_a_lone_buffer() {
        let mut q = SendQueue::new();
        assert_eq!(q.sole(), None);
        q.push(Bytes::from_static(b"hello"), 100).unwrap();
        assert_eq!(q.sole(), Some(&b"hello"[..]));
        q.advance(2);
        assert_eq!(q.sole(), Some(&b"llo"[..]));
        q.push(Bytes::from_static(b"!"), 100).unwrap();
        assert_eq!(q.sole(), None, "two buffers need a gather");
        q.advance(3);
        assert_eq!(q.sole(), Some(&b"!"[..]));
        q.advance(1);
        assert_eq!(q.sole(), None);
    }

    #[test]
    fn gather_is_limited_by_the_slice_array() {
        let mut q = SendQueue::new();
        for i in 0..10u8 {
            q.push(Bytes::from(vec![i; 3]), 100).unwrap();
        }
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(q.io_slices(&mut slices), 4);
        assert_eq!(&*slices[3], &[3, 3, 3]);
    }

    #[test]
    fn cap_refuses_and_changes_nothing() {
        let mut q = SendQueue::new();
        q.push(Bytes::from(vec![0; 60]), 100).unwrap();
        assert_eq!(q.push(Bytes::from(vec![0; 41]), 100), Err(QueueFull));
        assert_eq!(q.len(), 60);
        q.push(Bytes::from(vec![0; 40]), 100).unwrap();
        assert_eq!(q.len(), 100);
    }

    #[test]
    fn lent_buffers_come_back_in_order_after_a_partial_send() {
        let mut q = SendQueue::new();
        for i in 1..=3u8 {
            q.push(Bytes::from(vec![i; 10]), 100).unwrap();
        }
        q.advance(4);
        let mut out = Vec::new();
        let offset = q.lend(&mut out, 2);
        assert_eq!((offset, out.len(), q.lent()), (4, 2, 16));
        assert_eq!(q.len(), 26, "lent bytes still count as queued");
        q.push(Bytes::from(vec![4; 10]), 100).unwrap();
        // The kernel took 9: 6 of the first buffer, 3 of the second.
        q.give_back(&mut out, offset, 9);
        assert!(out.is_empty());
        let want = [&[2u8; 7][..], &[3; 10], &[4; 10]].concat();
        assert_eq!(flatten(&q), want);
        assert_eq!(q.len(), 27);
    }

    #[test]
    fn clearing_while_lent_drops_buffers_when_given_back() {
        let mut q = SendQueue::new();
        q.push(Bytes::from(vec![1; 10]), 100).unwrap();
        let mut out = Vec::new();
        let offset = q.lend(&mut out, 64);
        q.clear();
        assert!(q.is_empty());
        assert_eq!(out.len(), 1, "the kernel's buffers are untouched by clear");
        q.give_back(&mut out, offset, 3);
        assert!(out.is_empty() && q.is_empty() && !q.has_unlent());
    }

    #[test]
    fn empty_buffers_are_ignored() {
        let mut q = SendQueue::new();
        q.push(Bytes::new(), 0).unwrap();
        assert!(q.is_empty());
        assert_eq!(q.front(), None);
    }

    #[test]
    fn shared_buffer_on_two_queues() {
        let shared = Bytes::from_static(b"broadcast");
        let mut a = SendQueue::new();
        let mut b = SendQueue::new();
        a.push(shared.clone(), 100).unwrap();
        b.push(shared, 100).unwrap();
        a.advance(5);
        assert_eq!(flatten(&a), b"cast");
        assert_eq!(flatten(&b), b"broadcast");
    }

    #[test]
    fn random_partial_writes_match_a_model() {
        let mut q = SendQueue::new();
        let mut model = Vec::new();
        let mut sent = Vec::new();
        let mut x: u32 = 99;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut byte = 0u8;
        for _ in 0..5000 {
            if next() % 3 != 0 {
                let len = (next() % 50) as usize;
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        byte = byte.wrapping_add(1);
                        byte
                    })
                    .collect();
                model.extend_from_slice(&buf);
                q.push(Bytes::from(buf), usize::MAX).unwrap();
            } else {
                // A "socket" that takes a random prefix of the gathered bytes.
                let flat = flatten(&q);
                let n = (next() as usize) % (flat.len() + 1);
                sent.extend_from_slice(&flat[..n]);
                q.advance(n);
            }
            assert_eq!(q.len(), model.len() - sent.len());
        }
        let rest = flatten(&q);
        sent.extend_from_slice(&rest);
        // flatten is bounded by 64 slices; drain the remainder too.
        q.advance(rest.len());
        while !q.is_empty() {
            let more = flatten(&q);
            sent.extend_from_slice(&more);
            q.advance(more.len());
        }
        assert_eq!(sent, model);
    }
}
