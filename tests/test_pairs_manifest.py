"""mipo.pairs.manifest, directly: what each build-pairs stage depends on, the hashes chained over
the stages, what a rerun may keep, and which shards belong to one run. Real inputs: a corpus
file, the tiny local model, the plan and generation configs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mipo.corpus import open_corpus
from mipo.generate import GenerationConfig
from mipo.models import ResolvedModel, resolve_model
from mipo.pairs.build import BuildPairsConfig
from mipo.pairs.manifest import first_changed_stage, run_record, shard_identity, stage_options
from mipo.pairs.plan import PlanConfig

ROWS = [
    {"context": "I am vegan.", "question": "What should I cook tonight?", "user_id": "a"},
    {"context": "I run marathons.", "question": "How do I train for a race?", "user_id": "b"},
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> ResolvedModel:
    return resolve_model(str(tiny_model_dir))


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def record(
    corpus_file: Path,
    model: ResolvedModel,
    *,
    plan: PlanConfig | None = None,
    gen: GenerationConfig | None = None,
    **config: Any,
) -> dict[str, Any]:
    build = BuildPairsConfig(str(corpus_file), corpus_file.parent / "out", **config)
    options = stage_options(
        build,
        open_corpus(corpus_file),
        model,
        plan or PlanConfig(),
        gen or GenerationConfig(backend="hf"),
    )
    return run_record(build, model, options)


def hashes(rec: dict[str, Any]) -> list[str]:
    return [rec["stages"][name]["hash"] for name in ("plan", "generate", "pairs")]


def test_the_same_options_are_the_same_run(corpus_file: Path, tiny: ResolvedModel) -> None:
    first = record(corpus_file, tiny)
    assert first_changed_stage(None, first) == (None, [])
    assert first_changed_stage(first, record(corpus_file, tiny)) == (None, [])
    # Where the run writes and which shard it is do not change any output.
    assert hashes(record(corpus_file, tiny, shard=(1, 2), progress=False)) == hashes(first)


def test_a_change_redoes_its_stage_and_every_later_one(
    corpus_file: Path, tiny: ResolvedModel
) -> None:
    base = record(corpus_file, tiny)
    plan = record(corpus_file, tiny, plan=PlanConfig(near_dup_threshold=0.9))
    gen = record(corpus_file, tiny, gen=GenerationConfig(backend="hf", temperature=0.7))
    pairs = record(corpus_file, tiny, keep_truncated=True)
    before = hashes(base)
    # The hashes are chained: a stage's hash changes with any stage before it.
    assert [a != b for a, b in zip(before, hashes(plan), strict=True)] == [True, True, True]
    assert [a != b for a, b in zip(before, hashes(gen), strict=True)] == [False, True, True]
    assert [a != b for a, b in zip(before, hashes(pairs), strict=True)] == [False, False, True]
    assert first_changed_stage(base, plan) == ("plan", ["near_dup_threshold: 0.8 -> 0.9"])
    assert first_changed_stage(base, gen) == ("generate", ["temperature: 0.1 -> 0.7"])
    assert first_changed_stage(base, pairs) == ("pairs", ["keep_truncated: False -> True"])


def test_settings_that_cannot_change_the_text_are_not_a_change(
    corpus_file: Path, tiny: ResolvedModel
) -> None:
    base = record(corpus_file, tiny)
    other = GenerationConfig(backend="hf", gpu_memory_utilization=0.5, max_model_len=2048)
    assert hashes(record(corpus_file, tiny, gen=other)) == hashes(base)


def test_a_record_written_before_an_option_was_ignored_is_the_same_run(
    corpus_file: Path, tiny: ResolvedModel
) -> None:
    """A run.json whose generate options (and hash) still hold a setting that is no longer
    compared (here kv_cache_gib, which cannot change the text) continues; a real change of
    that record's options is still one."""
    today = record(corpus_file, tiny)
    old = json.loads(json.dumps(today))
    build = BuildPairsConfig(str(corpus_file), corpus_file.parent / "out")
    options = {name: stage["options"] for name, stage in today["stages"].items()}
    options["generate"] = {**options["generate"], "kv_cache_gib": 4.0}
    old["stages"] = run_record(build, tiny, options)["stages"]
    assert hashes(old) != hashes(today)
    assert first_changed_stage(old, today) == (None, [])
    hotter = record(corpus_file, tiny, gen=GenerationConfig(backend="hf", temperature=0.7))
    assert first_changed_stage(old, hotter)[0] == "generate"


def test_an_edited_corpus_is_a_changed_plan(corpus_file: Path, tiny: ResolvedModel) -> None:
    before = record(corpus_file, tiny)
    stat = corpus_file.stat()
    corpus_file.write_text(corpus_file.read_text().replace("vegan", "VEGAN"))  # same size
    os.utime(corpus_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    stage, changes = first_changed_stage(before, record(corpus_file, tiny))
    assert (stage, changes) == ("plan", ["input files: modified corpus.jsonl"])


def test_drop_persona_counts_only_when_on(corpus_file: Path, tiny: ResolvedModel) -> None:
    off = record(corpus_file, tiny)
    on = record(corpus_file, tiny, drop_persona=True)
    assert "drop_persona" not in off["stages"]["pairs"]["options"]  # older runs keep their hash
    assert first_changed_stage(off, on) == ("pairs", ["drop_persona: None -> True"])


def test_shards_of_one_run_match_across_machines(corpus_file: Path, tiny: ResolvedModel) -> None:
    """Another machine's copy of the corpus has other mtimes: still the same run. Other
    generation settings, or another file, are not."""
    here = record(corpus_file, tiny, shard=(0, 2))
    there = json.loads(json.dumps(record(corpus_file, tiny, shard=(1, 2))))
    for stamp in there["stages"]["plan"]["options"]["input_files"]:
        stamp["mtime_ns"] += 12345
    assert there["stages"]["plan"]["options"] != here["stages"]["plan"]["options"]
    assert shard_identity(there) == shard_identity(here)
    hotter = record(
        corpus_file, tiny, shard=(1, 2), gen=GenerationConfig(backend="hf", temperature=0.7)
    )
    assert shard_identity(hotter) != shard_identity(here)
    longer = dataclasses.replace(PlanConfig(), max_prompt_tokens=64)
    assert shard_identity(record(corpus_file, tiny, plan=longer)) != shard_identity(here)
