"""The generation stage: config, the hf backend on a real (tiny) model, and the resumable runner.

The tiny model is random, so its texts are gibberish; what is checked is what generation
promises: types, stop handling against the model's own tokens, seeded reproducibility that does
not depend on batching, and a runner that survives SIGKILL, Ctrl-C and a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import mipo.io
from mipo import _testing
from mipo.errors import ConfigError, DependencyError, GenerationError, OutputError
from mipo.generate import (
    GenerationConfig,
    create_backend,
    load_results,
    request_seeds,
    resolve_backend_name,
    run_generation,
    vllm_available,
)
from mipo.generate.executors import chunks
from mipo.generate.hf import HFBackend, bucketed_batches
from mipo.models import ResolvedModel, bf16_is_fast, resolve_model

QUESTION_WORDS = [
    *[
        "I",
        "am",
        "a",
        "vegetarian",
        "runner",
        "training",
        "for",
        "a",
        "marathon",
        "and",
        "I",
        "live",
        "in",
        "a",
        "small",
        "apartment",
    ],
    *[
        "with",
        "two",
        "cats",
        "so",
        "what",
        "should",
        "I",
        "eat",
        "before",
        "a",
        "long",
        "run",
        "on",
        "a",
        "tight",
        "budget",
        "for",
        "four",
    ],
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The machine is shared: one thread avoids oversubscription stalls and keeps runs steady.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> ResolvedModel:
    return resolve_model(tiny_model_dir)


def make_requests(model_dir: Path, n: int, *, seed: int = 0) -> pl.DataFrame:
    """Chat prompts of varied length rendered with the model's own template."""
    return _testing.make_requests(model_dir, n, words=QUESTION_WORDS, seed=seed, max_words=40)


def config(**overrides: Any) -> GenerationConfig:
    values: dict[str, Any] = {
        "backend": "hf",
        "max_new_tokens": 8,
        "temperature": 1.0,
        "top_p": 0.95,
        "batch_size": 4,
        "chunk_size": 6,
    }
    return GenerationConfig(**(values | overrides))


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backend", "tgi"),
        ("max_new_tokens", 0),
        ("max_new_tokens", 2.5),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("seed", -1),
        ("seed", 2**64),
        ("batch_size", 0),
        ("chunk_size", True),
        ("dtype", "int8"),
        ("device", "gpu"),
        ("tensor_parallel_size", 0),
        ("gpu_memory_utilization", 1.5),
        ("trust_remote_code", "yes"),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        GenerationConfig(**{field: value})
    assert f"GenerationConfig.{field}" in str(info.value)
    assert repr(value) in str(info.value)


def test_config_defaults_follow_the_paper() -> None:
    c = GenerationConfig()
    assert (c.max_new_tokens, c.temperature, c.top_p, c.seed) == (512, 0.1, 0.9, 0)
    assert (c.batch_size, c.chunk_size, c.tensor_parallel_size) == (32, 256, 1)
    assert c.trust_remote_code is False


@pytest.mark.skipif(vllm_available(), reason="checks the behaviour without vLLM")
def test_auto_resolves_to_hf_on_cpu_and_vllm_needs_the_extra(tiny: ResolvedModel) -> None:
    assert resolve_backend_name("auto") == "hf"
    fields = GenerationConfig().output_fields()
    assert fields["backend"] == "hf"
    if fields["device"] == "cpu":  # bf16 only where the CPU has bf16 arithmetic
        assert fields["dtype"] == ("bfloat16" if bf16_is_fast("cpu") else "float32")
    assert "trust_remote_code" not in fields
    with pytest.raises(DependencyError, match=r"pip install 'mipo\[vllm\]'"):
        create_backend(tiny, GenerationConfig(backend="vllm"))


def test_request_seeds_are_stable_per_id() -> None:
    a = request_seeds([5, 6, 7], 1)
    assert a == request_seeds([5, 6, 7], 1)
    assert request_seeds([7], 1) == [a[2]]  # independent of the other rows
    assert len(set(a)) == 3 and a != request_seeds([5, 6, 7], 2)
    assert all(0 <= s < 2**63 for s in a)


