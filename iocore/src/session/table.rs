//! A slab of sessions addressed by 64-bit tokens.
//!
//! The token rides in the epoll event or io_uring `user_data`: the low 32
//! bits are the slot, the next 24 bits count how often the slot was reused,
//! so an event that arrives for a session already removed (or whose slot
//! now holds a newer session) finds nothing instead of the wrong session.
//! A [`crate::SessionId`] carries the same two numbers (and the worker), so
//! a command from another thread is checked the same way. Tokens with the
//! top bit set are never issued; engines use them for their own
//! descriptors (listener, wake-up).

/// Tokens at or above this are reserved for the engine.
pub(crate) const RESERVED: u64 = 1 << 63;

const NO_SLOT: u32 = u32::MAX;
/// Generations use 24 bits: tokens stay below 2^56 (an engine may keep the
/// top bits of `user_data` for the operation kind) and fit a `SessionId`.
pub(crate) const GEN_MASK: u32 = 0x00FF_FFFF;

enum Entry<T> {
    Occupied { generation: u32, value: T },
    Vacant { generation: u32, next_free: u32 },
}

/// Values addressed by generation-checked tokens.
pub(crate) struct Table<T> {
    entries: Vec<Entry<T>>,
    free: u32,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            free: NO_SLOT,
            len: 0,
        }
    }
}

fn split(token: u64) -> Option<(usize, u32)> {
    (token < RESERVED).then_some(((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32))
}

impl<T> Table<T> {
    /// Live values.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// No live values.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` and returns its token.
    pub(crate) fn insert(&mut self, value: T) -> u64 {
        self.insert_with(|_| value)
    }

    /// Stores the value `make` builds from its token.
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(u64) -> T) -> u64 {
        self.len += 1;
        if self.free != NO_SLOT {
            let slot = self.free as usize;
            let Entry::Vacant {
                generation,
                next_free,
            } = self.entries[slot]
            else {
                unreachable!("free list points at an occupied slot")
            };
            let token = ((generation as u64) << 32) | slot as u64;
            self.free = next_free;
            self.entries[slot] = Entry::Occupied {
                generation,
                value: make(token),
            };
            token
        } else {
            let slot = self.entries.len();
            assert!(slot < NO_SLOT as usize, "session table full");
            let token = slot as u64;
            self.entries.push(Entry::Occupied {
                generation: 0,
                value: make(token),
            });
            token
        }
    }

    /// The value for `token`, if it is still live.
    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let (slot, gen) = split(token)?;
        match self.entries.get_mut(slot) {
            Some(Entry::Occupied { generation, value }) if *generation == gen => Some(value),
            _ => None,
        }
    }

    /// Removes and returns the value for `token`, if it is still live.
    pub(crate) fn remove(&mut self, token: u64) -> Option<T> {
        let (slot, gen) = split(token)?;
        match self.entries.get(slot) {
            Some(Entry::Occupied { generation, .. }) if *generation == gen => {}
            _ => return None,
        }
        let next = Entry::Vacant {
            generation: (gen + 1) & GEN_MASK,
            next_free: self.free,
        };
        let Entry::Occupied { value, .. } = std::mem::replace(&mut self.entries[slot], next) else {
            unreachable!()
        };
        self.free = slot as u32;
        self.len -= 1;
        Some(value)
    }

    /// Tokens of all live values (a snapshot, for walking while mutating).
    pub(crate) fn tokens(&self) -> Vec<u64> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| match e {
                Entry::Occupied { generation, .. } => Some(((*generation as u64) << 32) | slot as u64),
                Entry::Vacant { .. } => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tokens_find_nothing_after_reuse() {
        let mut t = Table::default();
        let a = t.insert("a");
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b");
        assert_eq!(a & 0xFFFF_FFFF, b & 0xFFFF_FFFF, "slot reused");
        assert_ne!(a, b);
        assert!(t.get_mut(a).is_none());
        assert!(t.remove(a).is_none());
        assert_eq!(t.get_mut(b), Some(&mut "b"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn generations_wrap_within_a_session_id() {
        let mut t = Table::default();
        let mut token = t.insert(0u8);
        for _ in 0..=GEN_MASK {
            t.remove(token);
            token = t.insert(0);
        }
        assert_eq!(token >> 32, 0, "wrapped after 2^24 reuses");
        let id = crate::SessionId::new(3, token);
        assert_eq!(id.token(), token);
    }

    #[test]
    fn reserved_tokens_are_never_found() {
        let mut t: Table<u8> = Table::default();
        t.insert(1);
        assert!(t.get_mut(RESERVED).is_none());
        assert!(t.get_mut(u64::MAX).is_none());
    }

    #[test]
    fn tokens_lists_live_entries() {
        let mut t = Table::default();
        let ids: Vec<u64> = (0..5).map(|i| t.insert(i)).collect();
        t.remove(ids[1]);
        t.remove(ids[3]);
        let mut live = t.tokens();
        live.sort();
        assert_eq!(live, vec![ids[0], ids[2], ids[4]]);
    }
}
