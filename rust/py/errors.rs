//! EngineError -> mipo.errors, exhaustively. The Python classes are defined once, in
//! `python/mipo/errors.py`; we look them up by name so the hierarchy has one source of truth.

use pyo3::prelude::*;

use crate::error::EngineError;

/// Convert an engine error into the matching `mipo.errors` exception.
pub fn to_pyerr(err: EngineError) -> PyErr {
    Python::attach(|py| {
        let kind = err.kind();
        let message = err.to_string();
        match py.import("mipo.errors").and_then(|m| m.getattr(kind)) {
            Ok(cls) => PyErr::from_value(
                cls.call1((message,))
                    .unwrap_or_else(|e| e.into_value(py).into_bound(py).into_any()),
            ),
            // mipo.errors missing would be a packaging bug; still never panic.
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(format!("{kind}: {message}")),
        }
    })
}

/// `?`-friendly adapter: `engine_call().map_err(to_pyerr)?` reads as `engine_call().py()?`.
pub trait IntoPyResult<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, EngineError> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_pyerr)
    }
}
