"""The pairs ``mipo train`` reads: Parquet, JSON Lines, or a saved Hugging Face ``datasets`` folder.

Each row needs ``prompt``, ``chosen`` and ``rejected``, in TRL's conversational form (lists of
``{role, content}`` messages) or as plain strings: a string prompt becomes one user message, a
string response one assistant message (the model's chat template renders both). Accepted inputs:

- a ``.parquet`` file (what ``mipo build-pairs`` writes), or a folder holding ``pairs.parquet``;
- a ``.jsonl`` / ``.ndjson`` file, one JSON object per line, or a folder holding ``pairs.jsonl``;
- a folder written by ``Dataset.save_to_disk`` (``state.json`` + Arrow files), or by
  ``DatasetDict.save_to_disk`` (``dataset_dict.json``; its ``train`` split is used).

``run.json`` beside the pairs (in the folder, or beside the file) names the generating model; the
provenance checks in :mod:`mipo.train.provenance` are the same whatever the format.

>>> # needs a pairs file: see tests/test_train.py
>>> from mipo.train.pairs_io import read_pairs  # doctest: +SKIP
>>> read_pairs("pairs.jsonl").columns  # doctest: +SKIP
['prompt', 'chosen', 'rejected']
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mipo.errors import CorpusError, DependencyError
from mipo.hashing import update_from_file

__all__ = [
    "PAIRS_FORMATS",
    "REQUIRED_PAIR_COLUMNS",
    "PairsSource",
    "pairs_sha256",
    "read_pairs",
    "resolve_pairs",
]

REQUIRED_PAIR_COLUMNS = ("prompt", "chosen", "rejected")
"""Columns the pairs must have (the rest are provenance and are ignored by training)."""

PAIRS_FORMATS = ("parquet", "jsonl", "datasets")
"""Formats :func:`resolve_pairs` recognises."""

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_HF_DATASET_FILES = ("state.json", "dataset_dict.json")  # what save_to_disk writes
_HF_MARKERS = (*_HF_DATASET_FILES, "dataset_info.json")
_MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
_ACCEPTED = (
    "pairs must be Parquet (.parquet), JSON Lines (.jsonl) or a folder saved with "
    "datasets' save_to_disk"
)
# Default role of a message given as a plain string.
_STRING_ROLE = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}


@dataclass(frozen=True)
class PairsSource:
    """Where the pairs are: ``path`` (a file, or a ``datasets`` folder) and its ``format``."""

    path: Path
    format: str

    @property
    def folder(self) -> Path:
        """The folder ``run.json`` is looked for in."""
        return self.path if self.path.is_dir() else self.path.parent


def resolve_pairs(path: str | os.PathLike[str]) -> PairsSource:
    """Find the pairs ``path`` names (a file, a pairs folder, or a saved ``datasets`` folder).

    >>> # needs a build-pairs output folder: see tests/test_train.py
    >>> resolve_pairs("out/pairs").path.name  # doctest: +SKIP
    'pairs.parquet'
    """
    path = Path(path)
    if path.is_dir():
        if (path / "pairs.parquet").is_file():
            return PairsSource(path / "pairs.parquet", "parquet")
        if any((path / name).is_file() for name in _HF_DATASET_FILES):
            return PairsSource(path, "datasets")
        if (path / "pairs.jsonl").is_file():
            return PairsSource(path / "pairs.jsonl", "jsonl")
        raise CorpusError(
            f"pairs folder {path} holds no pairs.parquet, pairs.jsonl or saved Hugging Face "
            "dataset (state.json): run `mipo build-pairs` first, or pass the pairs file itself"
        )
    if not path.is_file():
        raise CorpusError(f"pairs file {path} not found: run `mipo build-pairs` first")
    if path.name in _HF_MARKERS:  # the user pointed at a file inside a save_to_disk folder
        return PairsSource(path.parent, "datasets")
    if path.suffix.lower() in _JSONL_SUFFIXES:
        return PairsSource(path, "jsonl")
    return PairsSource(path, "parquet")


def read_pairs(path: str | os.PathLike[str] | PairsSource) -> pl.DataFrame:
    """Read and check the pairs: the three DPO columns as ``{role, content}`` message lists.

    Plain-string prompts become one user message, plain-string responses one assistant message.
    Raises :class:`CorpusError` for a missing file, an unreadable one, missing columns (named),
    wrong types, nulls, no rows, or pairs whose chosen and rejected responses are all the same.

    >>> # needs a pairs file: see tests/test_train.py
    >>> read_pairs("out/pairs.parquet").columns[:3]  # doctest: +SKIP
    ['prompt', 'chosen', 'rejected']
    """
    source = path if isinstance(path, PairsSource) else resolve_pairs(path)
    if source.format == "jsonl":
        df = _read_jsonl(source.path)
    elif source.format == "datasets":
        df = _read_hf_dataset(source.path)
    else:
        df = _read_parquet(source.path)
    return _check_pairs(df, source.path)


def pairs_sha256(source: PairsSource) -> str:
    """SHA-256 of the pairs' contents (of every data file, for a ``datasets`` folder)."""
    digest = hashlib.sha256()
    if source.path.is_dir():
        for file in sorted(source.path.rglob("*")):
            name = file.relative_to(source.path).as_posix()
            # datasets' map() caches land in the folder; they are not the data.
            if not file.is_file() or file.name.startswith((".", "cache-")):
                continue
            digest.update(name.encode() + b"\0")
            update_from_file(digest, file)
    else:
        update_from_file(digest, source.path)
    return digest.hexdigest()


