//! Deduplication: normalization, exact duplicates (128-bit hash), near duplicates (MinHash + LSH
//! with every candidate pair verified), all in one streaming [`Deduper`].
//!
//! # The algorithm (mirrored line for line by `python/mipo/_reference.py`, `# === dedup`)
//!
//! 1. **Normalize** ([`normalize`]): Unicode NFKC, then full case folding (`str.casefold`), then
//!    every run of [`WHITESPACE`] becomes one space and the ends are trimmed.
//! 2. **Exact key**: xxh3-128 of the normalized UTF-8 bytes.
//! 3. **Shingles**: the normalized text split on single spaces into words; every window of
//!    `ngram` consecutive words, joined by one space, is a shingle. A text with fewer than
//!    `ngram` words (the empty text included) is one shingle, the whole normalized text. Each
//!    shingle is hashed with XXH64 (seed 0) over its UTF-8 bytes ([`shingle_hash`]); the high
//!    32 bits are the shingle's *fingerprint*, and the set of distinct fingerprints is the
//!    text's shingle set. (32 bits keep the state small: two distinct shingles of a pair
//!    collide with probability ~|A||B| / 2^32, which cannot move a Jaccard value in practice.)
//! 4. **MinHash**: `num_perm` hash functions `h_k(x) = ((a_k * x + b_k) mod 2^64) >> 32` with
//!    `a_k`, `b_k` drawn in order from [`Rng::new(seed)`](crate::rng::Rng) (`next_u64`, `a_k`
//!    first). For 32-bit `x` and uniform 64-bit `a`, `b` this multiply-add-shift family is
//!    strongly universal (Dietzfelbinger 1996), the same guarantee as the usual
//!    `(a x + b) mod p`, at one multiply per hash (and it vectorizes). Signature `k` = min of
//!    `h_k` over the set.
//! 5. **LSH**: `bands` bands of `rows = num_perm / bands` consecutive signature values; each band
//!    is folded into a 32-bit bucket key ([`band_key`]).
//! 6. **Verification**: a candidate pair counts only if the exact Jaccard similarity of the two
//!    shingle sets is `>= threshold`: no false positive from an unlucky band collision.
//! 7. **Clusters** (rows in input order, so the first occurrence of each cluster wins):
//!    * a row whose normalized text was seen before is an exact duplicate: it gets the cluster of
//!      that earlier text, `keep = false`, `exact = true`;
//!    * else, with `near`, the row is compared with the cluster *representatives* (kept rows)
//!      sharing at least one bucket; if some verify, the row joins the earliest of them
//!      (`keep = false`, `exact = false`);
//!    * else the row is kept and starts its own cluster, whose id is its own row index.
//!
//! ## Why representatives, not a union-find over all verified pairs
//!
//! A union-find over pairs lets a later row bridge two earlier clusters, which would change the
//! answer for rows already returned: a streamed corpus could not get final answers chunk by
//! chunk, and chains of pairwise-similar texts merge texts that are not similar at all. Joining
//! the earliest verified representative gives answers that depend only on earlier rows (so
//! chunked == one-shot, exactly), and two guarantees: every removed row is within `threshold` of
//! its cluster's kept row, and no two kept rows form a verified candidate pair. The clusters are
//! still kept in a union-find-like forest of depth one (row -> representative).
//!
//! # Memory (streaming state, [`Deduper::state_bytes`])
//!
//! Only compact state survives a chunk, never the text:
//! * per distinct normalized text: one exact-map entry, 16-byte key + 4-byte cluster in sorted
//!   runs (`dedup/exact_index.rs`), ~21 bytes;
//! * per kept row (representative): one 6-byte entry in each of the `bands` band tables (sorted
//!   runs whose directory keeps the full 32-bit bucket key, `dedup/band_index.rs`), 4 bytes of
//!   row id, 8 bytes of fingerprint offset, and 4 bytes per distinct shingle.
//!
//! Both indexes take new entries in a small hash table (bounded: its cost does not grow with the
//! corpus) and merge it into sorted runs from time to time, so there are no hash tables at half
//! load and no doubling resizes holding the old table and the new one at once. Hash maps in
//! their place cost ~29-57 bytes per text and ~18 bytes per band per representative (a slot at
//! load plus a chain link). For ~70-word prompts with the defaults (14 bands) that is about
//! 21 + 14 * 6.5 + 12 + 4 * shingles bytes per kept row; removed rows cost only their exact-map
//! entry. Measured (`benches/dedup_memory.py --parquet` on a 1M-row `mipo synth` corpus):
//! 423 bytes per kept row (649 with hash maps), 0.40 GB of state. The text itself stays in the
//! caller's Arrow buffers and is read in place; each chunk is sketched in blocks of
//! [`BLOCK_ROWS`] rows.
//!
//! # Determinism
//!
//! Normalization, shingling and signatures run in parallel (rayon) row by row and are collected
//! in input order; clustering is one sequential pass. The result never depends on the thread
//! count, and [`Deduper::add`] over any chunking equals [`dedup`] over the whole column.

