"""The plan stage: validate, deduplicate, render + tokenize, assign negatives, write plan.parquet.

The corpus is streamed once, in bounded batches, so memory grows with the number of rows only
through compact global state, never through the text:

1. *read + validate*: each batch is mapped to chat messages (Polars expressions); null and empty
   prompts are dropped and counted, malformed messages refused;
2. *dedup*: the engine's streaming deduplicator compares the batch with every earlier row (exact
   hashes, MinHash LSH) keeping only compact state;
3. *tokenize*: surviving rows are rendered with the chat template and encoded by the engine,
   over-long prompts dropped, and the batch written to a part file; only the id, user and
   cluster of each row stay in memory;
4. *derange*: the engine draws σ over the whole corpus (never per batch), group-constrained by
   user, never pairing near duplicates; for ``context-swap`` it pairs prompts of other users
   within question clusters (a second, question-only dedup) and picks a donor user's context
   for the rest, whose swapped prompts are rendered and encoded while the plan is written;
5. *write*: the parts are streamed into ``plan.parquet`` in fixed-size row groups (so the bytes
   do not depend on batch boundaries or thread count), through a temporary file and a rename.

>>> # needs an opened corpus and a model's tokenizer: see tests/test_plan.py
>>> from mipo.pairs.plan import PlanConfig, build_plan  # doctest: +SKIP
>>> stats = build_plan(corpus, tokenizer, "out/plan.parquet", PlanConfig(seed=0))  # doctest: +SKIP
>>> stats.prompts_planned  # doctest: +SKIP
312
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mipo import engine
from mipo.corpus import MESSAGE_DTYPE, Corpus
from mipo.errors import ConfigError, CorpusError
from mipo.io import atomic_path, write_errors
from mipo.pairs.negatives import (
    ContextSwaps,
    NegativeStrategy,
    assign_context_swaps,
    assign_negatives,
    parse_strategy,
    strategy_kinds,
)
from mipo.prompt_format import PromptFormat

__all__ = ["PLAN_STEPS", "PlanConfig", "PlanStats", "build_plan", "read_plan"]

PLAN_STEPS = ("read", "dedup", "tokenize", "derange", "write")
"""Where plan time goes, in :attr:`PlanStats.step_seconds`."""

ProgressCallback = Callable[[str, int], None]
"""Called as ``progress(step, rows_advanced)`` while the plan streams the corpus."""


@dataclass(frozen=True)
class PlanConfig:
    """Options of the plan stage."""

    seed: int = 0
    """Seed of the negative assignment (and of everything random downstream)."""
    negatives: NegativeStrategy = "random"
    """``random``, ``context-drop``, ``context-swap`` or a comma-separated list (see
    :mod:`mipo.pairs.negatives`)."""
    max_prompt_tokens: int | None = None
    """Prompts with more tokens (chat template included) are dropped and counted; None: no limit."""
    dedup: bool = True
    """Drop exact and near duplicates. False keeps them, but never pairs two as prompt/negative."""
    near_dup_threshold: float = 0.8
    """Jaccard similarity (word 5-gram shingles) at or above which two prompts are near duplicates."""
    user_constraint: bool = True
    """With a user column, a prompt's random negative comes from another user."""
    batch_rows: int = 65_536
    """Rows per streamed batch: bounds the memory the messages and token ids take at once."""
    row_group_rows: int = 16_384
    """Rows per Parquet row group of ``plan.parquet`` (fixed, so output bytes are reproducible)."""

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        object.__setattr__(self, "negatives", parse_strategy(self.negatives))
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ConfigError(
                f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}"
            )
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1, got {self.batch_rows}")
        if self.row_group_rows < 1:
            raise ConfigError(f"row_group_rows must be >= 1, got {self.row_group_rows}")

    @property
    def needs_random(self) -> bool:
        return "random" in strategy_kinds(self.negatives)

    @property
    def needs_context_drop(self) -> bool:
        return "context-drop" in strategy_kinds(self.negatives)

    @property
    def needs_sentence_drop(self) -> bool:
        """``sentence-drop`` shortens the question of the context-free prompt, so the plan keeps
        ``prompt_nocontext`` (and its tokens, as for context-drop) for it."""
        return "sentence-drop" in strategy_kinds(self.negatives)

    @property
    def needs_context_swap(self) -> bool:
        return "context-swap" in strategy_kinds(self.negatives)

    @property
    def needs_context(self) -> bool:
        return self.needs_context_drop or self.needs_context_swap


