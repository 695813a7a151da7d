//! Seeded derangements: who gets whose response as a negative.
//!
//! * [`derangement`]: an exactly uniform random derangement (no fixed point) of `0..n`, by the
//!   algorithm of Martínez, Panholzer & Prodinger, "Generating random derangements" (ANALCO 2008).
//! * [`constrained_derangement`]: a random permutation in which row `i` is never paired with
//!   itself, with a row of its own group (user) or with a row of its own cluster (near duplicate).
//!   Feasibility is decided exactly (Hall's condition, see [`constrained_derangement`]); the
//!   sample is the state of a symmetric Metropolis chain.
//!
//! Both are sequential and draw from [`crate::rng::Rng`] only, so the output depends on
//! `(inputs, seed)` alone: never on the thread count, the platform or the crate version.

use std::collections::HashMap;

use crate::error::{EngineError, Result};
use crate::rng::Rng;

/// Default number of Metropolis sweeps of [`constrained_derangement`].
pub const DEFAULT_SWEEPS: u32 = 10;
/// A sweep is `max(n, MIN_SWEEP_STEPS)` steps: tiny inputs mix slower per row than large ones
/// (measured: 7 rows, two constraints, 70 steps is detectably non-uniform; 210 is not), and
/// the floor costs microseconds.
pub const MIN_SWEEP_STEPS: u64 = 256;
/// Upper bound on `sweeps`: far beyond what mixing needs, low enough that a typo cannot make a
/// call run for days.
pub const MAX_SWEEPS: u32 = 10_000;

/// Independent RNG streams of one seed (one per purpose, so that changing one phase never
/// shifts the random numbers another phase sees).
const STREAM_PICK: u64 = 1;
const STREAM_CLOSE: u64 = 2;
const STREAM_REPAIR: u64 = 3;
const STREAM_CHAIN: u64 = 4;

/// "No row" marker in the assignment arrays (row ids are < n <= u32::MAX).
const NONE: u32 = u32::MAX;

/// Number of derangements D(u) for u = 0..=20 (D(21) no longer fits in a u64).
const DERANGEMENTS: [u64; 21] = {
    let mut d = [0u64; 21];
    d[0] = 1;
    let mut u = 2;
    while u <= 20 {
        d[u] = (u as u64 - 1) * (d[u - 1] + d[u - 2]);
        u += 1;
    }
    d
};

fn too_few_rows(n: usize) -> EngineError {
    EngineError::Derangement(format!(
        "cannot pair rows with different rows: there {} only {n} row{}, and a row cannot be its \
         own negative; add rows (at least 2 are needed) or use the context-drop strategy \
         (--negatives context-drop), which needs no other row",
        if n == 1 { "is" } else { "are" },
        if n == 1 { "" } else { "s" },
    ))
}

fn check_n(n: usize) -> Result<()> {
    if n as u64 > u32::MAX as u64 {
        return Err(EngineError::InvalidInput(format!(
            "{n} rows are more than the engine supports ({}, row ids are UInt32); split the \
             corpus into shards and derange each shard",
            u32::MAX
        )));
    }
    if n < 2 {
        return Err(too_few_rows(n));
    }
    Ok(())
}

/// Should the algorithm close a cycle when `u` rows are still unmarked? True with probability
/// `(u - 1) * D(u - 2) / D(u)`.
///
/// Exact (integer comparison) for `u <= 20`. Above, we use probability `1/u`: since
/// `D(u) / u! = 1/e - R_u` with `|R_u| <= 1/(u + 1)!`, the exact probability is
/// `(1/u) * (1 + eps)` with `|eps| < 1e-17` for `u > 20` — far below anything a sample of any
/// feasible size could detect, and it saves a division per element.
#[inline]
fn closes_cycle(rng: &mut Rng, u: usize) -> bool {
    if u <= 20 {
        let (d_u, d_u2) = (DERANGEMENTS[u], DERANGEMENTS[u - 2]);
        rng.below(d_u) < (u as u64 - 1) * d_u2
    } else {
        rng.below(u as u64) == 0
    }
}

/// A uniformly random derangement of `0..n`: `sigma[i] != i` for every `i`, and each of the
/// `!n` derangements is equally likely (see [`closes_cycle`] for the one approximation,
/// < 1e-17 relative, in the cycle-closing probability for more than 20 open rows).
///
/// Martínez–Panholzer–Prodinger: walk `i` from `n - 1` down; swap each unmarked `i` with a
/// uniformly random unmarked `j < i`, and with the probability that a uniform derangement of
/// the `u` open rows has `i` in a 2-cycle, mark `j` (the cycle is closed). Expected random
/// draws: `2n + O(log² n)`; memory: the output plus an `n`-bit mark set.
///
/// Errors: [`EngineError::Derangement`] for `n < 2`, [`EngineError::InvalidInput`] for
/// `n > u32::MAX`.
///
/// ```
/// let sigma = mipo_engine::derange::derangement(5, 42).unwrap();
/// assert!(sigma.iter().enumerate().all(|(i, &s)| s as usize != i));
/// ```
pub fn derangement(n: usize, seed: u64) -> Result<Vec<u32>> {
    check_n(n)?;
    let mut sigma: Vec<u32> = (0..n as u32).collect();
    // Marks are few (one per cycle, ~ln n), but the check is on the hot path: a bitset keeps it
    // one load from a 1.25 MB (for 10M rows) array that stays in cache, without a branch on
    // a search.
    let mut marks = vec![0u64; n.div_ceil(64)];
    let marked = |marks: &[u64], k: usize| (marks[k >> 6] >> (k & 63)) & 1 != 0;
    let mut pick = Rng::stream(seed, STREAM_PICK);
    let mut close = Rng::stream(seed, STREAM_CLOSE);
    // Each step swaps with a random row, a cache miss on large inputs. The row a future step
    // will pick is predictable: step i draws `pick.below(i)` once, except for the rare marked
    // `i` (no draw) or marked `j` (another draw). So a clone of `pick`, `SPECULATE` draws
    // ahead, predicts the rows of the next steps and we prefetch them; after a skip or a
    // redraw it is re-synchronised. Only prefetches depend on the prediction, never the result.
    const SPECULATE: usize = 24;
    let resync = |pick: &Rng, sigma: &[u32], next_i: usize| {
        let mut ahead = pick.clone();
        for k in 0..SPECULATE.min(next_i) {
            prefetch(sigma, ahead.below((next_i - k) as u64) as usize);
        }
        ahead
    };
    // Invariant: `u` = number of unmarked rows in 0..=i, so i >= 1 whenever u >= 2.
    let mut i = n - 1;
    let mut u = n;
    // `ahead`'s next draw is the one of step `i - SPECULATE`.
    let mut ahead = resync(&pick, &sigma, i);
    while u >= 2 {
        if !marked(&marks, i) {
            let mut j = pick.below(i as u64) as usize;
            if i > SPECULATE {
                prefetch(&sigma, ahead.below((i - SPECULATE) as u64) as usize);
            }
            if marked(&marks, j) {
                while marked(&marks, j) {
                    j = pick.below(i as u64) as usize;
                }
                ahead = resync(&pick, &sigma, i - 1);
            }
            sigma.swap(i, j);
            if closes_cycle(&mut close, u) {
                marks[j >> 6] |= 1 << (j & 63);
                u -= 1;
            }
            u -= 1;
        } else {
            ahead = resync(&pick, &sigma, i - 1);
        }
        i -= 1;
    }
    Ok(sigma)
}

