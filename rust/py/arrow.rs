//! Arrow helpers shared by the bindings: read string columns of any Arrow string layout
//! (Utf8, LargeUtf8, Utf8View — Polars exports views) without copying the text, and build
//! output arrays.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;

use crate::error::EngineError;

/// Borrow every value of a string array as `Option<&str>` (None for null).
pub fn str_values<'a>(
    array: &'a dyn Array,
    what: &str,
) -> Result<Vec<Option<&'a str>>, EngineError> {
    let out: Vec<Option<&str>> = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        DataType::Null => vec![None; array.len()],
        other => {
            return Err(EngineError::InvalidInput(format!(
                "{what} must be a string column, got Arrow type {other}; cast it to a string (e.g. pl.col(...).cast(pl.String)) first"
            )))
        }
    };
    Ok(out)
}

/// Concatenate the string values of all chunks (still borrowed).
pub fn chunked_str_values<'a>(
    chunks: &'a [ArrayRef],
    what: &str,
) -> Result<Vec<Option<&'a str>>, EngineError> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
    for c in chunks {
        out.extend(str_values(c.as_ref(), what)?);
    }
    Ok(out)
}

/// Strings with nulls rejected (for columns where a null has no meaning).
pub fn require_non_null<'a>(
    values: Vec<Option<&'a str>>,
    what: &str,
) -> Result<Vec<&'a str>, EngineError> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        match v {
            Some(s) => out.push(s),
            None => {
                return Err(EngineError::InvalidInput(format!(
                "{what} has a null at row {i}; drop or fill nulls first (e.g. df.drop_nulls(...))"
            )))
            }
        }
    }
    Ok(out)
}

/// Integer column of any integer type as u64 (for group / cluster ids). Nulls are rejected.
pub fn u64_values(chunks: &[ArrayRef], what: &str) -> Result<Vec<u64>, EngineError> {
    use arrow_array::types::*;
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
    for c in chunks {
        if c.null_count() > 0 {
            return Err(EngineError::InvalidInput(format!(
                "{what} contains nulls; fill them (e.g. with a unique id per row) first"
            )));
        }
        macro_rules! push {
            ($t:ty) => {
                out.extend(c.as_primitive::<$t>().values().iter().map(|&v| v as u64))
            };
        }
        match c.data_type() {
            DataType::UInt8 => push!(UInt8Type),
            DataType::UInt16 => push!(UInt16Type),
            DataType::UInt32 => push!(UInt32Type),
            DataType::UInt64 => push!(UInt64Type),
            DataType::Int8 => push!(Int8Type),
            DataType::Int16 => push!(Int16Type),
            DataType::Int32 => push!(Int32Type),
            DataType::Int64 => push!(Int64Type),
            other => {
                return Err(EngineError::InvalidInput(format!(
                    "{what} must be an integer column, got Arrow type {other}; map ids to integers first (mipo.engine does this for strings)"
                )))
            }
        }
    }
    Ok(out)
}

/// A UInt32 array from a Vec without copying.
pub fn u32_array(values: Vec<u32>) -> ArrayRef {
    Arc::new(arrow_array::UInt32Array::from(values))
}

/// A Boolean array from a Vec.
pub fn bool_array(values: Vec<bool>) -> ArrayRef {
    Arc::new(arrow_array::BooleanArray::from(values))
}
