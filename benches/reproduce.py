"""A mini reproduction and sweep of MIPO on the CPU with the built-in SmolLM2-135M-Instruct.

Training prompts: a synthetic personalization corpus (``mipo.synth``, no planted duplicates);
held-out prompts: ``synth_eval`` (users and questions never used in training). Each configuration
is one ``mipo run`` (build-pairs -> train -> eval against the base model) and reports MIPO − base
on every evaluation: held-out PMI for the three contrasts (same question with other users'
contexts — personalization —, random prompts, context dropped; log-mean-exp, cluster-bootstrap
intervals), the shortcut controls (copying, context words, length, fluency, and the gain with
them regressed out), the bundled multiple-choice and math samples, and the wall time. The table
and the verdict (computed from the numbers) go into ``benches/RESULTS.md`` under "Mini
reproduction" (that section is replaced on rerun; other sections are kept); ``results.json`` in
the work folder keeps every number and the best configuration.

Every sweep flag takes several values and the script runs their cross product (by default
strategy x learning rate x beta: 4 x 3 x 2 = 24 LoRA configurations). Pairs depend only on the
generation settings (negatives, temperature), so they are built once per strategy; the base
model's evaluation is the same in every configuration, so it is scored once (``--eval-cache``).
An interrupted sweep resumes where it stopped.

    python benches/reproduce.py                                  # the full sweep (hours)
    python benches/reproduce.py --quick                          # a smoke-sized run (minutes)
    python benches/reproduce.py --negatives context-swap --learning-rate 5e-4 --beta 0.1
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
from dataclasses import replace
from pathlib import Path
from typing import Any

from results_md import cpu_name, replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
HEADING = "## Mini reproduction"
BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"
DATA = HERE.parent / "python" / "mipo" / "data" / "eval"


def _markers(args: argparse.Namespace) -> tuple[str, str, str]:
    """(begin, end, heading) of the RESULTS.md section this invocation writes: the main one,
    or with ``--section NAME`` a follow-up of its own (so a later, smaller grid does not
    replace the table of an earlier one whose runs are no longer on disk)."""
    if not args.section:
        return BEGIN, END, HEADING
    tag = f"reproduce-{args.section}"
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->", f"{HEADING}: {args.section}"


def _learning_rate(text: str) -> float | None:
    return None if text == "default" else float(text)


def _negatives(text: str) -> str:
    from mipo.pairs.negatives import parse_strategy

    return parse_strategy(text)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-prompts", type=int, default=200, help="synthetic training prompts")
    p.add_argument("--eval-prompts", type=int, default=96, help="held-out prompts")
    p.add_argument("--users-per-question", type=int, default=4, help="held-out users per question")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per response")
    p.add_argument("--contrasts", type=int, default=8, help="contrast prompts per PMI estimate")
    p.add_argument("--rounds", type=int, default=1, help="rounds of iterated MIPO")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-finetune", action="store_true", help="all weights (paper) not LoRA")
    p.add_argument("--batch-size", type=int, default=4, help="training pairs per step (paper: 4)")
    p.add_argument("--judge", default="none", help="judge model (none; auto: the base model)")
    p.add_argument("--no-extra-evals", action="store_true", help="skip the choice/math samples")
    sweep = p.add_argument_group("sweep (each takes one or more values; the cross product runs)")
    sweep.add_argument("--beta", type=float, nargs="+", default=[0.1, 0.5])
    sweep.add_argument(
        "--learning-rate",
        type=_learning_rate,
        nargs="+",
        default=[1e-4, 2e-4, 5e-4],
        help="numbers, or 'default' (mipo train's own)",
    )
    sweep.add_argument("--epochs", type=float, nargs="+", default=[1.0])
    sweep.add_argument(
        "--negatives",
        nargs="+",
        type=_negatives,
        default=["random", "context-drop", "context-swap", "random,context-swap"],
        help="strategies or comma-separated lists of them",
    )
    sweep.add_argument("--temperature", type=float, nargs="+", default=[0.1])
    sweep.add_argument(
        "--context-format",
        nargs="+",
        default=["user-turn"],
        help="where the user's context enters the prompt (mipo.prompt_format): names or templates",
    )
    sweep.add_argument(
        "--drop-persona",
        type=int,
        nargs="+",
        choices=(0, 1),
        default=[0],
        help="1: drop pairs whose chosen answer speaks as the user (build-pairs --drop-persona)",
    )
    sweep.add_argument(
        "--sft-weight",
        type=float,
        nargs="+",
        default=[0.0],
        help="weight of an NLL term on the chosen answer beside DPO's sigmoid loss (0: DPO only; "
        "w > 0: loss_type sigmoid,sft with weights 1,w — the RPO recipe)",
    )
    p.add_argument(
        "--base-formats",
        nargs="*",
        default=[],
        help="also evaluate the base model alone under each of these prompt formats on the "
        "held-out prompts (no training): the format table's rows for formats no run used",
    )
    p.add_argument("--out", type=Path, default=HERE / "reproduce-out", help="work folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    p.add_argument(
        "--section",
        default="",
        help="write a RESULTS.md section of this name (a follow-up grid) instead of the main one",
    )
    p.add_argument(
        "--finished-only",
        action="store_true",
        help="tabulate the configurations of the grid that an earlier invocation finished, run "
        "nothing new; the table names the ones left out",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.train_prompts, args.eval_prompts, args.max_new_tokens = 48, 16, 32
        args.contrasts = 2
        args.learning_rate, args.beta = args.learning_rate[:1], args.beta[:1]
        args.negatives = args.negatives[-1:]
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


SWEEP_KEYS = (
    "beta",
    "learning_rate",
    "epochs",
    "negatives",
    "temperature",
    "context_format",
    "sft_weight",
    "drop_persona",
)
"""The sweep flags, in the order of the cross product and of the labels."""


def _label(combo: dict[str, Any]) -> str:
    lr = combo["learning_rate"]
    label = (
        f"beta={combo['beta']:g} lr={'default' if lr is None else f'{lr:g}'} "
        f"epochs={combo['epochs']:g} neg={combo['negatives']} T={combo['temperature']:g}"
    )
    # Labels (and so run folders) of the grids run before these flags existed stay the same.
    if combo.get("context_format", "raw-system") != "raw-system":
        label += f" fmt={combo['context_format']}"
    if combo.get("sft_weight"):
        label += f" sft={combo['sft_weight']:g}"
    if combo.get("drop_persona"):
        label += " drop-persona"
    return label


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)


def _run_one(
    args: argparse.Namespace, train: Path, held: Path, combo: dict[str, Any], pairs_cache: dict
) -> dict[str, Any]:
    from mipo.corpus import ColumnOptions
    from mipo.evaluate.config import eval_generation
    from mipo.generate import GenerationConfig
    from mipo.run import RunConfig, run_pipeline
    from mipo.train import TrainConfig

    label = _label(combo)
    out = args.out / "runs" / _slug(label)
    key = (
        combo["negatives"],
        combo["temperature"],
        combo["context_format"],
        combo["drop_persona"],
    )
    cached = pairs_cache.get(key)
    target = out / "round-1" / "pairs"
    reused = cached is not None  # this configuration trains on an earlier one's pairs
    train_options: dict[str, Any] = {
        "lora": not args.full_finetune,
        "beta": combo["beta"],
        "epochs": combo["epochs"],
        "batch_size": args.batch_size,
        "max_length": 512,
        "seed": args.seed,
    }
    if combo["sft_weight"]:
        train_options["loss_type"] = "sigmoid,sft"
        train_options["loss_weights"] = f"1,{combo['sft_weight']:g}"
    if combo["learning_rate"] is not None:
        train_options["learning_rate"] = combo["learning_rate"]
    extra = () if args.no_extra_evals else (
        f"choice:{DATA / 'choice_sample.jsonl'}",
        f"math:{DATA / 'math_sample.jsonl'}",
    )  # fmt: skip
    config = RunConfig(
        corpus=str(train),
        out_dir=out,
        columns=ColumnOptions(context_format=combo["context_format"]),
        rounds=args.rounds,
        eval_data=str(held),
        seed=args.seed,
        negatives=combo["negatives"],
        # The pairs' and the evaluation's generation: hf, the same length and temperature.
        generation=GenerationConfig(
            backend="hf", max_new_tokens=args.max_new_tokens, temperature=combo["temperature"]
        ),
        eval_generation=replace(
            eval_generation(),
            backend="hf",
            max_new_tokens=args.max_new_tokens,
            temperature=combo["temperature"],
        ),
        keep_truncated=True,  # short responses on a CPU budget: a cut answer is still an answer
        drop_persona=bool(combo["drop_persona"]),
        train=TrainConfig(**train_options),
        eval_k=args.contrasts,
        judge=args.judge,
        extra_eval_data=extra,
        math_max_new_tokens=max(args.max_new_tokens, 128),
        progress=False,
        # Pairs depend on the generation settings only: reuse them across training sweeps
        # (build-pairs checks that they match this configuration).
        reuse_pairs=None if cached is None else str(cached),
        # The base model's evaluation is the same in every configuration: score it once.
        eval_cache=str(args.out / "eval-cache"),
    )
    finished = (out / "metrics.json").is_file()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    result = run_pipeline(config, log=lambda line: print(f"[{label}] {line}", file=sys.stderr))
    wall = time.perf_counter() - started
    pairs_cache.setdefault(key, target)
    return {
        "label": label,
        "combo": combo,
        "wall_s": wall,
        "reused_pairs": reused,
        "metrics": result.metrics,
        "out": str(out),
        # 1-minute load average at the start and end (None when an earlier invocation ran it).
        "load": None if finished else [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _finished(args: argparse.Namespace, combo: dict[str, Any]) -> dict[str, Any]:
    """A finished configuration's result as :func:`_run_one` returns it, read from its folder."""
    label = _label(combo)
    out = args.out / "runs" / _slug(label)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return {
        "label": label,
        "combo": combo,
        "wall_s": metrics.get("total_stage_seconds", 0.0),
        "reused_pairs": bool(record.get("options", {}).get("reuse_pairs")),
        "metrics": metrics,
        "out": str(out),
        "load": None,
    }