/// Dense codes `0..k` of arbitrary u32 ids, and the size of each class.
fn dense_codes(ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let n = ids.len();
    let max = ids.iter().copied().max().unwrap_or(0) as usize;
    let mut codes = Vec::with_capacity(n);
    let mut sizes: Vec<u32> = Vec::new();
    if max <= 4 * n + 1024 {
        // Small ids (what the Python facade sends: dense ranks): a lookup table.
        let mut table = vec![NONE; max + 1];
        for &id in ids {
            let slot = &mut table[id as usize];
            if *slot == NONE {
                *slot = sizes.len() as u32;
                sizes.push(0);
            }
            sizes[*slot as usize] += 1;
            codes.push(*slot);
        }
    } else {
        let mut table: HashMap<u32, u32> = HashMap::new();
        for &id in ids {
            let code = *table.entry(id).or_insert_with(|| {
                sizes.push(0);
                sizes.len() as u32 - 1
            });
            sizes[code as usize] += 1;
            codes.push(code);
        }
    }
    (codes, sizes)
}

/// Rows `a` and `b` may be paired iff they differ in group and in cluster. Keys pack
/// `group << 32 | cluster`; a missing constraint uses the row index, so "differs" then means
/// "is another row".
#[inline(always)]
fn compatible(keys: &[u64], a: u32, b: u32) -> bool {
    compatible_keys(keys[a as usize], keys[b as usize])
}

/// A random permutation `sigma` of `0..n` with, for every row `i`: `sigma[i] != i`,
/// `groups[sigma[i]] != groups[i]` (when `groups` is given) and
/// `clusters[sigma[i]] != clusters[i]` (when `clusters` is given). Ids are arbitrary u32.
///
/// **Existence** (decided exactly, before any work): a valid permutation exists iff `n >= 2`
/// and no group and no cluster holds more than `n / 2` rows. Proof sketch (Hall's theorem on
/// the bipartite graph "row `i` may take row `j`"): the condition fails iff some set `S` of rows
/// and the set `T` of rows incompatible with every row of `S` have `|S| + |T| > n`. See a row as
/// an edge between its group node and its cluster node; every edge of `S` touches every edge of
/// `T`, and in a bipartite multigraph that forces `S` or `T` into a star around one class
/// (`|S| + |T| <= 2 * |class|`), a parallel class `g ∩ c` (`|S| + |T| <= |g| + |c|`), or two
/// disjoint sets of cells of a 2x2 grid (`|S| + |T| <= n`); the first two are `<= n` under the
/// bound. Otherwise [`EngineError::Derangement`] names the size of the largest group or
/// cluster, `n` and the fix.
///
/// **Distribution**: the state of a Metropolis chain after `sweeps * max(n, 256)` steps from a
/// valid start. The start: rows sorted by the class of the tighter constraint and shifted by
/// its largest class size (valid for that constraint); rows that then break the other
/// constraint are re-assigned by seeded random 2-swaps and, if those fail, by exact augmenting
/// paths (which always exist under Hall's condition). Each step proposes, with probability 1/2
/// each, swapping `sigma[i]`, `sigma[j]` (`i`, `j` uniform) or rotating `sigma[i]`, `sigma[j]`,
/// `sigma[k]` (`i`, `j`, `k` uniform), and accepts iff the result is valid. The proposals are
/// symmetric and include null moves, so the chain's stationary distribution is uniform over the
/// valid permutations reachable from the start by these moves. Transpositions alone can leave
/// the valid set disconnected (by parity); with the 3-cycles it was connected in every instance
/// we enumerated exhaustively (151 random instances with n <= 7; `tests/test_derange.py`
/// re-checks n <= 6), which is evidence, not a proof. With finite `sweeps` the sample is only
/// approximately uniform: at the default 10 sweeps, chi-square tests over all valid
/// permutations of small instances cannot tell it from uniform (see the tests). With neither
/// constraint this is [`derangement`] (exactly uniform).
///
/// Deterministic given the inputs and `seed`; the result is verified in O(n) before it is
/// returned.
///
/// ```
/// let groups = [0, 0, 1, 1, 2, 2];
/// let sigma = mipo_engine::derange::constrained_derangement(6, Some(&groups), None, 7, 10).unwrap();
/// assert!((0..6).all(|i| groups[sigma[i] as usize] != groups[i]));
/// ```
pub fn constrained_derangement(
    n: usize,
    groups: Option<&[u32]>,
    clusters: Option<&[u32]>,
    seed: u64,
    sweeps: u32,
) -> Result<Vec<u32>> {
    for (name, col) in [("groups", groups), ("clusters", clusters)] {
        if let Some(col) = col {
            if col.len() != n {
                return Err(EngineError::InvalidInput(format!(
                    "{name} has {} rows but n is {n}; pass one {name} id per row",
                    col.len()
                )));
            }
        }
    }
    if sweeps > MAX_SWEEPS {
        return Err(EngineError::InvalidParameter(format!(
            "sweeps must be at most {MAX_SWEEPS}, got {sweeps}; the default {DEFAULT_SWEEPS} \
             already mixes well"
        )));
    }
    check_n(n)?;

    let group_codes = groups.map(dense_codes);
    let cluster_codes = clusters.map(dense_codes);
    let largest = |c: &Option<(Vec<u32>, Vec<u32>)>| {
        c.as_ref().map_or(1, |(_, sizes)| {
            sizes.iter().copied().max().unwrap_or(0) as usize
        })
    };
    let (max_group, max_cluster) = (largest(&group_codes), largest(&cluster_codes));
    if 2 * max_group > n {
        return Err(EngineError::Derangement(format!(
            "one group (user) holds {max_group} of the {n} rows, more than half, so some of its \
             rows would have to take a negative from the same user; drop the user constraint \
             (--set user_constraint=false) or add rows from other users"
        )));
    }
    if 2 * max_cluster > n {
        return Err(EngineError::Derangement(format!(
            "one near-duplicate cluster holds {max_cluster} of the {n} rows, more than half, so \
             some of its rows would have to take a near copy of themselves as negative; \
             deduplicate the corpus first (keep one row per cluster) or drop the near-duplicate \
             constraint"
        )));
    }

    let keys: Vec<u64> = (0..n)
        .map(|i| {
            let g = groups.map_or(i as u32, |g| g[i]) as u64;
            let c = clusters.map_or(i as u32, |c| c[i]) as u64;
            (g << 32) | c
        })
        .collect();

    // Start: shift along the tighter constraint (valid for it), then repair the other.
    let (codes, sizes) = match (&group_codes, &cluster_codes) {
        (Some(g), Some(c)) => {
            if max_group >= max_cluster {
                g
            } else {
                c
            }
        }
        (Some(g), None) => g,
        (None, Some(c)) => c,
        (None, None) => return derangement(n, seed),
    };
    let shift = sizes.iter().copied().max().unwrap_or(1) as usize;
    let mut sigma = block_shift(codes, sizes, shift);
    repair(&mut sigma, &keys, seed)?;
    let steps = sweeps as u64 * (n as u64).max(MIN_SWEEP_STEPS);
    metropolis(&mut sigma, &keys, seed, steps);
    verify(&sigma, &keys)?;
    Ok(sigma)
}

