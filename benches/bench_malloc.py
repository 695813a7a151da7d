"""glibc malloc tuning (``mipo._allocator``) vs glibc's defaults, on the CPU, side by side.

Three workloads of the demo, each on the built-in SmolLM2-135M-Instruct, each run in a fresh
process (malloc settings are per process) that applies the settings at its start
(``tune_cpu_allocator``) with ``MIPO_MALLOC_TUNING=1`` (*tuned*) or ``0`` (glibc's defaults),
alternating tuned / default / tuned / default so machine noise hits both. mipo itself applies
them for training and scoring on the CPU; the generate row is why it does not for generation:

- **train**: LoRA DPO steps at the demo's settings (batch 8, max_length 384, lr 5e-4), on pairs
  built from the sample corpus (prompt: a user's context and question; chosen and rejected: about
  48 words each, as long as the demo's 64-token responses). Time: TRL's ``train_runtime``.
- **generate**: the hf backend on sample-corpus prompts (batch 16, 64 new tokens, T=0.1).
- **score**: :func:`mipo.scoring.score_responses` of the train pairs' chosen responses (batch 16).

Reported per workload: the time of each side (best of the repeats), the speedup (default time /
tuned time), peak RSS, minor page faults and kernel (sys) CPU seconds of the whole child process.
The table and its conclusion go into ``benches/RESULTS.md`` between ``<!-- malloc:begin -->`` and
``<!-- malloc:end -->``.

Run:  python benches/bench_malloc.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results_md import cpu_name, replace_section

QUICK = {"train_steps": 2, "generate_rows": 16, "score_rows": 32, "repeats": 1}
FULL = {"train_steps": 6, "generate_rows": 48, "score_rows": 128, "repeats": 2}
WORKLOADS = ("train", "generate", "score")
BEGIN, END = "<!-- malloc:begin -->", "<!-- malloc:end -->"
HEADING = "## CPU memory allocator"


# --- the child: one workload in this process ---------------------------------------------------


def _corpus_rows() -> list[dict[str, str]]:
    from mipo.synth import SAMPLE_CORPUS_PATH

    with open(SAMPLE_CORPUS_PATH, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _pairs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` conversational pairs: real sample-corpus prompts, ~48-word chosen and rejected."""
    rng = random.Random(seed)
    rows = _corpus_rows()
    words = " ".join(r["context"] + " " + r["question"] for r in rows).split()

    def response() -> list[dict[str, str]]:
        start = rng.randrange(len(words) - 48)
        return [{"role": "assistant", "content": " ".join(words[start : start + 48])}]

    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        content = f"{row['context']}\n\n{row['question']}".strip()
        out.append(
            {
                "prompt": [{"role": "user", "content": content}],
                "chosen": response(),
                "rejected": response(),
            }
        )
    return out


def _run_train(settings: dict[str, Any], workdir: Path) -> tuple[float, str]:
    from mipo.run.pipeline import DEMO_TRAIN
    from mipo.train import TrainConfig, train

    steps = settings["train_steps"]
    pairs = workdir / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in _pairs(8 * steps)), encoding="utf-8")
    config = TrainConfig(**{**DEMO_TRAIN, "max_steps": steps, "save_steps": 10_000})
    result = train(pairs, workdir / "train", config, progress=False)
    return result.train_runtime_s, f"{steps} LoRA DPO steps, batch 8"


