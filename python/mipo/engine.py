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

import numbers
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
    "Deduper",
    "bucket_pairs",
    "constrained_derangement",
    "dedup",
    "derangement",
    "engine_info",
    "normalize",
    "resolve_representatives",
    "sketch_rows",
    "stratified_derangement",
    "template_limits_from_env",
    "verify_pairs",
]


def _series(obj: Any, name: str) -> pl.Series:
    """An Arrow object from the engine (PyCapsule interface) as a named Polars Series."""
    # polars 2.1 ignores the `name` argument for PyCapsule objects (it takes the Arrow field
    # name, "" for engine arrays), so rename explicitly; alias does not copy the data.
    return pl.Series(obj).alias(name)


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
        try:
            return pl.Series(what, data)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInputError(
                f"{what} cannot be read as one column ({reason}); give every value one type, "
                "e.g. all strings or all integers"
            ) from None
    raise InvalidInputError(
        f"{what} must be a Polars Series (or an Arrow array), got {type(data).__name__}"
    )


def _integer(value: Any, name: str, high: int) -> int:
    """``value`` as an int in ``[0, high]``; otherwise an InvalidParameterError naming it (the
    native call would raise a bare TypeError or OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidParameterError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}"
        )
    value = int(value)
    if value < 0:
        raise InvalidParameterError(f"{name} must be >= 0, got {value}")
    if value > high:
        raise InvalidParameterError(f"{name} must be at most {high}, got {value}")
    return value


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
        if self.num_perm > 4096:
            raise InvalidParameterError(f"num_perm must be in 1..=4096, got {self.num_perm}")
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidParameterError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0 <= self.seed < 2**64:
            raise InvalidParameterError(f"seed must be an integer in [0, 2**64), got {self.seed}")


def normalize(texts: Any) -> pl.Series:
    """NFKC, case folding and whitespace collapsing — the text dedup compares. Nulls stay null.

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

    Rows are taken in order: a row joins the earliest kept row whose text it duplicates
    exactly or, with ``near``, whose shingle set it matches at Jaccard >= ``threshold`` (MinHash
    LSH candidates, each verified exactly); so every removed row is a near copy of its kept row.
    Deterministic: same input and config, same output, at any thread count. For corpora that do
    not fit in memory at once, feed chunks to :class:`Deduper` (same result).

    >>> texts = pl.Series(["Hi  there", "hi there", "Ｈi there!"])
    >>> dedup(texts, near=False)
    shape: (3, 3)
    ┌───────┬─────────┬───────┐
    │ keep  ┆ cluster ┆ exact │
    │ ---   ┆ ---     ┆ ---   │
    │ bool  ┆ u32     ┆ bool  │
    ╞═══════╪═════════╪═══════╡
    │ true  ┆ 0       ┆ false │
    │ false ┆ 0       ┆ true  │
    │ true  ┆ 2       ┆ false │
    └───────┴─────────┴───────┘
    """
    cfg = _dedup_config(config, overrides)
    s = _as_series(texts, "texts")
    return _dedup_frame(
        _engine.dedup(s, cfg.ngram, cfg.num_perm, cfg.bands, cfg.threshold, cfg.seed, cfg.near)
    )


def _dedup_config(config: DedupConfig | None, overrides: dict[str, Any]) -> DedupConfig:
    cfg = config or DedupConfig()
    if overrides:
        unknown = sorted(set(overrides) - set(cfg.__dict__))
        if unknown:
            raise InvalidParameterError(
                f"unknown dedup option(s) {unknown}; valid: {sorted(cfg.__dict__)}"
            )
        cfg = DedupConfig(**{**cfg.__dict__, **overrides})
    return cfg


def _dedup_frame(arrays: tuple[Any, Any, Any]) -> pl.DataFrame:
    keep, cluster, exact = arrays
    return pl.DataFrame(
        [_series(keep, "keep"), _series(cluster, "cluster"), _series(exact, "exact")]
    )


class Deduper:
    """Streaming :func:`dedup`: feed a big corpus chunk by chunk with global row indices.

    Holds only compact state (the exact-hash set, LSH buckets and the 32-bit shingle
    fingerprints of kept rows), never the text: about 0.5 KB per kept ~50-word prompt with
    the defaults. The concatenated results equal one :func:`dedup` over all chunks.

    >>> d = Deduper(near=False)
    >>> d.add(pl.Series(["a b", "c d"]))["keep"].to_list()
    [True, True]
    >>> d.add(pl.Series(["C  D", "e f"]))["cluster"].to_list()
    [1, 3]
    >>> len(d)
    4
    """

    def __init__(self, config: DedupConfig | None = None, **overrides: Any) -> None:
        self.config = _dedup_config(config, overrides)
        c = self.config
        self._native = _engine.Deduper(c.ngram, c.num_perm, c.bands, c.threshold, c.seed, c.near)

    def add(self, texts: Any) -> pl.DataFrame:
        """Deduplicate the next chunk; same columns as :func:`dedup`, cluster ids global."""
        return _dedup_frame(self._native.add(_as_series(texts, "texts")))

    @property
    def rows_seen(self) -> int:
        """Rows added so far (the global index of the next row)."""
        return self._native.rows_seen

    @property
    def clusters(self) -> int:
        """Clusters so far (= rows kept)."""
        return self._native.clusters

    @property
    def state_bytes(self) -> int:
        """Approximate heap bytes held by the native state."""
        return self._native.state_bytes

    def __len__(self) -> int:
        return self.rows_seen

    def __repr__(self) -> str:
        return f"Deduper({self.config}, rows_seen={self.rows_seen})"


# --- chat templates + tokenization -----------------------------------------------------------

TEMPLATE_FUEL_ENV = "MIPO_TEMPLATE_FUEL"
"""Fuel of one chat-template render (the engine's default: 1,000,000)."""
TEMPLATE_MAX_BYTES_ENV = "MIPO_TEMPLATE_MAX_BYTES"
"""Longest prompt (and printed, serialized, formatted or joined value) of one render (4 MiB)."""


def template_limits_from_env() -> tuple[int | None, int | None]:
    """``(fuel, max_bytes)`` from ``MIPO_TEMPLATE_FUEL`` / ``MIPO_TEMPLATE_MAX_BYTES`` (None
    where unset: the engine's defaults). A value that is not a positive integer raises
    :class:`~mipo.errors.InvalidParameterError` naming the variable.

    >>> template_limits_from_env()  # neither variable set: the engine's defaults
    (None, None)
    """
    limits: list[int | None] = []
    for name in (TEMPLATE_FUEL_ENV, TEMPLATE_MAX_BYTES_ENV):
        raw = os.environ.get(name, "").strip().replace("_", "")
        if not raw:
            limits.append(None)
            continue
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) < 2**63:
            raise InvalidParameterError(
                f"{name} must be a positive integer, got {os.environ[name]!r}; unset it for the "
                "default or give a number such as 10000000"
            )
        limits.append(int(raw))
    return limits[0], limits[1]


