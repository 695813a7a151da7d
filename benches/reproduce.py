"""A mini reproduction of MIPO on the CPU with the built-in SmolLM2-135M-Instruct.

Training prompts: a synthetic personalization corpus (``mipo.synth``, no planted duplicates);
held-out prompts: ``synth_eval`` (questions never used in training corpora, each asked by several
fresh users, so the "same question, other users" PMI isolates the user's context). Each
configuration is one ``mipo run`` (build-pairs -> train -> eval against the base model) and
reports base vs MIPO on every evaluation: held-out PMI (random and same-question contrasts),
the judged personalization win rate, and the bundled multiple-choice and math samples, all with
95% bootstrap intervals, plus the wall time. The table goes into ``benches/RESULTS.md`` under
"Mini reproduction" (that section is replaced on rerun; other sections are kept).

Every flag of the sweep takes several values; the script runs their cross product, reusing the
pairs of a configuration whose generation settings (negatives, temperature) match an earlier one,
so sweeping training options (beta, learning rate, epochs) costs training and evaluation only.

    python benches/reproduce.py                                  # one configuration (~1 hour)
    python benches/reproduce.py --quick                          # a smoke-sized run (minutes)
    python benches/reproduce.py --beta 0.1 0.5 --learning-rate 5e-5 2e-4 --negatives random both
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from results_md import replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
HEADING = "## Mini reproduction"
BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"
DATA = HERE.parent / "python" / "mipo" / "data" / "eval"


def _learning_rate(text: str) -> float | None:
    return None if text == "default" else float(text)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-prompts", type=int, default=300, help="synthetic training prompts")
    p.add_argument("--eval-prompts", type=int, default=96, help="held-out prompts")
    p.add_argument("--users-per-question", type=int, default=4, help="held-out users per question")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens per response")
    p.add_argument("--contrasts", type=int, default=4, help="contrast prompts per PMI estimate")
    p.add_argument("--rounds", type=int, default=1, help="rounds of iterated MIPO")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-finetune", action="store_true", help="all weights (paper) not LoRA")
    p.add_argument("--batch-size", type=int, default=8, help="training pairs per step")
    p.add_argument("--judge", default="auto", help="judge model (auto: the base model; none)")
    p.add_argument("--no-extra-evals", action="store_true", help="skip the choice/math samples")
    sweep = p.add_argument_group("sweep (each takes one or more values; the cross product runs)")
    sweep.add_argument("--beta", type=float, nargs="+", default=[0.1])
    sweep.add_argument(
        "--learning-rate",
        type=_learning_rate,
        nargs="+",
        default=[None],
        help="a number, or 'default' (mipo train's: 5e-5 LoRA, 5e-7 full)",
    )
    sweep.add_argument("--epochs", type=float, nargs="+", default=[1.0])
    sweep.add_argument(
        "--negatives", nargs="+", default=["random"], choices=["random", "context-drop", "both"]
    )
    sweep.add_argument("--temperature", type=float, nargs="+", default=[0.1])
    p.add_argument("--out", type=Path, default=HERE / "reproduce-out", help="work folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.train_prompts, args.eval_prompts, args.max_new_tokens = 48, 16, 32
        args.contrasts = 2
    return args


def _data(args: argparse.Namespace) -> tuple[Path, Path]:
    from mipo.synth import synth_eval, synth_frame

    folder = args.out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{args.train_prompts}-{args.eval_prompts}-{args.users_per_question}-{args.seed}"
    train, held = folder / f"train-{tag}.parquet", folder / f"eval-{tag}.parquet"
    if not train.is_file():
        frame = synth_frame(
            rows=args.train_prompts, seed=args.seed, exact_dup_rate=0.0, near_dup_rate=0.0
        )
        frame.select("id", "user_id", "context", "question").write_parquet(train)
    if not held.is_file():
        synth_eval(
            args.eval_prompts, seed=args.seed, users_per_question=args.users_per_question
        ).write_parquet(held)
    return train, held


def _label(combo: dict[str, Any]) -> str:
    lr = combo["learning_rate"]
    return (
        f"beta={combo['beta']:g} lr={'default' if lr is None else f'{lr:g}'} "
        f"epochs={combo['epochs']:g} neg={combo['negatives']} T={combo['temperature']:g}"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)


def _run_one(
    args: argparse.Namespace, train: Path, held: Path, combo: dict[str, Any], pairs_cache: dict
) -> dict[str, Any]:
    from mipo.run import RunConfig, run_pipeline
    from mipo.train import TrainConfig

    label = _label(combo)
    out = args.out / "runs" / _slug(label)
    key = (combo["negatives"], combo["temperature"])
    cached = pairs_cache.get(key)
    target = out / "round-1" / "pairs"
    reused = cached is not None  # this configuration trains on an earlier one's pairs
    train_options: dict[str, Any] = {
        "lora": not args.full_finetune,
        "beta": combo["beta"],
        "epochs": combo["epochs"],
        "batch_size": args.batch_size,
        "max_length": 1024,
        "seed": args.seed,
    }
    if combo["learning_rate"] is not None:
        train_options["learning_rate"] = combo["learning_rate"]
    extra = () if args.no_extra_evals else (
        f"choice:{DATA / 'choice_sample.jsonl'}",
        f"math:{DATA / 'math_sample.jsonl'}",
    )  # fmt: skip
    config = RunConfig(
        corpus=str(train),
        out_dir=out,
        rounds=args.rounds,
        eval_data=str(held),
        seed=args.seed,
        negatives=combo["negatives"],
        backend="hf",
        max_new_tokens=args.max_new_tokens,
        temperature=combo["temperature"],
        keep_truncated=True,  # short responses on a CPU budget: a cut answer is still an answer
        train=TrainConfig(**train_options),
        eval_k=args.contrasts,
        judge=args.judge,
        extra_eval_data=extra,
        math_max_new_tokens=max(args.max_new_tokens, 128),
        progress=False,
        # Pairs depend on the generation settings only: reuse them across training sweeps
        # (build-pairs checks that they match this configuration).
        reuse_pairs=None if cached is None else str(cached),
    )
    started = time.perf_counter()
    result = run_pipeline(config, log=lambda line: print(f"[{label}] {line}", file=sys.stderr))
    wall = time.perf_counter() - started
    pairs_cache.setdefault(key, target)
    return {
        "label": label,
        "wall_s": wall,
        "reused_pairs": reused,
        "metrics": result.metrics,
        "out": str(out),
    }


def _ci(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if not stat or not stat.get("n"):
        return "–"
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def render(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    elapsed: float,
    argv: list[str] | None = None,
) -> str:
    import shlex

    import torch

    command = shlex.join(
        ["python", "benches/reproduce.py", *(sys.argv[1:] if argv is None else argv)]
    )

    lines = [
        BEGIN,
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} "
        f"cores ({torch.get_num_threads()} torch threads), Python {platform.python_version()}; "
        f"this invocation's wall time {elapsed / 60:.1f} min (a configuration finished by an "
        "earlier invocation is resumed, and keeps the stage times it was measured with)"
        f"{' (--quick: smoke-sized, not a measurement of the method)' if args.quick else ''}.",
        "",
        f"Command: `{command}`",
        "",
        f"Built-in SmolLM2-135M-Instruct; {args.train_prompts} synthetic training prompts "
        f"(`mipo synth`), {args.eval_prompts} held-out prompts (`synth_eval`, "
        f"{args.users_per_question} users per question, questions unseen in training); "
        f"{'full fine-tuning' if args.full_finetune else 'LoRA'}, {args.rounds} round(s), "
        f"{args.max_new_tokens} new tokens per response (truncated pairs kept), PMI with "
        f"k = {args.contrasts} contrasts under the base model. Cells: mean [95% bootstrap CI]; "
        "differences are paired by prompt. Win rate: judge = the base model, ties as half.",
        "",
        "| configuration | pairs | PMI base | PMI MIPO | Δ PMI random | Δ PMI same question "
        "| win rate | choice acc base → MIPO | math acc base → MIPO | reward acc (train) "
        "| wall (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["metrics"]
        last = m["rounds"][-1]
        judge = last.get("judge") or {}
        acc = {}
        for name, stats in last["accuracy"].items():
            acc[name] = (
                f"{_ci(stats.get('baseline', {}).get('accuracy'))} → "
                f"{_ci(stats.get('model', {}).get('accuracy'))}"
            )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    str(last["train"].get("pairs")),
                    _ci(m["base"]["pmi"].get("pmi_random")),
                    _ci(last["pmi"].get("pmi_random")),
                    _ci(last["vs_base"].get("pmi_random")),
                    _ci(last["vs_base"].get("pmi_same_question")),
                    _ci(judge.get("win_rate_ties_as_half_ci")),
                    acc.get("choice_sample", "–"),
                    acc.get("math_sample", "–"),
                    "–"
                    if last["train"].get("mean_reward_accuracy") is None
                    else f"{last['train']['mean_reward_accuracy']:.2f}",
                    f"{m.get('total_stage_seconds', r['wall_s']) / 60:.1f}"
                    + (" (pairs reused)" if r["reused_pairs"] else ""),
                ]
            )
            + " |"
        )
    lines += ["", _verdict(results), END]
    return "\n".join(lines)


def _verdict(results: list[dict[str, Any]]) -> str:
    raised = []
    for r in results:
        diff = r["metrics"]["rounds"][-1]["vs_base"].get("pmi_random") or {}
        if diff.get("n") and diff["low"] > 0:
            raised.append(r["label"])
    if raised:
        return (
            "MIPO raised held-out PMI (random contrasts; 95% interval above 0) in: "
            + "; ".join(raised)
            + "."
        )
    return (
        "In no configuration did MIPO raise held-out PMI detectably (every 95% interval of the "
        "difference reaches 0 or below). Sweep --beta, --learning-rate, --epochs, --negatives and "
        "--temperature to investigate."
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.perf_counter()
    train, held = _data(args)
    combos = [
        dict(zip(("beta", "learning_rate", "epochs", "negatives", "temperature"), values, strict=True))
        for values in itertools.product(
            args.beta, args.learning_rate, args.epochs, args.negatives, args.temperature
        )
    ]  # fmt: skip
    pairs_cache: dict[Any, Path] = {}
    results = [_run_one(args, train, held, combo, pairs_cache) for combo in combos]
    block = render(args, results, time.perf_counter() - started, argv)
    print(block)
    (args.out / "results.json").write_text(
        json.dumps(
            [{k: v for k, v in r.items() if k != "metrics"} | {"rounds": r["metrics"]["rounds"]}
             for r in results], indent=2, default=str,
        )
    )  # fmt: skip
    if not args.no_write:
        replace_section(block, BEGIN, END, HEADING)
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
