"""Typed facade over the native engine :mod:`mipo._engine`.

Every function takes Polars data (anything exporting ``__arrow_c_stream__``) and returns Polars;
columns cross as Arrow through the PyCapsule interface, the GIL is released inside, and no per-row
Python object is created. Errors are :mod:`mipo.errors` classes.

>>> import polars as pl
>>> from mipo import engine
>>> engine.dedup(pl.Series(["Hello  world", "hello world", "something else"]))["keep"].to_list()
[True, False, True]
>>> sorted(engine.derangement(5, seed=0).to_list())
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mipo import _engine
from mipo.errors import InvalidInputError, InvalidParameterError

__all__ = [
    "ChatTokenizer",
    "DedupConfig",
    "constrained_derangement",
    "dedup",
    "derangement",
    "engine_info",
    "normalize",
]


def _series(obj: Any, name: str) -> pl.Series:
    """An Arrow object from the engine (PyCapsule interface) as a named Polars Series."""
    # Polars 2.1 drops the name when it builds a Series through `__arrow_c_array__` (the path
    # pyo3-arrow's arrays take), so name it again; alias is zero-copy.
    return pl.Series(name, obj).alias(name)


def _as_series(data: Any, what: str) -> pl.Series:
    if isinstance(data, pl.Series):
        return data
    if isinstance(data, pl.DataFrame):
        if data.width != 1:
            raise InvalidInputError(
                f"{what} must be a single column, got a frame with columns {data.columns}; "
                "pass df['column'] instead"
            )
        return data.to_series()
    if hasattr(data, "__arrow_c_stream__") or hasattr(data, "__arrow_c_array__"):
        return pl.Series(data)
    if isinstance(data, list | tuple):
        return pl.Series(what, data)
    raise InvalidInputError(
        f"{what} must be a Polars Series (or an Arrow array), got {type(data).__name__}"
    )


def engine_info() -> dict[str, Any]:
    """Versions, rayon thread count and compiled features of the native engine."""
    info = dict(_engine.engine_info())
    info["threads_env"] = os.environ.get("RAYON_NUM_THREADS")
    return info


# --- deduplication ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupConfig:
    """Parameters of exact + near-duplicate detection.

    Defaults follow datatrove's MinHash dedup (word 5-grams, 14 bands x 8 rows = 112 hashes),
    with candidate pairs verified at a true Jaccard similarity of 0.8 on the shingle sets.
    """

    ngram: int = 5
    """Words per shingle. Texts shorter than ``ngram`` words form a single shingle."""
    num_perm: int = 112
    """MinHash signature length (number of hash functions); must equal ``bands * rows``."""
    bands: int = 14
    """LSH bands; each band of ``num_perm // bands`` rows is hashed into buckets."""
    threshold: float = 0.8
    """Jaccard similarity of shingle sets at or above which two texts are near duplicates."""
    seed: int = 0
    """Seed of the MinHash hash functions."""
    near: bool = True
    """Detect near duplicates (False: exact duplicates only)."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise InvalidParameterError(f"ngram must be >= 1, got {self.ngram}")
        if self.num_perm < 1 or self.bands < 1 or self.num_perm % self.bands:
            raise InvalidParameterError(
                f"num_perm ({self.num_perm}) must be a positive multiple of bands ({self.bands})"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidParameterError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.seed < 0:
            raise InvalidParameterError(f"seed must be >= 0, got {self.seed}")


def normalize(texts: Any) -> pl.Series:
    """NFKC, case folding and whitespace collapsing — the text dedup compares.

    >>> normalize(pl.Series(["  Ｈello\\tWORLD "])).to_list()
    ['hello world']
    """
    s = _as_series(texts, "texts")
    return _series(_engine.normalize(s), s.name or "normalized")


def dedup(texts: Any, config: DedupConfig | None = None, **overrides: Any) -> pl.DataFrame:
    """Exact and near duplicates of a string column.

    Returns a frame with one row per input row:

    - ``keep`` (Boolean): True for the first row of each duplicate cluster;
    - ``cluster`` (UInt32): the index of that first row (so ``cluster == row index`` iff kept);
    - ``exact`` (Boolean): True if the row is an exact duplicate (after normalization) of an
      earlier row.

    Deterministic: same input and config, same output, at any thread count.
    """
    cfg = config or DedupConfig()
    if overrides:
        cfg = DedupConfig(**{**cfg.__dict__, **overrides})
    s = _as_series(texts, "texts")
    keep, cluster, exact = _engine.dedup(
        s, cfg.ngram, cfg.num_perm, cfg.bands, cfg.threshold, cfg.seed, cfg.near
    )
    return pl.DataFrame(
        [_series(keep, "keep"), _series(cluster, "cluster"), _series(exact, "exact")]
    )


# --- chat templates + tokenization -----------------------------------------------------------


class ChatTokenizer:
    """A model's tokenizer and chat template, rendered and encoded natively in parallel.

    Loads ``tokenizer.json`` and the chat template (``chat_template.jinja`` or the
    ``chat_template`` of ``tokenizer_config.json``) from a model folder. Rendering follows
    transformers' ``apply_chat_template`` (jinja2 with ``trim_blocks``/``lstrip_blocks``,
    ``raise_exception``, ``tojson``, ``strftime_now``, loop controls), and encoding adds no
    special tokens, so the ids equal ``apply_chat_template(..., tokenize=True)`` token for token.

    >>> tok = ChatTokenizer.from_pretrained("path/to/model")  # doctest: +SKIP
    >>> msgs = pl.Series([[{"role": "user", "content": "Hi"}]])  # doctest: +SKIP
    >>> tok.encode_chat(msgs)["num_tokens"].to_list()  # doctest: +SKIP
    [11]
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], chat_template: str | None = None
    ) -> ChatTokenizer:
        """Load from a model folder (``tokenizer.json`` + template); ``chat_template`` overrides.

        A folder without a chat template still loads (for :meth:`encode`); :meth:`render` and
        :meth:`encode_chat` then raise :class:`~mipo.errors.TemplateError`.
        """
        return cls(_engine.ChatTokenizer.from_dir(str(Path(path)), chat_template))

    @property
    def chat_template(self) -> str | None:
        return self._native.chat_template

    @property
    def bos_token(self) -> str | None:
        return self._native.bos_token

    @property
    def eos_token(self) -> str | None:
        return self._native.eos_token

    @property
    def pad_token(self) -> str | None:
        return self._native.pad_token

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added tokens (``len(tokenizer)`` in transformers)."""
        return self._native.vocab_size

    def render(self, messages: Any, *, add_generation_prompt: bool = True) -> pl.Series:
        """Render a ``list[struct{role, content}]`` column to prompt strings."""
        s = _as_series(messages, "messages")
        return _series(self._native.render(s, add_generation_prompt), "text")

    def encode_chat(self, messages: Any, *, add_generation_prompt: bool = True) -> pl.DataFrame:
        """Render and encode; returns ``input_ids`` (List[UInt32]) and ``num_tokens`` (UInt32)."""
        s = _as_series(messages, "messages")
        ids, lengths = self._native.encode_chat(s, add_generation_prompt)
        return pl.DataFrame([_series(ids, "input_ids"), _series(lengths, "num_tokens")])

    def encode(self, texts: Any, *, add_special_tokens: bool = False) -> pl.DataFrame:
        """Encode plain strings; returns ``input_ids`` and ``num_tokens``."""
        s = _as_series(texts, "texts")
        ids, lengths = self._native.encode(s, add_special_tokens)
        return pl.DataFrame([_series(ids, "input_ids"), _series(lengths, "num_tokens")])


# --- derangements ----------------------------------------------------------------------------


def derangement(n: int, seed: int) -> pl.Series:
    """A uniformly random derangement of ``range(n)``: ``sigma[i] != i`` for every i.

    Every one of the !n derangements is equally likely (Martínez, Panholzer & Prodinger's
    algorithm); the result depends only on ``(n, seed)``, never on the thread count.
    Raises :class:`~mipo.errors.DerangementError` for ``n < 2``.
    """
    if seed < 0:
        raise InvalidParameterError(f"seed must be >= 0, got {seed}")
    return _series(_engine.derangement(int(n), int(seed)), "negative")


def _codes(data: Any, what: str) -> pl.Series | None:
    """Map any id column (strings, ints) to dense UInt32 codes; None passes through."""
    if data is None:
        return None
    s = _as_series(data, what)
    if s.null_count():
        raise InvalidInputError(
            f"{what} has {s.null_count()} null values; fill them (e.g. one id per row) or drop those rows"
        )
    return s.rank("dense").cast(pl.UInt32)


def constrained_derangement(
    n: int,
    *,
    groups: Any = None,
    clusters: Any = None,
    seed: int,
    sweeps: int = 10,
) -> pl.Series:
    """A random permutation with ``sigma[i] != i``, ``groups[sigma[i]] != groups[i]`` and
    ``clusters[sigma[i]] != clusters[i]`` (either constraint optional).

    See the native docstring (``mipo._engine.constrained_derangement``) for the distribution it
    samples. Raises :class:`~mipo.errors.DerangementError` when no valid assignment exists.
    """
    if seed < 0:
        raise InvalidParameterError(f"seed must be >= 0, got {seed}")
    if sweeps < 0:
        raise InvalidParameterError(f"sweeps must be >= 0, got {sweeps}")
    g = _codes(groups, "groups")
    c = _codes(clusters, "clusters")
    for name, col in (("groups", g), ("clusters", c)):
        if col is not None and len(col) != n:
            raise InvalidInputError(f"{name} has {len(col)} rows but n is {n}; they must match")
    return _series(
        _engine.constrained_derangement(int(n), g, c, int(seed), int(sweeps)), "negative"
    )