class ChatTokenizer:
    """A model's tokenizer and chat template, rendered and encoded natively in parallel.

    Loads ``tokenizer.json`` and the chat template (``chat_template.jinja`` or the
    ``chat_template`` of ``tokenizer_config.json``) from a model folder. Rendering follows
    transformers' ``apply_chat_template`` (jinja2 with ``trim_blocks``/``lstrip_blocks``,
    ``raise_exception``, ``tojson``, ``strftime_now``, loop controls), and encoding adds no
    special tokens, so the ids equal ``apply_chat_template(..., tokenize=True)`` token for token.

    >>> # needs a model folder with tokenizer.json and a chat template
    >>> tok = ChatTokenizer.from_pretrained("path/to/model")  # doctest: +SKIP
    >>> msgs = pl.Series([[{"role": "user", "content": "Hi"}]])  # doctest: +SKIP
    >>> tok.encode_chat(msgs)["num_tokens"].to_list()  # doctest: +SKIP
    [11]
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        chat_template: str | None = None,
        *,
        pretoken_cache: bool = True,
        template_fuel: int | None = None,
        template_max_bytes: int | None = None,
    ) -> ChatTokenizer:
        """Load from a model folder (``tokenizer.json`` + template); ``chat_template`` overrides.

        A folder without a chat template still loads (for :meth:`encode`); :meth:`render` and
        :meth:`encode_chat` then raise :class:`~mipo.errors.TemplateError`.
        ``pretoken_cache=False`` encodes every text with the tokenizers crate instead of the
        engine's pre-token cache (the ids are the same; for comparisons and bisecting).

        The template is untrusted code, so each render is bounded: ``template_fuel`` (one per
        template instruction and per 64 bytes it builds; default ``$MIPO_TEMPLATE_FUEL`` or
        1,000,000) and ``template_max_bytes`` (the longest prompt, and the longest value it may
        print, serialize, format or join; default ``$MIPO_TEMPLATE_MAX_BYTES`` or 4 MiB). Going
        over either raises :class:`~mipo.errors.TemplateLimitError` naming the row.
        """
        fuel, max_bytes = template_limits_from_env()
        if template_fuel is not None:
            fuel = _integer(template_fuel, "template_fuel", 2**63 - 1)
        if template_max_bytes is not None:
            max_bytes = _integer(template_max_bytes, "template_max_bytes", 2**63 - 1)
        native = _engine.ChatTokenizer.from_dir(
            str(Path(path)), chat_template, pretoken_cache, fuel, max_bytes
        )
        return cls(native)

    @property
    def template_limits(self) -> tuple[int, int]:
        """``(fuel, max_bytes)``: what rendering one conversation may cost."""
        return self._native.template_limits

    @property
    def pretoken_cache(self) -> bool:
        """Whether encoding goes through the pre-token cache (byte-level BPE tokenizers)."""
        return self._native.pretoken_cache

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

    Row ``i``'s negative is row ``sigma[i]``. Every one of the !n derangements is equally
    likely (Martínez, Panholzer & Prodinger, "Generating random derangements", 2008; the
    cycle-closing probability is taken as 1/u once more than 20 rows are open, a relative error
    below 1e-17). The result depends only on ``(n, seed)``: never on the thread count or the
    platform. Raises :class:`~mipo.errors.DerangementError` for ``n < 2``.

    >>> sigma = derangement(5, seed=0).to_list()
    >>> sorted(sigma) == [0, 1, 2, 3, 4] and all(s != i for i, s in enumerate(sigma))
    True
    """
    n = _integer(n, "n", 2**63 - 1)
    seed = _integer(seed, "seed", 2**64 - 1)
    return _series(_engine.derangement(n, seed), "negative")


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
    """A random permutation with ``sigma[i] != i``, ``groups[sigma[i]] != groups[i]`` (row i's
    negative comes from another user) and ``clusters[sigma[i]] != clusters[i]`` (never a near
    duplicate); either constraint is optional, ids may be any type (strings, ints).

    A permutation, not independent picks, so every row serves exactly once as a negative.

    Existence is decided exactly: a valid permutation exists iff ``n >= 2`` and no group and
    no cluster holds more than ``n / 2`` rows (Hall's condition); otherwise
    :class:`~mipo.errors.DerangementError` says which limit is broken and how to fix it.

    Distribution: the state of a symmetric Metropolis chain after ``sweeps * max(n, 256)``
    steps from a valid start (rows shifted along the tighter constraint, conflicts with the
    other repaired by seeded swaps and augmenting paths). Each step proposes swapping the
    negatives of two uniformly chosen rows, or rotating those of three, and accepts iff every
    row stays valid. Its stationary distribution is uniform over the valid permutations
    reachable by these moves (all of them, in every small instance checked exhaustively); with
    finite ``sweeps`` the sample is approximately uniform. With neither constraint this is
    :func:`derangement` (exactly uniform). Deterministic given the inputs and ``seed``.

    >>> users = ["ann", "ann", "bob", "bob", "cid", "cid"]
    >>> sigma = constrained_derangement(6, groups=users, seed=0).to_list()
    >>> all(users[s] != users[i] for i, s in enumerate(sigma))
    True
    """
    n = _integer(n, "n", 2**63 - 1)
    seed = _integer(seed, "seed", 2**64 - 1)
    sweeps = _integer(sweeps, "sweeps", 2**64 - 1)
    g = _codes(groups, "groups")
    c = _codes(clusters, "clusters")
    for name, col in (("groups", g), ("clusters", c)):
        if col is not None and len(col) != n:
            raise InvalidInputError(f"{name} has {len(col)} rows but n is {n}; they must match")
    return _series(_engine.constrained_derangement(n, g, c, seed, sweeps), "negative")