/// Rows sorted by class (counting sort, classes contiguous), each mapped to the row `shift`
/// places later (cyclically). With `shift` = the largest class size `<= n / 2`, a row never
/// lands in its own class: it leaves its block going forward and cannot wrap back into it.
fn block_shift(codes: &[u32], sizes: &[u32], shift: usize) -> Vec<u32> {
    let n = codes.len();
    let mut start = Vec::with_capacity(sizes.len());
    let mut acc = 0usize;
    for &s in sizes {
        start.push(acc);
        acc += s as usize;
    }
    let mut order = vec![0u32; n];
    for (row, &c) in codes.iter().enumerate() {
        let slot = &mut start[c as usize];
        order[*slot] = row as u32;
        *slot += 1;
    }
    let mut sigma = vec![0u32; n];
    for t in 0..n {
        sigma[order[t] as usize] = order[(t + shift) % n];
    }
    sigma
}

/// Re-assign every row whose target is incompatible, keeping all other rows valid.
///
/// Bad rows are unassigned (a partial matching of the compatibility graph). Each is re-matched
/// by a few random tries (take a free target directly, or take row `j`'s target and give `j` a
/// free one), else by a breadth-first augmenting path. Under Hall's condition a perfect
/// matching exists, so every free row has an augmenting path (it starts the path of the
/// symmetric difference with a perfect matching): the search cannot fail, and each success
/// assigns one more row, so this ends.
fn repair(sigma: &mut [u32], keys: &[u64], seed: u64) -> Result<()> {
    let n = sigma.len();
    let bad: Vec<u32> = (0..n as u32)
        .filter(|&i| !compatible(keys, i, sigma[i as usize]))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let mut inv = vec![NONE; n];
    for (i, &t) in sigma.iter().enumerate() {
        inv[t as usize] = i as u32;
    }
    // Free targets, deleted lazily (an entry whose `inv` is set is stale).
    let mut free: Vec<u32> = Vec::with_capacity(bad.len());
    for &i in &bad {
        let t = sigma[i as usize];
        sigma[i as usize] = NONE;
        inv[t as usize] = NONE;
        free.push(t);
    }
    let mut rng = Rng::stream(seed, STREAM_REPAIR);
    let mut search: Option<PathSearch> = None;
    const QUICK_TRIES: usize = 64;
    for &i in &bad {
        let mut done = false;
        for _ in 0..QUICK_TRIES {
            // A free target (pruning stale entries; one is always free while `i` is).
            let f = loop {
                let k = rng.below(free.len() as u64) as usize;
                let f = free[k];
                if inv[f as usize] == NONE {
                    break f;
                }
                free.swap_remove(k);
            };
            if compatible(keys, i, f) {
                sigma[i as usize] = f;
                inv[f as usize] = i;
                done = true;
                break;
            }
            let j = rng.below(n as u64) as u32;
            let t = sigma[j as usize];
            if t != NONE && compatible(keys, i, t) && compatible(keys, j, f) {
                sigma[i as usize] = t;
                inv[t as usize] = i;
                sigma[j as usize] = f;
                inv[f as usize] = j;
                done = true;
                break;
            }
        }
        if !done {
            search
                .get_or_insert_with(|| PathSearch::new(n))
                .augment(i, sigma, &mut inv, keys)?;
        }
    }
    Ok(())
}

/// Breadth-first search for an augmenting path in the (dense, implicit) compatibility graph.
struct PathSearch {
    /// Row that reached target `r` in the search tree.
    parent: Vec<u32>,
    /// Targets not yet reached, scanned per row (reached ones are swap-removed, so a row's
    /// scan costs the reached targets plus the targets it is incompatible with).
    unvisited: Vec<u32>,
    queue: Vec<u32>,
}

