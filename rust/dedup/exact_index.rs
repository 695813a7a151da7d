//! The exact-duplicate map of the streaming [`Deduper`](super::Deduper): 128-bit key of each
//! distinct normalized text -> its cluster, as sorted runs plus a small recent-insert table
//! (the scheme of [`band_index`](super::band_index), for the one map every distinct text enters).
//!
//! hashbrown would hold a 16-byte key and a 4-byte value in a 24-byte slot plus a control byte,
//! at a load factor of 0.44-0.875 (29-57 bytes per text), and a resize briefly holds the old
//! table and the new one (three times the old). A run holds 20 bytes per text (two `u64` key
//! halves and the `u32` cluster, in three arrays) and a directory of under one byte per text;
//! the `recent` table is bounded by [`RECENT_ENTRIES`].

use std::collections::HashMap;

use super::runs::{cascade, directory_bits, open_slots, SortedRun, RECENT_ENTRIES};
use super::{ExactKey, Prehashed};

const MIN_DIR_BITS: u32 = 10;

/// Entries sorted by key; the top bits of `key.0` index the directory.
#[derive(Default)]
struct Run {
    shift: u32,
    /// Entries of slot `t` are `dir[t]..dir[t + 1]` (empty `dir`: empty run).
    dir: Vec<u32>,
    k0: Vec<u64>,
    k1: Vec<u64>,
    cluster: Vec<u32>,
}

type Entry = (u64, u64, u32);

impl SortedRun for Run {
    /// `(key.0, key.1, cluster)`; keys are distinct, so this is the order of the keys.
    type Entry = Entry;

    fn len(&self) -> usize {
        self.cluster.len()
    }

    fn build(n: usize, sorted: impl Iterator<Item = Entry>) -> Run {
        if n == 0 {
            return Run::default();
        }
        let bits = directory_bits(n, MIN_DIR_BITS, 32);
        let shift = 64 - bits;
        let slots = 1usize << bits;
        let mut run = Run {
            shift,
            dir: Vec::with_capacity(slots + 1),
            k0: Vec::with_capacity(n),
            k1: Vec::with_capacity(n),
            cluster: Vec::with_capacity(n),
        };
        for (k0, k1, c) in sorted {
            open_slots(&mut run.dir, (k0 >> shift) as usize, run.cluster.len());
            run.k0.push(k0);
            run.k1.push(k1);
            run.cluster.push(c);
        }
        debug_assert_eq!(run.len(), n);
        open_slots(&mut run.dir, slots, run.cluster.len());
        run
    }

    fn iter(&self) -> impl Iterator<Item = Entry> + '_ {
        (0..self.len()).map(move |i| (self.k0[i], self.k1[i], self.cluster[i]))
    }
}

impl Run {
    #[inline]
    fn get(&self, key: ExactKey) -> Option<u32> {
        if self.dir.is_empty() {
            return None;
        }
        let slot = (key.0 >> self.shift) as usize;
        (self.dir[slot] as usize..self.dir[slot + 1] as usize)
            .find(|&i| self.k0[i] == key.0 && self.k1[i] == key.1)
            .map(|i| self.cluster[i])
    }

    fn heap_bytes(&self) -> usize {
        self.dir.capacity() * 4
            + (self.k0.capacity() + self.k1.capacity()) * 8
            + self.cluster.capacity() * 4
    }
}

/// Distinct-text key -> cluster (module docs). Keys are inserted once each.
#[derive(Default)]
pub(super) struct ExactIndex {
    base: Run,
    mid: Run,
    recent: HashMap<ExactKey, u32, Prehashed>,
}

impl ExactIndex {
    pub(super) fn len(&self) -> usize {
        self.base.len() + self.mid.len() + self.recent.len()
    }

    #[inline]
    pub(super) fn get(&self, key: ExactKey) -> Option<u32> {
        self.recent
            .get(&key)
            .copied()
            .or_else(|| self.mid.get(key))
            .or_else(|| self.base.get(key))
    }

    /// Insert a key not present yet.
    pub(super) fn insert(&mut self, key: ExactKey, cluster: u32) {
        debug_assert!(self.get(key).is_none());
        self.recent.insert(key, cluster);
        if self.recent.len() >= RECENT_ENTRIES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut fresh: Vec<Entry> = self.recent.drain().map(|(k, c)| (k.0, k.1, c)).collect();
        fresh.sort_unstable_by_key(|e| (e.0, e.1));
        cascade(&mut self.base, &mut self.mid, fresh);
    }

    /// Approximate heap bytes (allocated capacity; hashbrown: entry + control byte per slot).
    pub(super) fn heap_bytes(&self) -> usize {
        self.base.heap_bytes() + self.mid.heap_bytes() + self.recent.capacity() * 8 / 7 * 25
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::mix64;

    #[test]
    fn lookups_equal_a_plain_map_across_flushes() {
        let mut index = ExactIndex::default();
        let n = 50 * RECENT_ENTRIES + 77;
        let key = |i: u64| ExactKey(mix64(i), mix64(i ^ 0xABCD));
        for i in 0..n as u64 {
            index.insert(key(i), i as u32 * 3);
        }
        assert!(index.base.len() > 0 && !index.recent.is_empty());
        assert_eq!(index.len(), n);
        for i in (0..n as u64).step_by(31) {
            assert_eq!(index.get(key(i)), Some(i as u32 * 3));
        }
        // Same first half, other second half: absent.
        for i in 0..1000u64 {
            assert_eq!(index.get(ExactKey(mix64(i), 1)), None);
            assert_eq!(index.get(key(n as u64 + i)), None);
        }
    }
}
