"""The plan stage on Ray (mipo.pairs.ray_plan) against the local plan, on a real local Ray runtime.

What is checked is the Ray plan's promise: the same rows, keep mask and clusters as
:func:`mipo.pairs.plan.build_plan` whatever the number of partitions; negatives that keep every
constraint and do not depend on the partitions; a worker process killed mid-plan rerun by Ray
with nothing lost or doubled. The split dedup steps of the engine are also checked against the
streaming ``Deduper`` directly.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from mipo import engine
from mipo.corpus import ColumnOptions, open_corpus
from mipo.errors import ConfigError
from mipo.pairs.plan import PlanConfig, build_plan, read_plan
from mipo.synth import SynthConfig, synth_frame

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'mipo[ray]')"
)

ROWS = 600
BATCH = 128  # 5 batches


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> engine.ChatTokenizer:
    return engine.ChatTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic rows with many planted exact and near duplicates (and 100 users)."""
    path = tmp_path_factory.mktemp("corpus") / "c.parquet"
    frame = synth_frame(
        SynthConfig(rows=ROWS, seed=5, users=100, exact_dup_rate=0.15, near_dup_rate=0.25)
    )
    frame.write_parquet(path)
    return path


@pytest.fixture(scope="module")
def kill_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="module")
def ray_runtime(kill_dir: Path) -> Iterator[Any]:
    """A local Ray runtime with 2 CPUs; its workers see the kill folder of the retry test."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A loaded machine (CI, shared runners) can take longer than Ray's default to start its agent.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        object_store_memory=200 * 1024 * 1024,
        runtime_env={"env_vars": {"MIPO_TEST_RAY_PLAN_KILL_DIR": str(kill_dir)}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_plan(
    corpus_path: Path, tokenizer: engine.ChatTokenizer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Any]:
    target = tmp_path_factory.mktemp("local") / "plan.parquet"
    stats = build_plan(open_corpus(corpus_path), tokenizer, target, PlanConfig(seed=3))
    return target, stats


def _ray_plan(
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    model_dir: Path,
    target: Path,
    partitions: int,
    **kwargs: Any,
) -> tuple[Any, Any]:
    from mipo.pairs.ray_plan import RayPlanReport, build_plan_ray

    report = RayPlanReport()
    config = kwargs.pop("config", PlanConfig(seed=3, batch_rows=BATCH))
    stats = build_plan_ray(
        open_corpus(corpus_path, kwargs.pop("columns", None)),
        tokenizer,
        model_dir,
        target,
        config,
        partitions=partitions,
        report=report,
        **kwargs,
    )
    return stats, report


# --- the engine's split dedup steps, without Ray ---------------------------------------------------


def _split_dedup(texts: pl.Series, threshold: float = 0.8) -> pl.DataFrame:
    """keep/cluster of ``texts`` through sketch -> exact -> bucket pairs -> verify -> resolve,
    in one process (the Ray plan runs the same steps over partitions)."""
    config = engine.DedupConfig(threshold=threshold)
    sk = engine.sketch_rows(texts, config).with_row_index("row")
    sk = sk.with_columns(pl.col("row").cast(pl.UInt32))
    first = sk.with_columns(pl.col("row").min().over("exact_hi", "exact_lo").alias("first"))
    firsts = first.filter(pl.col("row") == pl.col("first"))
    keys = firsts["band_keys"].to_numpy().astype(np.uint64)
    bucket = (np.arange(config.bands, dtype=np.uint64)[None, :] << np.uint64(32)) | keys
    pairs = engine.bucket_pairs(
        pl.Series(bucket.reshape(-1)), pl.Series(np.repeat(firsts["row"].to_numpy(), config.bands))
    )
    fps = firsts.select("row", "fingerprints")
    joined = pairs.join(fps.rename({"row": "s", "fingerprints": "a"}), on="s").join(
        fps.rename({"row": "r", "fingerprints": "b"}), on="r"
    )
    edges = joined.filter(engine.verify_pairs(joined["a"], joined["b"], threshold))
    near = engine.resolve_representatives(edges["s"], edges["r"])
    out = first.join(near.rename({"row": "first", "cluster": "near"}), on="first", how="left")
    return out.sort("row").select(
        ((pl.col("row") == pl.col("first")) & pl.col("near").is_null()).alias("keep"),
        pl.col("near").fill_null(pl.col("first")).alias("cluster"),
    )


def test_split_dedup_steps_equal_the_streaming_deduper(corpus_path: Path) -> None:
    texts = pl.read_parquet(corpus_path).select(
        pl.concat_str([pl.col("context"), pl.col("question")], separator="\n")
    )["context"]
    expected = engine.dedup(texts)
    got = _split_dedup(texts)
    assert int((~expected["keep"]).sum()) > 150  # the corpus does exercise dedup
    assert got["keep"].to_list() == expected["keep"].to_list()
    assert got["cluster"].to_list() == expected["cluster"].cast(pl.UInt32).to_list()


def test_resolve_is_the_dedupers_rule_not_connected_components() -> None:
    # 0 ~ 1 ~ 2, 0 !~ 2: the Deduper keeps 0 and 2 (2 only resembles 1, which joined 0).
    got = engine.resolve_representatives(pl.Series([0, 1]), pl.Series([1, 2]))
    assert got.rows() == [(1, 0)]
    with pytest.raises(Exception, match="earlier row to a later one"):
        engine.resolve_representatives(pl.Series([2]), pl.Series([1]))


# --- on Ray --------------------------------------------------------------------------------------


@needs_ray
@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_ray_plan_equals_the_local_plan(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    local_plan: tuple[Path, Any],
    tmp_path: Path,
    partitions: int,
) -> None:
    """One derangement block (the corpus is smaller than a block): the whole plan.parquet,
    negatives included, equals the local plan's, byte for byte."""
    target, local_stats = local_plan
    stats, report = _ray_plan(
        corpus_path, tokenizer, tiny_model_dir, tmp_path / "plan.parquet", partitions
    )
    assert report.partitions == partitions and report.batches == 5
    assert report.verified_edges > 0 and report.negative_blocks == 1
    expected, got = read_plan(target), read_plan(tmp_path / "plan.parquet")
    assert got.columns == expected.columns
    assert got.equals(expected)
    assert (tmp_path / "plan.parquet").read_bytes() == target.read_bytes()
    for name in ("rows_in", "exact_duplicates", "near_duplicates", "prompts_planned", "users"):
        assert getattr(stats, name) == getattr(local_stats, name), name


