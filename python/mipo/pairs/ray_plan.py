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
   with) — not connected components, which would merge chains the local plan keeps apart. Past
   ``max_resolve_edges`` the rule runs per connected component instead (a row's answer depends
   on its component only): components by iterated star contraction, edges routed by component,
   one resolve task per partition;
6. *finalize* (per batch): keep mask and clusters joined back, over-long prompts dropped; the
   distinct users counted by a shuffle of user ids (no set of every user in the driver);
7. *negatives*: ``random``: rows spread over ``ceil(n / negative_block_rows)`` blocks by a
   seeded hash of the input row; within a block the engine's constrained derangement (never the
   row itself, never the same user, never the same cluster). ``context-swap``: the questions are
   clustered too (steps 2-5 again, on the question text of the kept rows, as the local plan's
   second ``Deduper`` does), rows spread over as many blocks by a seeded hash of their *question
   cluster*, so a question stratum is never split; within a block the local plan's
   stratified derangement and donor contexts, the generated swaps rendered and encoded there.
   The blocks depend on the rows and the seed only, so the negatives do not depend on the
   number of workers or partitions (docs/scaling.md says how this differs from one global
   derangement); with one block they are the local plan's;
8. *write*: the driver streams the blocks into ``plan.parquet`` in fixed row groups, through a
   temporary file and a rename.

Every task is a pure function of its inputs, so Ray's retries (``max_retries``: a killed worker
process is rerun) recompute the same blocks; nothing is written before step 8, which writes
once, atomically.
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
from mipo.io import atomic_path, write_errors
from mipo.pairs.negatives import assign_negatives
from mipo.pairs.plan import (
    PlanConfig,
    PlanStats,
    ProgressCallback,
    RowGroupWriter,
    StepClock,
    check_context_column,
    check_messages,
    check_planned,
    check_some_context,
    check_usable,
    context_swaps,
    drop_over_length,
    encode_nocontext,
    encode_prompts,
    input_columns,
    swap_columns,
    swap_group,
    swap_representatives,
)
from mipo.prompt_format import PromptFormat

__all__ = [
    "RayPlanReport",
    "block_of_questions",
    "block_of_rows",
    "build_plan_ray",
    "connected_components",
    "executor_options",
]

DEFAULT_NEGATIVE_BLOCK_ROWS = 1 << 20
"""Rows per derangement block (a fixed number, so the blocks never depend on the cluster)."""

MAX_RESOLVE_EDGES = 1 << 26
"""Verified edges one resolve task takes (8 B each, 512 MiB); past it the edges are resolved
per connected component, over the partitions."""

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
    swap_blocks: int = 0
    star_rounds: int = 0
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
            "swap_blocks": self.swap_blocks,
            "star_rounds": self.star_rounds,
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


def _sketch_parts(
    texts: pl.Series, rid: pl.Series, dedup: engine.DedupConfig, parts: int
) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """The engine's sketch of ``texts``: (rid, band keys, fingerprints) kept with the batch, and
    (exact key, rid) split by exact key over the partitions."""
    sketch = engine.sketch_rows(texts, dedup)
    exact = pl.DataFrame([sketch["exact_hi"], sketch["exact_lo"], rid])
    exact_parts = _split(exact, (sketch["exact_lo"].to_numpy() % parts).astype(np.int64), parts)
    kept = pl.DataFrame([rid, sketch["band_keys"], sketch["fingerprints"]])
    return kept, exact_parts


def _map_batch(
    source: pl.DataFrame | tuple[Any, ...],
    tokenizer_spec: tuple[str, str | None, int, int],
    dedup: engine.DedupConfig,
    config: PlanConfig,
    parts: int,
) -> tuple[Any, ...]:
    """Read (a Parquet slice) or take (a batch the driver read) one batch; validate it, drop
    empty prompts, sketch + tokenize; returns (rows, sketch, exact partitions..., meta)."""
    _maybe_die("map")
    batch = source if isinstance(source, pl.DataFrame) else _read_slice(*source)
    seen = batch.height
    check_messages(batch)
    empties = batch.filter(pl.col("is_empty"))["row"].to_numpy()
    # rid: the input row number, the id every shuffle carries (rows < 2**32, as the Deduper's).
    batch = batch.filter(~pl.col("is_empty")).with_columns(
        pl.col("row").cast(pl.UInt32).alias("rid")
    )
    kept, exact_parts = _sketch_parts(batch["dedup_text"], batch["rid"], dedup, parts)
    tokenizer = _tokenizer(tokenizer_spec)
    rows = encode_prompts(tokenizer, batch.drop("dedup_text", "is_empty", "bad_message"))
    if config.needs_context_drop or config.needs_sentence_drop:
        rows = encode_nocontext(tokenizer, rows)
    elif not config.needs_context_swap:
        rows = rows.drop("prompt_nocontext")
    meta = _meta(
        shuffle=_bytes(exact_parts),
        held=_bytes([rows, kept]),
        seen=seen,
        usable=batch.height,
        empties=empties,
    )
    return (rows, kept, *exact_parts, meta)


