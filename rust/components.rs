//! Near-duplicate clustering split into shuffle-friendly steps, for a plan spread over a cluster
//! (`python/mipo/pairs/ray_plan.py`): sketch rows, candidate pairs per LSH bucket, verify pairs,
//! resolve representatives from the verified edges.
//!
//! Put together they give exactly the answer of the streaming [`crate::dedup::Deduper`] (same
//! keep mask, same cluster ids), whatever the partitioning:
//!
//! * [`sketch_rows`]: per row, the exact key, the band keys and the shingle fingerprints, computed
//!   by the same functions the `Deduper` uses;
//! * [`bucket_pairs`]: every pair `(s, r)`, `s < r`, of rows sharing a bucket (a `(band, key)`).
//!   The `Deduper` compares a row with *every* representative in its buckets, not only with its
//!   bucket neighbours, so all pairs are needed for equality (consecutive neighbours only would
//!   miss a representative that is not adjacent in the bucket);
//! * [`verify_pairs`]: exact Jaccard `>= threshold` of the two fingerprint sets;
//! * [`resolve_representatives`]: the `Deduper`'s rule over the verified edges, in row order: a
//!   row is a representative unless an earlier representative verified with it; then it joins
//!   the earliest such one. This is *not* connected components: a chain `a ~ b ~ c` with `a` and
//!   `c` dissimilar keeps `a` and `c` (as the `Deduper` does); a union-find would merge all three.
//!   Rows are decided in increasing order and a row depends only on its own edges to earlier
//!   rows, so the pass needs the edges sorted by the later row and one map of non-representatives.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::dedup::{
    band_key, exact_hash, jaccard_at_least, normalize_into, shingle_fingerprints, DedupParams,
    MinHasher,
};
use crate::error::{EngineError, Result};

/// Sketches of a batch of rows, in input order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sketches {
    /// xxh3-128 of each normalized text (the exact-duplicate key).
    pub exact: Vec<u128>,
    /// `bands` bucket keys per row, row-major (`band_keys[row * bands + band]`).
    pub band_keys: Vec<u32>,
    /// Fingerprints of row `i` are `fp_values[fp_offsets[i]..fp_offsets[i + 1]]` (sorted, distinct).
    pub fp_offsets: Vec<usize>,
    pub fp_values: Vec<u32>,
}

/// Exact key, band keys and fingerprints of every text (in parallel, in input order).
pub fn sketch_rows<S: AsRef<str> + Sync>(texts: &[S], params: &DedupParams) -> Result<Sketches> {
    params.validate()?;
    let hasher = MinHasher::new(params.num_perm, params.seed);
    let rows = params.rows();
    let per_row: Vec<(u128, Vec<u32>, Vec<u32>)> = texts
        .par_iter()
        .map_init(
            || (String::new(), vec![0u32; params.num_perm]),
            |(normalized, signature), text| {
                normalize_into(text.as_ref(), normalized);
                let exact = exact_hash(normalized);
                let mut fingerprints = Vec::new();
                shingle_fingerprints(normalized, params.ngram, &mut fingerprints);
                hasher.signature(&fingerprints, signature);
                let keys = signature.chunks_exact(rows).map(band_key).collect();
                (exact, keys, fingerprints)
            },
        )
        .collect();
    let mut out = Sketches {
        exact: Vec::with_capacity(per_row.len()),
        band_keys: Vec::with_capacity(per_row.len() * params.bands),
        fp_offsets: Vec::with_capacity(per_row.len() + 1),
        fp_values: Vec::with_capacity(per_row.iter().map(|r| r.2.len()).sum()),
    };
    out.fp_offsets.push(0);
    for (exact, keys, fps) in per_row {
        out.exact.push(exact);
        out.band_keys.extend_from_slice(&keys);
        out.fp_values.extend_from_slice(&fps);
        out.fp_offsets.push(out.fp_values.len());
    }
    Ok(out)
}