@dataclass
class PlanStats:
    """What the plan stage did, for ``stats.json`` and the summary table."""

    rows_in: int = 0
    empty_dropped: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    over_length: int = 0
    prompts_planned: int = 0
    with_context: int = 0
    without_context: int = 0
    users: int | None = None
    question_clusters: int | None = None
    swaps_reused: int = 0
    swaps_generated: int = 0
    swaps_no_context: int = 0
    swaps_no_donor: int = 0
    swaps_over_length: int = 0
    max_prompt_tokens: int | None = None
    prompt_tokens_total: int = 0
    prompt_tokens_max: int = 0
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PLAN_STEPS, 0.0))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        data["step_seconds"] = {k: round(v, 3) for k, v in self.step_seconds.items()}
        data["rows_per_s"] = round(self.rows_in / self.seconds, 1) if self.seconds else None
        return data


class StepClock:
    """Adds wall time to named steps (``with clock("dedup"): ...``)."""

    def __init__(self, steps: dict[str, float]) -> None:
        self.steps = steps

    @contextlib.contextmanager
    def __call__(self, step: str):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps[step] += time.perf_counter() - start


def _timed_batches(corpus: Corpus, columns: list[str], config: PlanConfig, clock: StepClock):  # type: ignore[no-untyped-def]
    """Yield the standard ``columns`` in batches, booking the time spent producing them to
    ``read`` (Parquet is pulled a batch at a time: see :meth:`Corpus.standardized_batches`)."""
    iterator = corpus.standardized_batches(columns, config.batch_rows)
    while True:
        with clock("read"):
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


def too_few_error(stats: PlanStats, kept: int) -> CorpusError:
    """The error of a plan left with fewer than 2 prompts for random negatives (local or Ray)."""
    if stats.rows_in == 1:
        return CorpusError(
            "the corpus has 1 row; random negatives pair each prompt with another one: "
            "add prompts (at least 2), or use --negatives context-drop"
        )
    return CorpusError(
        f"only {kept} distinct prompt left of {stats.rows_in} rows ({stats.empty_dropped} "
        f"empty, {stats.exact_duplicates} exact and {stats.near_duplicates} near duplicates "
        "removed); random negatives need at least 2 distinct prompts"
    )


def encode_nocontext(tokenizer: engine.ChatTokenizer, batch: pl.DataFrame) -> pl.DataFrame:
    """Token ids of the context-dropped prompt, only for rows that have a context (else null)."""
    with_ctx = batch.filter(pl.col("has_context"))
    if with_ctx.height:
        encoded = tokenizer.encode_chat(with_ctx["prompt_nocontext"])
    else:
        encoded = pl.DataFrame(
            {"input_ids": [], "num_tokens": []},
            schema={"input_ids": pl.List(pl.UInt32), "num_tokens": pl.UInt32},
        )
    joined = pl.DataFrame(
        {
            "row": with_ctx["row"],
            "input_ids_nocontext": encoded["input_ids"],
            "num_prompt_tokens_nocontext": encoded["num_tokens"].cast(pl.UInt32),
        }
    )
    batch = batch.join(joined, on="row", how="left", maintain_order="left")
    return batch.with_columns(
        pl.when(pl.col("has_context"))
        .then(pl.col("prompt_nocontext"))
        .otherwise(None)
        .alias("prompt_nocontext")
    )


def input_columns(corpus: Corpus, config: PlanConfig) -> list[str]:
    """The standard columns the plan reads of each batch (see :meth:`Corpus.standardized_batches`),
    local or Ray."""
    wanted = [
        "row",
        "id",
        "prompt",
        "prompt_nocontext",
        "has_context",
        "dedup_text",
        "is_empty",
        "bad_message",
    ]
    if corpus.has_users:
        wanted.append("user_id")
    if config.needs_context_swap:
        wanted += ["question_text", "context_text"]
    return wanted


def check_context_column(corpus: Corpus, config: PlanConfig) -> None:
    """Context-drop and context-swap need a context: refuse a corpus without a context column."""
    if config.needs_context and corpus.columns.messages is None and not corpus.has_context_column:
        raise ConfigError(
            f"--negatives {config.negatives} drops or swaps each prompt's context, but the input has no "
            "context column: pass --set columns.context=NAME (or columns.messages with system "
            "messages), "
            "or use --negatives random"
        )


