"""The plan stage on Ray (mipo.pairs.ray_plan) against the local plan, on a real local Ray runtime.

What is checked is the Ray plan's promise: the same rows, keep mask and clusters as
:func:`mipo.pairs.plan.build_plan` whatever the number of partitions; negatives that keep every
constraint and do not depend on the partitions; a worker process killed mid-plan rerun by Ray
with nothing lost or doubled. The split dedup steps of the engine are also checked against the
streaming ``Deduper`` directly.
"""

from __future__ import annotations

import importlib.util
import itertools
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


SWAP = PlanConfig(seed=3, batch_rows=BATCH, negatives="random,context-swap")
CONTEXT = ColumnOptions(context="context")


@needs_ray
@pytest.mark.parametrize("max_prompt_tokens", [None, 300])
def test_context_swap_in_one_block_equals_the_local_plan(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    tmp_path: Path,
    max_prompt_tokens: int | None,
) -> None:
    """context-swap on Ray (question clusters by a second split dedup, strata in one block):
    with one block, plan.parquet and every swap count are the local plan's, byte for byte, with
    over-long prompts and over-long generated swaps dropped as locally."""
    from dataclasses import replace

    config = replace(SWAP, max_prompt_tokens=max_prompt_tokens)
    local = tmp_path / "local.parquet"
    local_stats = build_plan(open_corpus(corpus_path, CONTEXT), tokenizer, local, config)
    assert local_stats.swaps_reused > 50 and local_stats.swaps_generated > 50
    if max_prompt_tokens is not None:
        assert local_stats.over_length > 0 and local_stats.swaps_over_length > 0
    for partitions in (1, 3):
        target = tmp_path / f"ray{partitions}.parquet"
        stats, report = _ray_plan(
            corpus_path,
            tokenizer,
            tiny_model_dir,
            target,
            partitions,
            config=config,
            columns=CONTEXT,
        )
        assert report.swap_blocks == 1 and report.negative_blocks == 1
        assert report.shuffle_bytes["question exact_back"] >= 0
        assert target.read_bytes() == local.read_bytes()
        for name in (
            "prompts_planned",
            "over_length",
            "question_clusters",
            "swaps_reused",
            "swaps_generated",
            "swaps_no_context",
            "swaps_no_donor",
            "swaps_over_length",
        ):
            assert getattr(stats, name) == getattr(local_stats, name), name


@needs_ray
def test_a_killed_question_or_swap_worker_is_rerun_by_ray(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    kill_dir: Path,
    tmp_path: Path,
) -> None:
    """The context-swap steps are pure tasks too: a worker killed while sketching the questions
    and one killed while drawing a block's swaps are rerun, and the plan is the local one."""
    local = tmp_path / "local.parquet"
    build_plan(open_corpus(corpus_path, CONTEXT), tokenizer, local, SWAP)
    for stage in ("questions", "swap"):
        (kill_dir / stage).write_text("")
    target = tmp_path / "ray.parquet"
    _ray_plan(corpus_path, tokenizer, tiny_model_dir, target, 2, config=SWAP, columns=CONTEXT)
    for stage in ("questions", "swap"):
        assert (kill_dir / f"{stage}.killed").exists(), f"no {stage} worker was killed"
        assert not (kill_dir / stage).exists()
    assert target.read_bytes() == local.read_bytes()


@needs_ray
def test_connected_components_by_star_contraction_equal_union_find(ray_runtime: Any) -> None:
    """Iterated star contraction over partitions: every node labelled with the smallest node of
    its component, as a union-find gives it, on long chains (many rounds), stars and random
    edges."""
    from mipo.pairs.ray_plan import connected_components

    rng = np.random.default_rng(4)
    chain = np.arange(300, dtype=np.uint32)  # a path in shuffled order: 300 nodes, 1 component
    order = rng.permutation(chain) + 1000
    pairs = [(int(a), int(b)) for a, b in itertools.pairwise(order)]
    pairs += [(5000, 5000 + k) for k in range(1, 40)]  # a star
    pairs += [(int(a), int(b)) for a, b in rng.integers(6000, 6400, size=(150, 2)) if a != b]
    s = np.array([min(p) for p in pairs], dtype=np.uint32)
    r = np.array([max(p) for p in pairs], dtype=np.uint32)
    edges = pl.DataFrame({"s": s, "r": r})
    frames = [ray_runtime.put(edges[i::3]) for i in range(3)]
    labels, rounds = connected_components(ray_runtime, frames, 2)
    got = pl.concat(ray_runtime.get(labels))
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    want = {x: find(x) for x in parent}
    assert dict(zip(got["r"].to_list(), got["component"].to_list(), strict=True)) == want
    assert got.height == len(want) and rounds > 2