use std::hash::{BuildHasherDefault, Hash, Hasher};

use caseless::Caseless;
use rayon::prelude::*;
use unicode_normalization::UnicodeNormalization;

use crate::error::{EngineError, Result};
use crate::rng::Rng;

mod band_index;
mod exact_index;
mod runs;
use band_index::BandIndex;
use exact_index::ExactIndex;
use runs::RECENT_ENTRIES;

/// The whitespace set of normalization: exactly the characters for which Python's
/// `str.isspace()` is true (Unicode 14), written out so Rust and the reference agree whatever
/// Unicode version either side ships.
pub const WHITESPACE: &[char] = &[
    '\u{0009}', '\u{000A}', '\u{000B}', '\u{000C}', '\u{000D}', '\u{001C}', '\u{001D}', '\u{001E}',
    '\u{001F}', '\u{0020}', '\u{0085}', '\u{00A0}', '\u{1680}', '\u{2000}', '\u{2001}', '\u{2002}',
    '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}', '\u{200A}',
    '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}', '\u{3000}',
];

/// Rows sketched in parallel before the sequential clustering pass takes them: bounds the
/// transient memory of one `add` (shingle sets and band keys of one block only).
pub const BLOCK_ROWS: usize = 1 << 15;

/// Largest `num_perm` accepted (a larger signature buys nothing and costs linear time).
pub const MAX_NUM_PERM: usize = 4096;

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const BAND_KEY_INIT: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn is_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{0009}'..='\u{000D}'
            | '\u{001C}'..='\u{0020}'
            | '\u{0085}'
            | '\u{00A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Pushes characters, collapsing whitespace runs into one space and trimming both ends.
struct Collapser<'a> {
    out: &'a mut String,
    pending_space: bool,
}

impl Collapser<'_> {
    #[inline]
    fn push(&mut self, c: char) {
        if is_whitespace(c) {
            self.pending_space = !self.out.is_empty();
        } else {
            if self.pending_space {
                self.out.push(' ');
                self.pending_space = false;
            }
            self.out.push(c);
        }
    }
}

/// [`normalize`] into a reusable buffer (cleared first).
pub fn normalize_into(text: &str, out: &mut String) {
    out.clear();
    out.reserve(text.len());
    if text.is_ascii() {
        // Fast path, same result: NFKC is the identity on ASCII and case folding is lowercase.
        // SAFETY: only ASCII bytes are pushed, so the String stays valid UTF-8.
        let bytes = unsafe { out.as_mut_vec() };
        // ASCII part of WHITESPACE: 0x09-0x0D, 0x1C-0x20.
        let is_space = |b: u8| matches!(b, 0x09..=0x0D | 0x1C..=0x20);
        let src = text.as_bytes();
        let mut i = 0;
        while i < src.len() {
            while i < src.len() && is_space(src[i]) {
                i += 1;
            }
            let start = i;
            while i < src.len() && !is_space(src[i]) {
                i += 1;
            }
            if start < i {
                if !bytes.is_empty() {
                    bytes.push(b' ');
                }
                let from = bytes.len();
                bytes.extend_from_slice(&src[start..i]);
                bytes[from..].make_ascii_lowercase();
            }
        }
    } else {
        let mut sink = Collapser {
            out,
            pending_space: false,
        };
        for c in text.nfkc().default_case_fold() {
            sink.push(c);
        }
    }
}

/// NFKC, full case folding, whitespace runs collapsed to one space, ends trimmed.
///
/// ```
/// assert_eq!(mipo_engine::dedup::normalize("  Ｈello\tWORLD ß "), "hello world ss");
/// ```
pub fn normalize(text: &str) -> String {
    let mut out = String::new();
    normalize_into(text, &mut out);
    out
}

/// [`normalize`] every text, in parallel, in input order.
pub fn normalize_all<S: AsRef<str> + Sync>(texts: &[S]) -> Vec<String> {
    texts.par_iter().map(|t| normalize(t.as_ref())).collect()
}

