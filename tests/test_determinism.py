"""Same input, seed and options -> byte-identical ``plan.parquet`` and ``pairs.parquet``, whatever
the engine's thread count and whichever executor generated the responses.

Each run is a real ``mipo build-pairs`` subprocess (the rayon pool is sized once per process, from
``RAYON_NUM_THREADS``), on the tiny local model with the hf backend on CPU. The comparison is of
file bytes; when they differ the assertion says whether the *data* differs too or only the Parquet
metadata, so a regression is easy to place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

SAMPLE_CORPUS = Path(__file__).parents[1] / "python" / "mipo" / "data" / "sample_corpus.jsonl"
FAST = [
    "--generation-backend", "hf", "--generation-max-new-tokens", "4",
    "--generation-chunk-size", "8", "--generation-batch-size", "4",
    "--keep-truncated", "--no-progress", "--seed", "7",
]  # fmt: skip


def run_build_pairs(
    args: list[str | Path], *, threads: int, extra_env: dict[str, str] | None = None
) -> None:
    env = {
        **os.environ,
        "RAYON_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(extra_env or {}),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mipo", "build-pairs", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same_bytes(a: Path, b: Path) -> None:
    """Byte-identical files; otherwise say whether the rows or only the metadata differ."""
    if a.read_bytes() == b.read_bytes():
        return
    import pyarrow.parquet as pq

    frame_a, frame_b = pl.read_parquet(a), pl.read_parquet(b)
    if not frame_a.equals(frame_b):
        diff = (
            frame_a.with_row_index().join(frame_b.with_row_index(), on="index", suffix="_b").height
        )
        pytest.fail(f"{a.name}: the data differs ({frame_a.shape} vs {frame_b.shape}, {diff=})")
    meta_a, meta_b = pq.read_metadata(a), pq.read_metadata(b)
    details = {
        "created_by": (meta_a.created_by, meta_b.created_by),
        "row_groups": (meta_a.num_row_groups, meta_b.num_row_groups),
        "key_value_metadata": (meta_a.metadata, meta_b.metadata),
        "sizes": (a.stat().st_size, b.stat().st_size),
    }
    pytest.fail(f"{a.name}: same rows, different bytes: {details}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 rows of the bundled sample corpus (users, contexts, near-duplicate questions)."""
    lines = SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()[:40]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_model_dir: Path
) -> dict[int, Path]:
    """Complete runs (both negative kinds) at 1 and 2 engine threads."""
    root = tmp_path_factory.mktemp("determinism")
    out = {}
    for threads in (1, 2):
        out[threads] = root / f"threads-{threads}"
        run_build_pairs(
            [corpus, "-o", out[threads], "--model", tiny_model_dir, "--negatives", "both", *FAST],
            threads=threads,
        )
    return out


@pytest.mark.parametrize("name", ["plan.parquet", "pairs.parquet"])
def test_outputs_identical_at_1_and_2_threads(runs: dict[int, Path], name: str) -> None:
    assert_same_bytes(runs[1] / name, runs[2] / name)
    assert pl.read_parquet(runs[1] / name).height > 0


def test_generation_chunks_identical_at_1_and_2_threads(runs: dict[int, Path]) -> None:
    chunks = sorted(p.name for p in (runs[1] / "generations").glob("chunk-*.parquet"))
    assert chunks == sorted(p.name for p in (runs[2] / "generations").glob("chunk-*.parquet"))
    assert len(chunks) > 1
    for name in chunks:
        assert_same_bytes(runs[1] / "generations" / name, runs[2] / "generations" / name)
    manifests = [
        json.loads((r / "generations" / "manifest.json").read_text()) for r in runs.values()
    ]
    assert manifests[0] == manifests[1]


def test_plan_identical_at_more_threads_on_the_whole_sample(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The plan alone (no generation) of the full sample corpus at 1 and 4 threads."""
    plans = []
    for threads in (1, 4):
        out = tmp_path / f"plan-{threads}"
        run_build_pairs(
            [SAMPLE_CORPUS, "-o", out, "--model", tiny_model_dir, "--plan-only", *FAST],
            threads=threads,
        )
        plans.append(out / "plan.parquet")
    assert_same_bytes(*plans)


def test_another_seed_changes_the_outputs(
    runs: dict[int, Path], tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    """The identity above is not vacuous: the seed does reach the negatives and the samples."""
    out = tmp_path / "seed-8"
    args = [corpus, "-o", out, "--model", tiny_model_dir, "--negatives", "both", *FAST]
    run_build_pairs([*args, "--seed", "8"], threads=2)  # the last --seed wins
    assert (out / "plan.parquet").read_bytes() != (runs[1] / "plan.parquet").read_bytes()
    assert (out / "pairs.parquet").read_bytes() != (runs[1] / "pairs.parquet").read_bytes()


def test_local_and_ray_executors_give_identical_outputs(
    runs: dict[int, Path], tmp_path: Path, corpus: Path, tiny_model_dir: Path
) -> None:
    pytest.importorskip("ray", reason="the Ray executor needs ray (pip install 'mipo[ray]')")
    out = tmp_path / "ray"
    run_build_pairs(
        [corpus, "-o", out, "--model", tiny_model_dir, "--negatives", "both", *FAST,
         "--executor", "ray"],
        threads=2,
        extra_env={"RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    for name in ("plan.parquet", "pairs.parquet"):
        assert_same_bytes(runs[2] / name, out / name)
    for chunk in sorted((runs[2] / "generations").glob("chunk-*.parquet")):
        assert_same_bytes(chunk, out / "generations" / chunk.name)