def test_bucketed_batches_are_a_sorted_partition() -> None:
    lengths = [9, 3, 7, 3, 1, 8, 2]
    batches = bucketed_batches(lengths, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert [len(b) for b in batches] == [3, 3, 1]


# --- hf backend --------------------------------------------------------------------------------


def test_hf_backend_result_types_and_lengths(tiny: ResolvedModel) -> None:
    requests = make_requests(tiny.path, 10)
    backend = HFBackend(tiny, config(max_new_tokens=6))
    seen: list[tuple[int, int]] = []
    results = backend.generate(
        requests["input_ids"].to_list(),
        requests["seed"].to_list(),
        on_batch=lambda rows, tokens: seen.append((rows, tokens)),
    )
    assert len(results) == 10
    for r in results:
        assert isinstance(r.text, str)
        assert r.finish_reason in ("stop", "length")
        assert 1 <= r.num_response_tokens <= 6
        assert len(r.token_ids) == r.num_response_tokens
        if r.finish_reason == "length":
            assert r.num_response_tokens == 6
    assert sum(rows for rows, _ in seen) == 10
    assert sum(tokens for _, tokens in seen) == sum(r.num_response_tokens for r in results)


def test_hf_backend_stops_on_end_of_turn_where_the_model_emitted_it(
    tiny: ResolvedModel, tmp_path: Path
) -> None:
    """Declare a token the model samples mid-response as an extra EOS: each row must stop right
    there, with the same tokens before it (same seeds), and rows without it must be unchanged."""
    requests = make_requests(tiny.path, 16, seed=3)
    ids, seeds = requests["input_ids"].to_list(), requests["seed"].to_list()
    cfg = config(max_new_tokens=12, temperature=1.0, top_p=1.0)
    free = HFBackend(tiny, cfg).generate(ids, seeds)

    # A token that appears (after the first position) in some rows but not all.
    appears = Counter(t for r in free for t in set(r.token_ids[1:]))
    candidates = [t for t, n in appears.most_common() if 2 <= n < len(free)]
    assert candidates, "the samples should share a token between some rows"
    stop = candidates[0]

    stopping = tmp_path / "stopping"
    shutil.copytree(tiny.path, stopping)
    gen = json.loads((stopping / "generation_config.json").read_text())
    gen["eos_token_id"] = [gen["eos_token_id"], stop]
    (stopping / "generation_config.json").write_text(json.dumps(gen))
    backend = HFBackend(resolve_model(stopping), cfg)
    assert stop in backend.stop_ids
    stopped = backend.generate(ids, seeds)

    reasons = Counter(r.finish_reason for r in stopped)
    assert reasons["stop"] >= 1 and reasons["length"] >= 1
    for before, after in zip(free, stopped, strict=True):
        if stop in before.token_ids:
            cut = before.token_ids.index(stop)
            assert after.finish_reason == "stop"
            assert after.token_ids == before.token_ids[: cut + 1]
            assert after.num_response_tokens == cut + 1
            assert after.text == backend.tokenizer.decode(
                list(before.token_ids[:cut]), skip_special_tokens=True
            )
        elif before.finish_reason == "length":
            assert after == before


def test_sampling_is_reproducible_and_independent_of_batching(tiny: ResolvedModel) -> None:
    requests = make_requests(tiny.path, 12, seed=1)
    ids, seeds = requests["input_ids"].to_list(), requests["seed"].to_list()
    bucketed = HFBackend(tiny, config(batch_size=4)).generate(ids, seeds)
    again = HFBackend(tiny, config(batch_size=4)).generate(ids, seeds)
    assert again == bucketed

    # Same rows in another order, unbucketed, one at a time: the same response per row.
    in_order = HFBackend(tiny, config(batch_size=4), bucket_by_length=False).generate(ids, seeds)
    single = HFBackend(tiny, config(batch_size=1)).generate(ids[::-1], seeds[::-1])[::-1]
    texts = [r.text for r in bucketed]
    assert [r.text for r in in_order] == texts
    assert [r.text for r in single] == texts

    other_seeds = [s + 1 for s in seeds]
    changed = HFBackend(tiny, config(batch_size=4)).generate(ids, other_seeds)
    assert sum(a.text != b.text for a, b in zip(changed, bucketed, strict=True)) >= 10


def test_tiny_top_p_equals_greedy(tiny: ResolvedModel) -> None:
    requests = make_requests(tiny.path, 6, seed=2)
    ids, seeds = requests["input_ids"].to_list(), requests["seed"].to_list()
    greedy = HFBackend(tiny, config(temperature=0.0)).generate(ids, seeds)
    nucleus_of_one = HFBackend(tiny, config(temperature=1.0, top_p=1e-6)).generate(ids, seeds)
    assert [r.token_ids for r in nucleus_of_one] == [r.token_ids for r in greedy]


def test_hf_backend_rejects_foreign_token_ids(tiny: ResolvedModel) -> None:
    backend = HFBackend(tiny, config())
    with pytest.raises(GenerationError, match="outside the model's vocabulary"):
        backend.generate([[1, 2, 100_000]], [0])
    with pytest.raises(GenerationError, match="no tokens"):
        backend.generate([[]], [0])


# --- executors --------------------------------------------------------------------------------


def test_the_executor_is_chosen_in_one_place(tiny: ResolvedModel, tmp_path: Path) -> None:
    """run_generation refuses what no executor can do before touching the folder."""
    requests = make_requests(tiny.path, 2)
    with pytest.raises(ConfigError, match="--executor must be one of local, ray"):
        run_generation(requests, tmp_path / "a", model=tiny, config=config(), executor="slurm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Ray workers only"):
        run_generation(requests, tmp_path / "b", model=tiny, config=config(), num_workers=2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_remote_executor_runs_the_chunk_api_in_the_child(
    tiny: ResolvedModel, tmp_path: Path
) -> None:
    """``python -m mipo.generate.executors.remote`` really runs in the other interpreter and
    its one-line error becomes ours ("vLLM generation in PYTHON failed: ..." is written only
    from the child's error line), leaving nothing behind. This interpreter has no vLLM, so the
    child refuses at its first step (tests/test_vllm.py runs the whole thing with vLLM)."""
    from mipo.generate.executors.remote import run_remote

    if vllm_available():
        pytest.skip("needs an interpreter without vLLM")
    out = tmp_path / "gen"
    remote = config(backend="vllm", vllm_python=sys.executable)
    expected = rf"vLLM generation in {sys.executable} failed: the vllm backend needs vLLM"
    with pytest.raises(GenerationError, match=expected) as failed:
        run_remote(make_requests(tiny.path, 3), out, model=tiny, config=remote, progress=False)
    assert "\n" not in str(failed.value)
    assert list(out.iterdir()) == []


# --- runner ------------------------------------------------------------------------------------


def test_runner_writes_chunks_and_manifest(tiny: ResolvedModel, tmp_path: Path) -> None:
    requests = make_requests(tiny.path, 14).sample(fraction=1.0, shuffle=True, seed=0)
    out = tmp_path / "gen"
    results = run_generation(requests, out, model=tiny, config=config(), progress=False)

    assert results.schema == pl.Schema(chunks.RESULT_SCHEMA)
    assert results["request_id"].to_list() == sorted(requests["request_id"].to_list())
    expected = requests.sort("request_id")
    assert results["seed"].equals(expected["seed"])
    assert results["num_prompt_tokens"].to_list() == expected["input_ids"].list.len().to_list()
    assert set(results["finish_reason"]) <= {"stop", "length"}

    names = sorted(p.name for p in out.iterdir())  # no lock or temp file left behind
    assert names == [f"chunk-00000{k}.parquet" for k in range(3)] + ["manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_chunks"] == 3 and manifest["num_requests"] == 14
    assert manifest["model_fingerprint"] == tiny.fingerprint
    assert load_results(out).equals(results)

    # A rerun loads everything from disk: it must not even build a backend.
    class Refuse:
        name = "refuse"

        def generate(self, *args: object, **kwargs: object) -> list[Any]:
            raise AssertionError("finished chunks were regenerated")

    assert run_generation(
        requests, out, model=tiny, config=config(), progress=False, backend=Refuse()
    ).equals(results)


class Refuse:
    """A backend that fails the test if any row is generated (everything must come from disk)."""

    name = "refuse"

    def generate(self, *args: object, **kwargs: object) -> list[Any]:
        raise AssertionError("finished chunks were regenerated")


def test_changed_config_is_refused_and_overwrite_starts_over(
    tiny: ResolvedModel, tmp_path: Path
) -> None:
    requests = make_requests(tiny.path, 8)
    out = tmp_path / "gen"
    first = run_generation(requests, out, model=tiny, config=config(), progress=False)

    with pytest.raises(OutputError, match=r"different generation settings.*--overwrite"):
        run_generation(requests, out, model=tiny, config=config(temperature=0.5), progress=False)
    with pytest.raises(OutputError, match="different prompts or seeds"):
        run_generation(requests.head(7), out, model=tiny, config=config(), progress=False)
    # Settings that cannot change the text do not invalidate the run.
    same = run_generation(
        requests, out, model=tiny, config=config(trust_remote_code=True), progress=False
    )
    assert same.equals(first)
    # vLLM-only options cannot change what the hf backend writes.
    same = run_generation(
        requests, out, model=tiny, config=config(max_model_len=64), progress=False, backend=Refuse()
    )
    assert same.equals(first)
    # A manifest written before an option became ignored (its config still holds it, at any
    # value) is the same run; a real change in such a manifest is still refused.
    manifest = json.loads((out / "manifest.json").read_text())
    old = {**manifest, "run_hash": "0" * 16, "config_hash": "0" * 16}
    old["config"] = {**manifest["config"], "gpu_memory_utilization": 0.9, "vllm_args": None}
    (out / "manifest.json").write_text(json.dumps(old))
    same = run_generation(
        requests, out, model=tiny, config=config(), progress=False, backend=Refuse()
    )
    assert same.equals(first)
    assert json.loads((out / "manifest.json").read_text())["run_hash"] == manifest["run_hash"]
    old["config"]["temperature"] = 0.5
    (out / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(OutputError, match="different generation settings"):
        run_generation(requests, out, model=tiny, config=config(), progress=False)
    (out / "manifest.json").write_text(json.dumps(manifest))

    second = run_generation(
        requests, out, model=tiny, config=config(chunk_size=3), overwrite=True, progress=False
    )
    assert sorted(p.name for p in out.glob("chunk-*")) == [
        f"chunk-00000{k}.parquet" for k in range(3)
    ]
    assert json.loads((out / "manifest.json").read_text())["chunk_size"] == 3
    assert second["request_id"].equals(first["request_id"])


def test_shards_together_equal_one_run(tiny: ResolvedModel, tmp_path: Path) -> None:
    requests = make_requests(tiny.path, 15)
    whole = run_generation(
        requests, tmp_path / "whole", model=tiny, config=config(), progress=False
    )

    split = tmp_path / "split"
    part0 = run_generation(
        requests, split, model=tiny, config=config(), shard=(0, 2), progress=False
    )
    with pytest.raises(OutputError, match=r"incomplete: 1 of 3 chunks missing \(1\)"):
        load_results(split)
    part1 = run_generation(
        requests, split, model=tiny, config=config(), shard=(1, 2), progress=False
    )
    assert part0.height == 6 + 3 and part1.height == 6  # chunks 0 and 2; chunk 1
    assert pl.concat([part0, part1]).sort("request_id").equals(whole)
    assert load_results(split).equals(whole)

    with pytest.raises(ConfigError, match="shard 2/2 is invalid"):
        run_generation(requests, split, model=tiny, config=config(), shard=(2, 2))


def test_bad_requests_are_refused(tiny: ResolvedModel, tmp_path: Path) -> None:
    requests = make_requests(tiny.path, 3)
    with pytest.raises(GenerationError, match=r"lack column.*seed"):
        run_generation(requests.drop("seed"), tmp_path / "a", model=tiny, config=config())
    dup = pl.concat([requests, requests.head(1)])
    with pytest.raises(GenerationError, match="repeat a request_id"):
        run_generation(dup, tmp_path / "b", model=tiny, config=config())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


LOCK_HOLDER = "import sys, time\nfrom mipo.io import output_lock\nwith output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"


def test_live_lock_refuses_and_dead_lock_is_taken_over(tiny: ResolvedModel, tmp_path: Path) -> None:
    requests = make_requests(tiny.path, 4)
    out = tmp_path / "gen"
    out.mkdir()
    lock = out / ".lock-shard-0-of-1"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"another mipo run \(pid {holder.pid}\)"):
            run_generation(requests, out, model=tiny, config=config(), progress=False)
        owner = lock.with_name(lock.name + ".owner")
        assert owner.read_text() == f"{socket.gethostname()}:{holder.pid}"  # not stolen
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
    # The holder died without cleaning up: its lock no longer blocks.
    assert lock.exists()
    results = run_generation(requests, out, model=tiny, config=config(), progress=False)
    assert results.height == 4 and not lock.exists()


DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests_dir!r})
    from test_generate import config, make_requests
    from mipo.generate import run_generation
    from mipo.models import resolve_model

    model = resolve_model({model_dir!r})
    requests = make_requests(Path({model_dir!r}), {rows})
    run_generation(requests, Path({out!r}), model=model, config=config(chunk_size=4),
                   progress=False)
    """
)


def _start_driver(tmp_path: Path, model_dir: Path, out: Path, rows: int) -> subprocess.Popen[bytes]:
    script = tmp_path / "driver.py"
    script.write_text(
        DRIVER.format(
            tests_dir=str(Path(__file__).parent), model_dir=str(model_dir), out=str(out), rows=rows
        )
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)


def _wait_for_chunks(proc: subprocess.Popen[bytes], out: Path, count: int) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        found = len(list(out.glob("chunk-*.parquet")))
        if found >= count:
            return found
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"driver exited early ({proc.returncode}): {stderr[-2000:]}")
        time.sleep(0.01)
    pytest.fail("driver wrote no chunks in time")


def test_sigkill_mid_generation_then_rerun_equals_uninterrupted(
    tiny: ResolvedModel, tmp_path: Path
) -> None:
    rows = 120  # 30 chunks of 4: the kill lands well before the end
    requests = make_requests(tiny.path, rows)
    out = tmp_path / "killed"
    proc = _start_driver(tmp_path, tiny.path, out, rows)
    try:
        _wait_for_chunks(proc, out, 3)
        # While it runs, a second run into the same folder is refused.
        with pytest.raises(OutputError, match="another mipo run"):
            run_generation(requests, out, model=tiny, config=config(chunk_size=4), progress=False)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    finished = len(list(out.glob("chunk-*.parquet")))
    assert 3 <= finished < 30, "the kill should interrupt the run"
    assert (out / ".lock-shard-0-of-1").exists()  # left behind by the killed run

    resumed = run_generation(requests, out, model=tiny, config=config(chunk_size=4), progress=False)
    reference = run_generation(
        requests, tmp_path / "reference", model=tiny, config=config(chunk_size=4), progress=False
    )
    assert resumed.height == rows and resumed["request_id"].n_unique() == rows
    assert resumed.equals(reference)
    assert load_results(out).equals(reference)
    assert not list(out.glob(".*tmp*")) and not (out / ".lock-shard-0-of-1").exists()


def test_ctrl_c_abandons_the_chunk_cleanly(tiny: ResolvedModel, tmp_path: Path) -> None:
    rows = 120
    out = tmp_path / "interrupted"
    proc = _start_driver(tmp_path, tiny.path, out, rows)
    try:
        _wait_for_chunks(proc, out, 2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"KeyboardInterrupt" in stderr
    assert not list(out.glob(".*tmp*")), "no temp file may survive Ctrl-C"
    assert not (out / ".lock-shard-0-of-1").exists(), "the lock must be released"
    finished = load_results(out, require_complete=False)  # every chunk on disk is whole
    assert 2 <= finished.height < rows and finished.height % 4 == 0
    # (Resuming after an interruption is covered by the SIGKILL test.)


def test_disk_full_keeps_earlier_chunks_and_resume_works(
    tiny: ResolvedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulates a disk that fills up while chunk 2 is written (a partial write, then ENOSPC)."""
    requests = make_requests(tiny.path, 18)
    out = tmp_path / "gen"
    real_open = open

    class FullDisk:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def write(self, data: bytes) -> int:
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def filling_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if "chunk-000002" in str(path) else handle

    monkeypatch.setattr(mipo.io, "open", filling_open, raising=False)
    with pytest.raises(OutputError, match=r"disk full while writing chunk-000002\.parquet"):
        run_generation(requests, out, model=tiny, config=config(), progress=False)
    assert sorted(p.name for p in out.glob("chunk-*")) == [
        "chunk-000000.parquet",
        "chunk-000001.parquet",
    ]
    assert not list(out.glob(".*tmp*")) and not (out / ".lock-shard-0-of-1").exists()

    monkeypatch.undo()  # space freed
    resumed = run_generation(requests, out, model=tiny, config=config(), progress=False)
    reference = run_generation(
        requests, tmp_path / "reference", model=tiny, config=config(), progress=False
    )
    assert resumed.equals(reference)


