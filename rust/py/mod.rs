//! PyO3 bindings (feature `python`). The only place that enters native code from Python:
//! Arrow in and out through the PyCapsule interface, the GIL released around every heavy call,
//! every `EngineError` mapped to a `mipo.errors` class in [`errors`].

use pyo3::prelude::*;

pub mod arrow;
pub mod dedup;
pub mod derange;
pub mod errors;
pub mod ray;
pub mod tokenize;

/// Versions, thread count and features, for `mipo engine-info`.
#[pyfunction]
fn engine_info(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let d = pyo3::types::PyDict::new(py);
    d.set_item("engine_version", crate::VERSION)?;
    d.set_item("threads", rayon::current_num_threads())?;
    d.set_item(
        "features",
        vec![
            "dedup",
            "minhash-lsh",
            "chat-template",
            "tokenize",
            "derange",
        ],
    )?;
    // Resolved versions from Cargo.lock (build.rs), not the ranges Cargo.toml allows.
    d.set_item("tokenizers_crate", env!("MIPO_TOKENIZERS_VERSION"))?;
    d.set_item("minijinja_crate", env!("MIPO_MINIJINJA_VERSION"))?;
    d.set_item("debug_build", cfg!(debug_assertions))?;
    Ok(d)
}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::VERSION)?;
    m.add_function(wrap_pyfunction!(engine_info, m)?)?;
    dedup::register(m)?;
    tokenize::register(m)?;
    derange::register(m)?;
    ray::register(m)?;
    Ok(())
}
