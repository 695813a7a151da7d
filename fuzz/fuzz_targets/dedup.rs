//! normalize / dedup / Deduper on arbitrary strings and parameters: no panic, only `Err` for bad
//! parameters, and the invariants of a valid result (clusters point at earlier kept rows;
//! streaming in two chunks equals one call).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mipo_engine::dedup::{dedup, normalize, DedupParams, DedupResult, Deduper};

#[derive(Arbitrary, Debug)]
struct Input {
    texts: Vec<String>,
    ngram: u8,
    bands: u8,
    rows: u8,
    threshold: f64,
    seed: u64,
    near: bool,
    cut: u8,
}

fn check(result: &DedupResult, n: usize) {
    assert_eq!(result.keep.len(), n);
    assert_eq!(result.cluster.len(), n);
    assert_eq!(result.exact.len(), n);
    for row in 0..n {
        let cluster = result.cluster[row] as usize;
        assert!(cluster <= row, "row {row} points at a later row {cluster}");
        assert_eq!(result.keep[row], cluster == row);
        assert!(result.keep[cluster], "row {row} points at a removed row");
    }
}

fuzz_target!(|input: Input| {
    for text in &input.texts {
        let once = normalize(text);
        // Normalizing never grows a string beyond NFKC's bounded expansion (18x per char).
        assert!(once.len() <= text.len().saturating_mul(18) + 4);
    }
    let params = DedupParams {
        ngram: input.ngram as usize,
        num_perm: input.bands as usize * input.rows as usize,
        bands: input.bands as usize,
        threshold: input.threshold,
        seed: input.seed,
        near: input.near,
    };
    let Ok(whole) = dedup(&input.texts, &params) else {
        assert!(params.validate().is_err(), "valid parameters were rejected");
        return;
    };
    check(&whole, input.texts.len());
    let mut deduper = Deduper::new(params).expect("parameters dedup accepted");
    let cut = (input.cut as usize).min(input.texts.len());
    let first = deduper.add(&input.texts[..cut]).expect("first chunk");
    let second = deduper.add(&input.texts[cut..]).expect("second chunk");
    let mut streamed = first;
    streamed.keep.extend(second.keep);
    streamed.cluster.extend(second.cluster);
    streamed.exact.extend(second.exact);
    assert_eq!(streamed, whole, "streaming differs from one call");
});