impl PathSearch {
    fn new(n: usize) -> Self {
        PathSearch {
            parent: vec![NONE; n],
            unvisited: Vec::with_capacity(n),
            queue: Vec::new(),
        }
    }

    fn augment(
        &mut self,
        root: u32,
        sigma: &mut [u32],
        inv: &mut [u32],
        keys: &[u64],
    ) -> Result<()> {
        let n = sigma.len();
        self.unvisited.clear();
        self.unvisited.extend(0..n as u32);
        self.queue.clear();
        self.queue.push(root);
        let mut head = 0;
        while head < self.queue.len() {
            let u = self.queue[head];
            head += 1;
            let mut k = 0;
            while k < self.unvisited.len() {
                let r = self.unvisited[k];
                if !compatible(keys, u, r) {
                    k += 1;
                    continue;
                }
                self.unvisited.swap_remove(k);
                self.parent[r as usize] = u;
                let owner = inv[r as usize];
                if owner == NONE {
                    // Flip the path: every row on it takes the target found after it.
                    let mut r = r;
                    loop {
                        let row = self.parent[r as usize];
                        let previous = sigma[row as usize];
                        sigma[row as usize] = r;
                        inv[r as usize] = row;
                        if row == root {
                            return Ok(());
                        }
                        r = previous;
                    }
                }
                self.queue.push(owner);
            }
        }
        Err(EngineError::Derangement(format!(
            "internal error: no valid negative found for row {root} although the group and \
             cluster sizes allow one; please report this with the input; meanwhile drop a \
             constraint (--set user_constraint=false) or deduplicate the corpus"
        )))
    }
}

/// Hint the CPU to fetch `slice[index]` into cache (a no-op off x86_64).
#[inline(always)]
fn prefetch<T>(slice: &[T], index: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and has no visible effect, whatever
    // the address (and `index` is in bounds here anyway).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(slice.as_ptr().wrapping_add(index) as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slice, index);
}

/// What the chain reads per row, in one 16-byte slot: the row's key and the key of its
/// current target. A proposal then touches only the slots of its 2-3 rows (independent loads,
/// no `keys[sigma[i]]` indirection).
#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    target_key: u64,
}

#[derive(Clone, Copy, Default)]
struct Proposal {
    three: bool,
    i: u32,
    j: u32,
    k: u32,
}

/// Proposals in flight: they depend only on the RNG, never on the state, so they are drawn
/// this many steps ahead and their rows prefetched. The random-number sequence and the result
/// are exactly those of drawing each proposal when it is used.
const LOOKAHEAD: usize = 32;

fn draw_proposal(rng: &mut Rng, n: u64) -> Proposal {
    let three = rng.next_u64() & 1 == 1;
    let i = rng.below(n) as u32;
    let j = rng.below(n) as u32;
    let k = if three { rng.below(n) as u32 } else { 0 };
    Proposal { three, i, j, k }
}

#[inline(always)]
fn compatible_keys(a: u64, b: u64) -> bool {
    let x = a ^ b;
    (x >> 32) != 0 && (x as u32) != 0
}

/// `steps` Metropolis steps with symmetric proposals (a transposition or a 3-cycle of
/// targets), accepted iff every touched row stays valid.
fn metropolis(sigma: &mut [u32], keys: &[u64], seed: u64, steps: u64) {
    if steps == 0 {
        return;
    }
    let n = sigma.len() as u64;
    let mut slots: Vec<Slot> = (0..sigma.len())
        .map(|i| Slot {
            key: keys[i],
            target_key: keys[sigma[i] as usize],
        })
        .collect();
    let mut rng = Rng::stream(seed, STREAM_CHAIN);
    let fetch = |slots: &[Slot], sigma: &[u32], p: &Proposal| {
        for r in [p.i, p.j].into_iter().chain(p.three.then_some(p.k)) {
            prefetch(slots, r as usize);
            prefetch(sigma, r as usize);
        }
    };
    let mut ring = [Proposal::default(); LOOKAHEAD];
    for p in ring.iter_mut() {
        *p = draw_proposal(&mut rng, n);
        fetch(&slots, sigma, p);
    }
    for step in 0..steps {
        let slot = step as usize % LOOKAHEAD;
        let p = ring[slot];
        ring[slot] = draw_proposal(&mut rng, n);
        fetch(&slots, sigma, &ring[slot]);
        let (i, j, k) = (p.i as usize, p.j as usize, p.k as usize);
        if p.three {
            if i == j || j == k || i == k {
                continue;
            }
            // Rotate: i takes j's target, j takes k's, k takes i's. The inverse is the triple
            // (i, k, j), proposed with the same probability.
            let (a, b, c) = (slots[i], slots[j], slots[k]);
            if compatible_keys(a.key, b.target_key)
                && compatible_keys(b.key, c.target_key)
                && compatible_keys(c.key, a.target_key)
            {
                slots[i].target_key = b.target_key;
                slots[j].target_key = c.target_key;
                slots[k].target_key = a.target_key;
                let si = sigma[i];
                sigma[i] = sigma[j];
                sigma[j] = sigma[k];
                sigma[k] = si;
            }
        } else {
            if i == j {
                continue;
            }
            let (a, b) = (slots[i], slots[j]);
            if compatible_keys(a.key, b.target_key) && compatible_keys(b.key, a.target_key) {
                slots[i].target_key = b.target_key;
                slots[j].target_key = a.target_key;
                sigma.swap(i, j);
            }
        }
    }
}

/// O(n) check that `sigma` is a permutation of valid pairs (never trust, always verify).
fn verify(sigma: &[u32], keys: &[u64]) -> Result<()> {
    let n = sigma.len();
    let mut seen = vec![false; n];
    for (i, &t) in sigma.iter().enumerate() {
        let ok = (t as usize) < n
            && !std::mem::replace(&mut seen[t as usize], true)
            && compatible(keys, i as u32, t);
        if !ok {
            return Err(EngineError::Derangement(format!(
                "internal error: the constrained derangement is invalid at row {i}; please \
                 report this with the input; meanwhile drop a constraint \
                 (--set user_constraint=false)"
            )));
        }
    }
    Ok(())
}

