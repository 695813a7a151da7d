//! Bindings for [`crate::tokenize`]: `_engine.ChatTokenizer`.
//!
//! Messages arrive as an Arrow `list<struct<role, content>>` column in any layout Polars or
//! pyarrow export (List / LargeList of Utf8 / LargeUtf8 / Utf8View; extra struct fields are
//! ignored), borrowed without copying the text. Token ids leave as one Arrow `list<uint32>`
//! array plus a `uint32` length array: no per-row Python objects either way.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, GenericListArray, OffsetSizeTrait, StructArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use pyo3::prelude::*;
use pyo3_arrow::{PyArray, PyChunkedArray};

use super::arrow::{chunked_str_values, require_non_null, str_values, u32_array};
use super::errors::IntoPyResult;
use crate::error::{EngineError, Result};
use crate::tokenize::{ChatTokenizer, Conversations, Message, TemplateLimits};

/// A model's tokenizer and chat template; renders and encodes Arrow columns in parallel.
#[pyclass(name = "ChatTokenizer", module = "mipo._engine", frozen)]
pub struct PyChatTokenizer {
    inner: ChatTokenizer,
}

#[pymethods]
impl PyChatTokenizer {
    /// Load `tokenizer.json`, the chat template and the special tokens from a model folder;
    /// `chat_template` (a Jinja source) overrides the folder's template; `pretoken_cache=False`
    /// sends every text through the tokenizers crate (same ids, slower); `template_fuel` and
    /// `template_max_bytes` bound each render (None: the engine's defaults).
    #[staticmethod]
    #[pyo3(signature = (path, chat_template=None, pretoken_cache=true, template_fuel=None, template_max_bytes=None))]
    fn from_dir(
        py: Python<'_>,
        path: &str,
        chat_template: Option<&str>,
        pretoken_cache: bool,
        template_fuel: Option<u64>,
        template_max_bytes: Option<usize>,
    ) -> PyResult<Self> {
        let limits = TemplateLimits::new(
            template_fuel.unwrap_or(TemplateLimits::DEFAULT_FUEL),
            template_max_bytes.unwrap_or(TemplateLimits::DEFAULT_MAX_BYTES),
        )
        .py_err()?;
        let inner = py
            .detach(|| ChatTokenizer::from_dir(path, chat_template)?.with_template_limits(limits))
            .py_err()?
            .with_pretoken_cache(pretoken_cache);
        Ok(PyChatTokenizer { inner })
    }

    /// `(fuel, max_bytes)`: what one render may cost.
    #[getter]
    fn template_limits(&self) -> (u64, usize) {
        let limits = self.inner.template_limits();
        (limits.fuel, limits.max_bytes)
    }

    /// Whether texts are encoded through the engine's pre-token cache (byte-level BPE).
    #[getter]
    fn pretoken_cache(&self) -> bool {
        self.inner.uses_pretoken_cache()
    }

    #[getter]
    fn chat_template(&self) -> Option<&str> {
        self.inner.chat_template()
    }

    #[getter]
    fn bos_token(&self) -> Option<&str> {
        self.inner.special_tokens().bos_token.as_deref()
    }

    #[getter]
    fn eos_token(&self) -> Option<&str> {
        self.inner.special_tokens().eos_token.as_deref()
    }

    #[getter]
    fn pad_token(&self) -> Option<&str> {
        self.inner.special_tokens().pad_token.as_deref()
    }

