"""Generation on Ray (``--executor ray``) against the local runner, on a real local Ray runtime.

The Ray runtime is started once for the module (2 CPUs, no dashboard); two actors each load the
tiny model and generate chunks. What is checked is the executor's promise: the same chunk files,
manifest and results as a local run with the same seed, resume (also across executors), and
worker failures surfacing as one-line mipo errors.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mipo import _testing
from mipo.errors import ConfigError, DependencyError, GenerationError, OutputError
from mipo.generate import GenerationConfig, load_results, run_generation
from mipo.generate.executors import chunks
from mipo.generate.executors.ray import run_ray, worker_resources
from mipo.models import ResolvedModel, resolve_model

RAY_MISSING = importlib.util.find_spec("ray") is None
needs_ray = pytest.mark.skipif(RAY_MISSING, reason="ray is not installed (pip install 'mipo[ray]')")

WORDS = [
    "I",
    "am",
    "a",
    "vegetarian",
    "runner",
    "training",
    "for",
    "a",
    "marathon",
    "what",
    "should",
    "eat",
    "before",
    "long",
    "run",
]
NUM_REQUESTS = 30
CHUNK_SIZE = 4  # 8 chunks, the last one short


def make_requests(model_dir: Path, n: int, *, seed: int = 0) -> pl.DataFrame:
    """Chat prompts of varied length (so the hf backend's length bucketing reorders rows)."""
    return _testing.make_requests(model_dir, n, words=WORDS, seed=seed, max_words=30, first_id=500)


def gen_config() -> GenerationConfig:
    # Sampling (temperature 1) so per-row seeds matter; batch 3 < chunk 4 so batching matters.
    return GenerationConfig(
        backend="hf",
        device="cpu",
        max_new_tokens=8,
        temperature=1.0,
        top_p=0.95,
        batch_size=3,
        chunk_size=CHUNK_SIZE,
    )


def chunk_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("chunk-*.parquet"))}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> ResolvedModel:
    return resolve_model(tiny_model_dir)


