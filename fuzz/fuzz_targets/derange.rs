//! derangement / constrained_derangement on arbitrary sizes, ids and seeds: no panic, and every
//! `Ok` is a permutation without fixed points that respects both constraints.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mipo_engine::derange::{constrained_derangement, derangement};

#[derive(Arbitrary, Debug)]
struct Input {
    n: u16,
    seed: u64,
    groups: Option<Vec<u8>>,
    clusters: Option<Vec<u8>>,
    sweeps: u8,
}

fn check(sigma: &[u32], n: usize, columns: [Option<&[u32]>; 2]) {
    assert_eq!(sigma.len(), n);
    let mut seen = vec![false; n];
    for (i, &s) in sigma.iter().enumerate() {
        let s = s as usize;
        assert!(s < n && !seen[s], "not a permutation");
        seen[s] = true;
        assert_ne!(s, i, "fixed point at {i}");
        for column in columns.into_iter().flatten() {
            assert_ne!(
                column[s], column[i],
                "row {i} paired within its group/cluster"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let n = input.n as usize % 2048;
    match derangement(n, input.seed) {
        Ok(sigma) => check(&sigma, n, [None, None]),
        Err(_) => assert!(n < 2, "derangement of {n} rows refused"),
    }
    // Few distinct ids, so infeasible instances (one id over half the rows) come up often.
    let widen = |v: Vec<u8>| {
        v.into_iter()
            .map(|x| u32::from(x % 7))
            .collect::<Vec<u32>>()
    };
    let groups = input.groups.map(widen);
    let clusters = input.clusters.map(widen);
    let sweeps = u32::from(input.sweeps % 16);
    let m = groups
        .as_ref()
        .or(clusters.as_ref())
        .map_or(n.min(64), Vec::len);
    if let Ok(sigma) = constrained_derangement(
        m,
        groups.as_deref(),
        clusters.as_deref(),
        input.seed,
        sweeps,
    ) {
        check(&sigma, m, [groups.as_deref(), clusters.as_deref()]);
    }
});