NO_STRATUM = 2**32 - 1
"""Stratum code of a row that takes no part in :func:`stratified_derangement` (the engine's)."""


def stratified_derangement(
    strata: Any,
    *,
    groups: Any = None,
    clusters: Any = None,
    seed: int,
    sweeps: int = 10,
    strict: bool = False,
) -> pl.Series:
    """Within each stratum, a random derangement that keeps every row off its own group and
    cluster: ``sigma[i]`` shares ``strata[i]`` and differs from i in group and cluster, and the
    matched rows of a stratum map one to one onto themselves (each serves once as a partner).

    ``strata``, ``groups``, ``clusters``: one id per row, any type; a null stratum means the row
    takes no part. A stratum that cannot be matched whole (a single row, or a group or cluster
    holding more than half of it) is matched on its largest feasible part: random rows of the
    over-large class are left out until the rest is feasible. Left-out rows get null (with
    ``strict=True`` they raise :class:`~mipo.errors.DerangementError` instead). Per stratum the
    sample is exactly uniform up to 10 matched rows (rejection), else the Metropolis chain of
    :func:`constrained_derangement`; each stratum has its own seeded stream, so the result
    depends on the inputs and ``seed`` only, never on the thread count.

    mipo's ``context-swap`` negatives: strata = question clusters, groups = users, so row i's
    rejected answer is another user's answer to the same question.

    >>> questions = ["q1", "q1", "q1", "q2", "q2", None]
    >>> users = ["ann", "bob", "cid", "ann", "ann", "bob"]
    >>> stratified_derangement(questions, groups=users, seed=0).to_list()[3:]
    [None, None, None]
    """
    seed = _integer(seed, "seed", 2**64 - 1)
    sweeps = _integer(sweeps, "sweeps", 2**64 - 1)
    s = _as_series(strata, "strata")
    codes = s.rank("dense").cast(pl.UInt32).fill_null(NO_STRATUM)
    n = len(codes)
    g = _codes(groups, "groups")
    c = _codes(clusters, "clusters")
    for name, col in (("groups", g), ("clusters", c)):
        if col is not None and len(col) != n:
            raise InvalidInputError(
                f"{name} has {len(col)} rows but strata has {n}; they must match"
            )
    native = _engine.stratified_derangement(codes, g, c, seed, sweeps, bool(strict))
    return _series(native, "partner")


