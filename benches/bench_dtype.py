"""fp32 against bf16 on this machine: generation, scoring and training speed, and the drift bf16
causes, side by side on the built-in SmolLM2-135M-Instruct (hf backend).

Each workload runs once per precision in a fresh process, fp32 and bf16 alternating (the order
flips at each repeat), on the first ``prompts`` users' prompts of the bundled sample corpus
(context in the user's turn, as ``mipo run`` builds them):

- **generate**: the hf backend, 64 new tokens, T = 0.1, top_p 0.9, batch 16, the same seeds;
  weights loaded in each precision (``GenerationConfig.dtype``). Drift: the share of responses
  that come out word for word the same.
- **score**: the responses generated in fp32 scored under the model loaded in each precision
  (``mipo.models.load_model(dtype=...)``, as ``mipo eval`` scores): the summed log-probabilities
  (``score_responses``), their PMI against ``k`` random prompts and against the same question
  asked with ``k`` other users' contexts (``pmi_scores``, log-mean-exp), and the multiple-choice
  accuracy of the bundled ``choice_sample.jsonl`` (the same answer choices ranked by log-prob).
  Drift: the per-response log-prob difference bf16 - fp32, the PMI difference, and the choices
  picked differently.
- **train**: ``mipo train`` steps with the demo's training options, ``bf16`` autocast on or off,
  on pairs made of those prompts (chosen: the fp32 response to the prompt; rejected: the fp32
  response to the next prompt), 8 steps of 8 (two passes over the 32 pairs, so that the one-time
  costs at the start of training, reference log-probs included, do not dominate). Drift: the
  per-step DPO loss difference.

Speed ratios are fp32 time / bf16 time (best run of each). The section goes into
``benches/RESULTS.md`` between ``<!-- dtype:begin -->`` and ``<!-- dtype:end -->``.

Run:  python benches/bench_dtype.py [--quick] [--no-write] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from results_md import cpu_name, load_note, replace_section

QUICK = {"prompts": 8, "k": 2, "train_steps": 1, "repeats": 1}
FULL = {"prompts": 32, "k": 4, "train_steps": 8, "repeats": 1}
DTYPES = ("float32", "bfloat16")
WORKLOADS = ("generate", "score", "train")
BEGIN, END = "<!-- dtype:begin -->", "<!-- dtype:end -->"
HEADING = "## Precision: fp32 against bf16"


# --- the inputs ------------------------------------------------------------------------------------


def _corpus(n: int) -> list[dict[str, str]]:
    from mipo.synth import SAMPLE_CORPUS_PATH

    with open(SAMPLE_CORPUS_PATH, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:n]


def _prompts(rows: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    from mipo.prompt_format import PromptFormat

    fmt = PromptFormat()
    return [fmt.messages(r["context"], [{"role": "user", "content": r["question"]}]) for r in rows]


# --- the children: one workload in one precision ---------------------------------------------------


def _generate(settings: dict[str, Any], dtype: str, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from mipo.generate import GenerationConfig, request_seeds
    from mipo.generate.hf import HFBackend
    from mipo.models import resolve_model

    model = resolve_model(None)
    config = GenerationConfig(
        backend="hf",
        device="cpu",
        dtype=dtype,
        max_new_tokens=64,
        batch_size=16,
        temperature=0.1,
        top_p=0.9,
    )
    backend = HFBackend(model, config)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    prompts = [
        tokenizer.apply_chat_template(
            m, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for m in _prompts(_corpus(settings["prompts"]))
    ]
    started = time.perf_counter()
    results = backend.generate(prompts, request_seeds(range(len(prompts)), 0))
    seconds = time.perf_counter() - started
    texts = [r.text for r in results]
    (work / f"responses-{dtype}.json").write_text(json.dumps(texts), encoding="utf-8")
    return {
        "seconds": seconds,
        "tokens": sum(r.num_response_tokens for r in results),
        "responses": texts,
    }


def _score(settings: dict[str, Any], dtype: str, work: Path) -> dict[str, Any]:
    import polars as pl

    from mipo.evaluate.answers import choice_index
    from mipo.models import load_model, resolve_model
    from mipo.scoring import pmi_scores, score_responses

    rows = _corpus(settings["prompts"])
    responses = json.loads((work / "responses-float32.json").read_text(encoding="utf-8"))
    loaded = load_model(resolve_model(None).path, device="cpu", dtype=dtype)
    started = time.perf_counter()
    pmi = pmi_scores(
        loaded,
        _prompts(rows),
        responses,
        k=settings["k"],
        contexts=[r["context"] for r in rows],
        nocontext=[[{"role": "user", "content": r["question"]}] for r in rows],
        users=[r["user_id"] for r in rows],
        batch_size=16,
    )
    pmi_seconds = time.perf_counter() - started
    sequences = len(rows) * (2 + 2 * settings["k"])  # each row, its contrasts, its bare question

    from mipo.evaluate.datasets import MATH_FEWSHOT_PATH  # beside the bundled choice sample

    choices = pl.read_ndjson(MATH_FEWSHOT_PATH.with_name("choice_sample.jsonl"))
    prompts, options, owner = [], [], []
    for i, row in enumerate(choices.iter_rows(named=True)):
        for option in row["choices"]:
            prompts.append([{"role": "user", "content": row["question"]}])
            options.append(option)
            owner.append(i)
    started = time.perf_counter()
    scored = score_responses(loaded, prompts, options, batch_size=16)
    choice_seconds = time.perf_counter() - started
    sums: list[list[float]] = [[] for _ in range(choices.height)]
    for i, logprob in zip(owner, scored["logprob"], strict=True):
        sums[i].append(logprob)
    picks = [max(range(len(s)), key=s.__getitem__) for s in sums]
    gold = [choice_index(a, c) for a, c in zip(choices["answer"], choices["choices"], strict=True)]
    return {
        "seconds": pmi_seconds + choice_seconds,
        "sequences": sequences + len(options),
        "logprob": pmi["logprob"].to_list(),
        "pmi_random": pmi["pmi_random"].to_list(),
        "pmi_same_question": pmi["pmi_same_question"].to_list(),
        "choice_picks": picks,
        "choice_correct": [p == g for p, g in zip(picks, gold, strict=True)],
    }


def _train(settings: dict[str, Any], dtype: str, work: Path) -> dict[str, Any]:
    from mipo.run.pipeline import DEMO_TRAIN
    from mipo.train import TrainConfig, train

    rows = _corpus(settings["prompts"])
    responses = json.loads((work / "responses-float32.json").read_text(encoding="utf-8"))
    prompts = _prompts(rows)
    n = len(prompts)
    pairs = work / f"pairs-{dtype}.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": prompts[i],
                    "chosen": [{"role": "assistant", "content": responses[i]}],
                    "rejected": [{"role": "assistant", "content": responses[(i + 1) % n]}],
                }
            )
            + "\n"
            for i in range(n)
        ),
        encoding="utf-8",
    )
    steps = settings["train_steps"]
    config = TrainConfig(
        **{**DEMO_TRAIN, "max_steps": steps, "save_steps": 10_000, "bf16": dtype == "bfloat16"}
    )
    out = work / f"train-{dtype}"
    result = train(pairs, out, config, progress=False)
    log = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    record = json.loads(result.config_path.read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": result.metrics["train_runtime"],
        "steps": result.global_steps,
        "loss": [e["loss"] for e in log if "loss" in e],
        "bf16": record["resolved"]["bf16"],
    }


def child(workload: str, dtype: str, quick: bool, work: Path) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    run = {"generate": _generate, "score": _score, "train": _train}[workload]
    return {"workload": workload, "dtype": dtype, **run(settings, dtype, work)}


# --- the parent ----------------------------------------------------------------------------------


def _measure(workload: str, dtype: str, quick: bool, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", workload, "--dtype", dtype, "--work", str(work)]
    proc = subprocess.run(
        cmd + (["--quick"] if quick else []), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench_dtype: {workload} ({dtype}) failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {workload} {dtype}: {record['seconds']:.1f} s", file=sys.stderr)
    return record


def compare(quick: bool, repeats: int, work: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The best (fastest) run of each workload in each precision; drift from the first ones."""
    best: dict[str, dict[str, dict[str, Any]]] = {w: {} for w in WORKLOADS}
    for workload in WORKLOADS:  # generate first: score and train read its fp32 responses
        for repeat in range(repeats):
            for dtype in DTYPES if repeat % 2 == 0 else DTYPES[::-1]:
                record = _measure(workload, dtype, quick, work)
                kept = best[workload].get(dtype)
                if kept is None or record["seconds"] < kept["seconds"]:
                    best[workload][dtype] = record
    return best


