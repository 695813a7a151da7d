"""The plan stage on a Ray cluster (``mipo build-pairs --executor ray``): same rows, same keep
mask, same clusters as :func:`mipo.pairs.plan.build_plan`, with no node holding the global
dedup state.

Ray tasks over Arrow/Polars blocks, shuffled by hash partitioning (``P`` partitions), with no
per-row Python objects (the engine takes whole Arrow columns):

1. *map* (per batch): a Parquet corpus is read and validated by the task itself (its slice of a
   file, from the footers the driver read; JSONL and CSV have no random access, so the driver
   streams their batches as the local plan does); empty prompts are dropped and counted; the
   engine sketches each row (normalize, exact key, MinHash band keys, shingle fingerprints) and
   renders + tokenizes it; the rows stay in the object store. Every shuffle carries the input
   row number; cluster ids are renumbered over the usable rows (as the local plan numbers them)
   at the end;
2. *exact*: (exact key, row) shuffled by key; the first row of each key is the one the local
   plan keeps, the others are routed back to their batch as (row, first);
3. *buckets*: (band, key, row) of the first occurrences shuffled by bucket; each bucket emits
   every pair of its rows (the local ``Deduper`` compares a row with every representative in its
   buckets, so consecutive neighbours alone would not give its answer);
4. *verify*: pairs shuffled to the fingerprints of their earlier row, then of their later row,
   and kept where the exact Jaccard similarity reaches the threshold;
5. *resolve*: the verified edges (only near-duplicate pairs: small) go to one task, where the
   engine applies the ``Deduper``'s rule (a row joins the earliest representative it verified
   with) — not connected components, which would merge chains the local plan keeps apart;
6. *finalize* (per batch): keep mask and clusters joined back, over-long prompts dropped; the
   distinct users counted by a shuffle of user ids (no set of every user in the driver);
7. *negatives*: rows spread over ``ceil(n / negative_block_rows)`` blocks by a seeded hash of the
   input row; within a block the engine's constrained derangement (never the row itself, never
   the same user, never the same cluster). The blocks depend on the rows and the seed only, so
   the negatives do not depend on the number of workers or partitions (docs/scaling.md says how
   this differs from one global derangement);
8. *write*: the driver streams the blocks into ``plan.parquet`` in fixed row groups, through a
   temporary file and a rename.

Every task is a pure function of its inputs, so Ray's retries (``max_retries``: a killed worker
process is rerun) recompute the same blocks; nothing is written before step 8, which writes
once, atomically. ``context-swap`` negatives are not planned here: :func:`build_plan_ray` says so
and the build falls back to the local plan.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mipo import engine
from mipo.corpus import Corpus, check_parquet_columns, corpus_error
from mipo.errors import ConfigError, CorpusError, DependencyError, MipoError, PlanError
from mipo.io import atomic_path
from mipo.pairs.plan import (
    PlanConfig,
    PlanStats,
    ProgressCallback,
    StepClock,
    encode_nocontext,
    too_few_error,
)

__all__ = ["RayPlanReport", "block_of_rows", "build_plan_ray"]

DEFAULT_NEGATIVE_BLOCK_ROWS = 1 << 20
"""Rows per derangement block (a fixed number, so the blocks never depend on the cluster)."""

MAX_RETRIES = 3
"""Ray reruns a task whose worker process died up to this many times."""

_KILL_ENV = "MIPO_TEST_RAY_PLAN_KILL_DIR"
"""Tests: a folder; while it holds a file named after a stage (``map``, ``buckets``, ...), the
next task of that stage takes the file and kills its own worker process, so Ray must rerun it."""


@dataclass
class RayPlanReport:
    """What the Ray plan measured, beside :class:`PlanStats`: shuffle bytes per stage (bytes of
    the partition blocks that cross between tasks), verified edges, and peak RSS of the worker
    processes that ran the tasks."""

    partitions: int = 0
    batches: int = 0
    negative_blocks: int = 0
    candidate_pairs: int = 0
    verified_edges: int = 0
    held_bytes: int = 0
    shuffle_bytes: dict[str, int] = field(default_factory=dict)
    worker_peak_rss: int = 0
    worker_pids: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "batches": self.batches,
            "negative_blocks": self.negative_blocks,
            "candidate_pairs": self.candidate_pairs,
            "verified_edges": self.verified_edges,
            "held_bytes": self.held_bytes,
            "shuffle_bytes": dict(self.shuffle_bytes),
            "shuffle_bytes_total": sum(self.shuffle_bytes.values()),
            "worker_peak_rss": self.worker_peak_rss,
            "worker_pids": self.worker_pids,
        }


# --- helpers run inside tasks ---------------------------------------------------------------------


def _peak_rss() -> int:
    """Peak resident bytes of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _meta(**values: Any) -> dict[str, Any]:
    return {"pid": os.getpid(), "rss": _peak_rss(), **values}