def _question_map(
    rows: pl.DataFrame,
    near: pl.DataFrame,
    dedup: engine.DedupConfig,
    parts: int,
    kept_only: bool,
    *dups: pl.DataFrame,
) -> tuple[Any, ...]:
    """context-swap: the sketch of the question text of this batch's kept rows (every usable row
    with ``dedup`` off), as the local plan feeds its question ``Deduper``."""
    _maybe_die("questions")
    frame = _resolved(rows, near, dups)
    if kept_only:
        frame = frame.filter(pl.col("_keep"))
    kept, exact_parts = _sketch_parts(frame["question_text"], frame["rid"], dedup, parts)
    return (kept, *exact_parts, _meta(shuffle=_bytes(exact_parts)))


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
    return edges, _meta(shuffle=_bytes([edges]), edges=edges.height)


def _resolve(*frames: pl.DataFrame) -> tuple[Any, ...]:
    """Non-representative first occurrences and their cluster (one task: edges are few)."""
    _maybe_die("resolve")
    edges = _concat(frames)
    near = engine.resolve_representatives(edges["s"], edges["r"])
    return near, _meta(edges=edges.height)


def _resolved(
    rows: pl.DataFrame, near: pl.DataFrame, dups: tuple[pl.DataFrame, ...]
) -> pl.DataFrame:
    """``rows`` with their exact first row (``first``), cluster (its representative's input row)
    and ``_keep`` / ``_exact`` flags, from the exact duplicates routed back and ``near``."""
    frame = rows.join(_concat(dups), on="rid", how="left", maintain_order="left").with_columns(
        pl.col("first").is_not_null().alias("_exact"),
        pl.col("first").fill_null(pl.col("rid")),
    )
    return frame.join(
        near.rename({"row": "first", "cluster": "_near"}),
        on="first",
        how="left",
        maintain_order="left",
    ).with_columns(
        pl.col("_near").fill_null(pl.col("first")).cast(pl.UInt32).alias("cluster"),
        (~pl.col("_exact") & pl.col("_near").is_null()).alias("_keep"),
    )


def _digest(edges: pl.DataFrame) -> int:
    """An order-free digest of an edge set (sum of mixed ``a << 32 | b``, mod 2**64)."""
    if edges.height == 0:
        return 0
    keys = (edges["a"].to_numpy().astype(np.uint64) << np.uint64(32)) | edges["b"].to_numpy()
    with np.errstate(over="ignore"):
        return int(_mix(keys, 0).sum(dtype=np.uint64))


def _star(kind: str, parts: int, *frames: pl.DataFrame) -> tuple[Any, ...]:
    """One step of iterated star contraction over undirected edges ``(a, b)`` stored in both
    directions, partitioned by ``a`` (Kiveris et al., "Connected components in MapReduce and
    beyond", 2014). ``large``: every neighbour ``b > a`` of ``a`` is linked to the smallest of
    ``a`` and its neighbours; ``small``: every neighbour ``b < a``, and ``a`` itself, to the
    smallest of them; ``edges``: verified edges ``(s, r)`` taken as they are. Returns the new
    edges (both directions, by ``a``) and a meta with their count and digest."""
    _maybe_die("star")
    e = _concat(frames)
    if kind == "edges":
        out = e.select(pl.col("s").alias("a"), pl.col("r").alias("b"))
    elif kind == "large":
        m = e.group_by("a").agg(pl.col("b").min().alias("m"))
        m = m.with_columns(pl.min_horizontal("a", "m").alias("m"))
        out = (
            e.join(m, on="a")
            .filter(pl.col("b") > pl.col("a"))
            .select(pl.col("b").alias("a"), pl.col("m").alias("b"))
        )
    else:
        low = e.filter(pl.col("b") < pl.col("a"))
        m = low.group_by("a").agg(pl.col("b").min().alias("m"))
        leaves = low.join(m, on="a").filter(pl.col("b") != pl.col("m"))
        out = pl.concat(
            [
                leaves.select(pl.col("b").alias("a"), pl.col("m").alias("b")),
                m.select("a", pl.col("m").alias("b")),
            ]
        )
    both = pl.concat([out, out.select(pl.col("b").alias("a"), pl.col("a").alias("b"))]).unique()
    routed = _split(both, (both["a"].to_numpy() % parts).astype(np.int64), parts)
    return (*routed, _meta(edges=both.height, digest=_digest(both)))