/// The shingle hash: XXH64 with seed 0 (a published, frozen algorithm; the reference
/// implements it in pure Python). Much faster than a byte-serial hash such as FNV-1a.
#[inline]
pub fn shingle_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// The SplitMix64 finalizer: a bijective 64-bit mixer.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 32-bit LSH bucket key of one band of a signature.
#[inline]
pub fn band_key(band: &[u32]) -> u32 {
    let mut k = BAND_KEY_INIT;
    for &v in band {
        k = mix64(k ^ v as u64);
    }
    (k >> 32) as u32
}

/// The hash of the exact-duplicate check: xxh3-128 of the normalized text.
#[inline]
pub fn exact_hash(normalized: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(normalized.as_bytes())
}

/// The shingle set of a normalized text: distinct 32-bit fingerprints, sorted (module docs).
pub fn shingle_fingerprints(normalized: &str, ngram: usize, out: &mut Vec<u32>) {
    shingle_fingerprints_with(normalized, ngram, out, &mut Vec::new());
}

/// [`shingle_fingerprints`] with a reusable buffer for the word boundaries.
fn shingle_fingerprints_with(
    normalized: &str,
    ngram: usize,
    out: &mut Vec<u32>,
    words: &mut Vec<(usize, usize)>,
) {
    out.clear();
    words.clear();
    // Word boundaries as byte ranges: a shingle is the slice from the start of its first word to
    // the end of its last, which is exactly its words joined by single spaces.
    if !normalized.is_empty() {
        let mut start = 0;
        for (i, b) in normalized.bytes().enumerate() {
            if b == b' ' {
                words.push((start, i));
                start = i + 1;
            }
        }
        words.push((start, normalized.len()));
    }
    let bytes = normalized.as_bytes();
    let fingerprint = |b: &[u8]| (shingle_hash(b) >> 32) as u32;
    if words.len() < ngram {
        out.push(fingerprint(bytes));
    } else {
        out.extend(
            words
                .windows(ngram)
                .map(|w| fingerprint(&bytes[w[0].0..w[ngram - 1].1])),
        );
    }
    out.sort_unstable();
    out.dedup();
}

/// Validated parameters of [`Deduper`] and [`dedup`].
#[derive(Clone, Debug, PartialEq)]
pub struct DedupParams {
    /// Words per shingle (>= 1).
    pub ngram: usize,
    /// MinHash signature length (1..=[`MAX_NUM_PERM`]), a multiple of `bands`.
    pub num_perm: usize,
    /// LSH bands (>= 1).
    pub bands: usize,
    /// Jaccard similarity at or above which a candidate pair is a near duplicate, in (0, 1].
    pub threshold: f64,
    /// Seed of the MinHash hash functions.
    pub seed: u64,
    /// Detect near duplicates (false: exact duplicates only).
    pub near: bool,
}

impl Default for DedupParams {
    /// datatrove's MinHash defaults: word 5-grams, 14 bands x 8 rows = 112 hashes; threshold 0.8.
    fn default() -> Self {
        DedupParams {
            ngram: 5,
            num_perm: 112,
            bands: 14,
            threshold: 0.8,
            seed: 0,
            near: true,
        }
    }
}

impl DedupParams {
    /// Reject out-of-range or inconsistent parameters with [`EngineError::InvalidParameter`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidParameter(m));
        if self.ngram < 1 {
            return bad(format!("ngram must be >= 1, got {}", self.ngram));
        }
        if self.num_perm < 1 || self.num_perm > MAX_NUM_PERM {
            return bad(format!(
                "num_perm must be in 1..={MAX_NUM_PERM}, got {}",
                self.num_perm
            ));
        }
        if self.bands < 1 || self.num_perm % self.bands != 0 {
            return bad(format!(
                "num_perm ({}) must be a positive multiple of bands ({}); e.g. num_perm=112, bands=14",
                self.num_perm, self.bands
            ));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return bad(format!(
                "threshold must be in (0, 1], got {}",
                self.threshold
            ));
        }
        Ok(())
    }

    /// Signature values per band.
    pub fn rows(&self) -> usize {
        self.num_perm / self.bands
    }
}

/// The MinHash hash functions `h_k(x) = ((a_k * x + b_k) mod 2^64) >> 32`.
#[derive(Clone, Debug)]
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
}

