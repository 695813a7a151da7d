//! Bindings for [`crate::components`]: the steps of a plan spread over a cluster
//! (`mipo.pairs.ray_plan`). Arrow in, Arrow out, the GIL released around the work.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, GenericListArray, OffsetSizeTrait, UInt64Array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use pyo3::prelude::*;
use pyo3_arrow::{PyArray, PyChunkedArray};

use super::arrow::{bool_array, chunked_str_values, require_non_null, u32_array, u64_values};
use super::errors::IntoPyResult;
use crate::components;
use crate::dedup::DedupParams;
use crate::error::{EngineError, Result};

fn column(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<PyChunkedArray> {
    obj.extract::<PyChunkedArray>().map_err(|e| {
        super::errors::to_pyerr(EngineError::InvalidInput(format!(
            "{what} must be an Arrow column (a polars Series or anything with __arrow_c_stream__): {e}"
        )))
    })
}

fn u32_values(chunks: &[ArrayRef], what: &str) -> Result<Vec<u32>> {
    u64_values(chunks, what)?
        .into_iter()
        .map(|v| {
            u32::try_from(v).map_err(|_| {
                EngineError::InvalidInput(format!("{what} has {v}, outside the UInt32 range"))
            })
        })
        .collect()
}

/// Borrow each row of a `list<uint32>` column (List or LargeList chunks) as a slice.
fn u32_lists<'a>(chunks: &'a [ArrayRef], what: &str) -> Result<Vec<&'a [u32]>> {
    fn read<'a, O: OffsetSizeTrait>(
        list: &'a GenericListArray<O>,
        what: &str,
        out: &mut Vec<&'a [u32]>,
    ) -> Result<()> {
        let values = list
            .values()
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| {
                EngineError::InvalidInput(format!(
                    "{what} must hold uint32 items, got {}",
                    list.values().data_type()
                ))
            })?;
        if list.null_count() > 0 || values.null_count() > 0 {
            return Err(EngineError::InvalidInput(format!(
                "{what} contains nulls; every row needs its fingerprint set"
            )));
        }
        let flat = values.values();
        let offsets = list.value_offsets();
        for i in 0..list.len() {
            out.push(&flat[offsets[i].as_usize()..offsets[i + 1].as_usize()]);
        }
        Ok(())
    }
    let mut out = Vec::new();
    for c in chunks {
        match c.data_type() {
            DataType::List(_) => read(c.as_list::<i32>(), what, &mut out)?,
            DataType::LargeList(_) => read(c.as_list::<i64>(), what, &mut out)?,
            other => {
                return Err(EngineError::InvalidInput(format!(
                    "{what} must be a list<uint32> column, got Arrow type {other}"
                )))
            }
        }
    }
    Ok(out)
}

/// sketch_rows(texts, ngram=5, num_perm=112, bands=14, seed=0)
/// -> (exact_hi: uint64, exact_lo: uint64, band_keys: uint32 (rows x bands, row-major),
///     fingerprints: list<uint32>)
///
/// What the streaming `Deduper` computes of each row before clustering it: the exact key of
/// the normalized text, the LSH bucket key of each band, the sorted distinct shingle
/// fingerprints.
#[pyfunction]
#[pyo3(signature = (texts, ngram=5, num_perm=112, bands=14, seed=0))]
fn sketch_rows(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    ngram: usize,
    num_perm: usize,
    bands: usize,
    seed: u64,
) -> PyResult<(PyArray, PyArray, PyArray, PyArray)> {
    let params = DedupParams {
        ngram,
        num_perm,
        bands,
        seed,
        ..DedupParams::default()
    };
    let col = column(texts, "texts")?;
    let values = chunked_str_values(col.chunks(), "texts").py_err()?;
    let values = require_non_null(values, "texts").py_err()?;
    let sk = py
        .detach(|| components::sketch_rows(&values, &params))
        .py_err()?;
    let hi: ArrayRef = Arc::new(UInt64Array::from(
        sk.exact
            .iter()
            .map(|e| (e >> 64) as u64)
            .collect::<Vec<_>>(),
    ));
    let lo: ArrayRef = Arc::new(UInt64Array::from(
        sk.exact.iter().map(|e| *e as u64).collect::<Vec<_>>(),
    ));
    let item = Arc::new(Field::new_list_field(DataType::UInt32, true));
    let values: ArrayRef = Arc::new(arrow_array::UInt32Array::new(
        ScalarBuffer::from(sk.fp_values),
        None,
    ));
    let lengths = sk.fp_offsets.windows(2).map(|w| w[1] - w[0]);
    let fps: ArrayRef = Arc::new(GenericListArray::<i64>::new(
        item,
        OffsetBuffer::<i64>::from_lengths(lengths),
        values,
        None,
    ));
    Ok((
        PyArray::from_array_ref(hi),
        PyArray::from_array_ref(lo),
        PyArray::from_array_ref(u32_array(sk.band_keys)),
        PyArray::from_array_ref(fps),
    ))
}

