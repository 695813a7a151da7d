//! The LSH band tables of the streaming [`Deduper`](super::Deduper): per band, a multimap from
//! bucket key to the ordinals of the representatives in that bucket.
//!
//! # Why sorted runs, not one hash map per band
//!
//! A hash map per band (key -> latest ordinal, plus a chain link per entry) costs ~14-25 bytes
//! per representative per band at hashbrown's load factors (0.44-0.875) and doubles at every
//! resize. Here an entry lives in one of three places:
//!
//! * `recent`: a small hash map (key -> latest entry, chained) taking the inserts of the last
//!   [`RECENT_ENTRIES`] representatives; bounded, so its cost does not grow with the corpus;
//! * `mid` and `base`: sorted runs. An entry of a run is 6 bytes (the low bits of the key as
//!   `u16` and the ordinal as `u32`, in two arrays); the high bits of the key index a directory
//!   of run offsets (`u32`, one slot per ~[`ENTRIES_PER_SLOT`] entries, under one byte per
//!   entry), so a lookup is two memory reads and a short scan, and the full 32-bit key is kept
//!   exactly (a bucket holds the same representatives as the hash map did).
//!
//! When `recent` is full it is sorted and merged into `mid`; when `mid` outgrows a
//! [`MID_RATIO`]-th of `base` it is merged into `base`. Both merges are linear, so the total
//! merge work is a small multiple of the entries (~`MID_RATIO + 1` passes over the final
//! `base`, plus the `recent` flushes into `mid`), and one band is rebuilt at a time: the
//! transient is one band's run, not the whole state.

use std::collections::HashMap;

#[cfg(test)]
use super::runs::RECENT_ENTRIES;
use super::runs::{cascade, directory_bits, open_slots, SortedRun};
use super::Prehashed;

/// End-of-chain marker of the `recent` lists.
const NONE: u32 = u32::MAX;
/// Fewest directory bits of a run: at least 16, so the low key bits left fit a `u16`.
const MIN_DIR_BITS: u32 = 16;

/// A sorted run of `(key, ordinal)` entries (sorted by key, then ordinal).
#[derive(Default)]
struct Run {
    /// `32 - directory bits`: `key >> shift` is the directory slot, the rest is in `lo`.
    shift: u32,
    /// Entries of slot `t` are `dir[t]..dir[t + 1]` (empty `dir`: empty run).
    dir: Vec<u32>,
    /// `key & ((1 << shift) - 1)` of each entry.
    lo: Vec<u16>,
    ord: Vec<u32>,
}

impl SortedRun for Run {
    /// `key << 32 | ordinal`.
    type Entry = u64;

    fn len(&self) -> usize {
        self.ord.len()
    }

    fn build(n: usize, sorted: impl Iterator<Item = u64>) -> Run {
        if n == 0 {
            return Run::default();
        }
        let bits = directory_bits(n, MIN_DIR_BITS, 31);
        let shift = 32 - bits;
        let slots = 1usize << bits;
        let mask = (1u32 << shift) - 1;
        let mut dir = Vec::with_capacity(slots + 1);
        let mut lo = Vec::with_capacity(n);
        let mut ord = Vec::with_capacity(n);
        for e in sorted {
            let key = (e >> 32) as u32;
            open_slots(&mut dir, (key >> shift) as usize, ord.len());
            lo.push((key & mask) as u16);
            ord.push(e as u32);
        }
        debug_assert_eq!(ord.len(), n);
        open_slots(&mut dir, slots, ord.len());
        Run {
            shift,
            dir,
            lo,
            ord,
        }
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let slots = self.dir.len().saturating_sub(1);
        (0..slots).flat_map(move |t| {
            let high = (t as u32) << self.shift;
            (self.dir[t] as usize..self.dir[t + 1] as usize)
                .map(move |i| (((high | self.lo[i] as u32) as u64) << 32) | self.ord[i] as u64)
        })
    }
}