/// Stratum id of a row that takes no part in [`stratified_derangement`] (gets no partner and is
/// nobody's partner).
pub const NO_STRATUM: u32 = u32::MAX;

/// Strata up to this size are sampled exactly uniformly by rejection (uniform permutations
/// until one is valid): a feasible stratum of 10 rows accepts at worst about 1 in 10^3 to 10^4
/// draws, microseconds. Larger ones (rare: one question asked by many users) use the chain of
/// [`constrained_derangement`].
const REJECTION_MAX_ROWS: usize = 10;
/// Draws before a small stratum falls back to the chain (never reached on feasible inputs in
/// the tests; it bounds the time of a pathological one).
const REJECTION_MAX_TRIES: u32 = 1 << 16;
const STREAM_STRATUM: u64 = 5 << 32;

/// Within every stratum (rows sharing `strata[i]`), a random derangement that also keeps each
/// row off its own group and cluster: `sigma[i]` is a row of the same stratum with
/// `groups[sigma[i]] != groups[i]` and `clusters[sigma[i]] != clusters[i]`, and within a
/// stratum `sigma` is a bijection of the matched rows (every matched row serves exactly once as
/// a partner). mipo uses it for `context-swap` negatives: strata are question clusters, groups
/// users, so row i's rejected answer is another user's answer to the same question.
///
/// Rows with `strata[i] == NO_STRATUM` take no part. A stratum where the constraints cannot be
/// met for every row (fewer than 2 rows, or a group or cluster holding more than half of them:
/// Hall's condition, as in [`constrained_derangement`]) is matched on its largest feasible part:
/// random rows of the offending class are left out until the rest is feasible, which leaves
/// exactly `2m - s` rows of a class of `m` out of `s` unmatched. Unmatched rows get
/// [`NO_STRATUM`] in the output (mipo generates a fresh negative for them); with `strict` they
/// are an [`EngineError::Derangement`] instead, naming the stratum.
///
/// Distribution: per stratum, exactly uniform over the valid bijections for strata of at most
/// 10 matched rows (rejection sampling), else the Metropolis chain of
/// [`constrained_derangement`] (`sweeps`). Each stratum draws from its own RNG stream, keyed by
/// `seed` and the stratum's id, so the result depends on the inputs and `seed` only: strata run
/// in parallel (rayon) and the output never depends on the thread count. The result is verified
/// in O(n) before it is returned.
///
/// ```
/// use mipo_engine::derange::{stratified_derangement, NO_STRATUM};
/// let strata = [0, 0, 0, 0, 1, 1, NO_STRATUM];
/// let users = [0, 1, 2, 3, 4, 4, 5];
/// let sigma = stratified_derangement(&strata, Some(&users), None, 3, 10, false).unwrap();
/// assert!((0..4).all(|i| sigma[i] < 4 && users[sigma[i] as usize] != users[i]));
/// assert_eq!(&sigma[4..], &[NO_STRATUM; 3]); // one user holds stratum 1; row 6 has none
/// ```
pub fn stratified_derangement(
    strata: &[u32],
    groups: Option<&[u32]>,
    clusters: Option<&[u32]>,
    seed: u64,
    sweeps: u32,
    strict: bool,
) -> Result<Vec<u32>> {
    use rayon::prelude::*;

    let n = strata.len();
    for (name, col) in [("groups", groups), ("clusters", clusters)] {
        if let Some(col) = col {
            if col.len() != n {
                return Err(EngineError::InvalidInput(format!(
                    "{name} has {} rows but strata has {n}; pass one {name} id per row",
                    col.len()
                )));
            }
        }
    }
    if sweeps > MAX_SWEEPS {
        return Err(EngineError::InvalidParameter(format!(
            "sweeps must be at most {MAX_SWEEPS}, got {sweeps}; the default {DEFAULT_SWEEPS} \
             already mixes well"
        )));
    }
    if n > NO_STRATUM as usize {
        return Err(EngineError::InvalidInput(format!(
            "{n} rows exceed the engine's limit of {} rows per call",
            NO_STRATUM
        )));
    }
    // Rows grouped by stratum (sorted by stratum id, then row: deterministic).
    let mut order: Vec<(u32, u32)> = (0..n as u32)
        .filter(|&i| strata[i as usize] != NO_STRATUM)
        .map(|i| (strata[i as usize], i))
        .collect();
    order.par_sort_unstable();
    let mut bounds: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for t in 1..=order.len() {
        if t == order.len() || order[t].0 != order[start].0 {
            bounds.push((start, t));
            start = t;
        }
    }
    let matched: Vec<Result<Vec<(u32, u32)>>> = bounds
        .par_iter()
        .map(|&(a, b)| {
            let rows: Vec<u32> = order[a..b].iter().map(|&(_, i)| i).collect();
            let stratum = order[a].0;
            let out = match_stratum(&rows, groups, clusters, seed, stratum, sweeps)?;
            if strict && out.len() < rows.len() {
                return Err(EngineError::Derangement(format!(
                    "stratum {stratum} has {} rows and only {} can take a partner of another \
                     group (one group holds more than half of them, or it has a single row); \
                     allow unmatched rows (mipo generates their negatives) or add rows",
                    rows.len(),
                    out.len()
                )));
            }
            Ok(out)
        })
        .collect();
    let mut sigma = vec![NO_STRATUM; n];
    for part in matched {
        for (i, t) in part? {
            sigma[i as usize] = t;
        }
    }
    verify_stratified(&sigma, strata, groups, clusters)?;
    Ok(sigma)
}