/// Every pair `(s, r)` with `s < r` of rows sharing a bucket key, each pair once, sorted.
///
/// `keys[i]` is the bucket (band and key folded into one u64) of entry `i`, `rows[i]` its row.
/// A bucket of `g` rows gives `g (g - 1) / 2` pairs: the price of equality with the streaming
/// `Deduper` (see the module docs); exact duplicates must be removed before, or every copy of a
/// text would pair with every other.
///
/// ```
/// use mipo_engine::components::bucket_pairs;
/// let pairs = bucket_pairs(&[7, 7, 9, 7, 9], &[4, 1, 2, 3, 5]).unwrap();
/// assert_eq!(pairs, vec![(1, 3), (1, 4), (2, 5), (3, 4)]);
/// ```
pub fn bucket_pairs(keys: &[u64], rows: &[u32]) -> Result<Vec<(u32, u32)>> {
    if keys.len() != rows.len() {
        return Err(EngineError::InvalidInput(format!(
            "bucket keys ({}) and rows ({}) differ in length; pass one row per key",
            keys.len(),
            rows.len()
        )));
    }
    let mut entries: Vec<(u64, u32)> = keys.iter().copied().zip(rows.iter().copied()).collect();
    entries.par_sort_unstable();
    entries.dedup();
    let mut pairs = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let mut end = start + 1;
        while end < entries.len() && entries[end].0 == entries[start].0 {
            end += 1;
        }
        for i in start..end {
            for j in i + 1..end {
                pairs.push((entries[i].1, entries[j].1));
            }
        }
        start = end;
    }
    pairs.par_sort_unstable();
    pairs.dedup();
    Ok(pairs)
}

/// [`jaccard_at_least`] for each pair of sets `(a[i], b[i])`, in parallel.
pub fn verify_pairs(a: &[&[u32]], b: &[&[u32]], threshold: f64) -> Result<Vec<bool>> {
    if a.len() != b.len() {
        return Err(EngineError::InvalidInput(format!(
            "the two sides of the pairs differ in length ({} and {}); pass one set per side and pair",
            a.len(),
            b.len()
        )));
    }
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(EngineError::InvalidParameter(format!(
            "threshold must be in (0, 1], got {threshold}"
        )));
    }
    Ok(a.par_iter()
        .zip(b.par_iter())
        .map(|(x, y)| jaccard_at_least(x, y, threshold))
        .collect())
}

