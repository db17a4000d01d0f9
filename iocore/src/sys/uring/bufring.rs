//! The provided-buffer ring that receives pick their memory from (rule 2
//! of [`super`]), with our own copy of its order, through which a receive
//! bundle's buffers are found.

use std::alloc::{self, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types;

/// The provided-buffer ring: `count` buffers of `size` bytes that the
/// kernel picks from when data arrives.
pub(super) struct BufRing {
    pub(super) entries: *mut types::BufRingEntry,
    layout: Layout,
    pub(super) count: u16,
    pub(super) size: usize,
    pub(super) memory: Box<[u8]>,
    tail: u16,
    /// Our copy of the ring: the buffer id pushed at each entry, and the
    /// position (tail value) each buffer was last pushed at — what a
    /// bundle's first buffer id is resolved through to the ones after it.
    order: Box<[u16]>,
    position: Box<[u16]>,
}

impl BufRing {
    pub(super) fn new(count: u16, size: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two(), "buffer ring size must be a power of two");
        let layout =
            Layout::from_size_align(count as usize * std::mem::size_of::<types::BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let memory = vec![0u8; count as usize * size].into_boxed_slice();
        let mut ring = BufRing {
            entries,
            layout,
            count,
            size,
            memory,
            tail: 0,
            order: vec![0; count as usize].into_boxed_slice(),
            position: vec![0; count as usize].into_boxed_slice(),
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Puts buffer `bid` back at the tail (visible after `publish`).
    pub(super) fn push(&mut self, bid: u16) {
        let index = (self.tail & (self.count - 1)) as usize;
        // SAFETY: index < count, the number of entries allocated; only
        // this thread writes entries, and the kernel reads only entries
        // before the published tail, which this one is not yet.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(self.memory[bid as usize * self.size..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.order[index] = bid;
        self.position[bid as usize] = self.tail;
        self.tail = self.tail.wrapping_add(1);
    }

    /// The buffers a receive of `len` bytes filled, starting with `first`:
    /// full buffers in the order the ring held them, the last one partly.
    pub(super) fn filled(&self, first: u16, len: usize) -> impl Iterator<Item = u16> + '_ {
        let n = len.div_ceil(self.size).max(1);
        let start = self.position[first as usize];
        (0..n).map(move |i| self.order[(start.wrapping_add(i as u16) & (self.count - 1)) as usize])
    }

    /// Makes pushed buffers visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: `entries` is the ring base; the tail field lives in the
        // first entry's reserved word, written by us and read by the
        // kernel; AtomicU16 has the same layout as u16, and the release
        // store orders the entry writes before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the owner (Uring)
        // unregistered the ring from the kernel before dropping it.
        unsafe { alloc::dealloc(self.entries as *mut u8, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffers after a bundle's first are the ones after it in the
    /// ring's order, which differs from the ids' order once buffers came
    /// back out of order; the ring's positions wrap.
    #[test]
    fn a_bundle_is_resolved_in_ring_order() {
        let mut ring = BufRing::new(4, 10).unwrap(); // positions 0..4: ids 0 1 2 3
        for bid in [3, 1, 0, 2] {
            ring.push(bid); // positions 4..8 (entries 0..4 again)
        }
        let ids = |ring: &BufRing, first, len| ring.filled(first, len).collect::<Vec<u16>>();
        assert_eq!(ids(&ring, 3, 10), [3]);
        assert_eq!(ids(&ring, 1, 25), [1, 0, 2]);
        assert_eq!(ids(&ring, 0, 11), [0, 2]);
        assert_eq!(ids(&ring, 2, 0), [2], "an empty receive still names its buffer");
        ring.push(3); // position 8, entry 0
        assert_eq!(ids(&ring, 2, 20), [2, 3], "wraps past the last entry");
    }
}
