//! The per-session receive buffer: bytes the handler has not consumed yet.
//!
//! TCP has no message boundaries, so a handler may get half a message and
//! leave it; those bytes wait here until the rest arrives. Like the seed's
//! `recvBuffer` it has a read cursor (`start`, what the handler consumed)
//! and a write cursor (`end`, what the socket delivered); unlike it, it is
//! empty and unallocated while nothing waits, so an idle session costs no
//! buffer memory, and it is bounded by [`crate::Limits::max_recv_buffer`].

/// Bytes received but not yet consumed, between a read and a write cursor.
/// One pointer wide while empty.
#[derive(Default, Debug)]
pub(crate) struct RecvBuffer {
    inner: Option<Box<Inner>>,
}

#[derive(Default, Debug)]
struct Inner {
    buf: Vec<u8>,
    start: u32,
    end: u32,
}

/// The buffer would exceed its limit: the handler is not consuming.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RecvBufferFull;

impl RecvBuffer {
    /// An empty buffer that owns no memory.
    pub(crate) const fn new() -> RecvBuffer {
        RecvBuffer { inner: None }
    }

    /// Unconsumed bytes.
    pub(crate) fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| (i.end - i.start) as usize)
    }

    /// No unconsumed bytes.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory held for data (0 while empty).
    pub(crate) fn capacity(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.buf.len())
    }

    /// The unconsumed bytes, oldest first.
    pub(crate) fn data(&self) -> &[u8] {
        match &self.inner {
            Some(i) => &i.buf[i.start as usize..i.end as usize],
            None => &[],
        }
    }

    /// The unconsumed bytes, to change in place (a transport unmasking
    /// or decrypting them).
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            Some(i) => &mut i.buf[i.start as usize..i.end as usize],
            None => &mut [],
        }
    }

    /// Marks `n` bytes as consumed. When nothing is left the memory is
    /// released, so only sessions holding a partial message keep a buffer.
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consumed {n} of {} buffered bytes", self.len());
        if let Some(i) = &mut self.inner {
            i.start += n as u32;
            if i.start == i.end {
                self.inner = None;
            }
        }
    }

    /// Appends `data` after the unconsumed bytes, unless the total would
    /// exceed `max`.
    pub(crate) fn extend(&mut self, data: &[u8], max: usize) -> Result<(), RecvBufferFull> {
        if self.len() + data.len() > max {
            return Err(RecvBufferFull);
        }
        let spare = self.spare(data.len(), max);
        spare[..data.len()].copy_from_slice(data);
        self.commit(data.len());
        Ok(())
    }

    /// Free space after the unconsumed bytes for the socket to read into:
    /// at least `want` bytes when the limit allows, never more than keeps
    /// the total within `max`. Makes room by moving the unconsumed bytes to
    /// the front (compaction) before growing. Empty when the buffer is full.
    pub(crate) fn spare(&mut self, want: usize, max: usize) -> &mut [u8] {
        let len = self.len();
        let want = want.min(max.saturating_sub(len));
        let i = self.inner.get_or_insert_with(Box::default);
        if i.buf.len() - (i.end as usize) < want {
            if i.start > 0 {
                i.buf.copy_within(i.start as usize..i.end as usize, 0);
                i.start = 0;
                i.end = len as u32;
            }
            if i.buf.len() - len < want {
                let new_cap = (len + want).next_power_of_two().max(64).min(max.max(len + want));
                i.buf.resize(new_cap, 0);
            }
        }
        let room = (i.buf.len() - i.end as usize).min(max.saturating_sub(len));
        let end = i.end as usize;
        &mut i.buf[end..end + room]
    }

    /// Records that `n` bytes were written into the slice [`spare`] gave.
    ///
    /// [`spare`]: RecvBuffer::spare
    pub(crate) fn commit(&mut self, n: usize) {
        let Some(i) = &mut self.inner else {
            assert_eq!(n, 0, "commit without spare space");
            return;
        };
        assert!(i.end as usize + n <= i.buf.len(), "commit past the spare space");
        i.end += n as u32;
        if i.start == i.end {
            self.inner = None;
        }
    }

    /// Drops everything and releases the memory.
    pub(crate) fn clear(&mut self) {
        self.inner = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_buffer_owns_no_memory() {
        let b = RecvBuffer::new();
        assert_eq!(b.capacity(), 0);
        assert!(b.is_empty());
    }

    #[test]
    fn partial_consume_keeps_the_rest_in_order() {
        let mut b = RecvBuffer::new();
        b.extend(b"hello world", 1024).unwrap();
        b.consume(6);
        assert_eq!(b.data(), b"world");
        b.extend(b"!", 1024).unwrap();
        assert_eq!(b.data(), b"world!");
    }

    #[test]
    fn consuming_everything_releases_memory() {
        let mut b = RecvBuffer::new();
        b.extend(&[7; 100], 1024).unwrap();
        assert!(b.capacity() >= 100);
        b.consume(100);
        assert_eq!(b.capacity(), 0);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn spare_compacts_before_growing() {
        let mut b = RecvBuffer::new();
        b.extend(&[1; 64], 64).unwrap();
        assert_eq!(b.capacity(), 64);
        b.consume(60);
        // 4 bytes left at offset 60; asking for 60 more must move them to
        // the front rather than allocate.
        let spare = b.spare(60, 64);
        assert_eq!(spare.len(), 60);
        assert_eq!(b.capacity(), 64);
        assert_eq!(b.data(), &[1; 4]);
        b.spare(60, 64)[..3].copy_from_slice(&[2, 3, 4]);
        b.commit(3);
        assert_eq!(b.data(), &[1, 1, 1, 1, 2, 3, 4]);
    }

    #[test]
    fn limit_is_enforced() {
        let mut b = RecvBuffer::new();
        b.extend(&[0; 10], 16).unwrap();
        assert_eq!(b.extend(&[0; 7], 16), Err(RecvBufferFull));
        assert_eq!(b.len(), 10, "a refused extend changes nothing");
        assert_eq!(b.spare(100, 16).len(), 6);
        b.extend(&[0; 6], 16).unwrap();
        assert!(b.spare(1, 16).is_empty(), "full buffer has no spare room");
    }

    #[test]
    fn random_operations_match_a_model() {
        let mut b = RecvBuffer::new();
        let mut model: std::collections::VecDeque<u8> = Default::default();
        let mut x: u32 = 12345;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut byte = 0u8;
        for _ in 0..10_000 {
            if next() % 2 == 0 {
                let want = (next() % 300) as usize;
                let spare = b.spare(want, 1000);
                let n = spare.len().min((next() % 300) as usize);
                for s in &mut spare[..n] {
                    *s = byte;
                    model.push_back(byte);
                    byte = byte.wrapping_add(1);
                }
                b.commit(n);
            } else {
                let n = (next() as usize) % (b.len() + 1);
                b.consume(n);
                model.drain(..n);
            }
            assert!(b.len() <= 1000);
            assert!(b.data().iter().eq(model.iter()));
        }
    }
}
