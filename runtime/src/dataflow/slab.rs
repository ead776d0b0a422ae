//! A slab keyed by a growing sequence number (a request id, an admission round): the hot path's
//! replacement for a hash map. Request ids enter the dataflow in increasing order and leave in
//! roughly that order, so a ring of slots from the oldest live key up holds them with no
//! hashing; a slot is reclaimed once every key below it is gone.

use std::collections::VecDeque;

/// Values keyed by `u64`, for keys that arrive in roughly increasing order.
#[derive(Debug)]
pub struct SeqSlab<T> {
    /// The key of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<T>>,
    len: usize,
}

impl<T> Default for SeqSlab<T> {
    fn default() -> SeqSlab<T> {
        SeqSlab {
            base: 0,
            slots: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> SeqSlab<T> {
    pub fn new() -> SeqSlab<T> {
        SeqSlab::default()
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot of `key`, growing the ring (either way) to hold it.
    fn slot(&mut self, key: u64) -> &mut Option<T> {
        if self.slots.is_empty() {
            self.base = key;
        }
        if key < self.base {
            // A key older than every live one (rare: ids out of order across workers).
            let gap = (self.base - key) as usize;
            for _ in 0..gap {
                self.slots.push_front(None);
            }
            self.base = key;
        }
        let at = (key - self.base) as usize;
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || None);
        }
        &mut self.slots[at]
    }

    /// The entry of `key`, inserted with `make` when absent.
    pub fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> T) -> &mut T {
        if self.slot(key).is_none() {
            self.len += 1;
        }
        self.slot(key).get_or_insert_with(make)
    }

    /// Insert or replace the entry of `key`.
    pub fn insert(&mut self, key: u64, value: T) {
        let slot = self.slot(key);
        let was = slot.replace(value);
        if was.is_none() {
            self.len += 1;
        }
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        let at = key.checked_sub(self.base)? as usize;
        self.slots.get_mut(at)?.as_mut()
    }

    /// Remove the entry of `key`, reclaiming the slots no live key needs.
    pub fn remove(&mut self, key: u64) -> Option<T> {
        let at = key.checked_sub(self.base)? as usize;
        let value = self.slots.get_mut(at)?.take()?;
        self.len -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        if self.slots.is_empty() {
            self.base = 0;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_any_order_come_back_and_the_ring_shrinks() {
        let mut s = SeqSlab::new();
        s.insert(10, "a");
        s.insert(12, "c");
        s.insert(11, "b");
        s.insert(7, "z");
        assert_eq!(s.len(), 4);
        assert_eq!(s.remove(11), Some("b"));
        assert_eq!(s.remove(11), None);
        assert_eq!(s.remove(7), Some("z"));
        assert_eq!(s.get_mut(10).map(|v| *v), Some("a"));
        assert_eq!(s.remove(10), Some("a"));
        // Only key 12 is live: the ring starts there.
        assert_eq!(s.slots.len(), 1);
        *s.get_or_insert_with(13, || "d") = "e";
        assert_eq!(s.remove(13), Some("e"));
        assert_eq!(s.remove(12), Some("c"));
        assert!(s.is_empty());
        assert_eq!(s.get_mut(3), None);
    }
}
