//! What the sorted-run indexes of the streaming [`Deduper`](super::Deduper) share
//! ([`band_index`](super::band_index), [`exact_index`](super::exact_index)): the bounded
//! `recent` table's size, a run's directory (sizing and filling), the linear merge of two
//! ascending sequences, and the two-level policy that merges `recent` into `mid` and `mid` into
//! `base` (so the total merge work stays a small multiple of the entries).

/// Entries that stay in an index's `recent` table before it is merged into the runs.
#[cfg(not(test))]
pub(super) const RECENT_ENTRIES: usize = 1 << 17;
/// Small in tests, so a few thousand rows go through many merges.
#[cfg(test)]
pub(super) const RECENT_ENTRIES: usize = 64;
/// Entries per directory slot (on average) a run aims for.
const ENTRIES_PER_SLOT: usize = 8;
/// `mid` is merged into `base` once `mid.len() * MID_RATIO > base.len()`.
const MID_RATIO: usize = 4;

/// A run of entries sorted ascending, built once from sorted entries and read back in order.
pub(super) trait SortedRun: Default {
    type Entry: PartialOrd;
    fn len(&self) -> usize;
    /// Build a run of `n` entries given in ascending order.
    fn build(n: usize, sorted: impl Iterator<Item = Self::Entry>) -> Self;
    /// The entries, ascending.
    fn iter(&self) -> impl Iterator<Item = Self::Entry> + '_;
}

/// Directory bits of a run of `n` entries (about [`ENTRIES_PER_SLOT`] per slot), in
/// `min..=max`.
pub(super) fn directory_bits(n: usize, min: u32, max: u32) -> u32 {
    n.div_ceil(ENTRIES_PER_SLOT)
        .next_power_of_two()
        .trailing_zeros()
        .clamp(min, max)
}

/// Open the directory's slots up to `slot`, each starting at entry `len` (the entries so far).
#[inline]
pub(super) fn open_slots(dir: &mut Vec<u32>, slot: usize, len: usize) {
    while dir.len() <= slot {
        dir.push(len as u32);
    }
}

/// The merge of two ascending sequences, ascending.
pub(super) fn merge<T: PartialOrd>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = T>,
) -> impl Iterator<Item = T> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => {
            if x <= y {
                a.next()
            } else {
                b.next()
            }
        }
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// Merge `fresh` (ascending) into `mid`, then `mid` into `base` once it has outgrown a
/// [`MID_RATIO`]-th of it; one run is rebuilt at a time.
pub(super) fn cascade<R: SortedRun>(base: &mut R, mid: &mut R, fresh: Vec<R::Entry>) {
    let old = std::mem::take(mid);
    *mid = R::build(
        old.len() + fresh.len(),
        merge(old.iter(), fresh.into_iter()),
    );
    drop(old);
    if mid.len() * MID_RATIO > base.len() {
        let (old_base, old_mid) = (std::mem::take(base), std::mem::take(mid));
        *base = R::build(
            old_base.len() + old_mid.len(),
            merge(old_base.iter(), old_mid.iter()),
        );
    }
}