# --- formats ------------------------------------------------------------------------------------


def _missing_columns_error(path: Path, missing: list[str], has: list[str], where: str = "") -> Any:
    hint = (
        "; TRL's implicit-prompt form (no prompt column) is not supported: move the shared "
        "opening messages into a prompt column"
        if missing == ["prompt"]
        else ""
    )
    return CorpusError(
        f"pairs file {path} lacks column(s) {', '.join(missing)}{where} (has "
        f"{', '.join(has) or 'nothing'}); it needs prompt, chosen and rejected{hint}"
    )


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as e:  # polars raises several error types for a non-Parquet file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorpusError(f"cannot read {path} as Parquet ({first}); {_ACCEPTED}") from e
    missing = [c for c in REQUIRED_PAIR_COLUMNS if c not in schema]
    if missing:
        raise _missing_columns_error(path, missing, list(schema))
    return pl.read_parquet(path, columns=list(REQUIRED_PAIR_COLUMNS))


def _read_jsonl(path: Path) -> pl.DataFrame:
    columns: dict[str, list[list[dict[str, str]]]] = {c: [] for c in REQUIRED_PAIR_COLUMNS}
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise CorpusError(
                        f"line {number} of {path} is not valid JSON ({e}); pairs JSONL holds one "
                        "{prompt, chosen, rejected} object per line"
                    ) from e
                if not isinstance(row, dict):
                    raise CorpusError(
                        f"line {number} of {path} is a JSON {type(row).__name__}, not an object "
                        "with prompt, chosen and rejected"
                    )
                missing = [c for c in REQUIRED_PAIR_COLUMNS if c not in row]
                if missing:
                    raise _missing_columns_error(path, missing, list(row), f" on line {number}")
                for c in REQUIRED_PAIR_COLUMNS:
                    columns[c].append(_messages(row[c], c, f"line {number} of {path}"))
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8 text ({e.reason}); {_ACCEPTED}") from e
    except OSError as e:
        raise CorpusError(f"cannot read pairs file {path}: {e.strerror}") from e
    return pl.DataFrame(columns, schema={c: _MESSAGES for c in REQUIRED_PAIR_COLUMNS})