@pytest.fixture(scope="module")
def requests(tiny_model_dir: Path) -> pl.DataFrame:
    return make_requests(tiny_model_dir, NUM_REQUESTS)


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[Any]:
    """A local Ray runtime: 2 CPUs (the actors), no dashboard, quiet, no usage reporting."""
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tiny: ResolvedModel, requests: pl.DataFrame, tmp_path_factory: Any) -> Path:
    """The reference: the local runner, one torch thread (as each 1-CPU Ray actor has)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("local")
        run_generation(requests, out, model=tiny, config=gen_config(), progress=False)
    finally:
        torch.set_num_threads(before)
    return out


# --- without Ray -------------------------------------------------------------------------------


def test_missing_ray_is_a_dependency_error(
    tiny: ResolvedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    requests = pl.DataFrame(
        {"request_id": [0], "input_ids": [[1, 2]], "seed": [0]}, schema=chunks.REQUEST_SCHEMA
    )
    with pytest.raises(DependencyError, match=r"pip install 'mipo\[ray\]'"):
        run_ray(requests, tmp_path / "out", model=tiny, config=gen_config())
    assert not (tmp_path / "out").exists()


def test_worker_resources_fit_the_cluster() -> None:
    cpu = GenerationConfig(backend="hf", device="cpu")
    assert worker_resources(cpu, {"CPU": 2.0}, None, 8) == (2, {"num_cpus": 1, "num_gpus": 0})
    assert worker_resources(cpu, {"CPU": 16.0}, 4, 8) == (4, {"num_cpus": 4, "num_gpus": 0})
    assert worker_resources(cpu, {"CPU": 16.0}, None, 3)[0] == 3  # never more than chunks left
    gpu = GenerationConfig(backend="hf", device="cuda")
    assert worker_resources(gpu, {"CPU": 64.0, "GPU": 8.0}, None, 100) == (
        8,
        {"num_cpus": 1, "num_gpus": 1},
    )
    with pytest.raises(ConfigError, match="does not fit the Ray cluster"):
        worker_resources(cpu, {"CPU": 2.0}, 3, 8)
    with pytest.raises(ConfigError, match="0 GPU"):
        worker_resources(gpu, {"CPU": 64.0}, None, 8)


def test_num_workers_is_checked(tiny: ResolvedModel, tmp_path: Path) -> None:
    requests = pl.DataFrame(
        {"request_id": [0], "input_ids": [[1, 2]], "seed": [0]}, schema=chunks.REQUEST_SCHEMA
    )
    with pytest.raises(ConfigError, match="num_workers must be an integer >= 1"):
        run_ray(requests, tmp_path, model=tiny, config=gen_config(), num_workers=0)


# --- on a local Ray runtime --------------------------------------------------------------------


@needs_ray
def test_ray_run_equals_local_run_byte_for_byte(
    ray_runtime: Any,
    tiny: ResolvedModel,
    requests: pl.DataFrame,
    local_run: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "ray"
    results = run_ray(requests, out, model=tiny, config=gen_config(), num_workers=2, progress=False)
    expected = load_results(local_run)
    assert results.height == NUM_REQUESTS
    assert results.equals(expected)
    assert results["response"].str.len_chars().sum() > 0  # real text was generated
    # Same files, byte for byte: a run started by one executor resumes with the other.
    assert (out / chunks.MANIFEST).read_bytes() == (local_run / chunks.MANIFEST).read_bytes()
    ray_chunks, local_chunks = chunk_bytes(out), chunk_bytes(local_run)
    assert len(ray_chunks) == -(-NUM_REQUESTS // CHUNK_SIZE)
    assert ray_chunks == local_chunks
    # The lock is released and no temp files are left.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@needs_ray
def test_ray_resumes_a_local_run_regenerating_only_the_missing_chunk(
    ray_runtime: Any,
    tiny: ResolvedModel,
    requests: pl.DataFrame,
    local_run: Path,
    tmp_path: Path,
) -> None:
    import shutil

    import torch

    out = tmp_path / "resume"
    shutil.copytree(local_run, out)
    original = chunk_bytes(out)
    # Chunk 3 belongs to shard 1/2, chunk 4 to shard 0/2.
    for k in (3, 4):
        chunks.chunk_path(out, k).unlink()
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("chunk-*")}

    # A run started by the local executor, resumed by Ray for shard 1/2 ...
    mine = run_ray(requests, out, model=tiny, config=gen_config(), shard=(1, 2), progress=False)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("chunk-*")}
    assert set(after) - set(stamps) == {chunks.chunk_path(out, 3).name}  # only chunk 3 redone
    assert {k: v for k, v in after.items() if k in stamps} == stamps  # nothing else rewritten
    shard_ids = pl.concat(
        [chunks.chunk_rows(requests, k, gen_config().chunk_size) for k in (1, 3, 5, 7)]
    )
    assert mine.equals(
        load_results(local_run).filter(pl.col("request_id").is_in(shard_ids["request_id"]))
    )
    with pytest.raises(OutputError, match="incomplete"):
        load_results(out)

    # ... and shard 0/2 finished by the local executor: every chunk as in one local run.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_generation(requests, out, model=tiny, config=gen_config(), shard=(0, 2), progress=False)
    finally:
        torch.set_num_threads(before)
    assert chunk_bytes(out) == original
    assert load_results(out).equals(load_results(local_run))


@needs_ray
def test_a_worker_that_cannot_load_the_model_is_one_clear_error(
    ray_runtime: Any, tiny: ResolvedModel, requests: pl.DataFrame, tmp_path: Path
) -> None:
    # The driver's model folder exists; pretend the worker node lacks it (another path).
    elsewhere = ResolvedModel(
        path=tmp_path / "not-on-this-node",
        name="mine",
        source="local",
        fingerprint=tiny.fingerprint,
    )
    out = tmp_path / "out"
    with pytest.raises(GenerationError, match="missing on Ray worker node") as info:
        run_ray(requests, out, model=elsewhere, config=gen_config(), progress=False)
    assert "\n" not in str(info.value)
    assert list(out.glob("chunk-*.parquet")) == []
    assert not list(out.glob(".lock-*"))  # the lock went with the failed run
    # The runtime the caller started is still usable afterwards.
    assert ray_runtime.is_initialized()
