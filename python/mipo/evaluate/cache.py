"""Per-model evaluation results kept across runs (``mipo eval --eval-cache DIR``).

An evaluation's per-row results for one model — its responses, their scores under the
reference, multiple-choice picks — depend only on that model's weights, the data file and the
evaluation settings. A sweep compares many tuned models with one baseline, and ``mipo run``
compares every round with the same base model: with a cache the baseline is generated and scored
once. Entries are keyed by a hash of everything the results depend on (weights digest, data
digest, settings, reference digest, mipo version), written atomically, and a corrupt entry is an
error naming the file, never a silent recompute with different numbers.

>>> import tempfile
>>> import polars as pl
>>> cache = ResultCache(tempfile.mkdtemp())
>>> key = cache.key(model="3f2a...", data="9c1d...", settings={"seed": 0})
>>> cache.load(key, "baseline") is None
True
>>> cache.save(key, "baseline", pl.DataFrame({"pmi": [1.5]}), ["scored once"])
>>> cache.load(key, "baseline")[1]
['scored once']
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from mipo.errors import OutputError
from mipo.hashing import update_from_file
from mipo.io import write_json_atomic, write_parquet_atomic

__all__ = ["ResultCache", "content_digest"]


def content_digest(path: str | os.PathLike[str], *, suffixes: tuple[str, ...] = ()) -> str:
    """SHA-256 of a file, or of every file of a folder (names and bytes, sorted), optionally only
    those ending in ``suffixes`` plus ``config.json`` (a model's weights and shape).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_text("x")
    >>> content_digest(p)[:12]
    '2d711642b726'
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    if suffixes and root.is_dir():
        files = [p for p in files if p.name.endswith(suffixes) or p.name == "config.json"]
    digest = hashlib.sha256()
    for file in files:
        if root.is_dir():
            digest.update(str(file.relative_to(root)).encode() + b"\0")
        update_from_file(digest, file)
    return digest.hexdigest()


class ResultCache:
    """A folder of ``<key>.parquet`` (role-free per-row columns) + ``<key>.json`` (notes)."""

    SUFFIX = "__cached"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[
            :24
        ]

    def load(self, key: str, role: str) -> tuple[pl.DataFrame, list[str]] | None:
        """The cached columns renamed to ``role`` and the notes, or None when absent."""
        table, notes = self.folder / f"{key}.parquet", self.folder / f"{key}.json"
        if not table.is_file() or not notes.is_file():
            return None
        try:
            frame = pl.read_parquet(table)
            meta = json.loads(notes.read_text(encoding="utf-8"))
        except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
            raise OutputError(
                f"evaluation cache entry {table} is unreadable ({exc}); delete it (or the "
                "--eval-cache folder) and rerun"
            ) from exc
        renamed = {c: c.removesuffix(self.SUFFIX) + f"_{role}" for c in frame.columns}
        return frame.rename(renamed), list(meta.get("notes", []))

    def save(self, key: str, role: str, frame: pl.DataFrame, notes: list[str]) -> None:
        """Store the ``*_<role>`` columns of ``frame`` (temporary files + rename)."""
        suffix = f"_{role}"
        columns = [c for c in frame.columns if c.endswith(suffix) and not c.startswith("judge_")]
        stored = frame.select(columns).rename(
            {c: c.removesuffix(suffix) + self.SUFFIX for c in columns}
        )
        # The table first, its notes last: load() takes an entry only when both are there.
        write_parquet_atomic(stored, self.folder / f"{key}.parquet")
        write_json_atomic({"notes": notes}, self.folder / f"{key}.json")