def _maybe_die(stage: str) -> None:
    folder = os.environ.get(_KILL_ENV)
    if not folder:
        return
    try:  # the rename is the claim: one task dies per armed file
        os.rename(os.path.join(folder, stage), os.path.join(folder, f"{stage}.killed"))
    except OSError:
        return
    os._exit(1)  # a killed worker process, as an OOM kill or a lost node leaves it


def _mix(values: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 of ``values + seed * golden``: a seeded, well-spread 64-bit hash (numpy)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _split(frame: pl.DataFrame, part: np.ndarray, parts: int) -> list[pl.DataFrame]:
    """``frame``'s rows by partition number (order kept within each), one frame per partition."""
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=parts)
    ordered = frame[pl.Series(order)] if frame.height else frame
    starts = np.concatenate([[0], np.cumsum(counts)])
    # clone(): a slice would carry (and serialize) the whole frame's buffers.
    return [ordered.slice(int(starts[i]), int(counts[i])).clone() for i in range(parts)]


def _concat(frames: tuple[pl.DataFrame, ...] | list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.height] or list(frames[:1])
    return pl.concat(frames, rechunk=True) if len(frames) > 1 else frames[0]


def _bytes(frames: list[pl.DataFrame]) -> int:
    return sum(int(f.estimated_size()) for f in frames)


_TOKENIZERS: dict[tuple[Any, ...], engine.ChatTokenizer] = {}


def _tokenizer(spec: tuple[str, str | None, int, int]) -> engine.ChatTokenizer:
    """The chat tokenizer, loaded once per worker process."""
    if spec not in _TOKENIZERS:
        path, template, fuel, max_bytes = spec
        _TOKENIZERS[spec] = engine.ChatTokenizer.from_pretrained(
            path, template, template_fuel=fuel, template_max_bytes=max_bytes
        )
    return _TOKENIZERS[spec]


# --- the stages (plain functions; wrapped as Ray tasks in build_plan_ray) -------------------------


def _read_slice(
    path: str, offset: int, rows: int, row_start: int, exprs: list[pl.Expr], needed: list[str]
) -> pl.DataFrame:
    """Rows ``offset .. offset + rows`` of one Parquet file in the standard shape (as
    :meth:`Corpus.standardized_batches` makes them), numbered from ``row_start``: a slice reads
    only the row groups it covers."""
    try:
        frame = pl.scan_parquet(path).select(needed).slice(offset, rows).collect()
        frame = frame.with_row_index("__row", offset=row_start)
        return frame.lazy().select(exprs).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise corpus_error([Path(path)], "parquet", exc) from exc


def _map_batch(
    source: pl.DataFrame | tuple[Any, ...],
    tokenizer_spec: tuple[str, str | None, int, int],
    dedup: engine.DedupConfig,
    context_drop: bool,
    parts: int,
) -> tuple[Any, ...]:
    """Read (a Parquet slice) or take (a batch the driver read) one batch; validate it, drop
    empty prompts, sketch + tokenize; returns (rows, sketch, exact partitions..., meta)."""
    _maybe_die("map")
    batch = source if isinstance(source, pl.DataFrame) else _read_slice(*source)
    seen = batch.height
    bad = batch.filter(pl.col("bad_message"))
    if bad.height:
        raise CorpusError(
            f"input row {bad['row'][0]}: a chat message has no role or no content "
            f"({bad.height} such rows in this batch); every message needs both"
        )
    empties = batch.filter(pl.col("is_empty"))["row"].to_numpy()
    # rid: the input row number, the id every shuffle carries (rows < 2**32, as the Deduper's).
    batch = batch.filter(~pl.col("is_empty")).with_columns(
        pl.col("row").cast(pl.UInt32).alias("rid")
    )
    sketch = engine.sketch_rows(batch["dedup_text"], dedup)
    rows = batch.drop("dedup_text", "is_empty", "bad_message")
    tokenizer = _tokenizer(tokenizer_spec)
    encoded = tokenizer.encode_chat(rows["prompt"])
    rows = rows.with_columns(
        encoded["input_ids"].alias("input_ids"),
        encoded["num_tokens"].cast(pl.UInt32).alias("num_prompt_tokens"),
    )
    rows = encode_nocontext(tokenizer, rows) if context_drop else rows.drop("prompt_nocontext")
    rid = batch["rid"]
    exact = pl.DataFrame([sketch["exact_hi"], sketch["exact_lo"], rid])
    exact_parts = _split(exact, (sketch["exact_lo"].to_numpy() % parts).astype(np.int64), parts)
    kept = pl.DataFrame([rid, sketch["band_keys"], sketch["fingerprints"]])
    meta = _meta(
        shuffle=_bytes(exact_parts),
        held=_bytes([rows, kept]),
        seen=seen,
        usable=batch.height,
        empties=empties,
    )
    return (rows, kept, *exact_parts, meta)