def check_messages(batch: pl.DataFrame) -> None:
    """Refuse a batch holding a chat message without role or content (one line, first row)."""
    bad = batch.filter(pl.col("bad_message"))
    if bad.height:
        raise CorpusError(
            f"input row {bad['row'][0]}: a chat message has no role or no content "
            f"({bad.height} such rows in this batch); every message needs both"
        )


def check_usable(corpus: Corpus, stats: PlanStats) -> None:
    """Refuse a corpus without rows, or whose prompts are all null or empty."""
    if stats.rows_in == 0:
        raise CorpusError(f"input '{corpus.spec}' has no rows")
    if stats.empty_dropped == stats.rows_in:
        prompt_col = corpus.columns.prompt or corpus.columns.messages
        raise CorpusError(
            f"no usable prompts: all {stats.rows_in} rows have a null or empty prompt "
            f"(column {prompt_col!r}); fill them or pick another column"
        )


def check_planned(
    config: PlanConfig, stats: PlanStats, distinct: int, planned: int, lengths_dropped: list[int]
) -> None:
    """Refuse a plan left with too few prompts: ``distinct`` after dedup, ``planned`` after the
    over-length ones (``lengths_dropped``: the shortest and longest of those, per batch)."""
    if config.needs_random and distinct < 2:
        raise too_few_error(stats, distinct)
    if planned == 0 or (config.needs_random and planned < 2):
        raise CorpusError(
            f"{'no' if planned == 0 else 'only 1'} prompt left after dropping "
            f"{stats.over_length} over max_prompt_tokens={config.max_prompt_tokens} (the "
            f"shortest of those has {min(lengths_dropped, default=0)} tokens, the longest "
            f"{max(lengths_dropped, default=0)}): raise it (--set max_prompt_tokens=N) or lower "
            "--generation-max-new-tokens"
            + ("" if planned == 0 else " (random negatives need at least 2 prompts)")
        )


def check_some_context(config: PlanConfig, stats: PlanStats) -> None:
    """Context-drop and context-swap need at least one planned prompt with a context."""
    if config.needs_context and stats.with_context == 0:
        raise ConfigError(
            f"--negatives {config.negatives} drops or swaps each prompt's context, but none of the "
            f"{stats.prompts_planned} prompts has one (empty context column or no system "
            "message): fill the context, or use --negatives random"
        )


def drop_over_length(
    batch: pl.DataFrame, max_prompt_tokens: int | None
) -> tuple[pl.DataFrame, int, list[int]]:
    """``batch`` without its prompts over ``max_prompt_tokens``; how many were dropped, and the
    shortest and longest of them (empty when none)."""
    if max_prompt_tokens is None:
        return batch, 0, []
    too_long = batch["num_prompt_tokens"] > max_prompt_tokens
    if not too_long.any():
        return batch, 0, []
    lengths = batch.filter(too_long)["num_prompt_tokens"]
    extremes = [int(lengths.min()), int(lengths.max())]  # type: ignore[arg-type]
    return batch.filter(~too_long), int(too_long.sum()), extremes


def encode_prompts(tokenizer: engine.ChatTokenizer, batch: pl.DataFrame) -> pl.DataFrame:
    """``batch`` with the token ids and token count of its rendered prompt."""
    encoded = tokenizer.encode_chat(batch["prompt"])
    return batch.with_columns(
        encoded["input_ids"].alias("input_ids"),
        encoded["num_tokens"].cast(pl.UInt32).alias("num_prompt_tokens"),
    )


def swap_group(batch: pl.DataFrame, has_users: bool) -> pl.Series:
    """Whose context a row holds, for context-swap: its user, or without a user column a hash of
    the context itself (then "another user" means another context)."""
    return batch["user_id"] if has_users else batch["context_text"].hash(0)


def swap_representatives(rows: pl.DataFrame) -> pl.DataFrame:
    """One context per swap group (its first row's with a context, in ``rows``' order):
    ``swap_group``, ``context_text``, ``id``."""
    return (
        rows.filter(pl.col("has_context"))
        .select("swap_group", "context_text", "id")
        .unique("swap_group", keep="first", maintain_order=True)
    )