def _labels(*frames: pl.DataFrame) -> pl.DataFrame:
    """Per node of a converged star graph (stars centred on each component's smallest row) its
    component: the smallest of the node and its neighbours."""
    e = _concat(frames)
    m = e.group_by("a").agg(pl.col("b").min().alias("m"))
    return m.select(pl.col("a").alias("r"), pl.min_horizontal("a", "m").alias("component"))


def connected_components(ray: Any, edges: list[Any], parts: int) -> tuple[list[Any], int]:
    """Connected components of the graph whose edges ``(s, r)`` are the frames ``edges`` (Ray
    object refs), by iterated star contraction: large-star and small-star steps alternate until
    a round leaves the edge set unchanged (O(log n) rounds). Returns refs of ``parts`` frames
    ``(r, component)`` (node ``r`` in frame ``r % parts``; component: its smallest node) and the
    number of rounds."""
    star = ray.remote(num_returns=parts + 1, max_retries=MAX_RETRIES)(_star)
    current = [star.remote("edges", parts, e) for e in edges]
    before = None
    rounds = 0
    while True:
        rounds += 1
        for kind in ("large", "small"):
            current = [star.remote(kind, parts, *[c[p] for c in current]) for p in range(parts)]
        metas = ray.get([c[-1] for c in current])
        after = (sum(m["edges"] for m in metas), sum(m["digest"] for m in metas) % 2**64)
        if after == before:
            break
        before = after
    labels = ray.remote(max_retries=MAX_RETRIES)(_labels)
    return [labels.remote(*[c[p] for c in current]) for p in range(parts)], rounds


def _by_component(labels: pl.DataFrame, parts: int, *frames: pl.DataFrame) -> tuple[Any, ...]:
    """Verified edges (partitioned by ``r``) given their component and routed by it."""
    edges = _concat(frames).join(labels, on="r", how="left")
    routed = _split(edges, (edges["component"].to_numpy() % parts).astype(np.int64), parts)
    return (*routed, _meta(shuffle=_bytes(routed)))


def _finalize(
    rows: pl.DataFrame,
    near: pl.DataFrame,
    questions: pl.DataFrame | None,
    empties: np.ndarray,
    config: PlanConfig,
    has_users: bool,
    n_dups: int,
    *dups: pl.DataFrame,
) -> tuple[Any, ...]:
    """Cluster and keep of each row; dropped duplicates and over-long prompts; the plan's columns
    in the local plan's order; the compact columns the negatives need. ``dups``: the exact
    duplicates of the prompts (``n_dups`` frames), then of the questions (context-swap, with
    ``questions`` their near-duplicate clusters)."""
    _maybe_die("finalize")
    frame = _resolved(rows, near, dups[:n_dups])
    # Cluster ids as the local plan numbers them: a row's position among the usable rows.
    cluster = frame["cluster"].to_numpy()
    cluster = cluster - np.searchsorted(empties, cluster, side="left")
    frame = frame.with_columns(pl.Series("cluster", cluster.astype(np.uint32)))
    counts = {
        "exact": int((~frame["_keep"] & frame["_exact"]).sum()),
        "near": int((~frame["_keep"] & ~frame["_exact"]).sum()),
    }
    if config.dedup:
        frame = frame.filter(pl.col("_keep"))
    swap_state = []
    if questions is not None:
        asked = _resolved(frame.select("rid"), questions, dups[n_dups:])
        frame = frame.with_columns(
            asked["cluster"].alias("question_cluster"),
            swap_group(frame, has_users).alias("swap_group"),
        )
        swap_state = ["question_cluster", "swap_group", "context_text", "prompt_nocontext"]
    frame, counts["over"], counts["lengths"] = drop_over_length(frame, config.max_prompt_tokens)
    compact = frame.select(
        "row",
        "id",
        "cluster",
        "has_context",
        "num_prompt_tokens",
        *(["user_id"] if has_users else []),
        *swap_state,
    )
    order = ["row", "id", "prompt", "prompt_nocontext", "has_context", "user_id", "cluster"]
    order += [
        "input_ids",
        "num_prompt_tokens",
        "input_ids_nocontext",
        "num_prompt_tokens_nocontext",
    ]
    frame = frame.select([c for c in order if c in frame.columns])
    return frame, compact, _meta(counts=counts)