def _run_generate(settings: dict[str, Any], workdir: Path) -> tuple[float, str]:
    from transformers import AutoTokenizer

    from mipo.generate import GenerationConfig, request_seeds
    from mipo.generate.hf import HFBackend
    from mipo.models import resolve_model

    model = resolve_model(None)
    config = GenerationConfig(
        backend="hf", device="cpu", max_new_tokens=64, batch_size=16, temperature=0.1, top_p=0.9
    )
    backend = HFBackend(model, config)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    prompts = [
        tokenizer.apply_chat_template(
            p["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for p in _pairs(settings["generate_rows"])
    ]
    started = time.perf_counter()
    results = backend.generate(prompts, request_seeds(range(len(prompts)), 0))
    seconds = time.perf_counter() - started
    tokens = sum(r.num_response_tokens for r in results)
    return seconds, f"{len(prompts)} prompts, {tokens} new tokens"


def _run_score(settings: dict[str, Any], workdir: Path) -> tuple[float, str]:
    from mipo.models import load_model, resolve_model
    from mipo.scoring import score_responses

    loaded = load_model(resolve_model(None).path, device="cpu")
    pairs = _pairs(settings["score_rows"])
    prompts = [p["prompt"] for p in pairs]
    responses = [p["chosen"][0]["content"] for p in pairs]
    started = time.perf_counter()
    score_responses(loaded, prompts, responses, batch_size=16, device="cpu")
    return time.perf_counter() - started, f"{len(pairs)} responses"


def child(workload: str, quick: bool) -> dict[str, Any]:
    from mipo._allocator import tune_cpu_allocator

    settings = QUICK if quick else FULL
    # Before anything is allocated, as mipo's trainer does; MIPO_MALLOC_TUNING=0 makes it a no-op.
    tuned = tune_cpu_allocator("cpu")
    with tempfile.TemporaryDirectory(prefix="mipo-bench-malloc-") as tmp:
        seconds, what = {"train": _run_train, "generate": _run_generate, "score": _run_score}[
            workload
        ](settings, Path(tmp))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "workload": workload,
        "seconds": seconds,
        "what": what,
        "tuned": tuned,
        "max_rss_mib": usage.ru_maxrss / 1024,
        "minor_faults": usage.ru_minflt,
        "sys_s": usage.ru_stime,
        "user_s": usage.ru_utime,
    }


# --- the parent: alternate the two settings, write the table -----------------------------------


def _measure(workload: str, tuned: bool, quick: bool) -> dict[str, Any]:
    env = {**os.environ, "MIPO_MALLOC_TUNING": "1" if tuned else "0"}
    env.pop("GLIBC_TUNABLES", None)  # the default side must really run glibc's defaults
    cmd = [sys.executable, __file__, "--child", workload] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_malloc: {workload} child failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    if record["tuned"] != tuned:
        raise SystemExit(
            f"bench_malloc: the {workload} child ran with tuning={record['tuned']}, "
            f"expected {tuned} (is this glibc?)"
        )
    return record


def compare(quick: bool, workloads: tuple[str, ...] = WORKLOADS) -> list[dict[str, Any]]:
    settings = QUICK if quick else FULL
    rows = []
    for workload in workloads:
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for _ in range(settings["repeats"]):
            for tuned in (True, False):
                record = _measure(workload, tuned, quick)
                runs[tuned].append(record)
                print(
                    f"  {workload} tuned={tuned}: {record['seconds']:.1f} s, "
                    f"peak RSS {record['max_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                )
        best = {t: min(r, key=lambda x: x["seconds"]) for t, r in runs.items()}
        for t, r in runs.items():  # memory: the worst run of each side, not the fastest one's
            best[t] = {**best[t], "max_rss_mib": max(x["max_rss_mib"] for x in r)}
        rows.append(
            {
                "workload": workload,
                "what": best[True]["what"],
                "tuned": best[True],
                "default": best[False],
                "speedup": best[False]["seconds"] / best[True]["seconds"],
                "repeats": settings["repeats"],
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | tuned (s) | glibc default (s) | speedup | worst peak RSS tuned / default (MiB) "
        "| minor faults tuned / default | sys CPU tuned / default (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, d = r["tuned"], r["default"]
        lines.append(
            f"| {r['workload']} ({r['what']}) | {t['seconds']:.1f} | {d['seconds']:.1f} | "
            f"{r['speedup']:.2f}x | {t['max_rss_mib']:.0f} / {d['max_rss_mib']:.0f} | "
            f"{t['minor_faults']:,} / {d['minor_faults']:,} | {t['sys_s']:.1f} / {d['sys_s']:.1f} |"
        )
    return "\n".join(lines)


def _conclusion(rows: list[dict[str, Any]]) -> str:
    faster = [r for r in rows if r["speedup"] >= 1.05]
    slower = [r for r in rows if r["speedup"] <= 1 / 1.05]
    parts = []
    if faster:
        parts.append(
            "faster with the tuning: "
            + ", ".join(f"{r['workload']} {r['speedup']:.2f}x" for r in faster)
        )
    if slower:
        parts.append(
            "slower with the tuning: "
            + ", ".join(f"{r['workload']} {1 / r['speedup']:.2f}x" for r in slower)
        )
    same = [r["workload"] for r in rows if r not in faster and r not in slower]
    if same:
        parts.append("within 5% either way: " + ", ".join(same))
    rss = max(r["tuned"]["max_rss_mib"] / r["default"]["max_rss_mib"] for r in rows)
    parts.append(f"the worst peak RSS at most {rss:.2f}x the default's")
    return "In this run: " + "; ".join(parts) + "."


def write_section(rows: list[dict[str, Any]], quick: bool) -> None:
    from mipo.models import cpu_has_amx_bf16

    amx = "with AMX (bf16 by default)" if cpu_has_amx_bf16() else "without AMX (fp32)"
    block = "\n".join(
        [
            BEGIN,
            "Written by `benches/bench_malloc.py`"
            + (" --quick" if quick else "")
            + f": {cpu_name()}, {os.cpu_count()} cores, {amx}, glibc "
            + platform.libc_ver()[1]
            + f". Each cell: best of {rows[0]['repeats']} fresh processes per side, the sides "
            "alternating. *Tuned*: `mipo._allocator`'s settings (mmap threshold 1 GiB, no heap "
            "trimming), applied at process start; mipo applies them when it trains or scores "
            "on the CPU, not for generation. *glibc default*: `MIPO_MALLOC_TUNING=0`. Speedup = "
            "default time / tuned time (best run of each side); minor page faults and kernel CPU "
            "time are those of the best run's whole process, peak RSS the worst run's.",
            "",
            _table(rows),
            "",
            _conclusion(rows),
            END,
        ]
    )
    replace_section(block, BEGIN, END, HEADING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help="comma-separated workloads to run"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.quick)))
        return
    workloads = tuple(w for w in args.only.split(",") if w)
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"bench_malloc: unknown workload(s) {unknown}; choose from {WORKLOADS}")
    rows = compare(args.quick, workloads)
    print(_table(rows))
    print(_conclusion(rows))
    if not args.no_write:
        write_section(rows, args.quick)


if __name__ == "__main__":
    main()