def _exact_reduce(starts: np.ndarray, *frames: pl.DataFrame) -> tuple[Any, ...]:
    """Per exact key its first row; every later row routed to its batch as (rid, first)."""
    _maybe_die("exact")
    table = _concat(frames)
    firsts = table.with_columns(pl.col("rid").min().over("exact_hi", "exact_lo").alias("first"))
    dups = firsts.filter(pl.col("rid") != pl.col("first")).select("rid", "first")
    block = np.searchsorted(starts, dups["rid"].to_numpy(), side="right") - 1
    routed = _split(dups, block.astype(np.int64), len(starts))
    return (*routed, _meta(shuffle=_bytes(routed)))


def _emit_bands(
    sketch: pl.DataFrame, bands: int, parts: int, *dups: pl.DataFrame
) -> tuple[Any, ...]:
    """Band records (bucket, row) and fingerprints of this batch's first occurrences."""
    _maybe_die("bands")
    dup_rows = _concat(dups)["rid"]
    firsts = sketch.filter(~pl.col("rid").is_in(dup_rows.implode()))
    rid = firsts["rid"].to_numpy()
    keys = firsts["band_keys"].to_numpy().astype(np.uint64).reshape(len(rid), bands)
    bucket = (np.arange(bands, dtype=np.uint64)[None, :] << np.uint64(32)) | keys
    records = pl.DataFrame(
        {
            "bucket": bucket.reshape(-1),
            "rid": np.repeat(rid, bands).astype(np.uint32),
        }
    )
    band_parts = _split(
        records, (_mix(records["bucket"].to_numpy(), 0) % parts).astype(np.int64), parts
    )
    fps = firsts.select("rid", "fingerprints")
    fp_parts = _split(fps, (rid % parts).astype(np.int64), parts)
    return (*band_parts, *fp_parts, _meta(shuffle=_bytes(band_parts) + _bytes(fp_parts)))


def _bucket_reduce(parts: int, *frames: pl.DataFrame) -> tuple[Any, ...]:
    """Every pair of rows sharing a bucket, routed by its earlier row."""
    _maybe_die("buckets")
    table = _concat(frames)
    pairs = engine.bucket_pairs(table["bucket"], table["rid"])
    routed = _split(pairs, (pairs["s"].to_numpy() % parts).astype(np.int64), parts)
    return (*routed, _meta(shuffle=_bytes(routed), pairs=pairs.height))


def _attach_earlier(fps: pl.DataFrame, parts: int, *frames: pl.DataFrame) -> tuple[Any, ...]:
    """Pairs given the fingerprints of their earlier row, routed by their later row."""
    _maybe_die("attach")
    pairs = _concat(frames).unique(maintain_order=True)
    joined = pairs.join(
        fps.rename({"rid": "s", "fingerprints": "fp_s"}), on="s", how="left", maintain_order="left"
    )
    routed = _split(joined, (joined["r"].to_numpy() % parts).astype(np.int64), parts)
    return (*routed, _meta(shuffle=_bytes(routed)))


def _verify(fps: pl.DataFrame, threshold: float, *frames: pl.DataFrame) -> tuple[Any, ...]:
    """The pairs whose exact Jaccard similarity reaches ``threshold``: verified edges (s, r)."""
    _maybe_die("verify")
    pairs = _concat(frames)
    joined = pairs.join(
        fps.rename({"rid": "r", "fingerprints": "fp_r"}), on="r", how="left", maintain_order="left"
    )
    if joined.height:
        ok = engine.verify_pairs(joined["fp_s"], joined["fp_r"], threshold)
        edges = joined.filter(ok).select("s", "r")
    else:
        edges = joined.select("s", "r")
    return edges, _meta(shuffle=_bytes([edges]))


def _resolve(*frames: pl.DataFrame) -> tuple[Any, ...]:
    """Non-representative first occurrences and their cluster (one task: edges are few)."""
    _maybe_die("resolve")
    edges = _concat(frames)
    near = engine.resolve_representatives(edges["s"], edges["r"])
    return near, _meta(edges=edges.height)