def _route_rows(
    compact: pl.DataFrame, offset: int, kind: str, seed: int, blocks: int
) -> tuple[Any, ...]:
    """This batch's planned rows, with their plan index, spread over the blocks of the
    ``random`` negatives (by input row) or of ``context-swap`` (by question cluster)."""
    _maybe_die("route")
    n = compact.height
    index = (
        pl.int_range(offset, offset + n, dtype=pl.UInt32, eager=True).alias("plan_index")
        if n
        else pl.Series("plan_index", [], dtype=pl.UInt32)
    )
    if kind == "random":
        columns = ["id", "cluster", *(["user_id"] if "user_id" in compact.columns else [])]
        block = block_of_rows(compact["row"].to_numpy(), seed, blocks)
    else:
        columns = ["id", "cluster", "has_context", "question_cluster", "swap_group"]
        columns += ["context_text", "prompt_nocontext"]
        block = block_of_questions(compact["question_cluster"].to_numpy(), seed, blocks)
    routed = _split(compact.select(index, *columns), block, blocks)
    return (*routed, _meta(shuffle=_bytes(routed)))


def _route_back(out: pl.DataFrame, starts: np.ndarray, **values: Any) -> tuple[Any, ...]:
    """A block's results split by the batch their plan index belongs to."""
    where = np.searchsorted(starts, out["plan_index"].to_numpy(), side="right") - 1
    routed = _split(out, where.astype(np.int64), len(starts))
    return (*routed, _meta(shuffle=_bytes(routed), **values))


def _derange_block(
    block: int,
    blocks: int,
    seed: int,
    starts: np.ndarray,
    user_constraint: bool,
    *frames: pl.DataFrame,
) -> tuple[Any, ...]:
    """The engine's constrained derangement within one block; results routed to the batches."""
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
    return _route_back(out, starts)


def _swap_block(
    block: int,
    blocks: int,
    seed: int,
    starts: np.ndarray,
    swap: tuple[tuple[str, str | None, int, int], int | None, PromptFormat],
    *frames: pl.DataFrame,
) -> tuple[Any, ...]:
    """The local plan's context swaps within one block (whole question strata): partners by
    the stratified derangement, donors among the block's users, the generated swaps encoded.
    ``swap``: the tokenizer spec, ``max_prompt_tokens`` and the corpus's prompt format."""
    _maybe_die("swap")
    rows = _concat(frames).sort("plan_index")
    reps = swap_representatives(rows)
    assigned = context_swaps(rows, reps, block_seed(seed, block, blocks))
    spec, max_prompt_tokens, prompt_format = swap
    columns, over = swap_columns(
        rows, 0, assigned, rows["id"], reps, _tokenizer(spec), max_prompt_tokens, prompt_format
    )
    partner = columns[0]
    index = pl.select(
        pl.when(partner.is_not_null()).then(rows["plan_index"].gather(partner.fill_null(0)))
    ).to_series()
    out = pl.DataFrame(
        [rows["plan_index"], index.cast(pl.UInt32).alias("swap_index"), *columns[1:]]
    )
    counts = {
        "question_clusters": rows["question_cluster"].n_unique(),
        "reused": assigned.reused,
        "generated": assigned.generated - over,
        "no_context": assigned.no_context,
        "no_donor": assigned.no_donor,
        "over": over,
    }
    return _route_back(out, starts, counts=counts)


def executor_options(
    corpus: Corpus, executor: str, block_rows: int = DEFAULT_NEGATIVE_BLOCK_ROWS
) -> dict[str, Any]:
    """The plan options an executor adds to a run's record (its stage hash): none where the Ray
    plan writes the local plan's bytes (a corpus that cannot hold more rows than one derangement
    block), else the executor and the block size: past one block the negatives differ between
    executors, so a rerun under the other executor (or another block size) redoes the plan
    instead of resuming on negatives it would not draw. Local runs never add a key (their hash
    stays what it was).

    Rows are bounded without reading them: Parquet footers, else the files' bytes / 2 (a JSONL
    or CSV row takes at least one character and its newline)."""
    if executor != "ray" or _rows_at_most(corpus) <= block_rows:
        return {}
    return {"plan_executor": "ray", "negative_block_rows": block_rows}