/// bucket_pairs(keys: uint64, rows: uint32) -> (s: uint32, r: uint32)
///
/// Every pair of rows sharing a bucket key, `s < r`, each once, sorted.
#[pyfunction]
fn bucket_pairs(
    py: Python<'_>,
    keys: &Bound<'_, PyAny>,
    rows: &Bound<'_, PyAny>,
) -> PyResult<(PyArray, PyArray)> {
    let keys = column(keys, "keys")?;
    let rows = column(rows, "rows")?;
    let keys: Vec<u64> = keys
        .chunks()
        .iter()
        .map(|c| {
            c.as_primitive_opt::<UInt64Type>()
                .map(|a| a.values().to_vec())
                .ok_or_else(|| {
                    EngineError::InvalidInput(format!(
                        "keys must be a uint64 column, got {}",
                        c.data_type()
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()
        .py_err()?
        .concat();
    let rows = u32_values(rows.chunks(), "rows").py_err()?;
    let pairs = py
        .detach(|| components::bucket_pairs(&keys, &rows))
        .py_err()?;
    let (s, r): (Vec<u32>, Vec<u32>) = pairs.into_iter().unzip();
    Ok((
        PyArray::from_array_ref(u32_array(s)),
        PyArray::from_array_ref(u32_array(r)),
    ))
}

/// verify_pairs(a: list<uint32>, b: list<uint32>, threshold) -> bool
///
/// Exact Jaccard similarity of each pair of fingerprint sets is at least `threshold`.
#[pyfunction]
fn verify_pairs(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    threshold: f64,
) -> PyResult<PyArray> {
    let a = column(a, "a")?;
    let b = column(b, "b")?;
    let a = u32_lists(a.chunks(), "a").py_err()?;
    let b = u32_lists(b.chunks(), "b").py_err()?;
    let ok = py
        .detach(|| components::verify_pairs(&a, &b, threshold))
        .py_err()?;
    Ok(PyArray::from_array_ref(bool_array(ok)))
}

/// resolve_representatives(s: uint32, r: uint32) -> (rows: uint32, clusters: uint32)
///
/// The rows that join an earlier representative over verified edges `s < r`, and its row.
#[pyfunction]
fn resolve_representatives(
    py: Python<'_>,
    s: &Bound<'_, PyAny>,
    r: &Bound<'_, PyAny>,
) -> PyResult<(PyArray, PyArray)> {
    let s = u32_values(column(s, "s")?.chunks(), "s").py_err()?;
    let r = u32_values(column(r, "r")?.chunks(), "r").py_err()?;
    let (rows, clusters) = py
        .detach(|| components::resolve_representatives(&s, &r))
        .py_err()?;
    Ok((
        PyArray::from_array_ref(u32_array(rows)),
        PyArray::from_array_ref(u32_array(clusters)),
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sketch_rows, m)?)?;
    m.add_function(wrap_pyfunction!(bucket_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(verify_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_representatives, m)?)?;
    Ok(())
}