@dataclass
class _Pass:
    """What the streaming pass keeps between batches: the two dedup states (prompts, and for
    context-swap questions alone), the part files and the compact per-prompt columns."""

    deduper: engine.Deduper
    questions: engine.Deduper
    parts: list[Path] = field(default_factory=list)
    compact: list[pl.DataFrame] = field(default_factory=list)
    representatives: list[pl.DataFrame] = field(default_factory=list)
    lengths_dropped: list[int] = field(default_factory=list)


def _stream_pass(
    corpus: Corpus,
    tokenizer: engine.ChatTokenizer,
    config: PlanConfig,
    parts_dir: Path,
    target: Path,
    stats: PlanStats,
    clock: StepClock,
    progress: ProgressCallback | None,
) -> tuple[list[Path], pl.DataFrame, pl.DataFrame]:
    """Read, validate, dedupe, tokenize and write each batch to a part file, in one pass.

    The engine's streaming :class:`~mipo.engine.Deduper` keeps the global dedup state (exact
    hashes, LSH buckets, fingerprints of kept rows), so a batch is compared against every earlier
    row without the text of those rows staying in memory. Returns the part files, the compact
    per-prompt state the derangement needs (``id``, ``cluster``, ``user_id``, ...) and, for
    ``context-swap``, one representative context per user (else an empty frame).
    """
    dedup = engine.DedupConfig(threshold=config.near_dup_threshold)
    # context-swap: questions alone are clustered too (exact + near duplicates), so prompts of
    # other users asking the same question can lend their responses.
    state = _Pass(engine.Deduper(dedup), engine.Deduper(dedup))
    for batch in _timed_batches(corpus, input_columns(corpus, config), config, clock):
        seen = batch.height
        stats.rows_in += seen
        check_messages(batch)
        batch = batch.filter(~pl.col("is_empty"))
        stats.empty_dropped += seen - batch.height
        if progress:
            progress("read", seen)
        if batch.height == 0:
            continue
        batch = _dedup_batch(batch, state, corpus.has_users, config, stats, clock)
        batch = _tokenize_batch(batch, state, tokenizer, config, stats, clock)
        if progress:
            progress("tokenize", seen)
        if batch.height:
            _write_part(batch, state, corpus.has_users, config, parts_dir, target, clock)
    return _finish_pass(state, corpus, config, stats)


def _dedup_batch(
    batch: pl.DataFrame,
    state: _Pass,
    has_users: bool,
    config: PlanConfig,
    stats: PlanStats,
    clock: StepClock,
) -> pl.DataFrame:
    """The batch's cluster ids (and its question clusters, for context-swap); duplicates
    dropped and counted unless ``dedup`` is off."""
    with clock("dedup"):
        # Cluster ids are global (positions among all usable rows), so they stay comparable
        # across batches for the near-duplicate constraint of the derangement.
        found = state.deduper.add(batch["dedup_text"])
        batch = batch.drop("dedup_text", "is_empty", "bad_message").with_columns(
            found["cluster"].cast(pl.UInt32).alias("cluster")
        )
        if config.dedup:
            stats.exact_duplicates += int((~found["keep"] & found["exact"]).sum())
            stats.near_duplicates += int((~found["keep"] & ~found["exact"]).sum())
            batch = batch.filter(found["keep"])
        if config.needs_context_swap and batch.height:
            found = state.questions.add(batch["question_text"])
            batch = batch.with_columns(
                found["cluster"].cast(pl.UInt32).alias("question_cluster"),
                swap_group(batch, has_users).alias("swap_group"),
            ).drop("question_text")
    return batch


def _tokenize_batch(
    batch: pl.DataFrame,
    state: _Pass,
    tokenizer: engine.ChatTokenizer,
    config: PlanConfig,
    stats: PlanStats,
    clock: StepClock,
) -> pl.DataFrame:
    """Render + encode the batch, drop its over-long prompts, encode the context-dropped
    prompts; for context-swap, note each user's representative context."""
    swap = config.needs_context_swap
    with clock("tokenize"):
        if batch.height:
            batch = encode_prompts(tokenizer, batch)
            batch, over, extremes = drop_over_length(batch, config.max_prompt_tokens)
            stats.over_length += over
            state.lengths_dropped += extremes
        if (config.needs_context_drop or config.needs_sentence_drop) and batch.height:
            batch = encode_nocontext(tokenizer, batch)
        elif not swap:
            batch = batch.drop("prompt_nocontext")
    if swap and batch.height:
        # One context per user (its first planned row's): what another user's question is
        # asked with when no other user asked it. Kept in memory: one string per user.
        state.representatives.append(swap_representatives(batch))
        batch = batch.drop("context_text")
    return batch