/// The signature loop, written so LLVM vectorizes it (over `k`) for the enabled target features.
#[inline(always)]
fn signature_kernel(a: &[u64], b: &[u64], shingles: &[u32], sig: &mut [u32]) {
    sig.fill(u32::MAX);
    let n = sig.len().min(a.len()).min(b.len());
    let (a, b, sig) = (&a[..n], &b[..n], &mut sig[..n]);
    for &x in shingles {
        let x = x as u64;
        for k in 0..n {
            let h = (a[k].wrapping_mul(x).wrapping_add(b[k]) >> 32) as u32;
            sig[k] = sig[k].min(h);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn signature_kernel_avx2(a: &[u64], b: &[u64], shingles: &[u32], sig: &mut [u32]) {
    signature_kernel(a, b, shingles, sig)
}

impl MinHasher {
    /// `num_perm` functions with `(a_k, b_k)` drawn in order from `Rng::new(seed)`.
    pub fn new(num_perm: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut a = Vec::with_capacity(num_perm);
        let mut b = Vec::with_capacity(num_perm);
        for _ in 0..num_perm {
            a.push(rng.next_u64());
            b.push(rng.next_u64());
        }
        MinHasher { a, b }
    }

    /// The MinHash signature of a shingle set into `sig` (`len == num_perm`).
    pub fn signature(&self, shingles: &[u32], sig: &mut [u32]) {
        debug_assert_eq!(sig.len(), self.a.len());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { signature_kernel_avx2(&self.a, &self.b, shingles, sig) };
        }
        signature_kernel(&self.a, &self.b, shingles, sig)
    }
}

/// What the clustering pass needs of one row (computed in parallel).
struct RowSketch {
    exact: u128,
    /// One bucket key per band (empty unless `near`).
    band_keys: Vec<u32>,
    /// Sorted distinct 32-bit shingle fingerprints (empty unless `near`).
    fingerprints: Vec<u32>,
}

/// Per-thread scratch buffers of the sketching phase.
#[derive(Default)]
struct Scratch {
    normalized: String,
    words: Vec<(usize, usize)>,
    signature: Vec<u32>,
}

/// Exact Jaccard similarity of two sorted distinct sets is `>= threshold`: the `Deduper`'s test,
/// and the split plan's (`components::verify_pairs`), to the last floating-point operation.
#[inline]
pub fn jaccard_at_least(a: &[u32], b: &[u32], threshold: f64) -> bool {
    let (small, big) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    // J <= |small| / |big|: skip the merge when even a full overlap cannot reach the threshold.
    if big.is_empty() || (small.len() as f64) / (big.len() as f64) < threshold {
        return false;
    }
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - inter;
    (inter as f64) / (union as f64) >= threshold
}

/// A multiply-mix hasher for keys that are already uniformly distributed hashes (bucket keys,
/// xxh3 digests): SipHash would only cost time here.
#[derive(Default, Clone, Copy)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(FNV_PRIME);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Prehashed = BuildHasherDefault<PrehashedHasher>;

/// The 128-bit exact key as two u64 (24-byte map entries instead of u128's 32).
#[derive(Clone, Copy, PartialEq, Eq)]
struct ExactKey(u64, u64);

impl Hash for ExactKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0 ^ self.1.rotate_left(29));
    }
}

/// Per-row result of deduplication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DedupResult {
    /// True for the first row of each cluster.
    pub keep: Vec<bool>,
    /// Global row index of the cluster's first row.
    pub cluster: Vec<u32>,
    /// True if the normalized text equals that of an earlier row.
    pub exact: Vec<bool>,
}

/// Streaming deduplicator: feed chunks in order with [`Deduper::add`]; row indices are global.
///
/// Keeps only compact state (see the module docs for the bytes per row), never the text.
pub struct Deduper {
    params: DedupParams,
    hasher: MinHasher,
    rows_seen: u64,
    /// Exact key of every distinct normalized text -> its cluster id.
    exact: ExactIndex,
    /// Per band: bucket key -> the representatives (ordinals) in that bucket.
    bands: Vec<BandIndex>,
    /// Row index of each representative (by ordinal, i.e. in row order).
    rep_rows: Vec<u32>,
    /// Fingerprints of representative `o` are `fp_data[fp_offsets[o]..fp_offsets[o + 1]]`.
    fp_offsets: Vec<u64>,
    fp_data: Vec<u32>,
}