@needs_ray
def test_keep_mask_and_clusters_without_dedup(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """--no-dedup keeps every row; the clusters (what the negatives avoid) still equal."""
    config = PlanConfig(seed=1, dedup=False, batch_rows=BATCH, negatives="random,context-drop")
    columns = ColumnOptions(context="context")
    local = tmp_path / "local.parquet"
    build_plan(open_corpus(corpus_path, columns), tokenizer, local, config)
    _ray_plan(
        corpus_path,
        tokenizer,
        tiny_model_dir,
        tmp_path / "ray.parquet",
        3,
        config=config,
        columns=columns,
    )
    expected, got = read_plan(local), read_plan(tmp_path / "ray.parquet")
    assert got.height == ROWS and "input_ids_nocontext" in got.columns
    assert got.equals(expected)


def _check_negatives(plan: pl.DataFrame) -> None:
    neg = plan["negative_index"].to_numpy()
    assert np.all(neg != plan["plan_index"].to_numpy())  # never the row itself
    assert np.array_equal(np.sort(neg), plan["plan_index"].to_numpy())  # a permutation
    users = plan["user_id"].to_numpy()
    clusters = plan["cluster"].to_numpy()
    assert np.all(users[neg] != users)  # never the same user
    assert np.all(clusters[neg] != clusters)  # never the same cluster
    assert plan["negative_id"].to_list() == plan["id"].gather(neg).to_list()


@needs_ray
def test_block_negatives_keep_every_constraint_whatever_the_partitions(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    local_plan: tuple[Path, Any],
    tmp_path: Path,
) -> None:
    from mipo.pairs.ray_plan import block_of_rows

    plans = []
    for partitions in (1, 3):
        target = tmp_path / f"p{partitions}.parquet"
        _, report = _ray_plan(
            corpus_path, tokenizer, tiny_model_dir, target, partitions, negative_block_rows=64
        )
        plan = read_plan(target)
        assert report.negative_blocks == math.ceil(plan.height / 64) > 1
        plans.append(plan)
    a, b = plans
    assert a.equals(b)  # negatives do not depend on the partitions
    _check_negatives(a)
    # Each negative comes from its row's block; the rows (and clusters) are the local plan's.
    blocks = block_of_rows(a["row"].to_numpy(), seed=3, blocks=math.ceil(a.height / 64))
    assert np.array_equal(blocks[a["negative_index"].to_numpy()], blocks)
    local = read_plan(local_plan[0])
    assert a.drop("negative_index", "negative_id").equals(
        local.drop("negative_index", "negative_id")
    )
    assert not a["negative_index"].equals(local["negative_index"])


@needs_ray
@pytest.mark.parametrize("stage", ["map", "buckets", "finalize"])
def test_a_killed_worker_is_rerun_by_ray(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    local_plan: tuple[Path, Any],
    kill_dir: Path,
    tmp_path: Path,
    stage: str,
) -> None:
    """A task's worker process dies mid-plan (os._exit, as an OOM kill does); Ray reruns the task
    (max_retries) and the plan is the same: no row lost, none doubled."""
    (kill_dir / stage).write_text("")
    _ray_plan(corpus_path, tokenizer, tiny_model_dir, tmp_path / "plan.parquet", 2)
    assert (kill_dir / f"{stage}.killed").exists(), "no worker was killed"
    assert not (kill_dir / stage).exists()
    assert (tmp_path / "plan.parquet").read_bytes() == local_plan[0].read_bytes()


@needs_ray
def test_context_swap_is_refused_with_the_fix(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="--executor local"):
        _ray_plan(
            corpus_path,
            tokenizer,
            tiny_model_dir,
            tmp_path / "p.parquet",
            2,
            config=PlanConfig(negatives="context-swap"),
            columns=ColumnOptions(context="context"),
        )
    assert not (tmp_path / "p.parquet").exists()


@needs_ray
def test_build_pairs_executor_ray_plans_on_ray(
    ray_runtime: Any, corpus_path: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`mipo build-pairs --executor ray --plan-only`: the plan runs as Ray tasks (the stage
    record says so) and plan.parquet is the local executor's, byte for byte."""
    import json

    from mipo.generate import GenerationConfig
    from mipo.pairs.build import BuildPairsConfig, build_pairs

    for executor in ("local", "ray"):
        build_pairs(
            BuildPairsConfig(
                input=str(corpus_path),
                out_dir=tmp_path / executor,
                model=str(tiny_model_dir),
                plan_only=True,
                progress=False,
                executor=executor,
                generation=GenerationConfig(max_new_tokens=16),
                num_workers=3 if executor == "ray" else None,
            )
        )
        stats = json.loads((tmp_path / executor / "stats.json").read_text())
        assert stats["stages"]["plan"]["plan_executor"] == executor
    local, ray_plan = (tmp_path / e / "plan.parquet" for e in ("local", "ray"))
    assert ray_plan.read_bytes() == local.read_bytes()


@needs_ray
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_empty_prompts_and_bad_messages_as_the_local_plan(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    tmp_path: Path,
    fmt: str,
) -> None:
    """Parquet slices are read and validated by the tasks, JSONL by the driver: either way empty
    prompts are dropped and counted (cluster ids number the usable rows, as locally), and a
    message without content is the local plan's one-line CorpusError."""
    from mipo.errors import CorpusError

    frame = pl.read_parquet(corpus_path).head(300)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 3)
        .then(pl.lit("  "))
        .otherwise("question")
        .alias("question")
    )
    path = tmp_path / f"c.{fmt}"
    frame.write_parquet(path) if fmt == "parquet" else frame.write_ndjson(path)
    config = PlanConfig(seed=2, batch_rows=64)
    local_stats = build_plan(open_corpus(path), tokenizer, tmp_path / "local.parquet", config)
    stats, _ = _ray_plan(
        path, tokenizer, tiny_model_dir, tmp_path / "ray.parquet", 2, config=config
    )
    assert stats.empty_dropped == local_stats.empty_dropped == 43
    assert stats.near_duplicates == local_stats.near_duplicates > 0
    assert (tmp_path / "ray.parquet").read_bytes() == (tmp_path / "local.parquet").read_bytes()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "user"}]}\n'
    )
    with pytest.raises(CorpusError, match="input row 1: a chat message has no role or no content"):
        _ray_plan(bad, tokenizer, tiny_model_dir, tmp_path / "bad.parquet", 2)
    assert not (tmp_path / "bad.parquet").exists()