    /// Vocabulary size including added tokens (`len(tokenizer)` in transformers).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// Render each conversation to its prompt string (Arrow string array).
    #[pyo3(signature = (messages, add_generation_prompt))]
    fn render(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> PyResult<PyArray> {
        let chunks = &arrow_chunks(messages, "messages")?;
        let out = py
            .detach(|| -> Result<ArrayRef> {
                let conversations = read_conversations(chunks)?;
                let texts = self.inner.render(&conversations, add_generation_prompt)?;
                Ok(string_array(texts))
            })
            .py_err()?;
        Ok(PyArray::from_array_ref(out))
    }

    /// Render and encode each conversation: `(ids: list<uint32>, lengths: uint32)`.
    #[pyo3(signature = (messages, add_generation_prompt))]
    fn encode_chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> PyResult<(PyArray, PyArray)> {
        let chunks = &arrow_chunks(messages, "messages")?;
        let (ids, lengths) = py
            .detach(|| -> Result<(ArrayRef, ArrayRef)> {
                let conversations = read_conversations(chunks)?;
                let ids = self
                    .inner
                    .encode_chat(&conversations, add_generation_prompt)?;
                ids_arrays(ids)
            })
            .py_err()?;
        Ok((
            PyArray::from_array_ref(ids),
            PyArray::from_array_ref(lengths),
        ))
    }

    /// Encode plain strings: `(ids: list<uint32>, lengths: uint32)`.
    #[pyo3(signature = (texts, add_special_tokens))]
    fn encode(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        add_special_tokens: bool,
    ) -> PyResult<(PyArray, PyArray)> {
        let chunks = &arrow_chunks(texts, "texts")?;
        let (ids, lengths) = py
            .detach(|| -> Result<(ArrayRef, ArrayRef)> {
                let texts = require_non_null(chunked_str_values(chunks, "texts")?, "texts")?;
                ids_arrays(self.inner.encode(&texts, add_special_tokens)?)
            })
            .py_err()?;
        Ok((
            PyArray::from_array_ref(ids),
            PyArray::from_array_ref(lengths),
        ))
    }

    fn __repr__(&self) -> String {
        format!(
            "ChatTokenizer(vocab_size={}, bos_token={:?}, eos_token={:?}, chat_template={})",
            self.inner.vocab_size(),
            self.inner.special_tokens().bos_token,
            self.inner.special_tokens().eos_token,
            if self.inner.chat_template().is_some() {
                "<set>"
            } else {
                "None"
            }
        )
    }
}

/// The chunks of any Arrow column: a stream (`__arrow_c_stream__`: Polars Series, pyarrow
/// ChunkedArray) or a single array (`__arrow_c_array__`: pyarrow Array). An import failure
/// (e.g. Polars exports an all-null struct field as a Null array that arrow-rs rejects) becomes
/// `InvalidInputError` rather than a bare TypeError.
fn arrow_chunks(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<ArrayRef>> {
    let imported = if obj.hasattr("__arrow_c_stream__")? {
        obj.extract::<PyChunkedArray>().map(|c| c.into_inner().0)
    } else if obj.hasattr("__arrow_c_array__")? {
        obj.extract::<PyArray>().map(|a| vec![a.into_inner().0])
    } else {
        return Err(EngineError::InvalidInput(format!(
            "{what} must be an Arrow column (a Polars Series or a pyarrow array), got {}",
            obj.get_type().name()?
        )))
        .py_err();
    };
    imported.or_else(|e| {
        Err(EngineError::InvalidInput(format!(
            "{what} could not be read as Arrow ({e}); cast it to the expected type first (messages: list<struct<role: str, content: str>>, texts: str), e.g. with .cast(...)"
        )))
        .py_err()
    })
}

/// Borrow a `list<struct<role, content>>` column as flat conversations.
fn read_conversations(chunks: &[ArrayRef]) -> Result<Conversations<'_>> {
    let rows: usize = chunks.iter().map(|c| c.len()).sum();
    let mut out = Conversations::with_capacity(rows, rows * 2);
    let mut row0 = 0;
    for chunk in chunks {
        match chunk.data_type() {
            DataType::List(_) => read_list(chunk.as_list::<i32>(), row0, &mut out)?,
            DataType::LargeList(_) => read_list(chunk.as_list::<i64>(), row0, &mut out)?,
            other => {
                return Err(EngineError::InvalidInput(format!(
                    "messages must be a list of {{role, content}} structs (Arrow list<struct<role: string, content: string>>), got Arrow type {other}; build it e.g. as pl.Series([[{{\"role\": \"user\", \"content\": \"Hi\"}}]])"
                )))
            }
        }
        row0 += chunk.len();
    }
    Ok(out)
}

fn read_list<'a, O: OffsetSizeTrait>(
    list: &'a GenericListArray<O>,
    row0: usize,
    out: &mut Conversations<'a>,
) -> Result<()> {
    let structs: &StructArray = list.values().as_struct_opt().ok_or_else(|| {
        EngineError::InvalidInput(format!(
            "messages must hold structs with role and content fields, but its items have Arrow type {}; build each message as {{\"role\": ..., \"content\": ...}}",
            list.values().data_type()
        ))
    })?;
    let field = |name: &str| -> Result<Vec<Option<&'a str>>> {
        let column = structs.column_by_name(name).ok_or_else(|| {
            let names: Vec<&str> = structs.column_names();
            EngineError::InvalidInput(format!(
                "messages have no \"{name}\" field (fields: {}); every message needs role and content (rename your fields, e.g. with pl.col(...).list.eval(...))",
                names.join(", ")
            ))
        })?;
        str_values(column.as_ref(), &format!("the message field \"{name}\""))
    };
    let roles = field("role")?;
    let contents = field("content")?;
    let offsets = list.value_offsets();
    for i in 0..list.len() {
        let row = row0 + i;
        if list.is_null(i) {
            return Err(EngineError::InvalidInput(format!(
                "messages is null at row {row}; drop that row or give it at least one message"
            )));
        }
        let (start, end) = (offsets[i].as_usize(), offsets[i + 1].as_usize());
        if start == end {
            return Err(EngineError::InvalidInput(format!(
                "messages at row {row} is an empty conversation; every row needs at least one message"
            )));
        }
        for (k, j) in (start..end).enumerate() {
            if structs.is_null(j) {
                return Err(EngineError::InvalidInput(format!(
                    "message {k} of row {row} is null; drop it or give it a role and content"
                )));
            }
            let (role, content) = match (roles[j], contents[j]) {
                (Some(r), Some(c)) => (r, c),
                (None, _) => {
                    return Err(EngineError::InvalidInput(format!(
                        "message {k} of row {row} has a null role; every message needs a role (e.g. \"user\")"
                    )))
                }
                (_, None) => {
                    return Err(EngineError::InvalidInput(format!(
                        "message {k} of row {row} has null content; fill it (e.g. with \"\") or drop the message"
                    )))
                }
            };
            out.push_message(Message { role, content });
        }
        out.end_row();
    }
    Ok(())
}