def _ci(stat: dict[str, Any] | None, digits: int = 1) -> str:
    if not stat or not stat.get("n", 1) or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def _above(stat: dict[str, Any] | None) -> bool:
    return bool(stat and stat.get("n", 1) and stat.get("low") is not None and stat["low"] > 0)


def _below(stat: dict[str, Any] | None) -> bool:
    return bool(stat and stat.get("n", 1) and stat.get("high") is not None and stat["high"] < 0)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one configuration the table and the verdict use."""
    from mipo.evaluate.sections import reader_criteria

    m = result["metrics"]
    last = m["rounds"][-1]
    vs = last["vs_base"]
    headline = last.get("personalization") or {}
    accuracy = {}
    for name, stats in last["accuracy"].items():
        accuracy[name] = {
            "base": stats.get("baseline", {}).get("accuracy"),
            "model": stats.get("model", {}).get("accuracy"),
            "difference": stats.get("difference", {}).get("accuracy"),
        }
    adjusted = (headline.get("adjusted_gain") or {}).get("all")
    reasoning_lost = [name for name, a in accuracy.items() if _below(a["difference"])]
    gain = vs.get("pmi_same_question")
    clean = _above(gain) and not headline.get("explained_by") and not reasoning_lost
    fluency = headline.get("logprob_per_token_change")
    persona = vs.get("persona")
    criteria = last.get("reader_criteria") or reader_criteria(
        headline, [a["difference"] for a in accuracy.values()]
    )
    return {
        "combo": result.get("combo", {}),
        "criteria": criteria,
        "meets_all": all(criteria.values()),
        "persona": persona,
        "persona_base": last.get("base_pmi", {}).get("persona"),
        "persona_model": last.get("pmi", {}).get("persona"),
        "base": {
            key: last.get("base_pmi", {}).get(key)
            for key in ("pmi_same_question", "persona", "logprob_per_token", "copy_share")
        },
        "label": result["label"],
        "pairs": last["train"].get("pairs"),
        "same_question": gain,
        "adjusted_all": adjusted,
        "explained_by": headline.get("explained_by", []),
        "random": vs.get("pmi_random"),
        "context_drop": vs.get("pmi_context_drop"),
        "copy_share": vs.get("copy_share"),
        "context_words": vs.get("context_words"),
        "fluency": fluency,
        "length": headline.get("length_change"),
        "accuracy": accuracy,
        "reasoning_lost": reasoning_lost,
        "reward_accuracy": last["train"].get("mean_reward_accuracy"),
        "minutes": m.get("total_stage_seconds", result["wall_s"]) / 60,
        "reused_pairs": result["reused_pairs"],
        "load": result.get("load"),
        "clean": clean,
    }


def default_choice(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    """The configuration to ship and whether it meets every criterion of :func:`summarize`:
    among those that meet all, the highest lower bound of the adjusted gain; else, among those
    without persona adoption, the one that meets the most criteria (then the highest adjusted
    lower bound); None when every configuration adopts the persona."""

    def low(r: dict[str, Any]) -> float:
        adjusted = r.get("adjusted_all") or {}
        return adjusted.get("low") if adjusted.get("low") is not None else float("-inf")

    meets = [r for r in rows if r["meets_all"]]
    if meets:
        return max(meets, key=low), True
    from mipo.evaluate.sections import PERSONA_MARGIN

    persona_key = f"persona adoption <= baseline + {PERSONA_MARGIN:g}"
    candidates = [r for r in rows if r["criteria"][persona_key]]
    if not candidates:
        return None, False
    return max(candidates, key=lambda r: (sum(r["criteria"].values()), low(r))), False


def best_configuration(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The configuration whose same-question gain has the highest lower 95% bound among those
    whose gain is above 0, not explained by a shortcut, and that lose no reasoning accuracy."""
    clean = [r for r in rows if r["clean"]]
    if not clean:
        return None
    return max(clean, key=lambda r: r["same_question"]["low"])