def _rows_at_most(corpus: Corpus) -> int:
    if corpus.format == "parquet":
        import pyarrow.parquet as pq

        try:
            return sum(pq.read_metadata(p).num_rows for p in corpus.files)
        except (OSError, ValueError):
            pass
    return sum(Path(p).stat().st_size for p in corpus.files) // 2


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


def block_of_questions(question_clusters: np.ndarray, seed: int, blocks: int) -> np.ndarray:
    """The context-swap block of each row: a seeded hash of its question cluster (the input row
    of the cluster's first question), so a question stratum lives in one block whatever the
    partitions.

    >>> block_of_questions(np.array([7, 7, 9]), seed=0, blocks=1).tolist()
    [0, 0, 0]
    """
    salted = seed ^ 0x71_75_65
    return (_mix(question_clusters.astype(np.uint64), salted) % np.uint64(blocks)).astype(np.int64)


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
    max_resolve_edges: int = MAX_RESOLVE_EDGES,
    progress: ProgressCallback | None = None,
    report: RayPlanReport | None = None,
) -> PlanStats:
    """:func:`~mipo.pairs.plan.build_plan` on Ray tasks (see the module docstring).

    ``partitions``: shuffle partitions (None: the cluster's CPUs); the keep mask, the clusters
    and the negatives never depend on it. ``negative_block_rows``: rows per derangement block.
    ``max_resolve_edges``: verified edges resolved in one task; past it the edges are split by
    connected component (iterated star contraction) and resolved per partition, same answer.
    ``report`` (optional) receives the shuffle bytes, edges and worker peak RSS. Raises what
    ``build_plan`` raises, and :class:`PlanError` when Ray cannot run a task.

    >>> # needs Ray, a corpus and a model's tokenizer: see tests/test_ray_plan.py
    >>> stats = build_plan_ray(corpus, tok, "model/", "out/plan.parquet", PlanConfig())  # doctest: +SKIP
    """
    check_context_column(corpus, config)
    if negative_block_rows < 2:
        raise ConfigError(f"negative_block_rows must be >= 2, got {negative_block_rows}")
    if max_resolve_edges < 0:
        raise ConfigError(f"max_resolve_edges must be >= 0, got {max_resolve_edges}")
    if partitions is not None and partitions < 1:
        raise ConfigError(f"partitions must be >= 1, got {partitions}")
    ray = import_ray()
    target = Path(target)
    start = time.perf_counter()
    stats = PlanStats(max_prompt_tokens=config.max_prompt_tokens)
    with _session(ray, address):
        fuel, max_bytes = tokenizer.template_limits
        job = _Job(
            ray=ray,
            corpus=corpus,
            config=config,
            partitions=partitions or max(1, int(ray.cluster_resources().get("CPU", 1))),
            spec=(str(tokenizer_path), tokenizer.chat_template, fuel, max_bytes),
            stats=stats,
            report=report if report is not None else RayPlanReport(),
            progress=progress,
            block_rows=negative_block_rows,
            max_resolve_edges=max_resolve_edges,
        )
        try:
            _run(job, target)
        except ray.exceptions.RayError as exc:
            raise _task_error(ray, exc) from exc
    stats.seconds = time.perf_counter() - start
    return stats


