"""Bootstrap confidence intervals: of a mean, and of a paired difference of means.

Percentile bootstrap with a seeded NumPy generator, so a report is reproducible. The paired
version resamples *rows* (the same indices for both arrays), which is what comparing two models
on the same prompts needs: per-prompt difficulty cancels out.

>>> ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)
>>> ci["mean"], ci["low"] <= ci["mean"] <= ci["high"]
(2.5, True)
>>> paired_bootstrap_ci([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], seed=0)["mean"]
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mipo.errors import ConfigError, InvalidInputError

__all__ = ["bootstrap_ci", "paired_bootstrap_ci"]

# Resample in blocks so n_resamples x n indices never exceed ~16M entries of memory.
_BLOCK_CELLS = 1 << 24


def _clean(values: Sequence[float | None]) -> Any:
    import numpy as np

    array = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return array[~np.isnan(array)]


def _resampled_means(values: Any, n_resamples: int, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    n = values.shape[0]
    block = max(1, _BLOCK_CELLS // max(n, 1))
    means = []
    for start in range(0, n_resamples, block):
        rows = min(block, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        means.append(values[idx].mean(axis=1))
    return np.concatenate(means)


def bootstrap_ci(
    values: Sequence[float | None],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean of ``values`` (nulls/NaN dropped) with a percentile bootstrap interval.

    Returns ``{"mean", "low", "high", "n"}``; with fewer than 2 values the interval is the mean
    itself (nothing to resample), and with none every number is NaN.
    """
    import numpy as np

    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    array = _clean(values)
    n = int(array.shape[0])
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    means = _resampled_means(array, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": mean, "low": float(low), "high": float(high), "n": n}


def paired_bootstrap_ci(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean of ``a - b`` over rows where both are present, with a paired bootstrap interval.

    Also reports ``p_greater``: the share of resamples where the mean difference is > 0.
    """

    if len(a) != len(b):
        raise InvalidInputError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diffs = [
        None if x is None or y is None else float(x) - float(y) for x, y in zip(a, b, strict=True)
    ]
    out: dict[str, float | int] = dict(
        bootstrap_ci(diffs, n_resamples=n_resamples, confidence=confidence, seed=seed)
    )
    array = _clean(diffs)
    if array.shape[0] >= 2:
        out["p_greater"] = float((_resampled_means(array, n_resamples, seed) > 0).mean())
    else:
        out["p_greater"] = math.nan if array.shape[0] == 0 else float(array[0] > 0)
    return out
