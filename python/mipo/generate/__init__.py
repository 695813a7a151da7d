"""Response generation: one small backend protocol, two real backends, a resumable runner.

- ``hf``: transformers ``generate`` on CPU or GPU (:mod:`mipo.generate.hf`);
- ``vllm``: ``vllm.LLM`` fed token ids directly (:mod:`mipo.generate.vllm`);
- :func:`run_generation` splits requests into fixed-size chunks, writes each atomically, and skips
  finished chunks on rerun (:mod:`mipo.generate.runner`).

Example:
    >>> import polars as pl
    >>> from mipo.generate import GenerationConfig, run_generation
    >>> from mipo.models import resolve_model
    >>> requests = pl.DataFrame(
    ...     {"request_id": [0], "input_ids": [[1, 2, 3]], "seed": [7]},
    ...     schema={"request_id": pl.UInt64, "input_ids": pl.List(pl.UInt32), "seed": pl.UInt64},
    ... )
    >>> config = GenerationConfig(backend="hf", max_new_tokens=8)
    >>> run_generation(requests, "out/gen", model=resolve_model(None), config=config)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


@dataclass(frozen=True)
class GenerationResult:
    """One generated response.

    Attributes:
        text: the response, decoded without special tokens (the end-of-turn token excluded).
        num_response_tokens: tokens generated, counting the end-of-turn token when there is one
            (as vLLM counts them).
        finish_reason: ``"stop"`` (an end-of-turn token ended it) or ``"length"`` (it reached
            ``max_new_tokens``).
        token_ids: the generated token ids, the end-of-turn token included (not stored in the
            output files; for callers that score or inspect responses).
    """

    text: str
    num_response_tokens: int
    finish_reason: FinishReason
    token_ids: tuple[int, ...] = ()


BatchCallback = Callable[[int, int], None]
"""Called with (rows done, new tokens generated) after each finished batch, for progress; the hf
backend also calls it with (0, tokens) at each decoding step of a batch."""


@runtime_checkable
class Backend(Protocol):
    """What the runner needs from a generation backend.

    ``generate`` returns one result per input row, in input order. Results depend only on the
    rows passed in one call (their token ids and seeds), so a chunk regenerated after a crash
    comes out the same.
    """

    name: str

    def generate(
        self,
        input_ids: Sequence[Sequence[int]],
        seeds: Sequence[int],
        *,
        on_batch: BatchCallback | None = None,
    ) -> list[GenerationResult]: ...


def create_backend(model: Any, config: GenerationConfig) -> Backend:
    """Build the backend ``config.backend`` names for a :class:`~mipo.models.ResolvedModel`."""
    name = resolve_backend_name(config.backend, config.vllm_python)
    if name == "vllm":
        if not vllm_available():  # through another environment's interpreter
            from mipo.generate.remote import RemoteVLLMBackend

            return RemoteVLLMBackend(model, config)
        from mipo.generate.vllm import VLLMBackend

        return VLLMBackend(model, config)
    from mipo.generate.hf import HFBackend

    return HFBackend(model, config)


def request_seeds(request_ids: Sequence[int], seed: int) -> list[int]:
    """Per-row seeds derived from a run seed and stable row ids (SplitMix64), in ``[0, 2**63)``.

    A row keeps its seed whatever else is in the corpus, so adding rows does not change
    the responses of the others.

    >>> request_seeds([0, 1], 0) == request_seeds([0, 1], 0)
    True
    """
    mask = 2**64 - 1
    out = []
    for request_id in request_ids:
        z = (seed * 0x9E3779B97F4A7C15 + int(request_id) + 0x632BE59BD9B4E019) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append((z ^ (z >> 31)) >> 1)  # 63 bits: safe for every torch/vLLM seed API
    return out


# The runner imports the names above, so it is imported last.
from mipo.generate.runner import load_results, run_generation  # noqa: E402

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