def _precision(bf16: bool, amx: bool) -> str:
    if not bf16:
        return "fp32"
    return "bf16 on AMX" if amx else "bf16 on AVX-512 BF16"


def render(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    elapsed: float,
    argv: list[str] | None = None,
    alone: dict[str, dict[str, Any]] | None = None,
) -> str:
    import shlex

    import torch

    from mipo.models import bf16_is_fast, cpu_has_amx_bf16

    command = shlex.join(
        ["python", "benches/reproduce.py", *(sys.argv[1:] if argv is None else argv)]
    )
    rows = [summarize(r) for r in results]
    loads = [r["load"] for r in rows if r["load"]]
    begin, end, _ = _markers(args)
    lines = [
        begin,
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} "
        f"cores ({torch.get_num_threads()} torch threads, "
        f"{_precision(bf16_is_fast('cpu'), cpu_has_amx_bf16())}, CPU {cpu_name()}), Python "
        f"{platform.python_version()}; this invocation's wall time {elapsed / 60:.1f} min (a "
        "configuration finished by an earlier invocation is resumed, and keeps the stage times it "
        "was measured with)"
        + (
            f"; 1-minute load average while configurations ran: "
            f"{min(min(x) for x in loads):.1f}–{max(max(x) for x in loads):.1f}"
            if loads
            else ""
        )
        + f"{' (--quick: smoke-sized, not a measurement of the method)' if args.quick else ''}.",
        "",
        f"Command: `{command}`",
        "",
        f"Built-in SmolLM2-135M-Instruct; {args.train_prompts} synthetic training prompts "
        f"(`mipo synth`), {args.eval_prompts} held-out prompts (`synth_eval`: users and questions "
        f"never seen in training, {args.users_per_question} users per question); "
        f"{'full fine-tuning' if args.full_finetune else 'LoRA'}, batch {args.batch_size}, "
        f"{args.rounds} round(s), {args.max_new_tokens} new tokens per response (truncated pairs "
        f"kept). PMI: log-mean-exp estimate with k = {args.contrasts} contrasts under the base "
        "model; Δ = MIPO − base, paired by prompt; cells are mean [95% CI], cluster bootstrap "
        "over users crossed with questions. 'same question' asks each held-out question with "
        "other users' contexts (personalization); 'adjusted' is that gain with the changes in "
        "copying, context words, length and fluency regressed out (see docs/train-eval.md); "
        "'context words' is the change in the share of response content words found in the "
        "context; 'fluency' the change in log π_base(y|x) per token. Choice and math: accuracy "
        "change on the bundled 20-question samples. 'persona' (and the adjustment for it) is "
        "the verdict of `mipo.evaluate.controls.speaks_as_user` recorded when each run was "
        "evaluated; `benches/recount_persona.py` re-counts the stored answers under the current "
        "rule (section *Persona adoption under the tightened rule*).",
        "",
        "| configuration | pairs | Δ PMI same question | adjusted | Δ PMI random "
        "| Δ PMI context drop | Δ context words | Δ persona | Δ fluency | Δ choice acc "
        "| Δ math acc | reward acc | wall (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = {k: _ci(v["difference"], 2) for k, v in r["accuracy"].items()}
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"] + (" ✓" if r["clean"] else ""),
                    str(r["pairs"]),
                    _ci(r["same_question"]),
                    _ci(r["adjusted_all"]),
                    _ci(r["random"]),
                    _ci(r["context_drop"]),
                    _ci(r["context_words"], 3),
                    _ci(r["persona"], 2),
                    _ci(r["fluency"], 2),
                    acc.get("choice_sample", "–"),
                    acc.get("math_sample", "–"),
                    "–" if r["reward_accuracy"] is None else f"{r['reward_accuracy']:.2f}",
                    f"{r['minutes']:.1f}" + (" (pairs reused)" if r["reused_pairs"] else ""),
                ]
            )
            + " |"
        )
    lines += ["", *_format_table(rows, alone), "", *_verdict(rows), end]
    return "\n".join(lines)