/// The rows that are *not* representatives, with their cluster, from verified edges `(s, r)`,
/// `s < r` (module docs): rows in increasing order; a row joins the earliest representative it
/// has an edge to, else it is a representative. Rows in no edge are representatives. Returns
/// `(rows, clusters)` sorted by row.
///
/// ```
/// use mipo_engine::components::resolve_representatives;
/// // 0 ~ 1, 1 ~ 2 (0 and 2 dissimilar), 0 ~ 3, 2 ~ 3: 1 and 3 join 0; 2 stays.
/// let (rows, clusters) = resolve_representatives(&[0, 1, 0, 2], &[1, 2, 3, 3]).unwrap();
/// assert_eq!((rows, clusters), (vec![1, 3], vec![0, 0]));
/// ```
pub fn resolve_representatives(s: &[u32], r: &[u32]) -> Result<(Vec<u32>, Vec<u32>)> {
    if s.len() != r.len() {
        return Err(EngineError::InvalidInput(format!(
            "edge sources ({}) and targets ({}) differ in length; pass one target per source",
            s.len(),
            r.len()
        )));
    }
    let mut edges: Vec<(u32, u32)> = Vec::with_capacity(s.len());
    for (i, (&a, &b)) in s.iter().zip(r).enumerate() {
        if a >= b {
            return Err(EngineError::InvalidInput(format!(
                "edge {i} goes from row {a} to row {b}; every edge must go from an earlier row to a later one"
            )));
        }
        edges.push((b, a));
    }
    edges.par_sort_unstable();
    edges.dedup();
    let mut joined: HashMap<u32, u32> = HashMap::new();
    let (mut rows, mut clusters) = (Vec::new(), Vec::new());
    let mut k = 0;
    while k < edges.len() {
        let row = edges[k].0;
        let mut end = k;
        while end < edges.len() && edges[end].0 == row {
            end += 1;
        }
        // Sources ascending: the first that is a representative is the earliest.
        if let Some(&(_, rep)) = edges[k..end]
            .iter()
            .find(|(_, src)| !joined.contains_key(src))
        {
            joined.insert(row, rep);
            rows.push(row);
            clusters.push(rep);
        }
        k = end;
    }
    Ok((rows, clusters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::{dedup, DedupParams};

    /// The split pipeline equals one streaming `dedup` on texts with planted near duplicates.
    #[test]
    fn split_pipeline_equals_deduper() {
        let base = [
            "the quick brown fox jumps over the lazy dog near the river bank today",
            "a completely different sentence about cooking pasta with garlic and oil tonight",
            "how do i fix my bicycle chain when it keeps slipping off the rear gear",
        ];
        let mut texts: Vec<String> = Vec::new();
        for i in 0..60 {
            let b = base[i % 3];
            let t = match i % 5 {
                0 => b.to_string(),
                1 => format!("{b} please"),
                2 => b.to_uppercase(),
                3 => format!("{b} {i}"),
                _ => format!("unrelated text number {i} with its own words entirely"),
            };
            texts.push(t);
        }
        let params = DedupParams::default();
        let expected = dedup(&texts, &params).unwrap();
        let sk = sketch_rows(&texts, &params).unwrap();
        // Exact duplicates: first occurrence of each key.
        let mut first: HashMap<u128, u32> = HashMap::new();
        let mut firsts = Vec::new();
        let mut first_of = vec![0u32; texts.len()];
        for (i, e) in sk.exact.iter().enumerate() {
            let f = *first.entry(*e).or_insert(i as u32);
            first_of[i] = f;
            if f == i as u32 {
                firsts.push(i as u32);
            }
        }
        let (mut keys, mut rows) = (Vec::new(), Vec::new());
        for &row in &firsts {
            for band in 0..params.bands {
                let key = sk.band_keys[row as usize * params.bands + band];
                keys.push(((band as u64) << 32) | key as u64);
                rows.push(row);
            }
        }
        let pairs = bucket_pairs(&keys, &rows).unwrap();
        let fp =
            |row: u32| &sk.fp_values[sk.fp_offsets[row as usize]..sk.fp_offsets[row as usize + 1]];
        let a: Vec<&[u32]> = pairs.iter().map(|p| fp(p.0)).collect();
        let b: Vec<&[u32]> = pairs.iter().map(|p| fp(p.1)).collect();
        let ok = verify_pairs(&a, &b, params.threshold).unwrap();
        let (s, r): (Vec<u32>, Vec<u32>) = pairs
            .iter()
            .zip(&ok)
            .filter(|(_, &v)| v)
            .map(|(p, _)| *p)
            .unzip();
        let (nonrep, cluster) = resolve_representatives(&s, &r).unwrap();
        let near: HashMap<u32, u32> = nonrep.into_iter().zip(cluster).collect();
        for (i, &f) in first_of.iter().enumerate() {
            let c = *near.get(&f).unwrap_or(&f);
            let keep = f == i as u32 && !near.contains_key(&f);
            assert_eq!(expected.cluster[i], c, "cluster of row {i}");
            assert_eq!(expected.keep[i], keep, "keep of row {i}");
        }
    }

    #[test]
    fn resolve_is_not_connected_components() {
        // A chain: 0 ~ 1 ~ 2 but not 0 ~ 2. 1 joins 0; 2's only edge is to 1 (not a
        // representative), so 2 stays: two clusters, not one.
        let (rows, clusters) = resolve_representatives(&[0, 1], &[1, 2]).unwrap();
        assert_eq!((rows, clusters), (vec![1], vec![0]));
    }

    #[test]
    fn bad_edges_are_refused() {
        assert!(resolve_representatives(&[3], &[2]).is_err());
        assert!(resolve_representatives(&[1, 2], &[3]).is_err());
        assert!(bucket_pairs(&[1], &[]).is_err());
        assert!(verify_pairs(&[], &[], 0.0).is_err());
    }
}