def _messages(value: Any, column: str, where: str) -> list[dict[str, str]]:
    """One JSONL field as a message list (a string becomes one message)."""
    if isinstance(value, str):
        return [{"role": _STRING_ROLE[column], "content": value}]
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )
    if not ok or not value:
        got = "an empty list" if value == [] else f"{json.dumps(value)[:60]}"
        raise CorpusError(
            f"{column} on {where} must be a string or a non-empty list of {{role, content}} "
            f"messages with string content, got {got}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _read_hf_dataset(path: Path) -> pl.DataFrame:
    try:
        import datasets
    except ImportError as e:
        raise DependencyError(
            f"reading a saved Hugging Face dataset needs `datasets` ({e}); pip install 'mipo[hf]'"
        ) from e
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # FileNotFoundError, ValueError, Arrow errors, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorpusError(
            f"cannot load {path} as a saved Hugging Face dataset ({first}); write it with "
            "Dataset.save_to_disk, or pass a .parquet or .jsonl file"
        ) from e
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise CorpusError(
                f"dataset {path} has splits {', '.join(loaded)} and no 'train' split: save the "
                "split to train on by itself (ds['NAME'].save_to_disk(...))"
            )
    missing = [c for c in REQUIRED_PAIR_COLUMNS if c not in loaded.column_names]
    if missing:
        raise _missing_columns_error(path, missing, list(loaded.column_names))
    return loaded.select_columns(list(REQUIRED_PAIR_COLUMNS)).to_polars()


# --- checks ---------------------------------------------------------------------------------------


def _message_list_dtype(dtype: pl.DataType) -> bool:
    if not isinstance(dtype, pl.List) or not isinstance(dtype.inner, pl.Struct):
        return False
    fields = {f.name: f.dtype for f in dtype.inner.fields}
    return fields.get("role") == pl.String and fields.get("content") == pl.String


def _check_pairs(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    if df.height == 0:
        raise CorpusError(f"pairs file {path} has no pairs: nothing to train on")
    for name in REQUIRED_PAIR_COLUMNS:
        dtype = df.schema[name]
        if dtype == pl.String:
            df = df.with_columns(
                pl.when(pl.col(name).is_not_null())
                .then(
                    pl.concat_list(
                        pl.struct(
                            pl.lit(_STRING_ROLE[name]).alias("role"), pl.col(name).alias("content")
                        )
                    )
                )
                .alias(name)
            )
        elif not _message_list_dtype(dtype):
            raise CorpusError(
                f"column {name!r} of {path} must be a list of {{role, content}} messages (string "
                f"role and content) or a string, got {dtype}"
            )
    nulls = {c: df[c].null_count() for c in REQUIRED_PAIR_COLUMNS}
    empty = df.filter(
        pl.any_horizontal(pl.col(c).list.len() == 0 for c in REQUIRED_PAIR_COLUMNS)
    ).height
    null_content = df.filter(
        pl.any_horizontal(
            pl.col(c)
            .list.eval(
                pl.element().struct.field("content").is_null()
                | pl.element().struct.field("role").is_null()
            )
            .list.any()
            for c in REQUIRED_PAIR_COLUMNS
        )
    ).height
    if any(nulls.values()) or empty or null_content:
        raise CorpusError(
            f"pairs file {path} has null or empty messages ({nulls}, {empty} empty lists, "
            f"{null_content} rows with a null role or content); drop those rows or rebuild the "
            "pairs with `mipo build-pairs`"
        )
    # Keep only role/content: TRL renders the messages with the chat template, extra struct
    # fields (e.g. null tool calls) would reach the template.
    df = df.with_columns(
        pl.col(c).list.eval(
            pl.struct(pl.element().struct.field("role"), pl.element().struct.field("content"))
        )
        for c in REQUIRED_PAIR_COLUMNS
    )
    same = df.select((_normalized("chosen") == _normalized("rejected")).sum()).item()
    if same == df.height:
        raise CorpusError(
            f"every chosen response in {path} equals its rejected one (ignoring whitespace), so "
            "DPO has nothing to learn: rejected must hold a different response (check the column "
            "mapping, or rebuild the pairs with `mipo build-pairs`)"
        )
    return df


def _normalized(column: str) -> pl.Expr:
    """A message list as one string, whitespace runs collapsed: for comparing responses."""
    element = pl.element().struct
    return (
        pl.col(column)
        .list.eval(
            pl.concat_str(
                element.field("role"),
                pl.lit("\x1f"),
                element.field("content").str.replace_all(r"\s+", " ").str.strip_chars(),
            )
        )
        .list.join("\x1e")
    )
