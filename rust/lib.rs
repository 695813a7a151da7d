//! mipo's native data engine.
//!
//! A pure Rust API (no Python here: `cargo test` and `cargo bench` run without libpython):
//!
//! * [`dedup`]: normalization, exact duplicates (128-bit hash), near duplicates (MinHash + LSH,
//!   verified, union-find clusters);
//! * [`tokenize`]: Hugging Face chat templates rendered with minijinja and encoded with the
//!   `tokenizers` crate, in parallel;
//! * [`derange`]: seeded uniform and group-constrained derangements.
//!
//! The PyO3 bindings live in [`py`] behind the `python` feature.

pub mod components;
pub mod dedup;
pub mod derange;
pub mod error;
pub mod rng;
pub mod tokenize;

#[cfg(feature = "python")]
pub mod py;

pub use error::{EngineError, Result};

/// Version of the engine crate (the Python package reports it in `mipo engine-info`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