impl Run {
    /// Push the ordinals stored under `key`.
    #[inline]
    fn lookup(&self, key: u32, out: &mut Vec<u32>) {
        if self.dir.is_empty() {
            return;
        }
        let slot = (key >> self.shift) as usize;
        let lo = (key & ((1u32 << self.shift) - 1)) as u16;
        let (from, to) = (self.dir[slot] as usize, self.dir[slot + 1] as usize);
        for i in from..to {
            if self.lo[i] == lo {
                out.push(self.ord[i]);
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.dir.capacity() * 4 + self.lo.capacity() * 2 + self.ord.capacity() * 4
    }
}

/// One band's multimap bucket key -> representative ordinals (module docs).
#[derive(Default)]
pub(super) struct BandIndex {
    base: Run,
    mid: Run,
    /// Key -> index of its latest entry in `recent_*`.
    recent_head: HashMap<u32, u32, Prehashed>,
    recent_key: Vec<u32>,
    recent_ord: Vec<u32>,
    /// The previous entry of the same key ([`NONE`] at the end).
    recent_next: Vec<u32>,
}

impl BandIndex {
    /// Push every ordinal stored under `key` (in no particular order).
    #[inline]
    pub(super) fn lookup(&self, key: u32, out: &mut Vec<u32>) {
        self.base.lookup(key, out);
        self.mid.lookup(key, out);
        if let Some(&head) = self.recent_head.get(&key) {
            let mut i = head;
            while i != NONE {
                out.push(self.recent_ord[i as usize]);
                i = self.recent_next[i as usize];
            }
        }
    }

    /// Store `ordinal` under `key`.
    #[inline]
    pub(super) fn insert(&mut self, key: u32, ordinal: u32) {
        let index = self.recent_key.len() as u32;
        let prev = self.recent_head.insert(key, index).unwrap_or(NONE);
        self.recent_key.push(key);
        self.recent_ord.push(ordinal);
        self.recent_next.push(prev);
    }

    /// Entries in the `recent` table.
    pub(super) fn recent_len(&self) -> usize {
        self.recent_key.len()
    }

    /// Sort the `recent` entries into `mid`, and `mid` into `base` when it has grown enough.
    pub(super) fn flush(&mut self) {
        if self.recent_key.is_empty() {
            return;
        }
        let mut fresh: Vec<u64> = self
            .recent_key
            .iter()
            .zip(&self.recent_ord)
            .map(|(&k, &o)| ((k as u64) << 32) | o as u64)
            .collect();
        fresh.sort_unstable();
        self.recent_head.clear();
        self.recent_key.clear();
        self.recent_ord.clear();
        self.recent_next.clear();
        cascade(&mut self.base, &mut self.mid, fresh);
    }

    /// Approximate heap bytes (allocated capacity; hashbrown: entry + control byte per slot).
    pub(super) fn heap_bytes(&self) -> usize {
        self.base.heap_bytes()
            + self.mid.heap_bytes()
            + self.recent_head.capacity() * 8 / 7 * 9
            + (self.recent_key.capacity()
                + self.recent_ord.capacity()
                + self.recent_next.capacity())
                * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The index against a plain multimap, over inserts that cross several flushes, with keys
    /// drawn from a small range (long buckets) and from the whole u32 range.
    #[test]
    fn lookups_equal_a_plain_multimap_across_flushes() {
        for key_range in [50u64, 1 << 32] {
            let mut rng = Rng::new(key_range);
            let mut index = BandIndex::default();
            let mut want: HashMap<u32, Vec<u32>> = HashMap::new();
            let n = 3 * RECENT_ENTRIES + 1234;
            let mut keys = Vec::with_capacity(n);
            for ordinal in 0..n as u32 {
                let key = (rng.next_u64() % key_range) as u32;
                keys.push(key);
                index.insert(key, ordinal);
                want.entry(key).or_default().push(ordinal);
                if index.recent_len() >= RECENT_ENTRIES {
                    index.flush();
                }
            }
            assert!(index.base.len() > 0 && index.recent_len() > 0);
            let mut got = Vec::new();
            for key in keys.iter().step_by(97).copied().chain([u32::MAX, 0, 7]) {
                got.clear();
                index.lookup(key, &mut got);
                got.sort_unstable();
                assert_eq!(
                    got,
                    want.get(&key).cloned().unwrap_or_default(),
                    "key {key}"
                );
            }
            index.flush();
            assert_eq!(index.recent_len(), 0);
            assert_eq!(index.base.len() + index.mid.len(), n);
        }
    }

    #[test]
    fn runs_iterate_what_they_were_built_from() {
        let mut entries: Vec<u64> = (0..100_000u64)
            .map(|i| ((crate::dedup::mix64(i) >> 32) << 32) | i)
            .chain([u64::MAX, 0, (u32::MAX as u64) << 32])
            .collect();
        entries.sort_unstable();
        let run = Run::build(entries.len(), entries.iter().copied());
        assert_eq!(run.iter().collect::<Vec<_>>(), entries);
        let mut out = Vec::new();
        run.lookup(u32::MAX, &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![0, u32::MAX]);
    }
}