impl Deduper {
    /// A deduplicator with validated parameters and empty state.
    pub fn new(params: DedupParams) -> Result<Self> {
        params.validate()?;
        let hasher = MinHasher::new(params.num_perm, params.seed);
        let bands = if params.near { params.bands } else { 0 };
        Ok(Deduper {
            hasher,
            rows_seen: 0,
            exact: ExactIndex::default(),
            bands: (0..bands).map(|_| BandIndex::default()).collect(),
            rep_rows: Vec::new(),
            fp_offsets: vec![0],
            fp_data: Vec::new(),
            params,
        })
    }

    pub fn params(&self) -> &DedupParams {
        &self.params
    }

    /// Rows added so far (the global index of the next row).
    pub fn rows_seen(&self) -> u64 {
        self.rows_seen
    }

    /// Distinct normalized texts seen so far.
    pub fn distinct_texts(&self) -> usize {
        self.exact.len()
    }

    /// Clusters so far (= rows kept).
    pub fn clusters(&self) -> usize {
        if self.params.near {
            self.rep_rows.len()
        } else {
            self.exact.len()
        }
    }

    /// Approximate heap bytes held by the state (allocated capacity, hash tables included).
    pub fn state_bytes(&self) -> usize {
        self.exact.heap_bytes()
            + self.bands.iter().map(BandIndex::heap_bytes).sum::<usize>()
            + self.rep_rows.capacity() * 4
            + self.fp_offsets.capacity() * 8
            + self.fp_data.capacity() * 4
    }

    /// Sketch one row: exact key, and with `near` the band keys and fingerprints.
    fn sketch(&self, text: &str, scratch: &mut Scratch) -> RowSketch {
        normalize_into(text, &mut scratch.normalized);
        let exact = exact_hash(&scratch.normalized);
        if !self.params.near {
            return RowSketch {
                exact,
                band_keys: Vec::new(),
                fingerprints: Vec::new(),
            };
        }
        let mut fingerprints = Vec::new();
        shingle_fingerprints_with(
            &scratch.normalized,
            self.params.ngram,
            &mut fingerprints,
            &mut scratch.words,
        );
        scratch.signature.resize(self.params.num_perm, 0);
        self.hasher.signature(&fingerprints, &mut scratch.signature);
        let band_keys = scratch
            .signature
            .chunks_exact(self.params.rows())
            .map(band_key)
            .collect();
        RowSketch {
            exact,
            band_keys,
            fingerprints,
        }
    }