@dataclass
class _Job:
    """One Ray plan: its inputs, and the shuffle metas the stages leave for the report."""

    ray: Any
    corpus: Corpus
    config: PlanConfig
    partitions: int
    spec: tuple[str, str | None, int, int]
    """The tokenizer as each worker loads it (path, template, template limits)."""
    stats: PlanStats
    report: RayPlanReport
    progress: ProgressCallback | None
    block_rows: int
    """Rows per negatives block."""
    max_resolve_edges: int
    """Verified edges one resolve task takes before the split by connected component."""
    metas: list[tuple[str, list[Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock = StepClock(self.stats.step_seconds)
        self.dedup = engine.DedupConfig(threshold=self.config.near_dup_threshold)
        self.report.partitions = self.partitions

    def task(self, function: Any, returns: int = 1) -> Any:
        """``function`` as a Ray task with ``returns`` results, rerun when its worker dies."""
        return self.ray.remote(num_returns=returns, max_retries=MAX_RETRIES)(function)

    def shuffle(self, stage: str, refs: list[Any]) -> None:
        """Book the metas of one shuffle stage (read once, at the end, for the report)."""
        self.metas.append((stage, refs))

    def advance(self, step: str, rows: int) -> None:
        if self.progress:
            self.progress(step, rows)


def _run(job: _Job, target: Path) -> None:
    """The plan's steps in order (module docstring), each a function of its own."""
    config = job.config
    mapped, starts, usable, empties = _map_stage(job)
    with job.clock("dedup"):
        P = job.partitions
        dups_of, near, edges = _dedup_stage(
            job, starts, [m[1] for m in mapped], [m[2 : 2 + P] for m in mapped], ""
        )
        questions = None
        question_dups: list[list[Any]] = [[] for _ in mapped]
        if config.needs_context_swap:
            questions, question_dups = _question_stage(job, starts, mapped, near, dups_of)
        final_task = job.task(_finalize, 3)
        finals = [
            final_task.remote(
                m[0],
                near,
                questions,
                empties,
                config,
                job.corpus.has_users,
                P,
                *dups_of[b],
                *question_dups[b],
            )
            for b, m in enumerate(mapped)
        ]
        final_metas = job.ray.get([f[2] for f in finals])
        job.report.verified_edges = edges
    del mapped, dups_of
    job.advance("tokenize", job.stats.rows_in)
    compacts = [f[1] for f in finals]
    offsets = _tally(job, compacts, final_metas, usable)
    negatives_of: list[list[Any]] = [[] for _ in finals]
    if config.needs_random:
        with job.clock("derange"):
            job.report.negative_blocks, _ = _blocks(
                job,
                "random",
                compacts,
                offsets,
                negatives_of,
                _derange_block,
                config.user_constraint,
            )
        job.advance("derange", job.stats.prompts_planned)
    if config.needs_context_swap:
        with job.clock("derange"):
            swap = (job.spec, config.max_prompt_tokens, job.corpus.prompt_format)
            job.report.swap_blocks, metas = _blocks(
                job, "swap", compacts, offsets, negatives_of, _swap_block, swap
            )
            _count_swaps(job.stats, job.ray.get(metas))
    with job.clock("write"):
        _write(job.ray, [f[0] for f in finals], negatives_of, offsets, target, config)
    job.advance("write", job.stats.prompts_planned)
    _collect_report(job, final_metas)


def _map_stage(job: _Job) -> tuple[list[list[Any]], np.ndarray, int, Any]:
    """Step 1: read + validate (Parquet: by the tasks; else streamed by the driver) and map.
    Returns the map tasks' results per batch, the first input row of each batch, the number
    of usable rows, and the (object store) input rows of the empty prompts."""
    ray, stats, P = job.ray, job.stats, job.partitions
    map_task = job.task(_map_batch, 2 + P + 1)
    mapped: list[list[Any]] = []
    starts: list[int] = []
    wanted = input_columns(job.corpus, job.config)
    with job.clock("read"):
        for source, row_start in _sources(job.corpus, wanted, job.config.batch_rows, job.progress):
            starts.append(row_start)
            mapped.append(map_task.remote(source, job.spec, job.dedup, job.config, P))
            del source
            # Backpressure: the driver reads ahead of the map tasks by at most 2 P batches.
            in_flight = [m[-1] for m in mapped[-4 * P :]]
            if len(in_flight) > 2 * P:
                ray.wait(in_flight, num_returns=len(in_flight) - 2 * P)
    with job.clock("tokenize"):  # the map tasks: read (Parquet), validate, sketch, tokenize
        map_metas = ray.get([m[-1] for m in mapped])
    stats.rows_in = sum(int(m["seen"]) for m in map_metas)
    usable = sum(int(m["usable"]) for m in map_metas)
    stats.empty_dropped = stats.rows_in - usable
    if job.corpus.format == "parquet":
        job.advance("read", stats.rows_in)
    check_usable(job.corpus, stats)
    empties = ray.put(
        np.concatenate([m["empties"] for m in map_metas]).astype(np.uint64)
        if map_metas
        else np.zeros(0, dtype=np.uint64)
    )
    job.report.batches = len(mapped)
    job.shuffle("exact", [m[-1] for m in mapped])
    return mapped, np.array(starts, dtype=np.int64), usable, empties


def _dedup_stage(
    job: _Job, starts: np.ndarray, sketches: list[Any], exact_parts: list[Any], what: str
) -> tuple[list[list[Any]], Any, int]:
    """Steps 2-5 over one text (the prompts; for context-swap the questions again): exact
    duplicates routed back per batch, the near-duplicate representatives, the verified edges."""
    P, B = job.partitions, len(sketches)
    # 2. exact duplicates
    exact_task = job.task(_exact_reduce, B + 1)
    exact = [exact_task.remote(starts, *[e[p] for e in exact_parts]) for p in range(P)]
    job.shuffle(f"{what}exact_back", [e[-1] for e in exact])
    dups_of = [[e[b] for e in exact] for b in range(B)]
    # 3. band records and fingerprints of first occurrences; buckets -> pairs
    bands_task = job.task(_emit_bands, 2 * P + 1)
    emitted = [bands_task.remote(sketches[b], job.dedup.bands, P, *dups_of[b]) for b in range(B)]
    job.shuffle(f"{what}bands+fingerprints", [e[-1] for e in emitted])
    bucket_task = job.task(_bucket_reduce, P + 1)
    pairs = [bucket_task.remote(P, *[e[p] for e in emitted]) for p in range(P)]
    job.shuffle(f"{what}pairs", [x[-1] for x in pairs])
    # 4. verify: each partition's fingerprints gathered once, used by both joins
    fps_of = [job.task(_concat_task).remote(*[e[P + p] for e in emitted]) for p in range(P)]
    attach_task = job.task(_attach_earlier, P + 1)
    attached = [attach_task.remote(fps_of[p], P, *[x[p] for x in pairs]) for p in range(P)]
    job.shuffle(f"{what}pairs+fingerprints", [x[-1] for x in attached])
    verify_task = job.task(_verify, 2)
    threshold = job.config.near_dup_threshold
    verified = [
        verify_task.remote(fps_of[p], threshold, *[x[p] for x in attached]) for p in range(P)
    ]
    # 5. resolve
    near, edges = _resolve_stage(job, [v[0] for v in verified], [v[1] for v in verified], what)
    return dups_of, near, edges


def _resolve_stage(job: _Job, edges: list[Any], metas: list[Any], what: str) -> tuple[Any, int]:
    """Step 5: the near-duplicate representatives from the verified edges: in one task while
    they fit ``max_resolve_edges``; past it per connected component (iterated star contraction),
    each partition's components in a task of its own. A row's answer depends only on the edges
    of its component, so both give the same answer. Returns the representatives (a ref) and
    the number of edges."""
    count = sum(int(m["edges"]) for m in job.ray.get(metas))
    if count <= job.max_resolve_edges:
        return job.task(_resolve, 2).remote(*edges)[0], count
    P = job.partitions
    labels, rounds = connected_components(job.ray, edges, P)
    job.report.star_rounds = max(job.report.star_rounds, rounds)
    routed = [job.task(_by_component, P + 1).remote(labels[p], P, edges[p]) for p in range(P)]
    job.shuffle(f"{what}edges by component", [r[-1] for r in routed])
    resolved = [job.task(_resolve, 2).remote(*[r[p] for r in routed]) for p in range(P)]
    return job.task(_concat_task).remote(*[x[0] for x in resolved]), count


def _question_stage(
    job: _Job, starts: np.ndarray, mapped: list[list[Any]], near: Any, dups_of: list[list[Any]]
) -> tuple[Any, list[list[Any]]]:
    """context-swap: the question text of the kept rows deduplicated as the prompts were (the
    local plan's second ``Deduper``): the question clusters, and the exact duplicates per batch."""
    P = job.partitions
    question_task = job.task(_question_map, 1 + P + 1)
    sketched = [
        question_task.remote(m[0], near, job.dedup, P, job.config.dedup, *dups_of[b])
        for b, m in enumerate(mapped)
    ]
    job.shuffle("question exact", [q[-1] for q in sketched])
    question_dups, questions, _ = _dedup_stage(
        job, starts, [q[0] for q in sketched], [q[1 : 1 + P] for q in sketched], "question "
    )
    return questions, question_dups


def _tally(
    job: _Job, compacts: list[Any], final_metas: list[dict[str, Any]], usable: int
) -> np.ndarray:
    """The plan's counts (duplicates, over-long, planned, context, tokens, users) and their
    checks, as the local plan makes them; returns the plan index of each batch's first row."""
    config, stats, P = job.config, job.stats, job.partitions
    lengths_dropped: list[int] = []
    for m in final_metas:
        c = m["counts"]
        if config.dedup:
            stats.exact_duplicates += c["exact"]
            stats.near_duplicates += c["near"]
        stats.over_length += c["over"]
        lengths_dropped += c["lengths"]
    # Per-batch planned counts and the small summaries (one pass over the compact columns).
    summarized = [job.task(_summary, P + 1).remote(c, P) for c in compacts]
    summaries = job.ray.get([s[0] for s in summarized])
    counts = [s["rows"] for s in summaries]
    planned = sum(counts)
    # The local plan's count: clusters (= representatives) with dedup, else every usable row.
    removed = sum(m["counts"]["exact"] + m["counts"]["near"] for m in final_metas)
    check_planned(
        config, stats, usable - removed if config.dedup else usable, planned, lengths_dropped
    )
    stats.prompts_planned = planned
    stats.with_context = sum(s["with_context"] for s in summaries)
    stats.without_context = planned - stats.with_context
    stats.prompt_tokens_total = sum(s["tokens"] for s in summaries)
    stats.prompt_tokens_max = max(s["tokens_max"] for s in summaries if s["rows"])
    if job.corpus.has_users:
        count_task = job.task(_count_distinct)
        counted = [count_task.remote(*[s[1 + p] for s in summarized]) for p in range(P)]
        stats.users = sum(job.ray.get(counted))
    check_some_context(config, stats)
    return np.concatenate([[0], np.cumsum(counts)])[:-1].astype(np.int64)


def _blocks(
    job: _Job,
    kind: str,
    compacts: list[Any],
    offsets: np.ndarray,
    negatives_of: list[list[Any]],
    block_task: Any,
    *args: Any,
) -> tuple[int, list[Any]]:
    """Step 7: route every planned row to its block (``kind``: random or swap), run
    ``block_task`` (block, blocks, seed, offsets, *args, *the block's frames) on each block and
    add its results to ``negatives_of`` (per batch); returns the block count and the metas."""
    B = len(compacts)
    NB = max(1, math.ceil(job.stats.prompts_planned / job.block_rows))
    seed = job.config.seed
    route_task = job.task(_route_rows, NB + 1)
    routed = [route_task.remote(compacts[b], int(offsets[b]), kind, seed, NB) for b in range(B)]
    stage = "negatives" if kind == "random" else "swaps"
    job.shuffle(stage, [r[-1] for r in routed])
    task = job.task(block_task, B + 1)
    done = [task.remote(j, NB, seed, offsets, *args, *[r[j] for r in routed]) for j in range(NB)]
    metas = [d[-1] for d in done]
    job.shuffle(f"{stage}_back", metas)
    job.ray.wait(metas, num_returns=len(metas))
    for b in range(B):
        negatives_of[b].append([d[b] for d in done])
    return NB, metas


def _count_swaps(stats: PlanStats, metas: list[dict[str, Any]]) -> None:
    """The context-swap counts of the plan: sums over the blocks (a question in one block)."""
    counts = [m["counts"] for m in metas]
    stats.question_clusters = sum(c["question_clusters"] for c in counts)
    stats.swaps_reused = sum(c["reused"] for c in counts)
    stats.swaps_generated = sum(c["generated"] for c in counts)
    stats.swaps_no_context = sum(c["no_context"] for c in counts)
    stats.swaps_no_donor = sum(c["no_donor"] for c in counts)
    stats.swaps_over_length = sum(c["over"] for c in counts)


def _collect_report(job: _Job, final_metas: list[dict[str, Any]]) -> None:
    """Shuffle bytes, held bytes, candidate pairs and worker memory, from the stages' metas."""
    report = job.report
    for stage, refs in job.metas:
        values = job.ray.get(refs)
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
    negatives_of: list[list[list[Any]]],
    offsets: np.ndarray,
    target: Path,
    config: PlanConfig,
) -> None:
    """Stream the batches into ``target`` in fixed-size row groups (as the local plan does),
    one batch in the driver's memory at a time, each joined with its negatives (random, then
    context-swap); temporary file + rename."""
    with write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, RowGroupWriter(tmp, config.row_group_rows) as out:
        for b, ref in enumerate(finals):
            frame = ray.get(ref)
            n = frame.height
            if n == 0:
                continue
            offset = int(offsets[b])
            index = pl.int_range(offset, offset + n, dtype=pl.UInt32, eager=True)
            frame = frame.with_columns(index.alias("plan_index"))
            for refs in negatives_of[b]:
                neg = _concat(ray.get(refs)).sort("plan_index")
                frame = frame.join(neg, on="plan_index", how="left", maintain_order="left")
            out.add(frame.select("plan_index", pl.exclude("plan_index")))
