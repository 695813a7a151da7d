"""mipo.pairs.merge, directly: shards of one build-pairs run, built in separate folders with the
tiny local model, merged into the pairs an unsharded run writes; what cannot be merged is
refused with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from mipo.errors import OutputError
from mipo.generate import GenerationConfig
from mipo.pairs.build import BuildPairsConfig, build_pairs
from mipo.pairs.merge import merge_shards

ROWS = [
    ("u0", "I am a vegetarian marathon runner.", "What should I eat before a long run?"),
    ("u1", "I am a beginner programmer.", "How do I read a CSV file in Python?"),
    ("u2", "I live in a small flat with two cats.", "Which houseplants are safe for cats?"),
    ("u0", "I am a nurse working night shifts.", "How can I sleep better during the day?"),
    ("u1", "My budget is tight and I cook for four.", "Suggest a cheap dinner plan."),
    ("u2", "I am afraid of deep water.", "How do I start learning to swim as an adult?"),
]


def build(corpus: Path, out: Path, model: Path, shard: tuple[int, int], **options: object) -> None:
    generation = GenerationConfig(backend="hf", max_new_tokens=6, chunk_size=2, batch_size=2)
    config = BuildPairsConfig(
        str(corpus), out, model=str(model), shard=shard, keep_truncated=True, progress=False,
        generation=generation, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    build_pairs(config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """An unsharded run and the two shards of the same run in their own folders."""
    root = tmp_path_factory.mktemp("merge")
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"user_id": u, "context": c, "question": q}) + "\n" for u, c, q in ROWS)
    )
    found = {"corpus": corpus, "model": tiny_model_dir}
    for name, shard in (("whole", (0, 1)), ("shard0", (0, 2)), ("shard1", (1, 2))):
        build(corpus, root / name, tiny_model_dir, shard)
        found[name] = root / name
    return found


def copy(runs: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs[name], tmp_path / name))


def chunks(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "generations").glob("chunk-*.parquet"))


def test_merged_shards_are_the_unsharded_runs_pairs(runs: dict[str, Path], tmp_path: Path) -> None:
    a, b = copy(runs, "shard0", tmp_path), copy(runs, "shard1", tmp_path)
    assert not (a / "pairs.parquet").exists()  # a shard alone cannot build the pairs
    assert chunks(a) == ["chunk-000000.parquet", "chunk-000002.parquet"]
    result = merge_shards(a, [b, a])  # the output folder among the shards is skipped
    assert result.out_dir == a and (a / "pairs.parquet").is_file()
    assert chunks(a) == chunks(runs["whole"])
    merged = pl.read_parquet(a / "pairs.parquet")
    assert merged.height > 0 and merged.equals(pl.read_parquet(runs["whole"] / "pairs.parquet"))
    assert chunks(b) == ["chunk-000001.parquet"]  # the other shard's folder is left as it was


def test_missing_chunks_are_named(runs: dict[str, Path], tmp_path: Path) -> None:
    a = copy(runs, "shard0", tmp_path)
    with pytest.raises(OutputError, match=r"1 of 3 chunks missing \(1\)"):
        merge_shards(a)
    assert not (a / "pairs.parquet").exists()


def test_shards_of_another_run_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    a = copy(runs, "shard0", tmp_path)
    other = tmp_path / "other-seed"
    build(runs["corpus"], other, runs["model"], (1, 2), seed=7)
    with pytest.raises(OutputError, match="built with other options"):
        merge_shards(a, [other])
    assert chunks(a) == ["chunk-000000.parquet", "chunk-000002.parquet"]  # nothing copied


def test_generations_of_another_run_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    a, b = copy(runs, "shard0", tmp_path), copy(runs, "shard1", tmp_path)
    manifest = b / "generations" / "manifest.json"
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**record, "run_hash": "0" * 16}))
    with pytest.raises(OutputError, match="belong to another run"):
        merge_shards(a, [b])


def test_folders_without_a_run_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OutputError, match="holds no build-pairs run"):
        merge_shards(empty, [runs["shard1"]])
    a = copy(runs, "shard0", tmp_path)
    with pytest.raises(OutputError, match=r"'.*empty' holds no build-pairs run \(run.json"):
        merge_shards(a, [empty])