def _write_part(
    batch: pl.DataFrame,
    state: _Pass,
    has_users: bool,
    config: PlanConfig,
    parts_dir: Path,
    target: Path,
    clock: StepClock,
) -> None:
    """Write the batch's plan columns to a part file; keep its compact columns in memory."""
    part = parts_dir / f"part-{len(state.parts):06d}.parquet"
    # A full disk fails here first (the parts hold most of the plan's bytes): one clear line.
    swap_state = ["question_cluster", "swap_group"] if config.needs_context_swap else []
    with clock("write"), write_errors(target, f"{target.name} (part file {part.name})"):
        batch.drop(swap_state).write_parquet(part, compression="lz4", statistics=False)
    state.parts.append(part)
    keep_cols = ["id", "cluster", "has_context", "num_prompt_tokens", *swap_state]
    state.compact.append(batch.select(keep_cols + (["user_id"] if has_users else [])))


def _finish_pass(
    state: _Pass, corpus: Corpus, config: PlanConfig, stats: PlanStats
) -> tuple[list[Path], pl.DataFrame, pl.DataFrame]:
    """The checks at the end of the pass; the part files, compact state and representatives."""
    check_usable(corpus, stats)
    distinct = state.deduper.clusters if config.dedup else state.deduper.rows_seen
    compact = pl.concat(state.compact) if state.compact else pl.DataFrame()
    check_planned(config, stats, distinct, compact.height, state.lengths_dropped)
    reps = (
        pl.concat(state.representatives).unique("swap_group", keep="first", maintain_order=True)
        if state.representatives
        else pl.DataFrame()
    )
    return state.parts, compact, reps


def swap_columns(
    frame: pl.DataFrame,
    offset: int,
    swaps: ContextSwaps,
    ids: pl.Series,
    reps: pl.DataFrame,
    tokenizer: engine.ChatTokenizer,
    max_prompt_tokens: int | None,
    prompt_format: PromptFormat,
) -> tuple[list[pl.Series], int]:
    """The context-swap columns of one part: ``swap_index`` (partner whose response is reused),
    ``swap_id`` (whose context: the partner's or the donor user's representative row),
    ``swap_source`` (reused / generated) and, for generated ones, ``input_ids_swap`` (the
    question asked with the donor's context, rendered and encoded). Returns the columns and the
    number of generated swaps dropped for exceeding ``max_prompt_tokens``."""
    n = frame.height
    partner = swaps.partner.slice(offset, n)
    donor = swaps.donor.slice(offset, n)
    swapped_ids = pl.Series("input_ids_swap", [None] * n, dtype=pl.List(pl.UInt32))
    swapped_len = pl.Series("num_prompt_tokens_swap", [None] * n, dtype=pl.UInt32)
    over = 0
    todo = donor.is_not_null()
    if bool(todo.any()):
        rows = frame.filter(todo)
        chosen = donor.filter(todo)
        context = reps["context_text"].gather(chosen)
        # The donor's context goes where the corpus's prompt format puts every context.
        messages = rows.select(
            prompt_format.messages_expr(
                pl.lit(context), pl.col("prompt_nocontext"), MESSAGE_DTYPE
            ).alias("m")
        )["m"]
        encoded = tokenizer.encode_chat(messages)
        lengths = encoded["num_tokens"].cast(pl.UInt32)
        keep = (
            pl.Series([True] * len(lengths))
            if max_prompt_tokens is None
            else lengths <= max_prompt_tokens
        )
        over = int((~keep).sum())
        position = pl.int_range(0, n, dtype=pl.UInt32, eager=True).filter(todo)
        ids_col = pl.select(pl.when(keep).then(encoded["input_ids"]).otherwise(None)).to_series()
        len_col = pl.select(pl.when(keep).then(lengths).otherwise(None)).to_series()
        scatter = pl.DataFrame({"pos": position, "ids": ids_col, "len": len_col})
        full = pl.DataFrame({"pos": pl.int_range(0, n, dtype=pl.UInt32, eager=True)}).join(
            scatter, on="pos", how="left", maintain_order="left"
        )
        swapped_ids = full["ids"].cast(pl.List(pl.UInt32)).alias("input_ids_swap")
        swapped_len = full["len"].cast(pl.UInt32).alias("num_prompt_tokens_swap")
        donor = pl.select(
            pl.when(swapped_ids.is_not_null()).then(donor).otherwise(None)
        ).to_series()
    donor_ids = reps["id"].gather(donor.fill_null(0)) if reps.height else pl.Series([None] * n)
    swap_id = pl.select(
        pl.when(partner.is_not_null())
        .then(ids.gather(partner.fill_null(0)))
        .when(donor.is_not_null())
        .then(donor_ids)
        .otherwise(None)
        .cast(pl.String)
    ).to_series()
    source = pl.select(
        pl.when(partner.is_not_null())
        .then(pl.lit("reused"))
        .when(donor.is_not_null())
        .then(pl.lit("generated"))
        .otherwise(None)
    ).to_series()
    return [
        partner.alias("swap_index"),
        swap_id.alias("swap_id"),
        source.alias("swap_source"),
        swapped_ids,
        swapped_len,
    ], over