def _spread(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def drift(best: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    gen = best["generate"]
    same = sum(
        a == b
        for a, b in zip(gen["float32"]["responses"], gen["bfloat16"]["responses"], strict=True)
    )
    s32, s16 = best["score"]["float32"], best["score"]["bfloat16"]
    diffs = [b - a for a, b in zip(s32["logprob"], s16["logprob"], strict=True)]
    out: dict[str, Any] = {
        "responses": len(diffs),
        "same_text": same,
        "logprob_mean_abs": statistics.fmean(abs(d) for d in diffs),
        "logprob_max_abs": max(abs(d) for d in diffs),
        "logprob_mean": statistics.fmean(diffs),
        "logprob_sd_fp32": _spread(s32["logprob"]),
    }
    for name in ("pmi_random", "pmi_same_question"):
        pairs = [
            (a, b)
            for a, b in zip(s32[name], s16[name], strict=True)
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
        ]
        out[name] = {
            "fp32": statistics.fmean(a for a, _ in pairs),
            "bf16": statistics.fmean(b for _, b in pairs),
            "mean_abs_diff": statistics.fmean(abs(b - a) for a, b in pairs),
            "sd_fp32": _spread([a for a, _ in pairs]),
        }
    out["choices"] = len(s32["choice_picks"])
    out["choice_acc_fp32"] = statistics.fmean(s32["choice_correct"])
    out["choice_acc_bf16"] = statistics.fmean(s16["choice_correct"])
    out["choice_changed"] = sum(
        a != b for a, b in zip(s32["choice_picks"], s16["choice_picks"], strict=True)
    )
    l32, l16 = best["train"]["float32"]["loss"], best["train"]["bfloat16"]["loss"]
    out["loss_steps"] = len(l32)
    out["loss_max_abs"] = max(abs(a - b) for a, b in zip(l32, l16, strict=True))
    out["loss_fp32"] = l32
    return out


def table(best: dict[str, dict[str, dict[str, Any]]]) -> str:
    g, s, t = best["generate"], best["score"], best["train"]
    rows = [
        (
            f"generate ({len(g['float32']['responses'])} prompts, 64 new tokens)",
            g["float32"]["seconds"],
            g["bfloat16"]["seconds"],
            f"{g['float32']['tokens'] / g['float32']['seconds']:.1f} / "
            f"{g['bfloat16']['tokens'] / g['bfloat16']['seconds']:.1f} tokens/s",
        ),
        (
            f"score ({s['float32']['sequences']} sequences: PMI contrasts and choices)",
            s["float32"]["seconds"],
            s["bfloat16"]["seconds"],
            f"{s['float32']['sequences'] / s['float32']['seconds']:.1f} / "
            f"{s['bfloat16']['sequences'] / s['bfloat16']['seconds']:.1f} sequences/s",
        ),
        (
            f"train ({t['float32']['steps']} LoRA DPO steps, batch 8)",
            t["float32"]["seconds"],
            t["bfloat16"]["seconds"],
            f"{t['float32']['seconds'] / t['float32']['steps']:.1f} / "
            f"{t['bfloat16']['seconds'] / t['bfloat16']['steps']:.1f} s per step",
        ),
    ]
    lines = [
        "| workload | fp32 (s) | bf16 (s) | bf16 speedup | rate fp32 / bf16 |",
        "|---|---|---|---|---|",
    ]
    for name, a, b, rate in rows:
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {rate} |")
    return "\n".join(lines)


def drift_table(d: dict[str, Any]) -> str:
    lines = [
        "| measure | fp32 | bf16 | difference |",
        "|---|---|---|---|",
        f"| responses generated word for word the same | | | {d['same_text']} of "
        f"{d['responses']} |",
        f"| per-response log-prob (nats), s.d. across responses {d['logprob_sd_fp32']:.1f} | | "
        f"| mean {d['logprob_mean']:+.3f}, mean abs {d['logprob_mean_abs']:.3f}, "
        f"max abs {d['logprob_max_abs']:.3f} |",
    ]
    for name, label in (("pmi_random", "random prompts"), ("pmi_same_question", "same question")):
        p = d[name]
        lines.append(
            f"| mean PMI, {label} (s.d. {p['sd_fp32']:.2f}) | {p['fp32']:.3f} | {p['bf16']:.3f} "
            f"| per response: mean abs {p['mean_abs_diff']:.3f} |"
        )
    lines.append(
        f"| multiple-choice accuracy ({d['choices']} questions) | {d['choice_acc_fp32']:.2f} "
        f"| {d['choice_acc_bf16']:.2f} | {d['choice_changed']} picks changed |"
    )
    lines.append(
        f"| DPO loss over {d['loss_steps']} steps | {', '.join(f'{x:.4f}' for x in d['loss_fp32'])} "
        f"| | max abs {d['loss_max_abs']:.4f} |"
    )
    return "\n".join(lines)


def conclusion(best: dict[str, dict[str, dict[str, Any]]], d: dict[str, Any]) -> str:
    speed = {w: best[w]["float32"]["seconds"] / best[w]["bfloat16"]["seconds"] for w in WORKLOADS}
    faster = [w for w in WORKLOADS if speed[w] >= 1.05]
    slower = [w for w in WORKLOADS if speed[w] <= 1 / 1.05]
    parts = []
    if faster:
        parts.append("bf16 is faster for " + ", ".join(f"{w} ({speed[w]:.2f}x)" for w in faster))
    if slower:
        parts.append("slower for " + ", ".join(f"{w} ({1 / speed[w]:.2f}x)" for w in slower))
    same = [w for w in WORKLOADS if w not in faster and w not in slower]
    if same:
        parts.append("within 5% for " + ", ".join(same))
    ratio = d["logprob_mean_abs"] / d["logprob_sd_fp32"] if d["logprob_sd_fp32"] else math.nan
    return (
        "In this run " + "; ".join(parts) + ". A response's log-prob moves by "
        f"{d['logprob_mean_abs']:.3f} nats on average in bf16, {ratio:.3f} of the spread between "
        f"responses; the mean same-question PMI moves from {d['pmi_same_question']['fp32']:.3f} "
        f"to {d['pmi_same_question']['bf16']:.3f}, and {d['choice_changed']} of "
        f"{d['choices']} multiple-choice picks change."
    )


def write_section(best: dict[str, Any], d: dict[str, Any], quick: bool, repeats: int) -> str:
    from mipo.models import bf16_is_fast, cpu_bf16_flags

    flags = ", ".join(sorted(cpu_bf16_flags())) or "no bf16 instructions"
    default = "bf16" if bf16_is_fast("cpu") else "fp32"
    block = "\n".join(
        [
            BEGIN,
            "Written by `benches/bench_dtype.py`"
            + (" --quick" if quick else "")
            + f": {cpu_name()} ({flags}), {os.cpu_count()} cores ({load_note()}); mipo's CPU default here: "
            f"{default}. The built-in SmolLM2-135M-Instruct, hf backend; each cell the best of "
            f"{repeats} fresh process(es) per precision, fp32 and bf16 alternating. Generation "
            "and scoring load the weights in the precision; training keeps fp32 weights under "
            "bf16 autocast (`TrainConfig.bf16`). The drift compares the same responses (generated "
            "in fp32) scored in both.",
            "",
            table(best),
            "",
            drift_table(d),
            "",
            conclusion(best, d),
            END,
        ]
    )
    replace_section(block, BEGIN, END, HEADING)
    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    parser.add_argument("--repeats", type=int, help="runs per workload and precision")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dtype, args.quick, args.work)))
        return
    repeats = args.repeats or (QUICK if args.quick else FULL)["repeats"]
    with tempfile.TemporaryDirectory(prefix="mipo-bench-dtype-") as tmp:
        best = compare(args.quick, repeats, Path(tmp))
    d = drift(best)
    print(table(best))
    print(drift_table(d))
    print(conclusion(best, d))
    if not args.no_write:
        write_section(best, d, args.quick, repeats)


if __name__ == "__main__":
    main()
