//! Bindings for [`crate::dedup`]: `normalize`, `dedup` and the streaming `Deduper`.
//!
//! Texts come in as any object exporting `__arrow_c_stream__` (a Polars Series, a pyarrow
//! array or chunked array) in any string layout, read in place; results go out as Arrow arrays
//! (pyo3-arrow `PyArray`, which exports `__arrow_c_array__`). The GIL is released around the work.

use std::sync::Arc;

use arrow_array::builder::LargeStringBuilder;
use arrow_array::ArrayRef;
use pyo3::prelude::*;
use pyo3_arrow::{PyArray, PyChunkedArray};
use rayon::prelude::*;

use super::arrow::{bool_array, chunked_str_values, require_non_null, u32_array};
use super::errors::IntoPyResult;
use crate::dedup::{normalize as normalize_text, DedupParams, DedupResult, Deduper};
use crate::error::EngineError;

/// Import an Arrow column, with a clear error for anything that is not one.
fn import_column(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<PyChunkedArray> {
    obj.extract::<PyChunkedArray>().map_err(|e| {
        super::errors::to_pyerr(EngineError::InvalidInput(format!(
            "{what} must be an Arrow string column (a polars Series or anything with __arrow_c_stream__), got {}: {e}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        )))
    })
}

fn non_negative(value: i64, name: &str) -> Result<usize, EngineError> {
    usize::try_from(value)
        .map_err(|_| EngineError::InvalidParameter(format!("{name} must be >= 1, got {value}")))
}

/// Build [`DedupParams`] from Python values, every bad value an `InvalidParameterError`.
fn params(
    ngram: i64,
    num_perm: i64,
    bands: i64,
    threshold: f64,
    seed: Option<&Bound<'_, PyAny>>,
    near: bool,
) -> Result<DedupParams, EngineError> {
    // None (the Python default) means seed 0.
    let seed = match seed {
        None => 0,
        Some(seed) => seed.extract::<u64>().map_err(|_| {
            EngineError::InvalidParameter(format!(
                "seed must be an integer in [0, 2**64), got {}",
                seed.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?,
    };
    let p = DedupParams {
        ngram: non_negative(ngram, "ngram")?,
        num_perm: non_negative(num_perm, "num_perm")?,
        bands: non_negative(bands, "bands")?,
        threshold,
        seed,
        near,
    };
    p.validate()?;
    Ok(p)
}

fn into_arrays(r: DedupResult) -> (PyArray, PyArray, PyArray) {
    (
        PyArray::from_array_ref(bool_array(r.keep)),
        PyArray::from_array_ref(u32_array(r.cluster)),
        PyArray::from_array_ref(bool_array(r.exact)),
    )
}

/// Run `deduper.add` on an Arrow column with the GIL released.
fn add_column(
    py: Python<'_>,
    deduper: &mut Deduper,
    texts: &Bound<'_, PyAny>,
) -> PyResult<(PyArray, PyArray, PyArray)> {
    let column = import_column(texts, "texts")?;
    let values = chunked_str_values(column.chunks(), "texts").py_err()?;
    let values = require_non_null(values, "texts").py_err()?;
    let result = py.detach(|| deduper.add(&values)).py_err()?;
    Ok(into_arrays(result))
}

/// normalize(texts) -> Arrow large_string array
///
/// NFKC, full case folding, whitespace runs collapsed to one space, ends trimmed: the text that
/// dedup compares. Nulls stay null.
#[pyfunction]
fn normalize(py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<PyArray> {
    let column = import_column(texts, "texts")?;
    let values = chunked_str_values(column.chunks(), "texts").py_err()?;
    let array: ArrayRef = py.detach(|| {
        let normalized: Vec<Option<String>> =
            values.par_iter().map(|v| v.map(normalize_text)).collect();
        let bytes = normalized.iter().flatten().map(String::len).sum();
        let mut builder = LargeStringBuilder::with_capacity(normalized.len(), bytes);
        for v in &normalized {
            builder.append_option(v.as_deref());
        }
        Arc::new(builder.finish())
    });
    Ok(PyArray::from_array_ref(array))
}

/// dedup(texts, ngram=5, num_perm=112, bands=14, threshold=0.8, seed=0, near=True)
/// -> (keep: bool array, cluster: uint32 array, exact: bool array)
///
/// Exact duplicates (xxh3-128 of the normalized text) and, with `near`, near duplicates
/// (MinHash over word `ngram` shingles, LSH with `bands` bands, candidates verified by exact
/// Jaccard >= `threshold`). The first row of each cluster is kept; `cluster` is its row index.
#[pyfunction]
#[pyo3(signature = (texts, ngram=5, num_perm=112, bands=14, threshold=0.8, seed=None, near=true))]
#[allow(clippy::too_many_arguments)] // the Python signature, one argument per DedupParams field
fn dedup(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    ngram: i64,
    num_perm: i64,
    bands: i64,
    threshold: f64,
    seed: Option<&Bound<'_, PyAny>>,
    near: bool,
) -> PyResult<(PyArray, PyArray, PyArray)> {
    let p = params(ngram, num_perm, bands, threshold, seed, near).py_err()?;
    let mut deduper = Deduper::new(p).py_err()?;
    add_column(py, &mut deduper, texts)
}

/// Deduper(ngram=5, num_perm=112, bands=14, threshold=0.8, seed=0, near=True)
///
/// Streaming dedup: `add(texts)` chunk after chunk returns (keep, cluster, exact) with global
/// row indices, equal to one `dedup` over all chunks concatenated. Holds only compact state
/// (hashes, LSH buckets and 32-bit shingle fingerprints of kept rows), never the text.
#[pyclass(name = "Deduper", module = "mipo._engine")]
struct PyDeduper {
    inner: Deduper,
}

#[pymethods]
impl PyDeduper {
    #[new]
    #[pyo3(signature = (ngram=5, num_perm=112, bands=14, threshold=0.8, seed=None, near=true))]
    fn new(
        ngram: i64,
        num_perm: i64,
        bands: i64,
        threshold: f64,
        seed: Option<&Bound<'_, PyAny>>,
        near: bool,
    ) -> PyResult<Self> {
        let p = params(ngram, num_perm, bands, threshold, seed, near).py_err()?;
        Ok(PyDeduper {
            inner: Deduper::new(p).py_err()?,
        })
    }

    /// add(texts) -> (keep, cluster, exact) for the next chunk (global row indices).
    fn add(
        &mut self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
    ) -> PyResult<(PyArray, PyArray, PyArray)> {
        add_column(py, &mut self.inner, texts)
    }

    /// Rows added so far.
    #[getter]
    fn rows_seen(&self) -> u64 {
        self.inner.rows_seen()
    }

    /// Clusters so far (= rows kept).
    #[getter]
    fn clusters(&self) -> usize {
        self.inner.clusters()
    }

    /// Distinct normalized texts so far.
    #[getter]
    fn distinct_texts(&self) -> usize {
        self.inner.distinct_texts()
    }

    /// Approximate heap bytes of the state.
    #[getter]
    fn state_bytes(&self) -> usize {
        self.inner.state_bytes()
    }

    fn __len__(&self) -> usize {
        self.inner.rows_seen() as usize
    }

    fn __repr__(&self) -> String {
        let p = self.inner.params();
        format!(
            "Deduper(ngram={}, num_perm={}, bands={}, threshold={}, seed={}, near={}, rows_seen={})",
            p.ngram,
            p.num_perm,
            p.bands,
            p.threshold,
            p.seed,
            if p.near { "True" } else { "False" },
            self.inner.rows_seen()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(normalize, m)?)?;
    m.add_function(wrap_pyfunction!(dedup, m)?)?;
    m.add_class::<PyDeduper>()?;
    Ok(())
}
