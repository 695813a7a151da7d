"""Negative strategies: which response is the *rejected* answer of each prompt.

- ``random``: the response to another prompt σ(i), σ a derangement drawn by the engine (no prompt
  is its own negative; with users, σ(i) belongs to another user; never a near duplicate of i);
- ``context-drop``: the response to prompt i with its context removed;
- ``both``: one pair of each kind per prompt.

>>> import polars as pl
>>> from mipo.negatives import assign_negatives
>>> sigma = assign_negatives(4, seed=0)
>>> sorted(sigma.to_list()), any(s == i for i, s in enumerate(sigma))
([0, 1, 2, 3], False)
"""

from __future__ import annotations

from typing import Literal, get_args

import polars as pl

from mipo import engine
from mipo.errors import ConfigError, CorpusError, DerangementError, MipoError

__all__ = [
    "STRATEGIES",
    "NegativeStrategy",
    "assign_negatives",
    "check_negatives",
    "parse_strategy",
    "strategy_kinds",
]

NegativeStrategy = Literal["random", "context-drop", "both"]
STRATEGIES: tuple[str, ...] = get_args(NegativeStrategy)


def parse_strategy(value: str) -> NegativeStrategy:
    """Validate a ``--negatives`` value.

    >>> parse_strategy("both")
    'both'
    """
    if value not in STRATEGIES:
        raise ConfigError(f"--negatives must be one of {', '.join(STRATEGIES)}, got {value!r}")
    return value  # type: ignore[return-value]


def strategy_kinds(strategy: NegativeStrategy) -> tuple[str, ...]:
    """The pair kinds a strategy produces, in output order.

    >>> strategy_kinds("both")
    ('random', 'context-drop')
    """
    return ("random", "context-drop") if strategy == "both" else (strategy,)


def _group_codes(users: pl.Series) -> pl.Series:
    """Dense UInt32 codes of a user column; each null user becomes a group of its own (an
    unknown user constrains nothing)."""
    codes = users.rank("dense").cast(pl.UInt32)
    if users.null_count():
        base = int(codes.max() or 0) + 1  # type: ignore[arg-type]
        fresh = pl.int_range(base, base + len(users), dtype=pl.UInt32, eager=True)
        codes = pl.select(pl.when(codes.is_null()).then(fresh).otherwise(codes)).to_series()
    return codes.rename("groups")


def _largest_group(users: pl.Series) -> tuple[str, int]:
    counts = users.drop_nulls().value_counts(sort=True)
    if counts.height == 0:
        return "", 0
    return str(counts[0, 0]), int(counts[0, 1])


def assign_negatives(
    n: int,
    *,
    seed: int,
    users: pl.Series | None = None,
    clusters: pl.Series | None = None,
) -> pl.Series:
    """σ for ``n`` prompts: ``sigma[i]`` is the index of the prompt whose response is i's negative.

    ``users`` (one id per prompt, nulls allowed) keeps σ(i) from i's user; ``clusters`` (near-
    duplicate cluster per prompt) keeps σ(i) out of i's cluster. Without either, σ is a uniform
    derangement. Raises :class:`CorpusError` below two prompts and :class:`DerangementError`
    when the constraints cannot be met, with the fix in the message.
    """
    if n < 2:
        raise CorpusError(
            f"random negatives need at least 2 distinct prompts, got {n}: add prompts to the corpus"
        )
    for name, column in (("users", users), ("clusters", clusters)):
        if column is not None and len(column) != n:
            raise ValueError(f"{name} has {len(column)} rows, expected {n}")

    groups = None
    if users is not None:
        user, size = _largest_group(users)
        if 2 * size > n:
            raise DerangementError(
                f"user {user!r} holds {size} of {n} prompts (more than half), so not every prompt "
                "can take its negative from another user: pass --no-user-constraint (negatives "
                "may then come from the same user) or add prompts from other users"
            )
        groups = _group_codes(users)
    cluster_codes = None
    if clusters is not None and clusters.n_unique() < n:
        cluster_codes = clusters.rank("dense").cast(pl.UInt32)
        largest = int(cluster_codes.value_counts(sort=True)[0, 1])
        if 2 * largest > n:
            raise CorpusError(
                f"{largest} of {n} prompts are near duplicates of one another (more than half), "
                "so they cannot all take a non-duplicate negative: deduplicate the corpus (drop "
                "--no-dedup) or add distinct prompts"
            )

    if groups is None and cluster_codes is None:
        sigma = engine.derangement(n, seed=seed)
    else:
        # The user constraint was checked above; any other infeasibility (a near-duplicate
        # cluster over half the rows) comes from the engine with its own fix in the message.
        sigma = engine.constrained_derangement(n, groups=groups, clusters=cluster_codes, seed=seed)
    sigma = sigma.cast(pl.UInt32).rename("negative_index")
    check_negatives(sigma, users=users, clusters=clusters)
    return sigma


def check_negatives(
    sigma: pl.Series, *, users: pl.Series | None = None, clusters: pl.Series | None = None
) -> None:
    """Verify σ is a permutation without fixed points that honours the constraints (O(n),
    vectorized). A failure here is a bug in the engine, not in the input."""
    n = len(sigma)
    frame = pl.DataFrame({"i": pl.int_range(0, n, dtype=pl.UInt32, eager=True), "s": sigma})
    problems = []
    largest = frame["s"].max() if n else 0
    if frame["s"].n_unique() != n or int(largest or 0) >= n:  # type: ignore[arg-type]
        problems.append("not a permutation")
    if (frame["i"] == frame["s"]).any():
        problems.append("a prompt is its own negative")
    for name, column in (("user", users), ("near-duplicate cluster", clusters)):
        if column is None:
            continue
        same = column.gather(frame["s"]) == column
        if same.fill_null(False).any():
            problems.append(f"a negative shares its prompt's {name}")
    if problems:
        raise MipoError(f"internal error: negative assignment invalid ({'; '.join(problems)})")
