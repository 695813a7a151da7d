"""The train/eval split of ``mipo run``: whole users held out for evaluation (or a separate
``eval_data`` file), seeded samples of both sides, written to ``OUTDIR/data/``.

>>> import polars as pl
>>> rows = pl.DataFrame({"user": ["a", "a", "b", "b", "c", "c"], "question": list("uvwxyz")})
>>> train, held = split_corpus(rows, "user", 0.3, seed=0)
>>> held.height
2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mipo.corpus import open_corpus
from mipo.errors import CorpusError
from mipo.io import read_json_record, write_json_atomic, write_parquet_atomic
from mipo.run.report import EVAL_NAME

if TYPE_CHECKING:
    from mipo.run.config import RunConfig

__all__ = ["DATA_DIR", "SPLIT_FILE", "Split", "compute_split", "split_corpus", "write_split"]

DATA_DIR = "data"
SPLIT_FILE = "split.json"


def _sample(frame: pl.DataFrame, limit: int | None, seed: int) -> pl.DataFrame:
    """At most ``limit`` rows, a seeded sample that keeps the corpus order."""
    if limit is None or frame.height <= limit:
        return frame
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).choice(frame.height, size=limit, replace=False))
    return frame[keep.tolist()]


def split_corpus(
    frame: pl.DataFrame, user_column: str | None, eval_fraction: float, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split rows into ``(train, eval)``: whole users go to one side when ``user_column`` is set.

    Users (or rows) are shuffled with ``seed`` and taken for evaluation until at least
    ``eval_fraction`` of the rows are held out; both sides keep at least 2 rows (and 1 user).

    >>> rows = pl.DataFrame({"user": ["a", "a", "b", "b", "c", "c"], "question": list("uvwxyz")})
    >>> train, held = split_corpus(rows, "user", 0.3, seed=0)
    >>> held.height, set(held["user"]) & set(train["user"])
    (2, set())
    """
    import numpy as np

    n = frame.height
    rng = np.random.default_rng(seed)
    want = max(2, math.ceil(eval_fraction * n))
    if user_column is None:
        if n < 4 or n - want < 2:
            raise CorpusError(
                f"the corpus has {n} prompts: too few to hold out {eval_fraction:.0%} for "
                "evaluation (at least 2) and train on the rest (at least 2); use a larger "
                "corpus, a smaller --eval-fraction, or a separate file (--set eval_data=FILE)"
            )
        order = rng.permutation(n)
        held = np.zeros(n, dtype=bool)
        held[order[:want]] = True
    else:
        users = frame[user_column].cast(pl.String).fill_null("")
        counts = users.value_counts(sort=False).sort(user_column)
        names, sizes = counts[user_column].to_list(), counts["count"].to_list()
        chosen: set[str] = set()
        taken = 0
        for i in rng.permutation(len(names)):
            if taken >= want:
                break
            chosen.add(names[i])
            taken += sizes[i]
        if len(names) < 2 or len(chosen) >= len(names) or taken < 2 or n - taken < 2:
            raise CorpusError(
                f"the corpus has {n} prompts from {len(names)} users: too few to hold out "
                f"{eval_fraction:.0%} of them as whole users for evaluation and train on the "
                "rest (each side needs 2 prompts and 1 user); use a larger corpus, a smaller "
                "--eval-fraction, or a separate file (--set eval_data=FILE)"
            )
        held = users.is_in(sorted(chosen)).to_numpy()
    mask = pl.Series(held)
    return frame.filter(~mask), frame.filter(mask)


@dataclass(frozen=True)
class Split:
    """The training and held-out prompts of a run, and what the split did (``split.json``)."""

    train: pl.DataFrame
    held_out: pl.DataFrame
    info: dict[str, Any]


def compute_split(config: RunConfig) -> Split:
    """The split in memory (nothing written): errors surface before OUTDIR is touched."""
    # The rows are copied with all their own columns (Corpus.rows, not the standardized
    # shape), so build-pairs and eval detect the same columns in the split files.
    corpus = open_corpus(config.corpus, config.columns)
    rows = corpus.collect(corpus.rows())
    user = corpus.columns.user
    if config.eval_data is None:
        train_rows, eval_rows = split_corpus(rows, user, config.eval_fraction, config.seed)
        held_out_by = "users" if user else "rows"
    else:
        held = open_corpus(config.eval_data, config.columns)
        train_rows, eval_rows = rows, held.collect(held.rows())
        user = held.columns.user
        held_out_by = "file"
    train_rows = _sample(train_rows, config.max_prompts, config.seed)
    eval_rows = _sample(eval_rows, config.max_eval_prompts, config.seed + 1)
    if eval_rows.height < 2 or train_rows.height < 2:
        raise CorpusError(
            f"{eval_rows.height} held-out and {train_rows.height} training prompts: both sides "
            "need at least 2; use a larger corpus or larger --max-prompts / "
            "--set max_eval_prompts=N"
        )

    def users_of(frame: pl.DataFrame) -> int | None:
        return frame[user].n_unique() if user and user in frame.columns else None

    info = {
        "corpus_rows": rows.height,
        "held_out_by": held_out_by,
        "eval_source": config.eval_data or config.corpus,
        "train_prompts": train_rows.height,
        "train_users": users_of(train_rows),
        "eval_prompts": eval_rows.height,
        "eval_users": users_of(eval_rows),
    }
    return Split(train_rows, eval_rows, info)


def write_split(split: Split, out: Path) -> dict[str, Any]:
    """Write ``OUTDIR/data/`` (train.parquet, eval.parquet, split.json last); a folder that
    already holds a finished split keeps it."""
    data = out / DATA_DIR
    marker = data / SPLIT_FILE
    finished = read_json_record(marker, what="split record")
    if finished is not None:  # a continued run keeps the split it started with
        return finished
    write_parquet_atomic(split.train, data / "train.parquet")
    write_parquet_atomic(split.held_out, data / f"{EVAL_NAME}.parquet")
    write_json_atomic(split.info, marker)  # last: the split is complete
    return split.info