@needs_ray
def test_resolve_split_by_component_gives_the_local_plan(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """Past max_resolve_edges the verified edges (of the prompts and of the questions) are
    resolved per connected component over the partitions: the same plan, byte for byte."""
    local = tmp_path / "local.parquet"
    build_plan(open_corpus(corpus_path, CONTEXT), tokenizer, local, SWAP)
    target = tmp_path / "ray.parquet"
    _, report = _ray_plan(
        corpus_path,
        tokenizer,
        tiny_model_dir,
        target,
        3,
        config=SWAP,
        columns=CONTEXT,
        max_resolve_edges=0,
    )
    assert report.verified_edges > 0 and report.star_rounds >= 1
    assert "edges by component" in report.shuffle_bytes
    assert target.read_bytes() == local.read_bytes()


def _question_clusters(corpus_path: Path, plan: pl.DataFrame) -> np.ndarray:
    """The question cluster of each planned row, as the local plan draws them: the streaming
    Deduper over the question text of the kept rows (no prompt dropped for its length here)."""
    corpus = open_corpus(corpus_path, CONTEXT)
    questions = pl.concat(corpus.standardized_batches(["row", "question_text"], 1 << 20))
    asked = plan.select("row").join(questions, on="row", how="left", maintain_order="left")
    return engine.dedup(asked["question_text"])["cluster"].to_numpy()


@needs_ray
def test_context_swap_blocks_keep_every_constraint_whatever_the_partitions(
    ray_runtime: Any,
    corpus_path: Path,
    tokenizer: engine.ChatTokenizer,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """Several blocks: a question stratum lives in one block; each reused partner shares the
    row's question and block, is another user, never a near duplicate, and serves once; each
    generated swap takes another user's context from the same block; the plan does not depend
    on the partitions, and its other columns are the local plan's."""
    from mipo.pairs.ray_plan import block_of_questions

    plans = []
    for partitions in (1, 3):
        target = tmp_path / f"p{partitions}.parquet"
        _, report = _ray_plan(
            corpus_path,
            tokenizer,
            tiny_model_dir,
            target,
            partitions,
            config=SWAP,
            columns=CONTEXT,
            negative_block_rows=64,
        )
        plans.append(read_plan(target))
        assert report.swap_blocks == math.ceil(plans[-1].height / 64) > 1
    a, b = plans
    assert a.equals(b)
    _check_negatives(a)
    local = tmp_path / "local.parquet"
    build_plan(open_corpus(corpus_path, CONTEXT), tokenizer, local, SWAP)
    swap_cols = ["swap_index", "swap_id", "swap_source", "input_ids_swap", "num_prompt_tokens_swap"]
    own = ["negative_index", "negative_id", *swap_cols]
    assert a.drop(own).equals(read_plan(local).drop(own))

    question = _question_clusters(corpus_path, a)
    # A stratum in one block: blocks by the question cluster's first row (the Ray cluster id).
    first_row = (
        pl.DataFrame({"q": question, "row": a["row"]})
        .select(pl.col("row").min().over("q"))["row"]
        .to_numpy()
    )
    block = block_of_questions(first_row, seed=3, blocks=math.ceil(a.height / 64))
    users, clusters = a["user_id"].to_numpy(), a["cluster"].to_numpy()
    reused = a.filter(pl.col("swap_source") == "reused")
    i = reused["plan_index"].to_numpy()
    j = reused["swap_index"].to_numpy()
    assert len(i) > 50
    assert np.array_equal(np.sort(i), np.sort(j))  # each partner serves once
    assert np.all(question[j] == question[i]) and np.all(block[j] == block[i])
    assert np.all(users[j] != users[i]) and np.all(clusters[j] != clusters[i])
    assert reused["swap_id"].to_list() == a["id"].gather(j).to_list()
    generated = a.filter(pl.col("swap_source") == "generated")
    assert generated.height > 50 and generated["input_ids_swap"].null_count() == 0
    by_id = {k: n for n, k in enumerate(a["id"].to_list())}
    donor = np.array([by_id[k] for k in generated["swap_id"]])
    g = generated["plan_index"].to_numpy()
    assert np.all(users[donor] != users[g]) and np.all(block[donor] == block[g])


@needs_ray
def test_build_pairs_executor_ray_plans_on_ray(
    ray_runtime: Any, corpus_path: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`mipo build-pairs --executor ray --plan-only`, context-swap included (the demo's
    strategy): the plan runs as Ray tasks (the stage record says so) and plan.parquet is the
    local executor's, byte for byte."""
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
                negatives="random,context-swap",
                columns=CONTEXT,
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


def test_the_executor_joins_the_plan_hash_only_past_one_block(
    corpus_path: Path, tmp_path: Path
) -> None:
    """Within one derangement block the Ray plan writes the local plan's bytes, so the executor
    is no plan option (a run switches executor and resumes); past one block the negatives
    differ, so the Ray executor and its block size join the plan's hash: a rerun under the other
    executor redoes the plan instead of resuming on other negatives."""
    from types import SimpleNamespace

    from mipo.generate import GenerationConfig
    from mipo.pairs.config import BuildPairsConfig
    from mipo.pairs.manifest import first_changed_stage, run_record, stage_options
    from mipo.pairs.ray_plan import DEFAULT_NEGATIVE_BLOCK_ROWS, executor_options

    small = open_corpus(corpus_path)
    assert executor_options(small, "local") == executor_options(small, "ray") == {}
    assert executor_options(small, "ray", block_rows=64) == {
        "plan_executor": "ray",
        "negative_block_rows": 64,
    }
    big_path = tmp_path / "big.parquet"  # more rows than one block, from the footer alone
    rows = DEFAULT_NEGATIVE_BLOCK_ROWS + 1
    pl.DataFrame({"prompt": pl.repeat("q", rows, eager=True)}).write_parquet(big_path)
    jsonl = tmp_path / "big.jsonl"  # no footer: bounded by bytes / 2
    jsonl.write_text('{"prompt": "a question"}\n' * (2 * DEFAULT_NEGATIVE_BLOCK_ROWS // 25 + 1))
    model = SimpleNamespace(fingerprint="f", name="m", source="s", path=tmp_path)
    for corpus_file, differs in ((corpus_path, False), (big_path, True), (jsonl, True)):
        corpus = open_corpus(corpus_file)
        records = [
            run_record(
                build,
                model,
                stage_options(build, corpus, model, PlanConfig(), GenerationConfig(backend="hf")),
            )
            for build in (
                BuildPairsConfig(str(corpus_file), tmp_path / "out", executor=executor)
                for executor in ("local", "ray")
            )
        ]
        changed, _ = first_changed_stage(records[0], records[1])
        assert changed == ("plan" if differs else None), corpus_file.name
