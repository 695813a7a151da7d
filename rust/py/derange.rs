//! Bindings for [`crate::derange`] (and two underscore-private RNG helpers for the tests that
//! pin `mipo._reference.Xoshiro256pp` to `rust/rng.rs`).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3_arrow::{PyArray, PyChunkedArray};

use crate::derange;
use crate::error::EngineError;
use crate::py::arrow::{u32_array, u64_values};
use crate::py::errors::IntoPyResult;
use crate::rng::Rng;

fn row_count(n: i64) -> Result<usize, EngineError> {
    usize::try_from(n).map_err(|_| {
        EngineError::InvalidParameter(format!("n (the number of rows) must be >= 0, got {n}"))
    })
}

/// An integer id column as u32 ids (any integer Arrow type; each value must fit in a UInt32).
fn u32_ids(column: &PyChunkedArray, what: &str) -> Result<Vec<u32>, EngineError> {
    let wide = u64_values(column.chunks(), what)?;
    let mut out = Vec::with_capacity(wide.len());
    for (row, v) in wide.into_iter().enumerate() {
        out.push(u32::try_from(v).map_err(|_| {
            EngineError::InvalidInput(format!(
                "{what} has id {v} at row {row}, outside 0..=4294967295; map ids to dense codes \
                 first (mipo.engine.constrained_derangement does)"
            ))
        })?);
    }
    Ok(out)
}

/// A uniformly random derangement of `range(n)` as a UInt32 Arrow array (see
/// `mipo.engine.derangement`).
#[pyfunction]
#[pyo3(signature = (n, seed))]
fn derangement(py: Python<'_>, n: i64, seed: u64) -> PyResult<PyArray> {
    let n = row_count(n).py_err()?;
    let sigma = py.detach(|| derange::derangement(n, seed)).py_err()?;
    Ok(PyArray::from_array_ref(u32_array(sigma)))
}

/// A random permutation avoiding fixed points, same-group and same-cluster pairs, as a UInt32
/// Arrow array: the state of a symmetric Metropolis chain after `sweeps * max(n, 256)` steps from a valid
/// start (stationary distribution: uniform over the valid permutations). See
/// `mipo.engine.constrained_derangement` and `rust/derange.rs`.
#[pyfunction]
#[pyo3(signature = (n, groups, clusters, seed, sweeps))]
fn constrained_derangement(
    py: Python<'_>,
    n: i64,
    groups: Option<PyChunkedArray>,
    clusters: Option<PyChunkedArray>,
    seed: u64,
    sweeps: u64,
) -> PyResult<PyArray> {
    let n = row_count(n).py_err()?;
    let groups = groups.map(|g| u32_ids(&g, "groups")).transpose().py_err()?;
    let clusters = clusters
        .map(|c| u32_ids(&c, "clusters"))
        .transpose()
        .py_err()?;
    // Out-of-range values become MAX_SWEEPS + 1, which the engine rejects with a message.
    let sweeps = u32::try_from(sweeps).unwrap_or(u32::MAX);
    let sigma = py
        .detach(|| {
            derange::constrained_derangement(
                n,
                groups.as_deref(),
                clusters.as_deref(),
                seed,
                sweeps,
            )
        })
        .py_err()?;
    Ok(PyArray::from_array_ref(u32_array(sigma)))
}

/// Within each stratum, a derangement avoiding same-group and same-cluster partners, as a UInt32
/// Arrow array with nulls for rows left unmatched (see `mipo.engine.stratified_derangement` and
/// `rust/derange.rs`). `strata` uses `4294967295` for rows that take no part.
#[pyfunction]
#[pyo3(signature = (strata, groups, clusters, seed, sweeps, strict))]
fn stratified_derangement(
    py: Python<'_>,
    strata: PyChunkedArray,
    groups: Option<PyChunkedArray>,
    clusters: Option<PyChunkedArray>,
    seed: u64,
    sweeps: u64,
    strict: bool,
) -> PyResult<PyArray> {
    let strata = u32_ids(&strata, "strata").py_err()?;
    let groups = groups.map(|g| u32_ids(&g, "groups")).transpose().py_err()?;
    let clusters = clusters
        .map(|c| u32_ids(&c, "clusters"))
        .transpose()
        .py_err()?;
    let sweeps = u32::try_from(sweeps).unwrap_or(u32::MAX);
    let sigma = py
        .detach(|| {
            derange::stratified_derangement(
                &strata,
                groups.as_deref(),
                clusters.as_deref(),
                seed,
                sweeps,
                strict,
            )
        })
        .py_err()?;
    let values: Vec<Option<u32>> = sigma
        .into_iter()
        .map(|t| (t != derange::NO_STRATUM).then_some(t))
        .collect();
    Ok(PyArray::from_array_ref(Arc::new(
        arrow_array::UInt32Array::from(values),
    )))
}

/// Test helper: `count` outputs of `Rng::new(seed)` (or of `Rng::stream(seed, stream)`).
#[pyfunction]
#[pyo3(signature = (seed, count, stream=None))]
fn _rng_u64(seed: u64, count: usize, stream: Option<u64>) -> PyArray {
    let mut rng = stream.map_or_else(|| Rng::new(seed), |k| Rng::stream(seed, k));
    let values: Vec<u64> = (0..count).map(|_| rng.next_u64()).collect();
    PyArray::from_array_ref(Arc::new(arrow_array::UInt64Array::from(values)))
}

/// Test helper: `count` draws of `Rng::new(seed).below(bound)`.
#[pyfunction]
#[pyo3(signature = (seed, bound, count))]
fn _rng_below(seed: u64, bound: u64, count: usize) -> PyResult<PyArray> {
    if bound == 0 {
        return Err(EngineError::InvalidParameter(
            "bound must be >= 1, got 0".into(),
        ))
        .py_err();
    }
    let mut rng = Rng::new(seed);
    let values: Vec<u64> = (0..count).map(|_| rng.below(bound)).collect();
    Ok(PyArray::from_array_ref(Arc::new(
        arrow_array::UInt64Array::from(values),
    )))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(derangement, m)?)?;
    m.add_function(wrap_pyfunction!(constrained_derangement, m)?)?;
    m.add_function(wrap_pyfunction!(stratified_derangement, m)?)?;
    m.add_function(wrap_pyfunction!(_rng_u64, m)?)?;
    m.add_function(wrap_pyfunction!(_rng_below, m)?)?;
    Ok(())
}
