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

use super::{ExactKey, Prehashed};

/// Texts whose entries stay in the `recent` table before it is merged into the runs.
#[cfg(not(test))]
pub(super) const RECENT_ENTRIES: usize = 1 << 17;
/// Small in tests, so a few thousand rows go through many merges.
#[cfg(test)]
pub(super) const RECENT_ENTRIES: usize = 64;
const MIN_DIR_BITS: u32 = 10;
const ENTRIES_PER_SLOT: usize = 8;
/// `mid` is merged into `base` once `mid.len() * MID_RATIO > base.len()`.
const MID_RATIO: usize = 4;

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

impl Run {
    fn len(&self) -> usize {
        self.cluster.len()
    }

    /// Build a run of `n` entries given in ascending key order (keys distinct).
    fn build(n: usize, sorted: impl Iterator<Item = Entry>) -> Run {
        if n == 0 {
            return Run::default();
        }
        let wanted = n
            .div_ceil(ENTRIES_PER_SLOT)
            .next_power_of_two()
            .trailing_zeros();
        let bits = wanted.clamp(MIN_DIR_BITS, 32);
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
            let slot = (k0 >> shift) as usize;
            while run.dir.len() <= slot {
                run.dir.push(run.cluster.len() as u32);
            }
            run.k0.push(k0);
            run.k1.push(k1);
            run.cluster.push(c);
        }
        debug_assert_eq!(run.len(), n);
        while run.dir.len() <= slots {
            run.dir.push(run.cluster.len() as u32);
        }
        run
    }

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

    fn iter(&self) -> impl Iterator<Item = Entry> + '_ {
        (0..self.len()).map(move |i| (self.k0[i], self.k1[i], self.cluster[i]))
    }

    fn heap_bytes(&self) -> usize {
        self.dir.capacity() * 4
            + (self.k0.capacity() + self.k1.capacity()) * 8
            + self.cluster.capacity() * 4
    }
}

/// The merge of two ascending sequences (by key), ascending.
fn merge(
    a: impl Iterator<Item = Entry>,
    b: impl Iterator<Item = Entry>,
) -> impl Iterator<Item = Entry> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => {
            if (x.0, x.1) <= (y.0, y.1) {
                a.next()
            } else {
                b.next()
            }
        }
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
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
        let mid = std::mem::take(&mut self.mid);
        self.mid = Run::build(
            mid.len() + fresh.len(),
            merge(mid.iter(), fresh.into_iter()),
        );
        drop(mid);
        if self.mid.len() * MID_RATIO > self.base.len() {
            let (base, mid) = (
                std::mem::take(&mut self.base),
                std::mem::take(&mut self.mid),
            );
            self.base = Run::build(base.len() + mid.len(), merge(base.iter(), mid.iter()));
        }
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