def _base_alone(args: argparse.Namespace, held: Path, fmt: str) -> dict[str, Any]:
    """The base model's PMI-section statistics under prompt format ``fmt`` (``mipo eval`` of
    the base alone on the held-out prompts, with the runs' evaluation settings; cached)."""
    from mipo.evaluate import EvalConfig, run_eval
    from mipo.evaluate.config import eval_generation

    config = EvalConfig(
        model="smollm2-135m",
        data=[f"pmi:{held}"],
        context_format=fmt,
        k=args.contrasts,
        seed=args.seed,
        generation=replace(eval_generation(), max_new_tokens=args.max_new_tokens),
        overwrite=True,
        cache_dir=str(args.out / "eval-cache"),
    )
    metrics = run_eval(config, args.out / "base-alone" / _slug(fmt)).metrics
    (stats,) = metrics["pmi"].values()
    return stats["model"]


def _format_table(
    rows: list[dict[str, Any]], alone: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """The base model under each prompt format: from the runs of the grid (its numbers in every
    run that used the format are the same evaluation, read from the first), then the formats
    evaluated alone (``--base-formats``)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault(r["combo"].get("context_format", "raw-system"), r["base"])
    for fmt, stats in (alone or {}).items():
        seen.setdefault(fmt, stats)
    if not seen:
        return []
    out = [
        "The base model under each prompt format (where the user's context enters the prompt, "
        "`--context-format`), on the same held-out prompts: same-question PMI, share of "
        "responses that speak as the user (persona adoption, `mipo.evaluate.controls`), "
        "log π_base(y|x) per token (fluency) and 3-gram copy share.",
        "",
        "| context format | PMI same question | persona adoption | log π per token | copy share |",
        "|---|---|---|---|---|",
    ]
    for name, base in seen.items():
        out.append(
            f"| {name} | {_ci(base.get('pmi_same_question'))} | {_ci(base.get('persona'), 2)} "
            f"| {_ci(base.get('logprob_per_token'), 2)} | {_ci(base.get('copy_share'), 3)} |"
        )
    return out


def _verdict(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences computed from the numbers of the table."""
    out = []
    raised = [r for r in rows if _above(r["same_question"])]
    explained = [r for r in raised if r["explained_by"]]
    lost = [r for r in raised if r["reasoning_lost"]]
    out.append(
        f"Same-question PMI (personalization) rose with a 95% interval above 0 in {len(raised)} "
        f"of {len(rows)} configurations"
        + (f" ({'; '.join(r['label'] for r in raised)})" if raised else "")
        + "."
    )
    for r in explained:
        out.append(
            f"- {r['label']}: the gain is explained by {', '.join(r['explained_by'])} (its "
            "adjusted interval includes 0)."
        )
    for r in lost:
        out.append(f"- {r['label']}: accuracy fell on {', '.join(r['reasoning_lost'])}.")
    fluency = [r["label"] for r in raised if _below(r["fluency"])]
    if fluency:
        out.append(
            "Responses became less likely under the base model per token (fluency, interval "
            f"below 0) in: {'; '.join(fluency)}."
        )
    choice, meets = default_choice(rows)
    names = list(rows[0]["criteria"]) if rows else []
    if rows:
        out.append(
            "The issue's four criteria for a default ("
            + "; ".join(names)
            + f"): met by {sum(r['meets_all'] for r in rows)} of {len(rows)} configurations."
        )
    if choice is not None:
        missed = [name for name, ok in choice["criteria"].items() if not ok]
        out.append(
            f"{'Chosen' if meets else 'Closest without persona adoption'}: {choice['label']} "
            f"(Δ same question {_ci(choice['same_question'])}, adjusted "
            f"{_ci(choice['adjusted_all'])}, Δ fluency {_ci(choice['fluency'], 2)}, Δ persona "
            f"{_ci(choice['persona'], 2)})"
            + (f"; it misses: {', '.join(missed)}." if missed else ".")
        )
    else:
        out.append("Every configuration raised persona adoption by more than the margin.")
    best = best_configuration(rows)
    if best is None:
        out.append(
            "No configuration raised same-question PMI with the gain surviving every shortcut "
            "check and no loss of reasoning accuracy: nothing here qualifies as a default."
        )
    else:
        out.append(
            f"Best configuration (highest lower bound of the same-question gain among those "
            f"marked ✓: above 0, not explained by a shortcut, no accuracy lost): {best['label']}, "
            f"Δ {_ci(best['same_question'])} nats, adjusted {_ci(best['adjusted_all'])}."
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.perf_counter()
    train, held = _data(args)
    combos = [
        dict(zip(SWEEP_KEYS, values, strict=True))
        for values in itertools.product(*(getattr(args, key) for key in SWEEP_KEYS))
    ]
    skipped = []
    if args.finished_only:
        done = [
            c for c in combos if (args.out / "runs" / _slug(_label(c)) / "metrics.json").is_file()
        ]
        skipped = [_label(c) for c in combos if c not in done]
        combos = done
        if not combos:
            raise SystemExit("reproduce: no configuration of this grid has finished yet")
    pairs_cache: dict[Any, Path] = {}
    if args.finished_only:  # read back, run nothing (the options of a later version may differ)
        results = [_finished(args, combo) for combo in combos]
    else:
        results = [_run_one(args, train, held, combo, pairs_cache) for combo in combos]
    alone = {fmt: _base_alone(args, held, fmt) for fmt in args.base_formats}
    block = render(args, results, time.perf_counter() - started, argv, alone)
    if skipped:
        note = f"\nNot run (the grid was cut to fit the session's time): {'; '.join(skipped)}.\n"
        end = _markers(args)[1]
        block = block.replace(f"\n{end}", f"{note}\n{end}")
    print(block)
    (args.out / "results.json").write_text(
        json.dumps(
            {"summary": [summarize(r) for r in results],
             "best": best_configuration([summarize(r) for r in results]),
             "runs": [{k: v for k, v in r.items() if k != "metrics"}
                      | {"rounds": r["metrics"]["rounds"]} for r in results]},
            indent=2, default=str,
        )
    )  # fmt: skip
    if not args.no_write:
        replace_section(block, *_markers(args))
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
