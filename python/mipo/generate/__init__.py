"""Response generation: one small backend protocol, two real backends, three executors.

- :mod:`~mipo.generate.config`: :class:`GenerationConfig`, and how its ``auto`` values resolve;
- :mod:`~mipo.generate.backend`: the :class:`Backend` protocol and :class:`GenerationResult`;
  the backends are ``hf`` (transformers ``generate`` on CPU or GPU, :mod:`mipo.generate.hf`)
  and ``vllm`` (``vllm.LLM`` fed token ids directly, :mod:`mipo.generate.vllm`), and
  :func:`create_backend` (:mod:`~mipo.generate.backends`) picks one;
- :mod:`~mipo.generate.executors`: :func:`run_generation` splits requests into fixed-size
  chunks, writes each atomically and skips finished chunks on rerun, here (local), on a Ray
  cluster, or in vLLM's own environment (remote).

Example:
    >>> import polars as pl
    >>> from mipo.generate import GenerationConfig, run_generation
    >>> from mipo.models import resolve_model
    >>> requests = pl.DataFrame(
    ...     {"request_id": [0], "input_ids": [[1, 2, 3]], "seed": [7]},
    ...     schema={"request_id": pl.UInt64, "input_ids": pl.List(pl.UInt32), "seed": pl.UInt64},
    ... )
    >>> config = GenerationConfig(backend="hf", max_new_tokens=8)
    >>> # loads and runs a model (seconds to minutes): see tests/test_generate.py
    >>> run_generation(requests, "out/gen", model=resolve_model(None), config=config)  # doctest: +SKIP
"""

from __future__ import annotations

from mipo.generate.backend import Backend, BatchCallback, GenerationResult, request_seeds
from mipo.generate.backends import create_backend
from mipo.generate.config import (
    BACKENDS,
    DTYPES,
    NOT_OUTPUT_AFFECTING,
    VLLM_ONLY,
    BackendName,
    FinishReason,
    GenerationConfig,
    comparable_options,
    cuda_available,
    resolve_backend_name,
    resolve_device,
    resolve_dtype,
    vllm_available,
    vllm_cpu_build,
    vllm_device,
    vllm_python_works,
)
from mipo.generate.executors import load_results, run_generation

__all__ = [
    "BACKENDS",
    "DTYPES",
    "NOT_OUTPUT_AFFECTING",
    "VLLM_ONLY",
    "Backend",
    "BackendName",
    "BatchCallback",
    "FinishReason",
    "GenerationConfig",
    "GenerationResult",
    "comparable_options",
    "create_backend",
    "cuda_available",
    "load_results",
    "request_seeds",
    "resolve_backend_name",
    "resolve_device",
    "resolve_dtype",
    "run_generation",
    "vllm_available",
    "vllm_cpu_build",
    "vllm_device",
    "vllm_python_works",
]