/// Strings as Utf8, or LargeUtf8 if they exceed 2 GiB in total.
fn string_array(texts: Vec<String>) -> ArrayRef {
    let bytes: usize = texts.iter().map(String::len).sum();
    if bytes <= i32::MAX as usize {
        Arc::new(arrow_array::StringArray::from(texts))
    } else {
        Arc::new(arrow_array::LargeStringArray::from(texts))
    }
}

/// Token ids as `list<uint32>` (LargeList past 2^31 ids in total) plus their lengths.
fn ids_arrays(ids: Vec<Vec<u32>>) -> Result<(ArrayRef, ArrayRef)> {
    let lengths: Vec<u32> = ids
        .iter()
        .map(|v| {
            u32::try_from(v.len()).map_err(|_| {
                EngineError::InvalidInput(format!(
                    "a text encodes to {} tokens, more than a uint32 length can hold; split it",
                    v.len()
                ))
            })
        })
        .collect::<Result<_>>()?;
    let total: usize = ids.iter().map(Vec::len).sum();
    let mut flat = Vec::with_capacity(total);
    for v in &ids {
        flat.extend_from_slice(v);
    }
    drop(ids);
    let values: ArrayRef = Arc::new(arrow_array::UInt32Array::new(
        ScalarBuffer::from(flat),
        None,
    ));
    let item = Arc::new(Field::new_list_field(DataType::UInt32, true));
    let list: ArrayRef = if total <= i32::MAX as usize {
        let offsets = OffsetBuffer::<i32>::from_lengths(lengths.iter().map(|&n| n as usize));
        Arc::new(GenericListArray::<i32>::new(item, offsets, values, None))
    } else {
        let offsets = OffsetBuffer::<i64>::from_lengths(lengths.iter().map(|&n| n as usize));
        Arc::new(GenericListArray::<i64>::new(item, offsets, values, None))
    };
    Ok((list, u32_array(lengths)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyChatTokenizer>()?;
    Ok(())
}