def _finalize(
    rows: pl.DataFrame,
    near: pl.DataFrame,
    empties: np.ndarray,
    config: PlanConfig,
    has_users: bool,
    *dups: pl.DataFrame,
) -> tuple[Any, ...]:
    """Cluster and keep of each row; dropped duplicates and over-long prompts; the plan's columns
    in the local plan's order; the compact columns the negatives need."""
    _maybe_die("finalize")
    dup = _concat(dups)
    frame = rows.join(dup, on="rid", how="left", maintain_order="left").with_columns(
        pl.col("first").is_not_null().alias("_exact"),
        pl.col("first").fill_null(pl.col("rid")),
    )
    frame = frame.join(
        near.rename({"row": "first", "cluster": "_near"}),
        on="first",
        how="left",
        maintain_order="left",
    ).with_columns(
        pl.col("_near").fill_null(pl.col("first")).cast(pl.UInt32).alias("cluster"),
        (~pl.col("_exact") & pl.col("_near").is_null()).alias("_keep"),
    )
    # Cluster ids as the local plan numbers them: a row's position among the usable rows.
    cluster = frame["cluster"].to_numpy()
    cluster = cluster - np.searchsorted(empties, cluster, side="left")
    frame = frame.with_columns(pl.Series("cluster", cluster.astype(np.uint32)))
    counts = {
        "exact": int((~frame["_keep"] & frame["_exact"]).sum()),
        "near": int((~frame["_keep"] & ~frame["_exact"]).sum()),
        "over": 0,
        "lengths": [],
    }
    if config.dedup:
        frame = frame.filter(pl.col("_keep"))
    if config.max_prompt_tokens is not None:
        too_long = frame["num_prompt_tokens"] > config.max_prompt_tokens
        if too_long.any():
            lengths = frame.filter(too_long)["num_prompt_tokens"]
            counts["over"] = int(too_long.sum())
            counts["lengths"] = [int(lengths.min()), int(lengths.max())]  # type: ignore[arg-type]
            frame = frame.filter(~too_long)
    order = ["row", "id", "prompt", "prompt_nocontext", "has_context", "user_id", "cluster"]
    order += [
        "input_ids",
        "num_prompt_tokens",
        "input_ids_nocontext",
        "num_prompt_tokens_nocontext",
    ]
    frame = frame.select([c for c in order if c in frame.columns])
    compact = frame.select(
        "row",
        "id",
        "cluster",
        "has_context",
        "num_prompt_tokens",
        *(["user_id"] if has_users else []),
    )
    return frame, compact, _meta(counts=counts)


def _route_negatives(compact: pl.DataFrame, offset: int, seed: int, blocks: int) -> tuple[Any, ...]:
    """This batch's planned rows, with their plan index, spread over the derangement blocks."""
    _maybe_die("route")
    n = compact.height
    frame = compact.select(
        pl.int_range(offset, offset + n, dtype=pl.UInt32, eager=True).alias("plan_index")
        if n
        else pl.Series("plan_index", [], dtype=pl.UInt32),
        "id",
        "cluster",
        *(["user_id"] if "user_id" in compact.columns else []),
    )
    block = block_of_rows(compact["row"].to_numpy(), seed, blocks)
    routed = _split(frame, block, blocks)
    return (*routed, _meta(shuffle=_bytes(routed)))


def _derange_block(
    block: int,
    blocks: int,
    seed: int,
    user_constraint: bool,
    starts: np.ndarray,
    *frames: pl.DataFrame,
) -> tuple[Any, ...]:
    """The engine's constrained derangement within one block; results routed to the batches."""
    from mipo.pairs.negatives import assign_negatives

    _maybe_die("derange")
    rows = _concat(frames).sort("plan_index")
    users = rows["user_id"] if user_constraint and "user_id" in rows.columns else None
    sigma = assign_negatives(
        rows.height, seed=block_seed(seed, block, blocks), users=users, clusters=rows["cluster"]
    )
    out = pl.DataFrame(
        [
            rows["plan_index"],
            rows["plan_index"].gather(sigma).alias("negative_index"),
            rows["id"].gather(sigma).alias("negative_id"),
        ]
    )
    where = np.searchsorted(starts, out["plan_index"].to_numpy(), side="right") - 1
    routed = _split(out, where.astype(np.int64), len(starts))
    return (*routed, _meta(shuffle=_bytes(routed)))


def block_seed(seed: int, block: int, blocks: int) -> int:
    """The derangement seed of one block: a mix of the plan seed and the block number; with a
    single block the plan seed itself, so a corpus that fits one block gets exactly the local
    plan's negatives."""
    if blocks == 1:
        return seed
    return int(_mix(np.array([block], dtype=np.uint64), seed)[0])


