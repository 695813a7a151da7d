"""Bootstrap confidence intervals that respect how evaluation data cluster.

Held-out prompts are not independent: one user asks several questions (their responses share the
user's context), and one question is asked by several users. Resampling prompts as if they were
independent makes intervals too narrow. Here every interval is a percentile bootstrap of the mean
over *clusters*:

- ``clusters`` only (users): each replicate draws users with replacement and takes every prompt
  of a drawn user (as often as it was drawn) — the standard one-way cluster bootstrap;
- ``clusters`` and ``crossed`` (users and questions): each replicate draws users and, independently,
  questions; a prompt's weight is the product of its user's and its question's draw counts — the
  "pigeonhole" bootstrap for crossed random effects (Owen 2007, Ann. Appl. Stat. 1(2)). It is
  conservative (its variance is at least the true one) when both factors matter;
- neither: prompts are the units (only when the data have no user column).

Paired differences (model − baseline on the same prompts) resample the per-prompt differences
with the same weights, so per-prompt difficulty cancels. The generator is seeded NumPy, so a
report is reproducible.

>>> ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)
>>> ci["mean"], ci["low"] <= ci["mean"] <= ci["high"], ci["units"]
(2.5, True, 'prompts')
>>> paired_bootstrap_ci([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], seed=0)["mean"]
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mipo.errors import ConfigError, InvalidInputError

__all__ = [
    "bootstrap_ci",
    "cluster_weights",
    "paired_bootstrap_ci",
    "prompt_clusters",
    "resampling_label",
]

# Resample in blocks so replicates x rows never exceed ~16M weights in memory.
_BLOCK_CELLS = 1 << 24


def _codes(keys: Sequence[Any] | None, n: int, what: str) -> Any:
    """Dense integer codes of a cluster key per row (None: no clustering)."""
    import numpy as np

    if keys is None:
        return None
    if len(keys) != n:
        raise InvalidInputError(f"{what} has {len(keys)} entries but there are {n} values")
    index: dict[Any, int] = {}
    return np.asarray([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def prompt_clusters(users: Sequence[Any] | None, questions: Sequence[Any]) -> dict[str, Any]:
    """The cluster keys of held-out prompts: ``clusters`` = users (when known) and ``crossed`` =
    questions when a question is asked more than once (without users, questions alone).

    >>> prompt_clusters(["a", "a", "b"], ["q1", "q2", "q1"])["crossed"]
    ['q1', 'q2', 'q1']
    """
    questions = list(questions)
    repeated = len(set(questions)) < len(questions)
    if users is not None:
        return {
            "clusters": list(users),
            "crossed": questions if repeated else None,
            "cluster_kind": "users",
        }
    return {
        "clusters": questions if repeated else None,
        "crossed": None,
        "cluster_kind": "questions",
    }


def resampling_label(
    clusters: Sequence[Any] | None, crossed: Sequence[Any] | None, *, users: bool = True
) -> str:
    """What a replicate resamples, for reports: ``users and questions``, ``users``,
    ``questions`` (``clusters`` are questions: no user column) or ``prompts``.

    >>> resampling_label(["u1", "u2"], None)
    'users'
    """
    if clusters is not None and crossed is not None:
        return "users and questions"
    return "prompts" if clusters is None else ("users" if users else "questions")


def cluster_weights(
    n: int,
    replicates: int,
    *,
    clusters: Sequence[Any] | None = None,
    crossed: Sequence[Any] | None = None,
    seed: int = 0,
) -> Any:
    """``replicates x n`` bootstrap weights of the rows (see the module docstring).

    With no clustering the weights are multinomial counts over rows; with ``clusters`` each row
    gets its cluster's draw count; with ``crossed`` too, the product of both factors' counts.

    >>> w = cluster_weights(4, 3, clusters=["a", "a", "b", "b"], seed=1)
    >>> bool((w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 3]).all())
    True
    """
    import numpy as np

    rng = np.random.default_rng(seed)

    def draws(codes: Any) -> Any:
        k = int(codes.max()) + 1
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=replicates)
        return counts[:, codes]

    first = _codes(clusters, n, "clusters")
    second = _codes(crossed, n, "crossed")
    if first is None and second is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)
    weights = np.ones((replicates, n), dtype=np.float64)
    for codes in (first, second):
        if codes is not None:
            weights *= draws(codes)
    return weights


def _prepare(
    values: Sequence[float | None],
    clusters: Sequence[Any] | None,
    crossed: Sequence[Any] | None,
) -> tuple[Any, list[Any] | None, list[Any] | None]:
    """Drop rows whose value is missing (None/NaN), keeping the cluster keys aligned."""
    import numpy as np

    n = len(values)
    for keys, what in ((clusters, "clusters"), (crossed, "crossed")):
        if keys is not None and len(keys) != n:
            raise InvalidInputError(f"{what} has {len(keys)} entries but there are {n} values")
    array = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    keep = ~np.isnan(array)
    kept = np.flatnonzero(keep).tolist()

    def subset(keys: Sequence[Any] | None) -> list[Any] | None:
        return None if keys is None else [keys[i] for i in kept]

    return array[keep], subset(clusters), subset(crossed)


def bootstrap_ci(
    values: Sequence[float | None],
    *,
    clusters: Sequence[Any] | None = None,
    crossed: Sequence[Any] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster_kind: str = "users",
) -> dict[str, Any]:
    """Mean of ``values`` (None/NaN dropped) with a percentile cluster-bootstrap interval.

    Returns ``{"mean", "low", "high", "n", "clusters", "units"}``: ``n`` rows, ``clusters`` the
    number of distinct ``clusters`` keys among them (``n`` without clustering), ``units`` what a
    replicate resamples. With fewer than 2 rows or 2 clusters the interval is the mean itself
    (nothing to resample); with no values every number is NaN.
    """
    import numpy as np

    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    array, first, second = _prepare(values, clusters, crossed)
    n = int(array.shape[0])
    units = resampling_label(clusters, crossed, users=cluster_kind == "users")
    n_clusters = len(set(first)) if first is not None else n
    out: dict[str, Any] = {"n": n, "clusters": n_clusters, "units": units}
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, **out}
    mean = float(array.mean())
    if n == 1 or n_clusters == 1:
        return {"mean": mean, "low": mean, "high": mean, **out}
    block = max(1, _BLOCK_CELLS // n)
    estimates = []
    for start in range(0, n_resamples, block):
        rows = min(block, n_resamples - start)
        weights = cluster_weights(
            n, rows, clusters=first, crossed=second, seed=seed + 7919 * (start // block)
        )
        total = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            estimates.append((weights @ array) / total)
    replicate_means = np.concatenate(estimates)
    # A crossed replicate can draw no (user, question) cell that holds a row: it has no mean.
    replicate_means = replicate_means[np.isfinite(replicate_means)]
    if replicate_means.size == 0:
        return {"mean": mean, "low": math.nan, "high": math.nan, **out}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicate_means, [tail, 100 - tail])
    return {"mean": mean, "low": float(low), "high": float(high), **out}


def paired_bootstrap_ci(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    clusters: Sequence[Any] | None = None,
    crossed: Sequence[Any] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster_kind: str = "users",
) -> dict[str, Any]:
    """Mean of ``a - b`` over rows where both are present, with the cluster-bootstrap interval of
    :func:`bootstrap_ci` (the same rows and weights for both, so shared variation cancels)."""
    if len(a) != len(b):
        raise InvalidInputError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diffs = [
        None if x is None or y is None else float(x) - float(y) for x, y in zip(a, b, strict=True)
    ]
    return bootstrap_ci(
        diffs,
        clusters=clusters,
        crossed=crossed,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        cluster_kind=cluster_kind,
    )