/// The matched `(row, partner)` pairs of one stratum (see [`stratified_derangement`]).
fn match_stratum(
    rows: &[u32],
    groups: Option<&[u32]>,
    clusters: Option<&[u32]>,
    seed: u64,
    stratum: u32,
    sweeps: u32,
) -> Result<Vec<(u32, u32)>> {
    let mut rng = Rng::stream(seed, STREAM_STRATUM | stratum as u64);
    let group_of = |i: u32| groups.map_or(i, |g| g[i as usize]);
    let cluster_of = |i: u32| clusters.map_or(i, |c| c[i as usize]);
    // Leave out random rows of an over-half class until the rest is feasible.
    let mut active: Vec<u32> = rows.to_vec();
    loop {
        if active.len() < 2 {
            return Ok(Vec::new());
        }
        let mut worst: Option<(usize, u32, bool)> = None; // (size, class, is_group)
        for (is_group, key) in [
            (true, &group_of as &dyn Fn(u32) -> u32),
            (false, &cluster_of),
        ] {
            if (is_group && groups.is_none()) || (!is_group && clusters.is_none()) {
                continue;
            }
            let mut counts: HashMap<u32, usize> = HashMap::new();
            for &i in &active {
                *counts.entry(key(i)).or_default() += 1;
            }
            // Largest class; ties broken by the smaller id (deterministic, HashMap order is not).
            if let Some((&class, &size)) =
                counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            {
                if 2 * size > active.len() && worst.is_none_or(|(s, _, _)| size > s) {
                    worst = Some((size, class, is_group));
                }
            }
        }
        let Some((_, class, is_group)) = worst else {
            break;
        };
        let members: Vec<usize> = (0..active.len())
            .filter(|&t| {
                let i = active[t];
                if is_group {
                    group_of(i) == class
                } else {
                    cluster_of(i) == class
                }
            })
            .collect();
        let drop = members[rng.below(members.len() as u64) as usize];
        active.remove(drop);
    }
    let s = active.len();
    let valid = |perm: &[u32]| {
        (0..s).all(|t| {
            let (i, j) = (active[t], active[perm[t] as usize]);
            i != j && group_of(i) != group_of(j) && cluster_of(i) != cluster_of(j)
        })
    };
    let mut local: Option<Vec<u32>> = None;
    if s <= REJECTION_MAX_ROWS {
        let mut perm: Vec<u32> = (0..s as u32).collect();
        for _ in 0..REJECTION_MAX_TRIES {
            for t in (1..s).rev() {
                let u = rng.below(t as u64 + 1) as usize;
                perm.swap(t, u);
            }
            if valid(&perm) {
                local = Some(perm.clone());
                break;
            }
        }
    }
    let local = match local {
        Some(p) => p,
        None => {
            let g: Option<Vec<u32>> = groups.map(|_| active.iter().map(|&i| group_of(i)).collect());
            let c: Option<Vec<u32>> =
                clusters.map(|_| active.iter().map(|&i| cluster_of(i)).collect());
            let chain_seed = rng.next_u64();
            constrained_derangement(s, g.as_deref(), c.as_deref(), chain_seed, sweeps)?
        }
    };
    Ok((0..s)
        .map(|t| (active[t], active[local[t] as usize]))
        .collect())
}

