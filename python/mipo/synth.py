"""Synthetic personalization corpora with planted duplicates, and the bundled sample corpus.

A row is a user's request: ``context`` (who the user is, a constraint relevant to the question,
style preferences) and ``question``. Rows are composed from attributes in
``data/synth_vocabulary.json``: persona (occupation, age, place/climate), constraints per domain
(diet, kitchen, budget, equipment, accessibility, ...), style (length, format, tone, expertise)
and question templates (topic x task). A share of the questions comes from a pool shared across
users, so "other user, same question" contrasts exist. Exact and near duplicates are planted at
known rates with ground truth in ``dup_of`` / ``dup_kind``, so dedup precision and recall can be
measured.

Every value is a pure function of ``(seed, row index)`` through a counter-based hash (splitmix64),
never of the batch layout: the same config gives the same rows, byte for byte, whatever
``batch_rows`` is. A duplicate's original is regenerated from its index instead of being kept, so
memory stays bounded (8 bytes per row for the id map) while rows stream to disk in batches.

>>> frame = synth_frame(SynthConfig(rows=1000, seed=7))
>>> frame.columns
['id', 'user_id', 'context', 'question', 'dup_of', 'dup_kind']
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mipo.errors import ConfigError, OutputError
from mipo.io import atomic_path

DATA_DIR = Path(__file__).parent / "data"
SAMPLE_CORPUS_PATH = DATA_DIR / "sample_corpus.jsonl"
VOCABULARY_PATH = DATA_DIR / "synth_vocabulary.json"

FORMATS = ("parquet", "jsonl", "csv")
COLUMNS = ("id", "user_id", "context", "question", "dup_of", "dup_kind")
EVAL_COLUMNS = ("id", "user_id", "context", "question", "question_id")

NEAR_DUP_TARGET_JACCARD = 0.85
"""Planted near duplicates are edited so that the word 5-gram Jaccard similarity of the
lowercased, whitespace-split ``context + question`` to their original stays at or above this
(computed assuming distinct shingles). It sits above the 0.8 dedup threshold on purpose: MinHash
LSH with 14 bands x 8 rows finds pairs at 0.85 with probability ~0.99, at 0.8 only ~0.92."""

SHINGLE = 5
"""Words per shingle of the Jaccard similarity above (the engine's dedup default)."""

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


# --- counter-based randomness ----------------------------------------------------------------


def _mix_int(x: int) -> int:
    """splitmix64 finalizer on a Python int (used for scalar stream keys)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _stream_key(seed: int, name: str) -> np.uint64:
    """Independent stream per (seed, purpose): a name, not a call order, picks the stream."""
    return np.uint64(_mix_int(seed * _GOLDEN + _mix_int(zlib.crc32(name.encode()) + 1)))


def _hash(seed: int, name: str, index: np.ndarray) -> np.ndarray:
    """64-bit hash of every index in ``index`` for stream ``name`` (uint64, wrapping arithmetic)."""
    x = index.astype(np.uint64) * np.uint64(_GOLDEN) + _stream_key(seed, name)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _pick(seed: int, name: str, index: np.ndarray, n: int | np.ndarray) -> np.ndarray:
    """Uniform integer in ``[0, n)`` per index (``n`` a scalar or a per-index array)."""
    modulus = np.asarray(n, dtype=np.uint64)
    return (_hash(seed, name, index) % modulus).astype(np.int64)


def _unit(seed: int, name: str, index: np.ndarray) -> np.ndarray:
    """Uniform float in ``[0, 1)`` per index."""
    return (_hash(seed, name, index) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _coprimes(n: int) -> np.ndarray:
    """Strides that visit every residue mod ``n``: ``(offset + j * stride) % n`` is a bijection."""
    return np.array([s for s in range(1, max(n, 2)) if math.gcd(s, n) == 1] or [1], dtype=np.int64)


# --- vocabulary ------------------------------------------------------------------------------


class _Sentences:
    """A bank of sentences with at most one ``{x}`` slot each, rendered by gathering columns."""

    def __init__(self, entries: list[Any]) -> None:
        before, after, offsets, counts = [], [], [], []
        values: list[str] = [""]  # index 0: the empty fill of slot-less sentences
        for entry in entries:
            text, fills = (entry, None) if isinstance(entry, str) else (entry[0], entry[1])
            head, sep, tail = text.partition("{x}")
            before.append(head)
            after.append(tail if sep else "")
            if sep:
                if not fills:
                    raise ValueError(f"sentence {text!r} has a slot but no values")
                offsets.append(len(values))
                counts.append(len(fills))
                values.extend(fills)
            else:
                offsets.append(0)
                counts.append(1)
        self.before = pl.Series(before, dtype=pl.String)
        self.after = pl.Series(after, dtype=pl.String)
        self.values = pl.Series(values, dtype=pl.String)
        self.offsets = np.array(offsets, dtype=np.int64)
        self.counts = np.array(counts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.before)

    def render(self, index: np.ndarray, fill_pick: np.ndarray) -> pl.Series:
        """Sentence ``index[i]`` with slot value number ``fill_pick[i] % count``."""
        fill = self.offsets[index] + fill_pick % self.counts[index]
        return _concat(
            [self.before.gather(index), self.values.gather(fill), self.after.gather(index)]
        )


def _concat(parts: list[pl.Series], separator: str = "") -> pl.Series:
    """Row-wise string concatenation; null parts are skipped (no doubled separators)."""
    frame = pl.DataFrame({f"p{i}": part for i, part in enumerate(parts)})
    return frame.select(pl.concat_str(pl.all(), separator=separator, ignore_nulls=True)).to_series()


class _Vocabulary:
    """The parsed vocabulary file as gatherable columns and index arrays."""

    def __init__(self, raw: dict[str, Any]) -> None:
        persona = raw["persona"]
        self.intros = pl.Series(persona["intros"], dtype=pl.String)
        self.occupations = pl.Series([o[0] for o in persona["occupations"]], dtype=pl.String)
        self.age_min = np.array([o[1] for o in persona["occupations"]], dtype=np.int64)
        self.age_span = np.array([o[2] - o[1] + 1 for o in persona["occupations"]], dtype=np.int64)
        self.places = pl.Series(persona["places"], dtype=pl.String)

        # Constraint and style kinds share one sentence bank; kind k owns a contiguous range.
        self.kind_names = [*raw["constraints"], *raw["styles"]]
        entries: list[Any] = []
        offsets, sizes = [], []
        for name in self.kind_names:
            bank = raw["constraints"].get(name) or raw["styles"][name]
            offsets.append(len(entries))
            sizes.append(len(bank))
            entries.extend(bank)
        self.sentences = _Sentences(entries)
        self.kind_offset = np.array(offsets, dtype=np.int64)
        self.kind_size = np.array(sizes, dtype=np.int64)
        self.kind_id = {name: k for k, name in enumerate(self.kind_names)}
        self.style_kinds = [
            self.kind_id[name] for name in ("length", "format", "tone", "expertise")
        ]

        # Question templates: one global list; common / specific / eval index into it.
        self.domains = list(raw["domains"])
        before: list[str] = []
        after: list[str] = []
        template_domain: list[int] = []
        groups: dict[str, list[int]] = {"common": [], "specific": [], "eval": []}
        topics: list[str] = []
        topic_offset, topic_count, kind_a, kind_b = [], [], [], []
        for d, name in enumerate(self.domains):
            domain = raw["domains"][name]
            kind_a.append(self.kind_id[domain["kinds"][0]])
            kind_b.append(self.kind_id[domain["kinds"][1]])
            topic_offset.append(len(topics))
            topic_count.append(len(domain["topics"]))
            topics.extend(domain["topics"])
            for group in groups:
                for template in domain[group]:
                    head, sep, tail = template.partition("{t}")
                    if not sep:
                        raise ValueError(f"question template {template!r} has no {{t}} slot")
                    groups[group].append(len(before))
                    before.append(head)
                    after.append(tail)
                    template_domain.append(d)
        self.q_before = pl.Series(before, dtype=pl.String)
        self.q_after = pl.Series(after, dtype=pl.String)
        self.template_domain = np.array(template_domain, dtype=np.int64)
        self.common = np.array(groups["common"], dtype=np.int64)
        self.specific = np.array(groups["specific"], dtype=np.int64)
        self.eval_templates = np.array(groups["eval"], dtype=np.int64)
        self.topics = pl.Series(topics, dtype=pl.String)
        self.topic_offset = np.array(topic_offset, dtype=np.int64)
        self.topic_count = np.array(topic_count, dtype=np.int64)
        self.domain_kind_a = np.array(kind_a, dtype=np.int64)
        self.domain_kind_b = np.array(kind_b, dtype=np.int64)
        self.extras = pl.Series(raw["question_extras"], dtype=pl.String)
        self.extra_is_empty = np.array([e == "" for e in raw["question_extras"]])
        self.nonempty_extras = np.flatnonzero(~self.extra_is_empty)

        near = raw["near_dup"]
        self.synonyms: dict[str, str] = near["synonyms"]
        self.insertions: list[str] = near["insertions"]

    @property
    def max_questions_per_user(self) -> int:
        """Each user's questions use distinct templates, so no two of them are near-identical."""
        return int(min(len(self.common), len(self.specific)))

    @property
    def max_shared_pool(self) -> int:
        """Distinct shared questions: per common template, topic x extra combinations."""
        return int(len(self.common) * self.topic_count.min() * len(self.extras))


@functools.cache
def _vocabulary() -> _Vocabulary:
    return _Vocabulary(json.loads(VOCABULARY_PATH.read_text(encoding="utf-8")))


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """What `mipo synth` generates. Same config, same rows (byte-identical files).

    >>> SynthConfig(rows=1000, near_dup_rate=0.1).near_dup_rate
    0.1
    """

    rows: int = 10_000
    """Rows to write, planted duplicates included (>= 1)."""
    seed: int = 0
    """Seed of every random choice (>= 0)."""
    users: int | None = None
    """Distinct users; None: about one per 6 rows. A user asks at most 30 distinct questions,
    so at least ceil(rows / 30) users are needed."""
    exact_dup_rate: float = 0.02
    """Expected share of rows that copy an earlier original's context and question, possibly
    with different whitespace or letter case (which dedup's normalization must undo)."""
    near_dup_rate: float = 0.03
    """Expected share of rows that are an earlier original with one or two small edits
    (a word changed, inserted or deleted; punctuation changed), word 5-gram Jaccard >= 0.85."""
    shared_question_rate: float = 0.3
    """Expected share of original rows whose question comes from the pool shared across users."""
    shared_pool_size: int | None = None
    """Distinct questions in the shared pool; None: about one per 40 shared rows, clamped to
    [30, 8640] (8640 is what the vocabulary can make)."""
    batch_rows: int = 100_000
    """Rows generated and written per batch (a Parquet row group); bounds memory, not output."""

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ConfigError(f"rows (--rows) must be >= 1, got {self.rows}")
        if self.seed < 0:
            raise ConfigError(f"seed (--seed) must be >= 0, got {self.seed}")
        for name in ("exact_dup_rate", "near_dup_rate", "shared_question_rate"):
            value = getattr(self, name)
            option = "--" + name.replace("_", "-")
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise ConfigError(f"{name} ({option}) must be in [0, 1), got {value!r}")
        if self.exact_dup_rate + self.near_dup_rate > 0.9:
            raise ConfigError(
                "exact_dup_rate + near_dup_rate (--exact-dup-rate, --near-dup-rate) must be "
                f"<= 0.9, got {self.exact_dup_rate} + {self.near_dup_rate}"
            )
        vocab = _vocabulary()
        if self.users is not None:
            needed = math.ceil(self.rows / vocab.max_questions_per_user)
            if self.users < 1:
                raise ConfigError(f"users (--users) must be >= 1, got {self.users}")
            if self.users < needed:
                raise ConfigError(
                    f"users (--users) is {self.users}, too few for {self.rows} rows: a user asks "
                    f"at most {vocab.max_questions_per_user} distinct questions; use --users "
                    f">= {needed}"
                )
        if self.shared_pool_size is not None and not (
            1 <= self.shared_pool_size <= vocab.max_shared_pool
        ):
            raise ConfigError(
                f"shared_pool_size must be in [1, {vocab.max_shared_pool}], "
                f"got {self.shared_pool_size}"
            )
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1, got {self.batch_rows}")

    @property
    def num_users(self) -> int:
        if self.users is not None:
            return self.users
        return max(
            1, round(self.rows / 6), math.ceil(self.rows / _vocabulary().max_questions_per_user)
        )

    @property
    def pool_per_template(self) -> int:
        """Distinct shared questions per common template."""
        vocab = _vocabulary()
        size = self.shared_pool_size
        if size is None:
            size = round(self.rows * self.shared_question_rate / 40)
            size = min(max(size, len(vocab.common)), vocab.max_shared_pool)
        return max(1, math.ceil(size / len(vocab.common)))


@dataclass(frozen=True)
class SynthSummary:
    """What a synth run wrote."""

    path: Path
    rows: int
    originals: int
    exact_duplicates: int
    near_duplicates: int
    users: int
    seconds: float


# --- rendering -------------------------------------------------------------------------------


def _render_context(seed: int, user: np.ndarray, row: np.ndarray, domain: np.ndarray) -> pl.Series:
    """Contexts for rows ``row`` of users ``user``, asking a question of ``domain``.

    The persona and each preference are fixed per user; which of them a row states, and the
    phrasing of its opening, vary per row (as real users restate only what matters).
    """
    vocab = _vocabulary()
    occupation = _pick(seed, "user.occupation", user, len(vocab.occupations))
    age = vocab.age_min[occupation] + _pick(seed, "user.age", user, vocab.age_span[occupation])
    place = _pick(seed, "user.place", user, len(vocab.places))
    intro = _pick(seed, "row.intro", row, len(vocab.intros))
    article = pl.Series(np.where(age == 18, "an", "a"), dtype=pl.String)
    persona = _concat(
        [
            vocab.intros.gather(intro),
            article,
            pl.Series(age, dtype=pl.Int64).cast(pl.String) + "-year-old",
            vocab.occupations.gather(occupation),
            vocab.places.gather(place) + ".",
        ],
        separator=" ",
    )

    def user_sentence(kind: np.ndarray) -> pl.Series:
        # Per (user, kind): one sentence of the kind and one slot value, the user's fixed trait.
        key = user * 64 + kind
        variant = vocab.kind_offset[kind] + _pick(seed, "user.kind", key, vocab.kind_size[kind])
        return vocab.sentences.render(variant, _pick(seed, "user.kind.fill", key, 1 << 30))

    def maybe(series: pl.Series, keep: np.ndarray) -> pl.Series:
        frame = pl.DataFrame({"s": series, "keep": keep})
        return frame.select(pl.when(pl.col("keep")).then(pl.col("s"))).to_series()

    optional = [user_sentence(vocab.domain_kind_b[domain])] + [
        user_sentence(np.full(len(user), kind, dtype=np.int64)) for kind in vocab.style_kinds
    ]
    include = [
        _unit(seed, f"row.optional.{i}", row) < p
        for i, p in enumerate((0.5, 0.6, 0.55, 0.35, 0.35))
    ]
    include[1] |= ~(include[2] | include[3] | include[4])  # state at least one preference
    required = [persona, user_sentence(vocab.domain_kind_a[domain])]
    context = _concat(required + [maybe(s, k) for s, k in zip(optional, include, strict=True)], " ")
    short = (context.str.count_matches(" ") < 19).to_numpy()
    if short.any():  # a terse row states everything, so contexts stay >= ~20 words
        parts = [maybe(s, k | short) for s, k in zip(optional, include, strict=True)]
        context = _concat(required + parts, separator=" ")
    return context


def _render_question(
    template: np.ndarray, topic: np.ndarray, extra: np.ndarray | None
) -> pl.Series:
    vocab = _vocabulary()
    domain = vocab.template_domain[template]
    parts = [
        vocab.q_before.gather(template),
        vocab.topics.gather(vocab.topic_offset[domain] + topic),
        vocab.q_after.gather(template),
    ]
    if extra is not None:
        # A question under 10 words gets a non-empty extra (a function of the question alone,
        # so shared questions stay identical across users).
        short = (_concat(parts).str.count_matches(" ") < 9).to_numpy()
        filled = vocab.nonempty_extras[extra % len(vocab.nonempty_extras)]
        parts.append(
            vocab.extras.gather(np.where(short & vocab.extra_is_empty[extra], filled, extra))
        )
    return _concat(parts)


def _render_originals(
    config: SynthConfig, original: np.ndarray
) -> tuple[np.ndarray, pl.Series, pl.Series]:
    """(user index, context, question) of original rows number ``original`` (pure function)."""
    vocab = _vocabulary()
    seed = config.seed
    n_users = config.num_users
    user = original % n_users
    ordinal = original // n_users  # the user's j-th question
    # Distinct templates per user: (offset + j * stride) mod T is a bijection on [0, T).
    shared = _unit(seed, "row.shared", original) < config.shared_question_rate
    n_common, n_specific = len(vocab.common), len(vocab.specific)
    common_strides, specific_strides = _coprimes(n_common), _coprimes(n_specific)
    common_slot = (
        _pick(seed, "user.common.offset", user, n_common)
        + ordinal * common_strides[_pick(seed, "user.common.stride", user, len(common_strides))]
    ) % n_common
    specific_slot = (
        _pick(seed, "user.specific.offset", user, n_specific)
        + ordinal
        * specific_strides[_pick(seed, "user.specific.stride", user, len(specific_strides))]
    ) % n_specific
    template = np.where(shared, vocab.common[common_slot], vocab.specific[specific_slot])
    domain = vocab.template_domain[template]
    n_topics = vocab.topic_count[domain]
    n_extras = len(vocab.extras)
    # Shared questions: pool entry m of the common template fixes topic and extra, so every
    # user drawing (template, m) asks the very same question.
    per_template = config.pool_per_template
    member = _pick(seed, "row.pool.member", original, per_template)
    pool_topic = (_pick(seed, "pool.topic", common_slot, 1 << 30) + member) % n_topics
    pool_extra = (_pick(seed, "pool.extra", common_slot, 1 << 30) + member // n_topics) % n_extras
    topic = np.where(shared, pool_topic, _pick(seed, "row.topic", original, n_topics))
    # User-specific questions always carry a non-empty extra: more variety, fewer chance matches.
    nonempty = vocab.nonempty_extras
    own_extra = nonempty[_pick(seed, "row.extra", original, len(nonempty))]
    extra = np.where(shared, pool_extra, own_extra)
    context = _render_context(seed, user, original, domain)
    return user, context, _render_question(template, topic, extra)


# --- planted duplicates ----------------------------------------------------------------------

_TRAILING_PUNCTUATION = ".,!?;:"
_PUNCTUATION_SWAPS = [".", "!", "?", ",", ""]
_FINAL_PUNCTUATION = ["?", ".", "!", "?!", "..."]
_OPENERS = ["Hi!", "Hello,", "Hey,", "Okay,", "So,"]
_CLOSERS = ["Thanks.", "Thank you!", "Cheers.", "Please help."]


def _vary_exact(context: str, question: str, r: int) -> tuple[str, str]:
    """A copy that normalization (case folding, whitespace collapsing) maps back to the original."""
    variant = r % 8
    if variant == 1:
        return context.lower(), question.lower()
    if variant == 2:
        return context, question.replace(" ", "  ", 1)
    if variant == 3:
        return " " + context + " ", "  " + question
    if variant == 4:
        return context.replace(" ", "\n", 1), question
    if variant == 5:
        return context, question.upper()
    if variant == 6:
        return context.replace(". ", ".  "), question + "\n"
    if variant == 7:
        return context.lower().replace(" ", "\t", 1), question.lower()
    return context, question


def _word_position(n_words: int, budget: int, r: int) -> int:
    """A word whose change costs <= ``budget`` shingles (at most SHINGLE; fewer near the ends)."""
    if budget >= SHINGLE or 2 * budget >= n_words:
        return r % n_words
    i = r % (2 * budget)
    return i if i < budget else n_words - 2 * budget + i


def _gap_position(n_words: int, budget: int, r: int) -> int:
    """A gap (0..n_words) where inserting a word costs <= ``budget`` (shingles lost + 1)."""
    if budget >= SHINGLE or 2 * budget > n_words:
        return r % (n_words + 1)
    i = r % (2 * budget)
    return i if i < budget else n_words - 2 * budget + 1 + i


def _split_punctuation(word: str) -> tuple[str, str]:
    core = word.rstrip(_TRAILING_PUNCTUATION)
    return core, word[len(core) :]


def _near_edit(context: str, question: str, r: tuple[int, int, int, int]) -> tuple[str, str]:
    """One or two small edits keeping word 5-gram Jaccard >= NEAR_DUP_TARGET_JACCARD.

    A changed word touches min(p + 1, W - p, 5) of the W - 4 shingles, so with n shingles and
    k touched, Jaccard is (n - k) / (n + k); the edit position is drawn among those that keep k
    within budget (anywhere in long texts, near the ends in short ones).
    """
    vocab = _vocabulary()
    r_kind, r_pos, r_word, r_second = r
    words = context.split(" ") + question.split(" ")
    n_context = len(context.split(" "))
    n_words = len(words)
    n_shingles = max(n_words - SHINGLE + 1, 1)
    target = NEAR_DUP_TARGET_JACCARD
    budget = int(n_shingles * (1 - target) / (1 + target))
    second = r_second % 100 < 30 and budget >= 3
    if second:
        budget -= 1  # the second edit touches only the last shingle
    _, original_final = _split_punctuation(words[-1])
    kind = r_kind % 100
    n_question = n_words - n_context
    if kind >= 60 and kind < 75:  # delete, unless a part would get too short
        p = _word_position(n_words, budget, r_pos)
        if (p < n_context and n_context > 4) or (p >= n_context and n_question > 4):
            del words[p]
            n_context -= p < n_context
        else:
            kind = 0
    if budget < 1 or (kind >= 35 and kind < 60):  # insert a word
        p = _gap_position(n_words, max(budget, 1), r_pos)
        if p == 0:
            word = _OPENERS[r_word % len(_OPENERS)]
        elif p == n_words:
            word = _CLOSERS[r_word % len(_CLOSERS)]
        else:
            word = vocab.insertions[r_word % len(vocab.insertions)]
        words.insert(p, word)
        n_context += p < n_context
    elif kind >= 75:  # change punctuation
        p = _word_position(n_words, budget, r_pos)
        core, punctuation = _split_punctuation(words[p])
        if punctuation:
            options = [s for s in _PUNCTUATION_SWAPS if s != punctuation]
            words[p] = core + options[r_word % len(options)]
        else:
            words[p] = core + ("!" if p == n_words - 1 else ",")
    elif kind < 35:  # change a word: a synonym if there is one, else a typo (doubled letter)
        p = _word_position(n_words, budget, r_pos)
        core, punctuation = _split_punctuation(words[p])
        replacement = vocab.synonyms.get(core.lower())
        if replacement is not None:
            if core[:1].isupper():
                replacement = replacement[:1].upper() + replacement[1:]
            words[p] = replacement + punctuation
        elif core:
            i = r_word % len(core)
            words[p] = core[: i + 1] + core[i:] + punctuation
        else:
            words[p] = words[p] + words[p][-1:]
    if second:
        # Differ from both the original and the first edit's ending, or the edits could cancel.
        core, punctuation = _split_punctuation(words[-1])
        options = [s for s in _FINAL_PUNCTUATION if s not in (punctuation, original_final)]
        words[-1] = core + options[r_second // 100 % len(options)]
    return " ".join(words[:n_context]), " ".join(words[n_context:])


# --- generation ------------------------------------------------------------------------------


def generate_batches(config: SynthConfig) -> Iterator[pl.DataFrame]:
    """Yield the corpus of ``config`` in batches of ``config.batch_rows`` rows.

    Row i is a planted duplicate with probability ``exact_dup_rate + near_dup_rate``; its
    original is drawn uniformly among the originals before it, so dedup needs global state
    across batches, as on a real corpus.

    >>> sum(b.height for b in generate_batches(SynthConfig(rows=1000, batch_rows=300)))
    1000
    """
    seed, rows = config.seed, config.rows
    id_width = len(str(rows - 1))
    user_width = len(str(config.num_users - 1))
    user_label = _user_labels(config.num_users)
    position_of_original = np.empty(rows, dtype=np.int64)  # original index -> row position
    originals_before = 0
    for start in range(0, rows, config.batch_rows):
        position = np.arange(start, min(start + config.batch_rows, rows), dtype=np.int64)
        draw = _unit(seed, "row.kind", position)
        is_exact = draw < config.exact_dup_rate
        is_near = ~is_exact & (draw < config.exact_dup_rate + config.near_dup_rate)
        is_original = ~(is_exact | is_near)
        if start == 0:  # the first row has nothing to duplicate
            is_original[0], is_exact[0], is_near[0] = True, False, False
        running = originals_before + np.cumsum(is_original)
        count_before = running - is_original  # originals strictly before each row
        original = np.where(
            is_original,
            running - 1,
            _pick(seed, "row.source", position, np.maximum(count_before, 1)),
        )
        position_of_original[original[is_original]] = position[is_original]
        originals_before = int(running[-1])

        user, context, question = _render_originals(config, original)
        dup_rows = np.flatnonzero(~is_original)
        dup_of = pl.Series("dup_of", [None] * len(position), dtype=pl.String)
        dup_kind = pl.Series("dup_kind", [None] * len(position), dtype=pl.String)
        if len(dup_rows):
            contexts = context.gather(dup_rows).to_list()
            questions = question.gather(dup_rows).to_list()
            randoms = [
                _hash(seed, name, position[dup_rows]).tolist()
                for name in ("dup.a", "dup.b", "dup.c", "dup.d")
            ]
            exact_flags = is_exact[dup_rows].tolist()
            for i, exact in enumerate(exact_flags):
                r = (randoms[0][i], randoms[1][i], randoms[2][i], randoms[3][i])
                if exact:
                    contexts[i], questions[i] = _vary_exact(contexts[i], questions[i], r[0])
                else:
                    contexts[i], questions[i] = _near_edit(contexts[i], questions[i], r)
            context = context.scatter(dup_rows, contexts)
            question = question.scatter(dup_rows, questions)
            source_ids = _format_ids("r", position_of_original[original[dup_rows]], id_width)
            dup_of = dup_of.scatter(dup_rows, source_ids)
            kinds = pl.Series(np.where(is_exact[dup_rows], "exact", "near"), dtype=pl.String)
            dup_kind = dup_kind.scatter(dup_rows, kinds)
        yield pl.DataFrame(
            [
                _format_ids("r", position, id_width).alias("id"),
                _format_ids("u", user_label[user], user_width).alias("user_id"),
                context.alias("context"),
                question.alias("question"),
                dup_of,
                dup_kind,
            ]
        )


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> pl.Series:
    digits = pl.Series(numbers, dtype=pl.Int64).cast(pl.String).str.zfill(width)
    return (prefix + digits).rename("id")


def _user_labels(n_users: int) -> np.ndarray:
    """A fixed permutation of user numbers, so ids do not cycle u0, u1, u2... down the file."""
    multiplier = next(m for m in range(1_000_003, 1_000_003 + 10_000) if math.gcd(m, n_users) == 1)
    return (np.arange(n_users, dtype=np.int64) * multiplier + 12_345) % n_users


def synth_frame(config: SynthConfig | None = None, **overrides: Any) -> pl.DataFrame:
    """The whole corpus of ``config`` in memory (for small corpora and tests).

    >>> synth_frame(rows=50, seed=1).height
    50
    """
    cfg = config or SynthConfig()
    if overrides:
        cfg = SynthConfig(**{**cfg.__dict__, **overrides})
    return pl.concat(list(generate_batches(cfg)))


# --- writing ---------------------------------------------------------------------------------


def infer_format(path: Path, file_format: str | None) -> str:
    """``file_format`` if given, else from the extension (.parquet, .jsonl/.ndjson, .csv)."""
    if file_format is not None:
        if file_format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {file_format!r}")
        return file_format
    suffix = path.suffix.lower()
    by_suffix = {
        ".parquet": "parquet",
        ".pq": "parquet",
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".csv": "csv",
    }
    if suffix not in by_suffix:
        raise ConfigError(
            f"cannot tell the format of {str(path)!r} from its extension; name it .parquet, "
            ".jsonl or .csv, or pass --format"
        )
    return by_suffix[suffix]


def check_output(path: Path, file_format: str | None, *, overwrite: bool = False) -> str:
    """Fail early (OutputError / ConfigError) if ``path`` cannot be written; returns the format."""
    fmt = infer_format(path, file_format)
    if path.is_dir():
        raise OutputError(f"output {str(path)!r} is a directory; give a file path")
    if path.exists() and not overwrite:
        raise OutputError(f"output {str(path)!r} already exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise OutputError(f"folder {str(path.parent)!r} does not exist; create it first")
    return fmt


def _arrow_schema(columns: tuple[str, ...]) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]

    return pa.schema(
        [pa.field(name, pa.string(), nullable=name in ("dup_of", "dup_kind")) for name in columns]
    )


def write_frames(
    frames: Iterator[pl.DataFrame],
    output: str | os.PathLike[str],
    *,
    columns: tuple[str, ...] = COLUMNS,
    file_format: str | None = None,
    overwrite: bool = False,
    on_batch: Callable[[pl.DataFrame], None] | None = None,
) -> Path:
    """Stream ``frames`` into one file atomically (temporary file in the same folder + rename).

    An existing ``output`` is refused unless ``overwrite``; on any error the temporary file is
    removed, so no half-written output is ever left behind.
    """
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    path = Path(output)
    fmt = check_output(path, file_format, overwrite=overwrite)
    schema = _arrow_schema(columns)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer = pq.ParquetWriter(handle, schema, compression="zstd") if fmt == "parquet" else None
        try:
            for i, frame in enumerate(frames):
                if writer is not None:
                    writer.write_table(frame.to_arrow().cast(schema), row_group_size=frame.height)
                elif fmt == "jsonl":
                    frame.write_ndjson(handle)
                else:
                    frame.write_csv(handle, include_header=i == 0)
                if on_batch is not None:
                    on_batch(frame)
        finally:
            if writer is not None:
                writer.close()
    return path


def write_synth(
    config: SynthConfig,
    output: str | os.PathLike[str],
    *,
    file_format: str | None = None,
    overwrite: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> SynthSummary:
    """Generate ``config``'s corpus into ``output`` (Parquet, JSONL or CSV), streaming in batches.

    ``on_progress`` receives the number of rows written by each batch.

    >>> write_synth(SynthConfig(rows=100), "/tmp/corpus.parquet", overwrite=True).rows
    100
    """
    started = time.perf_counter()
    counts = {"exact": 0, "near": 0}

    def count(frame: pl.DataFrame) -> None:
        kinds = frame["dup_kind"]
        counts["exact"] += int((kinds == "exact").sum())
        counts["near"] += int((kinds == "near").sum())
        if on_progress is not None:
            on_progress(frame.height)

    path = write_frames(
        generate_batches(config),
        output,
        file_format=file_format,
        overwrite=overwrite,
        on_batch=count,
    )
    return SynthSummary(
        path=path,
        rows=config.rows,
        originals=config.rows - counts["exact"] - counts["near"],
        exact_duplicates=counts["exact"],
        near_duplicates=counts["near"],
        users=config.num_users,
        seconds=time.perf_counter() - started,
    )


# --- held-out evaluation prompts -------------------------------------------------------------

_EVAL_SEED_SALT = 0x5EED_E7A1


def synth_eval(
    rows: int,
    seed: int = 0,
    *,
    users_per_question: int = 4,
    output: str | os.PathLike[str] | None = None,
    file_format: str | None = None,
    overwrite: bool = False,
) -> pl.DataFrame:
    """Held-out evaluation prompts: each question asked by ``users_per_question`` users.

    Questions come only from the vocabulary's ``eval`` templates, which training corpora never
    use, so they are disjoint from every `mipo synth` corpus (any seed); the users are fresh too.
    Rows sharing ``question_id`` give the PMI "other user, same question" contrast. With
    ``output``, the frame is also written (atomically) there.

    >>> frame = synth_eval(40, seed=0)
    >>> frame.group_by("question_id").len()["len"].min()
    4
    """
    vocab = _vocabulary()
    if rows < 1:
        raise ConfigError(f"rows must be >= 1, got {rows}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if users_per_question < 2:
        raise ConfigError(f"users_per_question must be >= 2, got {users_per_question}")
    template_of = np.repeat(
        vocab.eval_templates, vocab.topic_count[vocab.template_domain[vocab.eval_templates]]
    )
    topic_of = np.concatenate(
        [np.arange(vocab.topic_count[vocab.template_domain[t]]) for t in vocab.eval_templates]
    )
    n_questions = math.ceil(rows / users_per_question)
    if n_questions > len(template_of):
        raise ConfigError(
            f"{rows} eval rows at {users_per_question} users per question need {n_questions} "
            f"questions but only {len(template_of)} exist; raise users_per_question to "
            f">= {math.ceil(rows / len(template_of))}"
        )
    eval_seed = (seed ^ _EVAL_SEED_SALT) & 0x7FFF_FFFF_FFFF_FFFF
    chosen = np.argsort(
        _hash(eval_seed, "eval.question", np.arange(len(template_of))), kind="stable"
    )
    chosen = chosen[:n_questions]
    row = np.arange(rows, dtype=np.int64)
    question_number = row % n_questions
    combo = chosen[question_number]
    template = template_of[combo]
    domain = vocab.template_domain[template]
    frame = pl.DataFrame(
        [
            _format_ids("e", row, len(str(rows - 1))).alias("id"),
            _format_ids("eval-u", row, len(str(rows - 1))).alias("user_id"),
            _render_context(eval_seed, row, row, domain).alias("context"),
            _render_question(template, topic_of[combo], None).alias("question"),
            _format_ids("q", combo, len(str(len(template_of) - 1))).alias("question_id"),
        ]
    )
    if output is not None:
        write_frames(
            iter([frame]),
            output,
            columns=EVAL_COLUMNS,
            file_format=file_format,
            overwrite=overwrite,
        )
    return frame


# --- the bundled sample corpus ---------------------------------------------------------------


def load_sample_corpus() -> pl.DataFrame:
    """The bundled personalization corpus (about 300 rows: id, user_id, context, question).

    >>> load_sample_corpus().columns
    ['id', 'user_id', 'context', 'question']
    """
    return pl.read_ndjson(SAMPLE_CORPUS_PATH)


__all__ = [
    "COLUMNS",
    "EVAL_COLUMNS",
    "FORMATS",
    "NEAR_DUP_TARGET_JACCARD",
    "SAMPLE_CORPUS_PATH",
    "SynthConfig",
    "SynthSummary",
    "check_output",
    "generate_batches",
    "infer_format",
    "load_sample_corpus",
    "synth_eval",
    "synth_frame",
    "write_frames",
    "write_synth",
]
