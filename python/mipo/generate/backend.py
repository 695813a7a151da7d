"""What a generation backend is: the :class:`Backend` protocol, the :class:`GenerationResult`
it returns per row, the progress callback it calls, and the per-row seeds it is given.

The backends are :mod:`mipo.generate.hf` (transformers) and :mod:`mipo.generate.vllm`; which one
a config gets on this machine is decided in :func:`mipo.generate.backends.create_backend`.

>>> GenerationResult(text="Hi.", num_response_tokens=3, finish_reason="stop").finish_reason
'stop'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mipo.generate.config import FinishReason

__all__ = ["Backend", "BatchCallback", "GenerationResult", "request_seeds"]


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
    """What an executor needs from a generation backend.

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


def request_seeds(request_ids: Sequence[int], seed: int) -> list[int]:
    """Per-row seeds derived from a run seed and stable row ids (SplitMix64), in ``[0, 2**63)``.

    A row keeps its seed whatever else is in the corpus, so adding rows does not change
    the responses of the others.

    >>> request_seeds([0, 1], 0) == request_seeds([0, 1], 0)
    True
    >>> request_seeds([0, 1], 0) != request_seeds([0, 1], 1)
    True
    >>> all(0 <= s < 2**63 for s in request_seeds(range(100), 2**64 - 1))
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