/// O(n) check of a stratified assignment: partners share the stratum, differ in row, group and
/// cluster, and the matched rows of each stratum map one to one onto themselves.
fn verify_stratified(
    sigma: &[u32],
    strata: &[u32],
    groups: Option<&[u32]>,
    clusters: Option<&[u32]>,
) -> Result<()> {
    let n = sigma.len();
    let mut taken = vec![false; n];
    for (i, &t) in sigma.iter().enumerate() {
        if t == NO_STRATUM {
            continue;
        }
        let t = t as usize;
        let ok = t < n
            && t != i
            && strata[t] == strata[i]
            && strata[i] != NO_STRATUM
            && sigma[t] != NO_STRATUM
            && groups.is_none_or(|g| g[t] != g[i])
            && clusters.is_none_or(|c| c[t] != c[i])
            && !std::mem::replace(&mut taken[t], true);
        if !ok {
            return Err(EngineError::Derangement(format!(
                "internal error: the stratified derangement is invalid at row {i}; please report \
                 this with the input"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_derangement(sigma: &[u32]) -> bool {
        let mut seen = vec![false; sigma.len()];
        sigma.iter().enumerate().all(|(i, &s)| {
            (s as usize) < sigma.len()
                && s as usize != i
                && !std::mem::replace(&mut seen[s as usize], true)
        })
    }

    fn respects(sigma: &[u32], ids: &[u32]) -> bool {
        (0..sigma.len()).all(|i| ids[sigma[i] as usize] != ids[i])
    }

    #[test]
    fn derangement_table_is_right() {
        assert_eq!(&DERANGEMENTS[..8], &[1, 0, 1, 2, 9, 44, 265, 1854]);
        assert_eq!(DERANGEMENTS[20], 895_014_631_192_902_121);
    }

    #[test]
    fn derangements_have_no_fixed_points() {
        for n in 2..200 {
            for seed in 0..5 {
                let s = derangement(n, seed).unwrap();
                assert!(is_derangement(&s), "n={n} seed={seed}");
            }
        }
        assert!(is_derangement(&derangement(100_000, 3).unwrap()));
    }

    #[test]
    fn derangement_is_deterministic_and_seeded() {
        assert_eq!(derangement(1000, 9).unwrap(), derangement(1000, 9).unwrap());
        assert_ne!(
            derangement(1000, 9).unwrap(),
            derangement(1000, 10).unwrap()
        );
    }

    #[test]
    fn too_few_or_too_many_rows() {
        for n in [0, 1] {
            let e = derangement(n, 0).unwrap_err();
            assert!(matches!(e, EngineError::Derangement(_)));
            assert!(e.to_string().contains("context-drop"), "{e}");
        }
        #[cfg(target_pointer_width = "64")]
        assert!(matches!(
            derangement(u32::MAX as usize + 1, 0),
            Err(EngineError::InvalidInput(_))
        ));
    }

    #[test]
    fn derangement_is_uniform_for_n4() {
        // 9 derangements; chi-square with 8 dof, 18_000 draws. The 1e-6 critical value is 42.70.
        let mut counts: HashMap<Vec<u32>, u32> = HashMap::new();
        let draws = 18_000;
        for seed in 0..draws {
            *counts.entry(derangement(4, seed).unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), 9);
        let expected = draws as f64 / 9.0;
        let chi2: f64 = counts
            .values()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 42.70, "chi2 = {chi2}");
    }

    #[test]
    fn groups_are_respected() {
        let mut rng = Rng::new(5);
        for trial in 0..300 {
            let n = 2 + rng.below(60) as usize;
            let k = 1 + rng.below(n as u64) as u32;
            let groups: Vec<u32> = (0..n).map(|_| rng.below(k as u64) as u32 * 7).collect();
            let clusters: Vec<u32> = (0..n).map(|_| rng.below(n as u64) as u32).collect();
            for cl in [None, Some(&clusters[..])] {
                let r = constrained_derangement(n, Some(&groups), cl, trial, 3);
                let mut sizes: HashMap<u32, usize> = HashMap::new();
                groups
                    .iter()
                    .for_each(|&g| *sizes.entry(g).or_default() += 1);
                let mut feasible = sizes.values().all(|&s| 2 * s <= n);
                if let Some(cl) = cl {
                    let mut cs: HashMap<u32, usize> = HashMap::new();
                    cl.iter().for_each(|&c| *cs.entry(c).or_default() += 1);
                    feasible &= cs.values().all(|&s| 2 * s <= n);
                }
                match r {
                    Ok(s) => {
                        assert!(feasible);
                        assert!(is_derangement(&s));
                        assert!(respects(&s, &groups));
                        if let Some(cl) = cl {
                            assert!(respects(&s, cl));
                        }
                    }
                    Err(e) => {
                        assert!(!feasible, "n={n} {e}");
                        assert!(matches!(e, EngineError::Derangement(_)));
                    }
                }
            }
        }
    }

    #[test]
    fn tight_instances_are_solved() {
        // Two groups of n/2 and clusters cutting across them: the shift start breaks clusters
        // everywhere, so repair (and possibly the path search) must do the work.
        let n = 2000;
        let groups: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
        let clusters: Vec<u32> = (0..n as u32).map(|i| i / 2).collect();
        let s = constrained_derangement(n, Some(&groups), Some(&clusters), 1, 0).unwrap();
        assert!(respects(&s, &groups) && respects(&s, &clusters) && is_derangement(&s));
        // Clusters of exactly n/2 (and groups of n/2 crossing them).
        let clusters: Vec<u32> = (0..n as u32).map(|i| u32::from(i < n as u32 / 2)).collect();
        let s = constrained_derangement(n, Some(&groups), Some(&clusters), 2, 2).unwrap();
        assert!(respects(&s, &groups) && respects(&s, &clusters));
    }

    #[test]
    fn path_search_alone_builds_a_perfect_matching() {
        // From an empty assignment, augmenting paths alone must assign every row (Berge + Hall),
        // including on tight instances where paths get long.
        let n = 240u32;
        for (gm, cm) in [(2u32, 3u32), (3, 2), (4, 5), (2, 120)] {
            let keys: Vec<u64> = (0..n)
                .map(|i| ((i % gm) as u64) << 32 | (i / cm) as u64)
                .collect();
            let mut sigma = vec![NONE; n as usize];
            let mut inv = vec![NONE; n as usize];
            let mut search = PathSearch::new(n as usize);
            for row in 0..n {
                search.augment(row, &mut sigma, &mut inv, &keys).unwrap();
            }
            verify(&sigma, &keys).unwrap();
        }
    }

    #[test]
    fn infeasible_inputs_are_named() {
        let groups = [1, 1, 1, 2, 3];
        let e = constrained_derangement(5, Some(&groups), None, 0, 10).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("3 of the 5 rows") && msg.contains("--set user_constraint=false"),
            "{msg}"
        );
        let clusters = [4, 4, 4, 5, 6];
        let e = constrained_derangement(5, None, Some(&clusters), 0, 10).unwrap_err();
        assert!(e.to_string().contains("deduplicate"), "{e}");
        let e = constrained_derangement(1, Some(&[0]), None, 0, 10).unwrap_err();
        assert!(e.to_string().contains("context-drop"));
        assert!(matches!(
            constrained_derangement(3, Some(&[0, 1]), None, 0, 10),
            Err(EngineError::InvalidInput(_))
        ));
        assert!(matches!(
            constrained_derangement(3, Some(&[0, 1, 2]), None, 0, MAX_SWEEPS + 1),
            Err(EngineError::InvalidParameter(_))
        ));
    }

    #[test]
    fn constrained_is_deterministic() {
        let groups: Vec<u32> = (0..5000u32).map(|i| i % 37).collect();
        let clusters: Vec<u32> = (0..5000u32).map(|i| i / 3).collect();
        let a = constrained_derangement(5000, Some(&groups), Some(&clusters), 11, 4).unwrap();
        let b = constrained_derangement(5000, Some(&groups), Some(&clusters), 11, 4).unwrap();
        let c = constrained_derangement(5000, Some(&groups), Some(&clusters), 12, 4).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn large_ids_work() {
        let groups: Vec<u32> = (0..100u32).map(|i| u32::MAX - 1 - (i % 10)).collect();
        let s = constrained_derangement(100, Some(&groups), None, 3, 5).unwrap();
        assert!(respects(&s, &groups) && is_derangement(&s));
    }

    fn stratified_ok(sigma: &[u32], strata: &[u32], groups: &[u32]) -> bool {
        let mut taken = vec![false; sigma.len()];
        sigma.iter().enumerate().all(|(i, &t)| {
            t == NO_STRATUM
                || (t as usize != i
                    && strata[t as usize] == strata[i]
                    && groups[t as usize] != groups[i]
                    && sigma[t as usize] != NO_STRATUM
                    && !std::mem::replace(&mut taken[t as usize], true))
        })
    }

    #[test]
    fn stratified_matches_within_strata_and_leaves_out_the_excess() {
        let mut rng = Rng::new(17);
        for trial in 0..400u64 {
            let n = 1 + rng.below(80) as usize;
            let k = 1 + rng.below(12) as u32;
            let users = 1 + rng.below(n as u64) as u32;
            let strata: Vec<u32> = (0..n)
                .map(|_| {
                    if rng.below(10) == 0 {
                        NO_STRATUM
                    } else {
                        rng.below(k as u64) as u32 * 3
                    }
                })
                .collect();
            let groups: Vec<u32> = (0..n).map(|_| rng.below(users as u64) as u32).collect();
            let sigma =
                stratified_derangement(&strata, Some(&groups), None, trial, 5, false).unwrap();
            assert!(stratified_ok(&sigma, &strata, &groups), "trial {trial}");
            // Per stratum of s rows whose largest group has m: exactly min(s, 2(s - m)) matched
            // (s - m rows of the others pair with as many of the largest group), 0 when s < 2.
            let mut by: HashMap<u32, Vec<usize>> = HashMap::new();
            for (i, &st) in strata.iter().enumerate() {
                if st != NO_STRATUM {
                    by.entry(st).or_default().push(i);
                }
            }
            for rows in by.values() {
                let s = rows.len();
                let mut counts: HashMap<u32, usize> = HashMap::new();
                rows.iter()
                    .for_each(|&i| *counts.entry(groups[i]).or_default() += 1);
                let m = *counts.values().max().unwrap();
                let expected = if 2 * m > s { 2 * (s - m) } else { s };
                let expected = if expected < 2 { 0 } else { expected };
                let got = rows.iter().filter(|&&i| sigma[i] != NO_STRATUM).count();
                assert_eq!(got, expected, "trial {trial}: s={s} m={m}");
            }
            for (i, &st) in strata.iter().enumerate() {
                if st == NO_STRATUM {
                    assert_eq!(sigma[i], NO_STRATUM);
                }
            }
        }
    }

    #[test]
    fn stratified_is_uniform_in_a_small_stratum() {
        // Stratum of 5 rows, users [a, a, b, c, d]: count the valid bijections by brute force
        // and chi-square the sampled ones (1e-6 critical values: df <= 60 -> < 120).
        let groups = [0u32, 0, 1, 2, 3, 9];
        let strata = [4u32, 4, 4, 4, 4, NO_STRATUM];
        let mut all = Vec::new();
        let mut perm: Vec<u32> = (0..5).collect();
        fn permute(k: usize, p: &mut Vec<u32>, out: &mut Vec<Vec<u32>>, g: &[u32]) {
            if k == p.len() {
                if (0..p.len()).all(|i| p[i] as usize != i && g[p[i] as usize] != g[i]) {
                    out.push(p.clone());
                }
                return;
            }
            for j in k..p.len() {
                p.swap(k, j);
                permute(k + 1, p, out, g);
                p.swap(k, j);
            }
        }
        permute(0, &mut perm, &mut all, &groups[..5]);
        let draws = 200 * all.len() as u64;
        let mut counts: HashMap<Vec<u32>, u64> = HashMap::new();
        for seed in 0..draws {
            let s = stratified_derangement(&strata, Some(&groups), None, seed, 10, true).unwrap();
            *counts.entry(s[..5].to_vec()).or_default() += 1;
        }
        assert_eq!(counts.len(), all.len());
        let expected = draws as f64 / all.len() as f64;
        let chi2: f64 = counts
            .values()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 120.0, "chi2 = {chi2} over {} bijections", all.len());
    }

    #[test]
    fn stratified_large_strata_use_the_chain_and_clusters() {
        // A stratum of 300 rows (past the rejection size) with users and clusters.
        let n = 300usize;
        let strata = vec![7u32; n];
        let groups: Vec<u32> = (0..n as u32).map(|i| i % 25).collect();
        let clusters: Vec<u32> = (0..n as u32).map(|i| i / 3).collect();
        let s =
            stratified_derangement(&strata, Some(&groups), Some(&clusters), 1, 10, true).unwrap();
        assert!(stratified_ok(&s, &strata, &groups));
        assert!((0..n).all(|i| clusters[s[i] as usize] != clusters[i]));
    }

    #[test]
    fn stratified_is_deterministic_and_independent_of_other_strata() {
        let strata: Vec<u32> = (0..2000u32).map(|i| i % 97).collect();
        let groups: Vec<u32> = (0..2000u32).map(|i| i % 13).collect();
        let a = stratified_derangement(&strata, Some(&groups), None, 5, 10, false).unwrap();
        let b = stratified_derangement(&strata, Some(&groups), None, 5, 10, false).unwrap();
        let c = stratified_derangement(&strata, Some(&groups), None, 6, 10, false).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Dropping a whole stratum changes nothing for the others (per-stratum streams).
        let mut strata2 = strata.clone();
        for st in strata2.iter_mut() {
            if *st == 3 {
                *st = NO_STRATUM;
            }
        }
        let d = stratified_derangement(&strata2, Some(&groups), None, 5, 10, false).unwrap();
        for i in 0..2000 {
            if strata[i] != 3 {
                assert_eq!(a[i], d[i], "row {i}");
            }
        }
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let e = one
            .install(|| stratified_derangement(&strata, Some(&groups), None, 5, 10, false))
            .unwrap();
        assert_eq!(a, e);
    }

    #[test]
    fn stratified_errors_are_named() {
        let e =
            stratified_derangement(&[0, 0, 0], Some(&[1, 1, 2]), None, 0, 10, true).unwrap_err();
        assert!(matches!(e, EngineError::Derangement(_)));
        assert!(e.to_string().contains("stratum 0 has 3 rows"), "{e}");
        assert!(matches!(
            stratified_derangement(&[0, 0], Some(&[1]), None, 0, 10, false),
            Err(EngineError::InvalidInput(_))
        ));
        assert!(matches!(
            stratified_derangement(&[0, 0], None, None, 0, MAX_SWEEPS + 1, false),
            Err(EngineError::InvalidParameter(_))
        ));
        // No constraint but the row itself: every stratum of >= 2 rows is fully matched.
        let s = stratified_derangement(&[1, 1, 2, 2, 2, 3], None, None, 0, 10, false).unwrap();
        assert_eq!(s[5], NO_STRATUM);
        assert!((0..5).all(|i| s[i] != NO_STRATUM && s[i] as usize != i));
        assert!(stratified_derangement(&[], None, None, 0, 10, true)
            .unwrap()
            .is_empty());
    }
}