class RowGroupWriter:
    """Writes frames into one Parquet file in row groups of ``row_group_rows`` whatever the
    frames' sizes, so the bytes never depend on batch boundaries (local and Ray plans):
    ``with RowGroupWriter(path, rows) as out: out.add(frame)``. The rows still pending are
    written on a clean exit only."""

    def __init__(self, path: Path, row_group_rows: int) -> None:
        self.path = path
        self.row_group_rows = row_group_rows
        self.writer: Any = None
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = 0

    def __enter__(self) -> RowGroupWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None and self.pending_rows:
                self._flush(pl.concat(self.pending))
        finally:
            if self.writer is not None:
                self.writer.close()

    def _flush(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.writer.write_table(table, row_group_size=self.row_group_rows)

    def add(self, frame: pl.DataFrame) -> None:
        self.pending.append(frame)
        self.pending_rows += frame.height
        while self.pending_rows >= self.row_group_rows:
            merged = pl.concat(self.pending)
            self._flush(merged.slice(0, self.row_group_rows))
            rest = merged.slice(self.row_group_rows)
            self.pending, self.pending_rows = [rest], rest.height


def _write_plan(
    parts: list[Path],
    sigma: pl.Series | None,
    ids: pl.Series,
    target: Path,
    config: PlanConfig,
    clock: StepClock,
    swaps: tuple[ContextSwaps, pl.DataFrame, engine.ChatTokenizer, PromptFormat] | None = None,
) -> int:
    """Stream the parts into ``target`` in fixed-size row groups, adding the plan index and the
    negatives (and, with ``swaps``, the context-swap columns, see :func:`swap_columns`);
    temporary file + rename (a failed write raises a one-line OutputError, via
    :func:`~mipo.io.atomic_path`, and leaves no temporary file). Returns the number of
    generated context swaps dropped as over-long."""
    offset = 0
    over_length = 0
    with (
        clock("write"),
        atomic_path(target) as tmp,
        RowGroupWriter(tmp, config.row_group_rows) as out,
    ):
        for part in parts:
            frame = pl.read_parquet(part)
            n = frame.height
            index = pl.int_range(offset, offset + n, dtype=pl.UInt32, eager=True)
            columns = [index.alias("plan_index")]
            if sigma is not None:
                neg = sigma.slice(offset, n)
                columns += [neg.alias("negative_index"), ids.gather(neg).alias("negative_id")]
            if swaps is not None:
                assigned, reps, tokenizer, prompt_format = swaps
                extra, dropped = swap_columns(
                    frame,
                    offset,
                    assigned,
                    ids,
                    reps,
                    tokenizer,
                    config.max_prompt_tokens,
                    prompt_format,
                )
                columns += extra
                over_length += dropped
            out.add(frame.with_columns(columns).select("plan_index", pl.exclude("plan_index")))
            offset += n
    return over_length


def build_plan(
    corpus: Corpus,
    tokenizer: engine.ChatTokenizer,
    target: str | Path,
    config: PlanConfig,
    *,
    progress: ProgressCallback | None = None,
) -> PlanStats:
    """Run the plan stage and write ``target`` (``plan.parquet``) atomically.

    Raises :class:`CorpusError` (nothing usable, too few prompts), :class:`ConfigError`
    (context-drop without any context), :class:`~mipo.errors.DerangementError`, or
    :class:`~mipo.errors.OutputError` when a file cannot be written (full disk): then neither
    ``target`` nor any part file is left behind.
    """
    target = Path(target)
    start = time.perf_counter()
    stats = PlanStats(max_prompt_tokens=config.max_prompt_tokens)
    clock = StepClock(stats.step_seconds)
    check_context_column(corpus, config)
    with write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        parts_dir = Path(tempfile.mkdtemp(prefix=".plan-parts-", dir=target.parent))
    try:
        parts, state, reps = _stream_pass(
            corpus, tokenizer, config, parts_dir, target, stats, clock, progress
        )
        _summarize(stats, state, corpus.has_users)
        check_some_context(config, stats)
        sigma = _random_negatives(state, corpus.has_users, config, clock)
        if progress and sigma is not None:
            progress("derange", state.height)
        swaps = None
        if config.needs_context_swap:
            with clock("derange"):
                assigned = context_swaps(state, reps, config.seed)
            _count_swaps(stats, assigned, int(state["question_cluster"].n_unique()))
            swaps = (assigned, reps, tokenizer, corpus.prompt_format)
        stats.swaps_over_length = _write_plan(
            parts, sigma, state["id"], target, config, clock, swaps
        )
        if swaps is not None:
            stats.swaps_generated = swaps[0].generated - stats.swaps_over_length
        if progress:
            progress("write", state.height)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    stats.seconds = time.perf_counter() - start
    return stats


def _summarize(stats: PlanStats, state: pl.DataFrame, has_users: bool) -> None:
    """Fill ``stats``' counts of the planned prompts from their compact state."""
    stats.prompts_planned = state.height
    stats.with_context = int(state["has_context"].sum())
    stats.without_context = stats.prompts_planned - stats.with_context
    stats.prompt_tokens_total = int(state["num_prompt_tokens"].sum())
    stats.prompt_tokens_max = int(state["num_prompt_tokens"].max())  # type: ignore[arg-type]
    if has_users:
        stats.users = int(state["user_id"].n_unique())


def _random_negatives(
    state: pl.DataFrame, has_users: bool, config: PlanConfig, clock: StepClock
) -> pl.Series | None:
    """σ over every planned prompt, when the strategy has random negatives (else None)."""
    if not config.needs_random:
        return None
    with clock("derange"):
        users = state["user_id"] if has_users and config.user_constraint else None
        return assign_negatives(
            state.height, seed=config.seed, users=users, clusters=state["cluster"]
        )


CONTEXT_SWAP_SEED = 0xC0_5A_A9
"""Mixed into the plan seed for the context-swap draws (so they differ from random's σ)."""


def context_swaps(rows: pl.DataFrame, reps: pl.DataFrame, seed: int) -> ContextSwaps:
    """The context-swap partners and donors of ``rows`` (in plan order, with ``question_cluster``,
    ``has_context``, ``swap_group``, ``cluster``), ``reps`` their representative contexts (see
    :func:`swap_representatives`): the whole plan locally, one block on Ray."""
    return assign_context_swaps(
        question_clusters=rows["question_cluster"],
        has_context=rows["has_context"],
        groups=rows["swap_group"],
        prompt_clusters=rows["cluster"],
        representative_groups=reps["swap_group"],
        seed=seed ^ CONTEXT_SWAP_SEED,
    )


def _count_swaps(stats: PlanStats, assigned: ContextSwaps, question_clusters: int) -> None:
    stats.question_clusters = question_clusters
    stats.swaps_reused = assigned.reused
    stats.swaps_no_context = assigned.no_context
    stats.swaps_no_donor = assigned.no_donor


def read_plan(path: str | Path) -> pl.DataFrame:
    """Read a ``plan.parquet`` written by :func:`build_plan`."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"plan '{path}' not found: run `mipo build-pairs` (add --plan-only)")
    try:
        return pl.read_parquet(path)
    except Exception as exc:
        raise CorpusError(
            f"plan '{path}' is unreadable ({exc}); rebuild it with --overwrite"
        ) from exc