def block_of_rows(rows: np.ndarray, seed: int, blocks: int) -> np.ndarray:
    """The derangement block of each input row: a seeded hash of the row number, so a row's
    block depends on the row, the seed and the block count only.

    >>> block_of_rows(np.arange(5), seed=0, blocks=1).tolist()
    [0, 0, 0, 0, 0]
    """
    return (_mix(rows.astype(np.uint64), seed ^ 0x6E_65_67) % np.uint64(blocks)).astype(np.int64)


# --- the driver -----------------------------------------------------------------------------------


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise DependencyError(
            "--executor ray needs Ray, which is not installed: pip install 'mipo[ray]' "
            "(on every node of the cluster), or use --executor local"
        ) from exc
    return ray


@contextmanager
def _session(ray: Any, address: str | None) -> Iterator[None]:
    """Join (or start) a Ray runtime; a caller's own ``ray.init`` is used as it is."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except ConnectionError as exc:
        raise PlanError(
            f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: "
            f"{exc}; start it with `ray start --head` or leave the address out"
        ) from exc
    try:
        yield
    finally:
        ray.shutdown()


def _task_error(ray: Any, exc: BaseException) -> MipoError:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, MipoError):
        return type(cause)(str(cause))
    if cause is not None:
        return PlanError(f"a Ray plan task failed: {type(cause).__name__}: {cause}")
    return PlanError(
        f"a Ray plan task failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1]}); "
        "rerun the same command: the plan starts again"
    )


def build_plan_ray(
    corpus: Corpus,
    tokenizer: engine.ChatTokenizer,
    tokenizer_path: str | os.PathLike[str],
    target: str | os.PathLike[str],
    config: PlanConfig,
    *,
    partitions: int | None = None,
    address: str | None = None,
    negative_block_rows: int = DEFAULT_NEGATIVE_BLOCK_ROWS,
    progress: ProgressCallback | None = None,
    report: RayPlanReport | None = None,
) -> PlanStats:
    """:func:`~mipo.pairs.plan.build_plan` on Ray tasks (see the module docstring).

    ``partitions``: shuffle partitions (None: the cluster's CPUs); the keep mask, the clusters
    and the negatives never depend on it. ``negative_block_rows``: rows per derangement block.
    ``report`` (optional) receives the shuffle bytes, edges and worker peak RSS. Raises what
    ``build_plan`` raises, :class:`ConfigError` for ``context-swap`` negatives (plan them
    with the local executor) and :class:`PlanError` when Ray cannot run a task.

    >>> # needs Ray, a corpus and a model's tokenizer: see tests/test_ray_plan.py
    >>> stats = build_plan_ray(corpus, tok, "model/", "out/plan.parquet", PlanConfig())  # doctest: +SKIP
    """
    if config.needs_context_swap:
        raise ConfigError(
            "the Ray plan does not plan context-swap negatives yet: use --executor local for the "
            "plan (mipo build-pairs does so by itself), or --negatives random,context-drop"
        )
    if config.needs_context and corpus.columns.messages is None and not corpus.has_context_column:
        raise ConfigError(
            f"--negatives {config.negatives} drops or swaps each prompt's context, but the input has no "
            "context column: pass --context-col NAME (or a --messages-col with system messages), "
            "or use --negatives random"
        )
    if negative_block_rows < 2:
        raise ConfigError(f"negative_block_rows must be >= 2, got {negative_block_rows}")
    ray = import_ray()
    target = Path(target)
    start = time.perf_counter()
    stats = PlanStats(max_prompt_tokens=config.max_prompt_tokens)
    clock = StepClock(stats.step_seconds)
    report = report if report is not None else RayPlanReport()
    with _session(ray, address):
        try:
            _run(
                ray,
                corpus,
                tokenizer,
                str(tokenizer_path),
                target,
                config,
                stats,
                clock,
                report,
                partitions,
                negative_block_rows,
                progress,
            )
        except ray.exceptions.RayError as exc:
            raise _task_error(ray, exc) from exc
    stats.seconds = time.perf_counter() - start
    return stats


def _run(
    ray: Any,
    corpus: Corpus,
    tokenizer: engine.ChatTokenizer,
    tokenizer_path: str,
    target: Path,
    config: PlanConfig,
    stats: PlanStats,
    clock: StepClock,
    report: RayPlanReport,
    partitions: int | None,
    negative_block_rows: int,
    progress: ProgressCallback | None,
) -> None:
    P = partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))
    if P < 1:
        raise ConfigError(f"partitions must be >= 1, got {P}")
    report.partitions = P
    dedup = engine.DedupConfig(threshold=config.near_dup_threshold)
    fuel, max_bytes = tokenizer.template_limits
    spec = (tokenizer_path, tokenizer.chat_template, fuel, max_bytes)
    opts = {"max_retries": MAX_RETRIES}
    concat_task = ray.remote(**opts)(_concat_task)
    metas: list[Any] = []

    def shuffle(stage: str, refs: list[Any]) -> None:
        metas.append((stage, refs))

    # 1. read + validate (driver, streamed) and map (tasks)
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
    map_task = ray.remote(num_returns=2 + P + 1, **opts)(_map_batch)
    mapped: list[list[Any]] = []
    starts: list[int] = []
    with clock("read"):
        for source, row_start in _sources(corpus, wanted, config.batch_rows, progress):
            starts.append(row_start)
            mapped.append(map_task.remote(source, spec, dedup, config.needs_context_drop, P))
            del source
            # Backpressure: the driver reads ahead of the map tasks by at most 2 P batches.
            in_flight = [m[-1] for m in mapped[-4 * P :]]
            if len(in_flight) > 2 * P:
                ray.wait(in_flight, num_returns=len(in_flight) - 2 * P)
    with clock("tokenize"):  # the map tasks: read (Parquet), validate, sketch, tokenize
        map_metas = ray.get([m[-1] for m in mapped])
    stats.rows_in = sum(int(m["seen"]) for m in map_metas)
    usable = sum(int(m["usable"]) for m in map_metas)
    stats.empty_dropped = stats.rows_in - usable
    if corpus.format == "parquet" and progress:
        progress("read", stats.rows_in)
    if stats.rows_in == 0:
        raise CorpusError(f"input '{corpus.spec}' has no rows")
    if usable == 0:
        prompt_col = corpus.columns.prompt or corpus.columns.messages
        raise CorpusError(
            f"no usable prompts: all {stats.rows_in} rows have a null or empty prompt "
            f"(column {prompt_col!r}); fill them or pick another column"
        )
    empties = ray.put(
        np.concatenate([m["empties"] for m in map_metas]).astype(np.uint64)
        if map_metas
        else np.zeros(0, dtype=np.uint64)
    )
    B = len(mapped)
    report.batches = B
    starts_arr = np.array(starts, dtype=np.int64)
    shuffle("exact", [m[-1] for m in mapped])

    with clock("dedup"):
        # 2. exact duplicates
        exact_task = ray.remote(num_returns=B + 1, **opts)(_exact_reduce)
        exact = [exact_task.remote(starts_arr, *[m[2 + p] for m in mapped]) for p in range(P)]
        shuffle("exact_back", [e[-1] for e in exact])
        dups_of = [[e[b] for e in exact] for b in range(B)]
        # 3. band records and fingerprints of first occurrences; buckets -> pairs
        bands_task = ray.remote(num_returns=2 * P + 1, **opts)(_emit_bands)
        emitted = [bands_task.remote(mapped[b][1], dedup.bands, P, *dups_of[b]) for b in range(B)]
        shuffle("bands+fingerprints", [e[-1] for e in emitted])
        bucket_task = ray.remote(num_returns=P + 1, **opts)(_bucket_reduce)
        pairs = [bucket_task.remote(P, *[e[p] for e in emitted]) for p in range(P)]
        shuffle("pairs", [x[-1] for x in pairs])
        # 4. verify: each partition's fingerprints gathered once, used by both joins
        fps_of = [concat_task.remote(*[e[P + p] for e in emitted]) for p in range(P)]
        attach_task = ray.remote(num_returns=P + 1, **opts)(_attach_earlier)
        attached = [attach_task.remote(fps_of[p], P, *[x[p] for x in pairs]) for p in range(P)]
        shuffle("pairs+fingerprints", [x[-1] for x in attached])
        verify_task = ray.remote(num_returns=2, **opts)(_verify)
        verified = [
            verify_task.remote(fps_of[p], config.near_dup_threshold, *[x[p] for x in attached])
            for p in range(P)
        ]
        # 5. resolve
        resolve_task = ray.remote(num_returns=2, **opts)(_resolve)
        near, resolve_meta = resolve_task.remote(*[v[0] for v in verified])
        # 6. finalize
        final_task = ray.remote(num_returns=3, **opts)(_finalize)
        finals = [
            final_task.remote(mapped[b][0], near, empties, config, corpus.has_users, *dups_of[b])
            for b in range(B)
        ]
        final_metas = ray.get([f[2] for f in finals])
        report.verified_edges = int(ray.get(resolve_meta)["edges"])
    del mapped, exact, emitted, pairs, attached, verified, fps_of
    if progress:
        progress("tokenize", stats.rows_in)

    lengths_dropped: list[int] = []
    counts = []
    for m in final_metas:
        c = m["counts"]
        if config.dedup:
            stats.exact_duplicates += c["exact"]
            stats.near_duplicates += c["near"]
        stats.over_length += c["over"]
        lengths_dropped += c["lengths"]
    compacts = [f[1] for f in finals]
    # Per-batch planned counts and the small summaries (one pass over the compact columns).
    summary_task = ray.remote(num_returns=P + 1, **opts)(_summary)
    summarized = [summary_task.remote(c, P) for c in compacts]
    summaries = ray.get([s[0] for s in summarized])
    counts = [s["rows"] for s in summaries]
    planned = sum(counts)
    # The local plan's count: clusters (= representatives) with dedup, else every usable row.
    removed = sum(m["counts"]["exact"] + m["counts"]["near"] for m in final_metas)
    distinct = usable - removed if config.dedup else usable
    if config.needs_random and distinct < 2:
        raise too_few_error(stats, distinct)
    if planned == 0 or (config.needs_random and planned < 2):
        raise CorpusError(
            f"{'no' if planned == 0 else 'only 1'} prompt left after dropping "
            f"{stats.over_length} over --max-prompt-tokens={config.max_prompt_tokens} (the "
            f"shortest of those has {min(lengths_dropped, default=0)} tokens, the longest "
            f"{max(lengths_dropped, default=0)}): raise --max-prompt-tokens"
            + ("" if planned == 0 else " (random negatives need at least 2 prompts)")
        )
    stats.prompts_planned = planned
    stats.with_context = sum(s["with_context"] for s in summaries)
    stats.without_context = planned - stats.with_context
    stats.prompt_tokens_total = sum(s["tokens"] for s in summaries)
    stats.prompt_tokens_max = max(s["tokens_max"] for s in summaries if s["rows"])
    if corpus.has_users:
        count_task = ray.remote(**opts)(_count_distinct)
        counted = [count_task.remote(*[s[1 + p] for s in summarized]) for p in range(P)]
        stats.users = sum(ray.get(counted))
    del summarized
    if config.needs_context and stats.with_context == 0:
        raise ConfigError(
            f"--negatives {config.negatives} drops or swaps each prompt's context, but none of the "
            f"{stats.prompts_planned} prompts has one (empty context column or no system "
            "message): fill the context, or use --negatives random"
        )

    # 7. negatives
    offsets = np.concatenate([[0], np.cumsum(counts)])[:-1].astype(np.int64)
    negatives_of: list[list[Any]] = [[] for _ in range(B)]
    if config.needs_random:
        with clock("derange"):
            NB = max(1, math.ceil(planned / negative_block_rows))
            report.negative_blocks = NB
            route_task = ray.remote(num_returns=NB + 1, **opts)(_route_negatives)
            routed = [
                route_task.remote(compacts[b], int(offsets[b]), config.seed, NB) for b in range(B)
            ]
            shuffle("negatives", [r[-1] for r in routed])
            derange_task = ray.remote(num_returns=B + 1, **opts)(_derange_block)
            deranged = [
                derange_task.remote(
                    j, NB, config.seed, config.user_constraint, offsets, *[r[j] for r in routed]
                )
                for j in range(NB)
            ]
            shuffle("negatives_back", [d[-1] for d in deranged])
            ray.wait([d[-1] for d in deranged], num_returns=len(deranged))
            negatives_of = [[d[b] for d in deranged] for b in range(B)]
        if progress:
            progress("derange", planned)

    # 8. write
    with clock("write"):
        _write(ray, [f[0] for f in finals], negatives_of, offsets, target, config)
    if progress:
        progress("write", planned)

    for stage, refs in metas:
        values = ray.get(refs)
        report.shuffle_bytes[stage] = report.shuffle_bytes.get(stage, 0) + sum(
            int(v.get("shuffle", 0)) for v in values
        )
        if stage == "exact":
            report.held_bytes = sum(int(v.get("held", 0)) for v in values)
        if stage == "pairs":
            report.candidate_pairs = sum(int(v.get("pairs", 0)) for v in values)
        _note_workers(report, values)
    _note_workers(report, final_metas)


_PIDS: dict[int, int] = {}


def _sources(
    corpus: Corpus,
    wanted: list[str],
    batch_rows: int,
    progress: ProgressCallback | None,
) -> Iterator[tuple[pl.DataFrame | tuple[Any, ...], int]]:
    """What each map task reads, with the number of its first input row.

    Parquet: ``(path, offset, rows, row_start, exprs, needed)`` slices from the file footers
    alone, so the tasks read and validate the corpus and the driver touches no row. JSONL and
    CSV (no random access): the driver streams the standard batches, as the local plan does,
    and hands each to a task.
    """
    if corpus.format != "parquet":
        for batch in corpus.standardized_batches(wanted, batch_rows):
            if batch.height:
                if progress:
                    progress("read", batch.height)
                _check_row_limit(int(batch["row"][-1]) + 1)
                yield batch, int(batch["row"][0])
        return
    import pyarrow.parquet as pq

    exprs = corpus._standard_exprs(wanted)
    roots = {name for e in exprs for name in e.meta.root_names()}
    needed = [name for name in corpus.schema.names() if name in roots]
    if not needed:  # only ``row`` wanted: read one column, for the row counts
        needed = [corpus.schema.names()[0]]
    row = 0
    for path in corpus.files:
        try:
            found = pl.read_parquet_schema(path)
            count = pq.read_metadata(path).num_rows
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise corpus_error([path], "parquet", exc) from exc
        check_parquet_columns(path, corpus.files[0], pl.Schema(found), corpus.schema, needed)
        _check_row_limit(row + count)
        for offset in range(0, count, batch_rows):
            rows = min(batch_rows, count - offset)
            yield (str(path), offset, rows, row + offset, exprs, needed), row + offset
        row += count


def _check_row_limit(rows: int) -> None:
    if rows > 2**32 - 1:
        raise CorpusError(
            f"the corpus has more than {2**32 - 1} rows (row ids are UInt32): split it into "
            "independent parts and plan each"
        )


def _note_workers(report: RayPlanReport, metas: list[dict[str, Any]]) -> None:
    for m in metas:
        _PIDS[m["pid"]] = max(_PIDS.get(m["pid"], 0), int(m["rss"]))
        report.worker_peak_rss = max(report.worker_peak_rss, int(m["rss"]))
    report.worker_pids = len(_PIDS)


def _concat_task(*frames: pl.DataFrame) -> pl.DataFrame:
    return _concat(frames)


def _summary(compact: pl.DataFrame, parts: int) -> tuple[Any, ...]:
    """Counts of one batch, and its distinct users split by hash (so the distinct count over the
    corpus is a sum over partitions, never one set of every user in the driver)."""
    summary = {
        "rows": compact.height,
        "with_context": int(compact["has_context"].sum()),
        "tokens": int(compact["num_prompt_tokens"].sum()),
        "tokens_max": int(compact["num_prompt_tokens"].max() or 0),  # type: ignore[arg-type]
    }
    if "user_id" not in compact.columns:
        return (summary, *[pl.DataFrame() for _ in range(parts)])
    users = compact.select(pl.col("user_id").unique())
    where = (users["user_id"].hash(seed=7).to_numpy() % parts).astype(np.int64)
    return (summary, *_split(users, where, parts))


def _count_distinct(*frames: pl.DataFrame) -> int:
    frames = tuple(f for f in frames if f.width)
    return _concat(frames)["user_id"].n_unique() if frames else 0


def _write(
    ray: Any,
    finals: list[Any],
    negatives_of: list[list[Any]],
    offsets: np.ndarray,
    target: Path,
    config: PlanConfig,
) -> None:
    """Stream the batches into ``target`` in fixed-size row groups (as the local plan does),
    one batch in the driver's memory at a time; temporary file + rename."""
    import pyarrow.parquet as pq

    from mipo.io import write_errors

    with write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        writer: pq.ParquetWriter | None = None
        pending: list[pl.DataFrame] = []
        pending_rows = 0

        def flush(frame: pl.DataFrame) -> None:
            nonlocal writer
            table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=config.row_group_rows)

        try:
            for b, ref in enumerate(finals):
                frame = ray.get(ref)
                n = frame.height
                if n == 0:
                    continue
                offset = int(offsets[b])
                columns = [
                    pl.int_range(offset, offset + n, dtype=pl.UInt32, eager=True).alias(
                        "plan_index"
                    )
                ]
                frame = frame.with_columns(columns)
                if negatives_of[b]:
                    neg = _concat(ray.get(negatives_of[b])).sort("plan_index")
                    frame = frame.join(neg, on="plan_index", how="left", maintain_order="left")
                frame = frame.select("plan_index", pl.exclude("plan_index"))
                pending.append(frame)
                pending_rows += n
                while pending_rows >= config.row_group_rows:
                    merged = pl.concat(pending)
                    flush(merged.slice(0, config.row_group_rows))
                    rest = merged.slice(config.row_group_rows)
                    pending, pending_rows = [rest], rest.height
            if pending_rows:
                flush(pl.concat(pending))
        finally:
            if writer is not None:
                writer.close()