    /// The earliest representative verified similar to `sketch`, if any.
    fn find_near(&self, sketch: &RowSketch, candidates: &mut Vec<u32>) -> Option<u32> {
        candidates.clear();
        for (index, &key) in self.bands.iter().zip(&sketch.band_keys) {
            index.lookup(key, candidates);
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.iter().find_map(|&o| {
            let fp = &self.fp_data
                [self.fp_offsets[o as usize] as usize..self.fp_offsets[o as usize + 1] as usize];
            jaccard_at_least(fp, &sketch.fingerprints, self.params.threshold)
                .then(|| self.rep_rows[o as usize])
        })
    }

    /// Make `row` a representative: index its band keys and keep its fingerprints.
    fn insert_representative(&mut self, row: u32, sketch: &RowSketch) {
        let ordinal = self.rep_rows.len() as u32;
        self.rep_rows.push(row);
        for (index, &key) in self.bands.iter_mut().zip(&sketch.band_keys) {
            index.insert(key, ordinal);
        }
        // All bands take one entry per representative, so they fill up together.
        if self
            .bands
            .first()
            .is_some_and(|b| b.recent_len() >= RECENT_ENTRIES)
        {
            self.bands.iter_mut().for_each(BandIndex::flush);
        }
        self.fp_data.extend_from_slice(&sketch.fingerprints);
        self.fp_offsets.push(self.fp_data.len() as u64);
    }

    /// Deduplicate the next chunk of rows against everything seen so far.
    ///
    /// Row `i` of `texts` has global index `rows_seen() + i`. On error the state is unchanged.
    pub fn add<S: AsRef<str> + Sync>(&mut self, texts: &[S]) -> Result<DedupResult> {
        let start = self.rows_seen;
        if start + texts.len() as u64 > u32::MAX as u64 {
            return Err(EngineError::InvalidInput(format!(
                "too many rows: {} seen + {} new exceeds {} (cluster ids are UInt32); split the corpus into independent parts",
                start,
                texts.len(),
                u32::MAX
            )));
        }
        let mut out = DedupResult {
            keep: Vec::with_capacity(texts.len()),
            cluster: Vec::with_capacity(texts.len()),
            exact: Vec::with_capacity(texts.len()),
        };
        let mut candidates = Vec::new();
        for (block_index, block) in texts.chunks(BLOCK_ROWS).enumerate() {
            let sketches: Vec<RowSketch> = {
                let this = &*self;
                block
                    .par_iter()
                    .map_init(Scratch::default, |scratch, t| {
                        this.sketch(t.as_ref(), scratch)
                    })
                    .collect()
            };
            let block_start = start + (block_index * BLOCK_ROWS) as u64;
            for (i, sketch) in sketches.iter().enumerate() {
                let row = (block_start + i as u64) as u32;
                let key = ExactKey(sketch.exact as u64, (sketch.exact >> 64) as u64);
                if let Some(cluster) = self.exact.get(key) {
                    out.keep.push(false);
                    out.cluster.push(cluster);
                    out.exact.push(true);
                    continue;
                }
                let near = if self.params.near {
                    self.find_near(sketch, &mut candidates)
                } else {
                    None
                };
                let cluster = match near {
                    Some(rep) => rep,
                    None => {
                        if self.params.near {
                            self.insert_representative(row, sketch);
                        }
                        row
                    }
                };
                self.exact.insert(key, cluster);
                out.keep.push(near.is_none());
                out.cluster.push(cluster);
                out.exact.push(false);
            }
        }
        self.rows_seen += texts.len() as u64;
        Ok(out)
    }
}

/// One-shot deduplication of a whole column (= one [`Deduper::add`] on a fresh deduplicator).
///
/// ```
/// use mipo_engine::dedup::{dedup, DedupParams};
/// let texts = ["Hello  world", "hello world", "something else"];
/// let r = dedup(&texts, &DedupParams::default()).unwrap();
/// assert_eq!(r.keep, vec![true, false, true]);
/// assert_eq!(r.cluster, vec![0, 0, 2]);
/// assert_eq!(r.exact, vec![false, true, false]);
/// ```
pub fn dedup<S: AsRef<str> + Sync>(texts: &[S], params: &DedupParams) -> Result<DedupResult> {
    Deduper::new(params.clone())?.add(texts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn words(n: usize, offset: usize) -> String {
        (0..n)
            .map(|i| format!("w{}", i + offset))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn normalize_folds_case_width_and_whitespace() {
        assert_eq!(normalize("  Ｈello\tWORLD "), "hello world");
        assert_eq!(normalize("Straße\u{3000}\u{00A0} ﬁne"), "strasse fine");
        assert_eq!(normalize("\u{2028}\u{001C} \n"), "");
        assert_eq!(normalize(""), "");
        // Combining sequences compose under NFKC: e + U+0301 == é.
        assert_eq!(normalize("Cafe\u{301}"), normalize("CAFÉ"));
        // U+200B (zero width space) is not whitespace.
        assert_eq!(normalize("a\u{200B}b"), "a\u{200B}b");
    }

    #[test]
    fn whitespace_table_matches_matcher() {
        for c in WHITESPACE {
            assert!(is_whitespace(*c), "{c:?}");
        }
        let count = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|c| is_whitespace(*c))
            .count();
        assert_eq!(count, WHITESPACE.len());
    }

    #[test]
    fn xxh64_known_values() {
        // Published XXH64 test vectors (seed 0); the Python reference checks the same.
        assert_eq!(shingle_hash(b""), 0xEF46DB3751D8E999);
        assert_eq!(shingle_hash(b"a"), 0xD24EC4F1A98C6E5B);
        assert_eq!(shingle_hash(b"abc"), 0x44BC2CF5AD770999);
    }

    #[test]
    fn shingles_of_short_and_long_texts() {
        let fp = |b: &[u8]| (shingle_hash(b) >> 32) as u32;
        let mut out = Vec::new();
        shingle_fingerprints("", 5, &mut out);
        assert_eq!(out, vec![fp(b"")]);
        shingle_fingerprints("a b", 5, &mut out);
        assert_eq!(out, vec![fp(b"a b")]);
        shingle_fingerprints("a b c", 2, &mut out);
        let mut want = vec![fp(b"a b"), fp(b"b c")];
        want.sort_unstable();
        assert_eq!(out, want);
        shingle_fingerprints("x x x x", 2, &mut out);
        assert_eq!(out, vec![fp(b"x x")]);
    }

    #[test]
    fn vectorized_signature_equals_scalar_formula() {
        let h = MinHasher::new(112, 9);
        let xs: Vec<u32> = (0..500u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        let mut sig = vec![0; 112];
        h.signature(&xs, &mut sig);
        for (k, (&a, &b)) in h.a.iter().zip(&h.b).enumerate() {
            let want = xs
                .iter()
                .map(|&x| (a.wrapping_mul(x as u64).wrapping_add(b) >> 32) as u32)
                .min()
                .unwrap();
            assert_eq!(sig[k], want, "hash {k}");
        }
    }

    #[test]
    fn params_are_validated() {
        let ok = DedupParams::default();
        assert!(ok.validate().is_ok());
        for bad in [
            DedupParams {
                ngram: 0,
                ..ok.clone()
            },
            DedupParams {
                num_perm: 0,
                ..ok.clone()
            },
            DedupParams {
                bands: 0,
                ..ok.clone()
            },
            DedupParams {
                bands: 13,
                ..ok.clone()
            },
            DedupParams {
                num_perm: MAX_NUM_PERM + 1,
                bands: 1,
                ..ok.clone()
            },
            DedupParams {
                threshold: 0.0,
                ..ok.clone()
            },
            DedupParams {
                threshold: 1.5,
                ..ok.clone()
            },
            DedupParams {
                threshold: f64::NAN,
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(
                    Deduper::new(bad.clone()),
                    Err(EngineError::InvalidParameter(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn exact_and_near_duplicates() {
        let base = words(200, 0);
        let mut near = base.split(' ').collect::<Vec<_>>();
        near[100] = "changed";
        let near = near.join(" ");
        let texts = vec![
            base.clone(),
            words(200, 1000),
            base.to_uppercase(),
            near.clone(),
            near.clone(),
            String::new(),
            "   ".to_string(),
        ];
        let r = dedup(&texts, &DedupParams::default()).unwrap();
        assert_eq!(r.keep, vec![true, true, false, false, false, true, false]);
        assert_eq!(r.cluster, vec![0, 1, 0, 0, 0, 5, 5]);
        assert_eq!(r.exact, vec![false, false, true, false, true, false, true]);

        let exact_only = DedupParams {
            near: false,
            ..DedupParams::default()
        };
        let r = dedup(&texts, &exact_only).unwrap();
        assert_eq!(r.keep, vec![true, true, false, true, false, true, false]);
        assert_eq!(r.cluster, vec![0, 1, 0, 3, 3, 5, 5]);
    }

    #[test]
    fn dissimilar_band_collisions_are_rejected_by_verification() {
        // 1 row per band: many buckets collide for half-overlapping texts, none verify at 0.8.
        let params = DedupParams {
            num_perm: 16,
            bands: 16,
            ..DedupParams::default()
        };
        let a = words(40, 0);
        let b = format!("{} {}", words(20, 0), words(20, 500));
        let mut d = Deduper::new(params.clone()).unwrap();
        d.add(std::slice::from_ref(&a)).unwrap();
        let sketch = d.sketch(&b, &mut Scratch::default());
        let mut candidates = Vec::new();
        assert_eq!(d.find_near(&sketch, &mut candidates), None);
        assert_eq!(
            candidates,
            vec![0],
            "the pair must be an LSH candidate for this test"
        );
        let r = dedup(&[a, b], &params).unwrap();
        assert_eq!(r.keep, vec![true, true]);
    }

    #[test]
    fn streaming_equals_one_shot_and_is_thread_independent() {
        let texts: Vec<String> = (0..3000)
            .map(|i| {
                let base = words(30 + i % 7, (i % 400) * 3);
                if i % 5 == 0 {
                    base.to_uppercase()
                } else {
                    base
                }
            })
            .collect();
        let params = DedupParams::default();
        let whole = dedup(&texts, &params).unwrap();
        assert!(whole.keep.iter().filter(|k| !**k).count() > 1000);
        let mut d = Deduper::new(params.clone()).unwrap();
        let mut chunked = DedupResult::default();
        for chunk in texts.chunks(777) {
            let r = d.add(chunk).unwrap();
            chunked.keep.extend(r.keep);
            chunked.cluster.extend(r.cluster);
            chunked.exact.extend(r.exact);
        }
        assert_eq!(chunked, whole);
        assert_eq!(d.rows_seen(), 3000);
        assert!(d.state_bytes() > 0);
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| dedup(&texts, &params).unwrap());
        assert_eq!(one_thread, whole);
        // Cluster ids point at kept rows that come first.
        for (i, &c) in whole.cluster.iter().enumerate() {
            assert!(c as usize <= i && whole.keep[c as usize]);
            assert_eq!(whole.keep[i], c as usize == i);
        }
    }

    /// The clustering rule over plain hash maps (every candidate of every band, the layout
    /// before the sorted runs), for comparison with the [`Deduper`]'s indexes.
    fn plain_maps_dedup(texts: &[String], params: &DedupParams) -> DedupResult {
        let sketcher = Deduper::new(params.clone()).unwrap();
        let mut exact: HashMap<u128, u32> = HashMap::new();
        let mut buckets: HashMap<(usize, u32), Vec<usize>> = HashMap::new();
        let mut reps: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut out = DedupResult::default();
        for (row, text) in texts.iter().enumerate() {
            let sk = sketcher.sketch(text, &mut Scratch::default());
            if let Some(&c) = exact.get(&sk.exact) {
                out.keep.push(false);
                out.cluster.push(c);
                out.exact.push(true);
                continue;
            }
            let mut candidates: Vec<usize> = (0..params.bands)
                .flat_map(|b| {
                    buckets
                        .get(&(b, sk.band_keys[b]))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            candidates.sort_unstable();
            candidates.dedup();
            let near = candidates
                .iter()
                .find(|&&o| jaccard_at_least(&reps[o].1, &sk.fingerprints, params.threshold))
                .map(|&o| reps[o].0);
            let cluster = near.unwrap_or(row as u32);
            if near.is_none() {
                for (b, &key) in sk.band_keys.iter().enumerate() {
                    buckets.entry((b, key)).or_default().push(reps.len());
                }
                reps.push((row as u32, sk.fingerprints.clone()));
            }
            exact.insert(sk.exact, cluster);
            out.keep.push(near.is_none());
            out.cluster.push(cluster);
            out.exact.push(false);
        }
        out
    }

    #[test]
    fn indexes_equal_plain_hash_maps_across_many_merges() {
        // Few words, near copies of earlier rows and 2-row bands: long buckets, many
        // candidates per row; thousands of rows go through many merges of the indexes (their
        // recent tables hold only 64 entries under `cfg(test)`).
        let mut rng = Rng::new(5);
        let mut texts: Vec<String> = Vec::new();
        for _ in 0..4000 {
            let pick = rng.next_u64() % 10;
            let text = if pick < 3 && !texts.is_empty() {
                let earlier = &texts[(rng.next_u64() % texts.len() as u64) as usize];
                let mut w: Vec<String> = earlier.split(' ').map(str::to_string).collect();
                let at = (rng.next_u64() % w.len() as u64) as usize;
                w[at] = format!("v{}", rng.next_u64() % 50);
                if pick == 0 {
                    earlier.to_uppercase()
                } else {
                    w.join(" ")
                }
            } else {
                let n = 50 + rng.next_u64() % 40;
                (0..n)
                    .map(|_| format!("v{}", rng.next_u64() % 40))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            texts.push(text);
        }
        for params in [
            DedupParams::default(),
            DedupParams {
                num_perm: 32,
                bands: 16,
                ngram: 2,
                threshold: 0.6,
                ..DedupParams::default()
            },
        ] {
            let want = plain_maps_dedup(&texts, &params);
            let removed = want.keep.iter().filter(|k| !**k).count();
            let near = (0..texts.len())
                .filter(|&i| !want.keep[i] && !want.exact[i])
                .count();
            assert!(
                removed > 800 && near > 400,
                "{removed} removed, {near} near"
            );
            assert!(want.keep.iter().filter(|k| **k).count() > 10 * RECENT_ENTRIES);
            let mut d = Deduper::new(params.clone()).unwrap();
            let mut got = DedupResult::default();
            for chunk in texts.chunks(333) {
                let r = d.add(chunk).unwrap();
                got.keep.extend(r.keep);
                got.cluster.extend(r.cluster);
                got.exact.extend(r.exact);
            }
            assert_eq!(got, want, "{params:?}");
            assert_eq!(
                d.distinct_texts(),
                want.exact.iter().filter(|e| !**e).count()
            );
        }
    }

    #[test]
    fn empty_input_gives_empty_result() {
        let r = dedup::<&str>(&[], &DedupParams::default()).unwrap();
        assert_eq!(r, DedupResult::default());
    }

    #[test]
    fn signature_is_seeded() {
        let mut s = Vec::new();
        shingle_fingerprints("one two three four five six", 2, &mut s);
        let (mut a, mut b, mut c) = (vec![0; 8], vec![0; 8], vec![0; 8]);
        MinHasher::new(8, 1).signature(&s, &mut a);
        MinHasher::new(8, 1).signature(&s, &mut b);
        MinHasher::new(8, 2).signature(&s, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