# --- the dedup steps of a plan spread over a cluster (rust/components.rs) -------------------------


def sketch_rows(texts: Any, config: DedupConfig | None = None) -> pl.DataFrame:
    """What the streaming :class:`Deduper` computes of each row before clustering it.

    Columns: ``exact_hi``, ``exact_lo`` (the 128-bit exact key of the normalized text),
    ``band_keys`` (``array[u32, bands]``: the LSH bucket key of each band) and
    ``fingerprints`` (``list[u32]``: the sorted distinct shingle fingerprints).

    >>> sketch_rows(pl.Series(["Hello world", "hello  WORLD"]))["exact_lo"].n_unique()
    1
    """
    c = config or DedupConfig()
    s = _as_series(texts, "texts")
    hi, lo, keys, fps = _engine.sketch_rows(s, c.ngram, c.num_perm, c.bands, c.seed)
    keys = _series(keys, "band_keys")
    return pl.DataFrame(
        [
            _series(hi, "exact_hi"),
            _series(lo, "exact_lo"),
            keys.reshape((len(s), c.bands)) if len(s) else keys.cast(pl.Array(pl.UInt32, c.bands)),
            _series(fps, "fingerprints"),
        ]
    )


def bucket_pairs(keys: Any, rows: Any) -> pl.DataFrame:
    """Every pair ``(s, r)``, ``s < r``, of rows sharing a bucket key (u64), once, sorted.

    >>> bucket_pairs(pl.Series([7, 7, 9], dtype=pl.UInt64), pl.Series([4, 1, 2])).rows()
    [(1, 4)]
    """
    s, r = _engine.bucket_pairs(_as_series(keys, "keys"), _as_series(rows, "rows"))
    return pl.DataFrame([_series(s, "s"), _series(r, "r")])


def verify_pairs(a: Any, b: Any, threshold: float) -> pl.Series:
    """Exact Jaccard similarity of each pair of fingerprint sets is ``>= threshold``."""
    return _series(
        _engine.verify_pairs(_as_series(a, "a"), _as_series(b, "b"), float(threshold)), "ok"
    )


def resolve_representatives(s: Any, r: Any) -> pl.DataFrame:
    """From verified edges ``s < r``: the rows that join an earlier representative (``row``)
    and its row (``cluster``), by the :class:`Deduper`'s rule (not connected components).

    >>> resolve_representatives(pl.Series([0, 1]), pl.Series([1, 2])).rows()
    [(1, 0)]
    """
    rows, clusters = _engine.resolve_representatives(_as_series(s, "s"), _as_series(r, "r"))
    return pl.DataFrame([_series(rows, "row"), _series(clusters, "cluster")])