# vLLM: tests/test_vllm.py runs the backend for real in its own environment (make test-vllm).


@pytest.mark.slow
def test_builtin_model_answers_and_stops(smollm2_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    questions = ["What is the capital of France?", "Say hello in one word.", "What is 2 + 3?"]
    ids = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for q in questions
    ]
    requests = pl.DataFrame(
        {"request_id": [0, 1, 2], "input_ids": ids, "seed": request_seeds([0, 1, 2], 0)},
        schema=chunks.REQUEST_SCHEMA,
    )
    cfg = config(max_new_tokens=48, temperature=0.1, top_p=0.9, chunk_size=2)
    results = run_generation(requests, tmp_path / "gen", model=model, config=cfg, progress=False)
    assert "Paris" in results["response"][0]
    assert results["finish_reason"].to_list() == ["stop"] * 3
    assert "<|im_end|>" not in "".join(results["response"].to_list())
    assert (results["num_response_tokens"] < 48).all()


def test_vllm_engine_arguments_on_a_cpu(
    tiny: ResolvedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU: eager, a fixed KV cache, and whole-prompt prefill (vLLM's CPU worker cannot
    rewind the seeded generator of a prompt split across steps)."""
    import mipo.generate.config
    from mipo.generate.vllm import MIN_BATCHED_TOKENS, engine_arguments

    monkeypatch.setattr(mipo.generate.config, "vllm_device", lambda: "cpu")
    arguments = engine_arguments(tiny, GenerationConfig(backend="vllm"))
    assert arguments["enforce_eager"] is True
    assert arguments["enable_chunked_prefill"] is False
    context = json.loads((Path(tiny.path) / "config.json").read_text())["max_position_embeddings"]
    assert arguments["max_num_batched_tokens"] == max(context, MIN_BATCHED_TOKENS)
    assert arguments["kv_cache_memory_bytes"] == 2 * 1024**3
    wide = engine_arguments(tiny, GenerationConfig(backend="vllm", max_model_len=20000))
    assert wide["max_num_batched_tokens"] == 20000
    # --vllm-arg still wins.
    mine = GenerationConfig(backend="vllm", vllm_args={"enable_chunked_prefill": True})
    assert engine_arguments(tiny, mine)["enable_chunked_prefill"] is True
