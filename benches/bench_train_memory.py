"""Training memory and speed: ``mipo train`` against a plain TRL ``DPOTrainer`` script, side by side.

The pairs are built once with the built-in SmolLM2-135M-Instruct by ``mipo build-pairs`` from the
first 200 prompts of the bundled sample corpus at the demo's settings (64 new tokens, context-swap
negatives, truncated responses kept), into ``benches/out/train-memory/pairs`` (a rerun reuses them;
``--pairs`` names another build-pairs folder). Every side trains the same model with the same
LoRA (r 16, alpha 32, dropout 0.05, every linear layer), batch 8, max_length 384, lr 5e-4 and
seed, for one epoch over the first ``steps x 8`` pairs (so ``steps`` steps), each run in a fresh
process, the sides alternating run by run:

- **mipo**: ``mipo train`` with the demo's training options (``DEMO_TRAIN``) and its defaults;
- **mipo, previous defaults**: the same with TRL's fused LM head (``chunked_logprobs: false``),
  no gradient checkpointing and the reference scored at every step: mipo's training before it
  stopped materialising the logits;
- **plain TRL**: :data:`PLAIN_SCRIPT`, the ~20 lines a TRL user writes, with TRL's defaults for
  everything the settings above do not name (on a machine without a GPU TRL asks for
  ``use_cpu=True``, which trains under bf16 autocast; gradient checkpointing is on by default).

Reported per side: the peak RSS of the whole process (``ru_maxrss`` from ``wait4``; the worst run),
TRL's ``train_steps_per_second`` (the training loop only; best run) and the process's wall time
(imports, loading, tokenization and, for mipo, the reference log-probs scored before the loop;
best run). Then, once, the demo's whole training (``mipo train`` with ``DEMO_TRAIN`` on all the
pairs: two epochs) and a check that the reference log-probs mipo scores once equal those TRL
scores at every step (same batches, on the real model in the training precision).
The section goes into ``benches/RESULTS.md`` between ``<!-- train-memory:begin -->`` and
``<!-- train-memory:end -->``.

Run:  python benches/bench_train_memory.py [--quick] [--no-write] [--pairs DIR] [--no-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from results_md import cpu_name, load_note, replace_section

HERE = Path(__file__).resolve().parent
WORK = HERE / "out" / "train-memory"
QUICK = {"steps": 2, "repeats": 1}
FULL = {"steps": 10, "repeats": 2}
CORPUS_PROMPTS = 200  # the demo trains on at most 200 prompts (DEMO_SETTINGS["max_prompts"])
GB = 1e9  # the 3 GB target, in bytes
TARGET_BYTES = 3 * GB
BEGIN, END = "<!-- train-memory:begin -->", "<!-- train-memory:end -->"
HEADING = "## Training memory: mipo train vs a plain TRL script"
SIDES = ("mipo", "before", "plain")
LABELS = {
    "mipo": "mipo train",
    "before": "mipo train, previous defaults",
    "plain": "plain TRL script",
}
PREVIOUS_DEFAULTS = {
    "chunked_logprobs": False,
    "gradient_checkpointing": False,
    "precompute_ref_log_probs": False,
}

PLAIN_SCRIPT = """\
import json
import sys

from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

pairs, model, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
dataset = Dataset.from_parquet(pairs).select_columns(["prompt", "chosen", "rejected"])
args = DPOConfig(
    output_dir=out, per_device_train_batch_size=8, max_length=384, learning_rate=5e-4,
    num_train_epochs=1, seed=seed, use_cpu=True, save_strategy="no", report_to="none",
)
lora = LoraConfig(
    r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
)
trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora)
result = trainer.train()
print(json.dumps({**result.metrics, "global_steps": trainer.state.global_step}))
"""


# --- the pairs -------------------------------------------------------------------------------------


def build_pairs(folder: Path) -> Path:
    """The demo's pairs from the first 200 sample-corpus prompts (built once, then reused)."""
    from mipo.synth import SAMPLE_CORPUS_PATH

    if (folder / "pairs.parquet").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    corpus = folder.parent / "corpus.jsonl"
    lines = Path(SAMPLE_CORPUS_PATH).read_text(encoding="utf-8").splitlines(keepends=True)
    corpus.write_text("".join(lines[:CORPUS_PROMPTS]), encoding="utf-8")
    print(f"building pairs in {folder} (once)", file=sys.stderr)
    cmd = [sys.executable, "-m", "mipo", "build-pairs", str(corpus), "-o", str(folder)]
    cmd += ["--generation-max-new-tokens", "64", "--negatives", "context-swap", "--keep-truncated"]
    subprocess.run([*cmd, "--generation-backend", "hf", "--no-progress"], check=True)
    return folder


def subset(pairs_dir: Path, n: int, dest: Path) -> Path:
    """The first ``n`` pairs as a build-pairs folder of their own (pairs.parquet + run.json)."""
    import polars as pl

    dest.mkdir(parents=True, exist_ok=True)
    df = pl.read_parquet(pairs_dir / "pairs.parquet")
    if df.height < n:
        raise SystemExit(f"bench_train_memory: {pairs_dir} has {df.height} pairs, need {n}")
    df.head(n).write_parquet(dest / "pairs.parquet")
    shutil.copy(pairs_dir / "run.json", dest / "run.json")
    return dest


# --- one run in a fresh process --------------------------------------------------------------------


def _run(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Run ``cmd``; its wall seconds, peak RSS in bytes (the child's own ru_maxrss) and status."""
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss * 1024.0, proc.returncode


def _mipo_cmd(pairs: Path, out: Path, options: dict[str, Any]) -> list[str]:
    config = out.with_suffix(".yaml")
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in options.items()))
    return [
        sys.executable,
        "-m",
        "mipo",
        "train",
        str(pairs),
        "-o",
        str(out),
        "--config",
        str(config),
    ]


def run_side(side: str, pairs: Path, work: Path, run: int) -> dict[str, Any]:
    from mipo.models import builtin_model_dir
    from mipo.run.pipeline import DEMO_TRAIN

    out = work / f"{side}-{run}"
    shutil.rmtree(out, ignore_errors=True)
    log = work / f"{side}-{run}.log"
    options = {**DEMO_TRAIN, "epochs": 1.0, "overwrite": True}
    if side == "plain":
        script = work / "plain_dpo.py"
        script.write_text(PLAIN_SCRIPT, encoding="utf-8")
        seed = str(options.get("seed", 0))
        cmd = [sys.executable, str(script), str(pairs / "pairs.parquet"), str(builtin_model_dir())]
        cmd += [str(out), seed]
    elif side == "demo":
        cmd = _mipo_cmd(pairs, out, {**DEMO_TRAIN, "overwrite": True})
    else:
        cmd = _mipo_cmd(pairs, out, {**options, **(PREVIOUS_DEFAULTS if side == "before" else {})})
    wall, rss, code = _run(cmd, log)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"bench_train_memory: the {side} run failed ({code}):\n{tail}")
    if side == "plain":
        metrics = json.loads(log.read_text(encoding="utf-8").strip().splitlines()[-1])
        steps, bf16 = metrics["global_steps"], None
    else:
        record = json.loads((out / "train_config.json").read_text(encoding="utf-8"))
        metrics = record["metrics"]
        steps, bf16 = record["resolved"]["global_steps"], record["resolved"]["bf16"]
    shutil.rmtree(out, ignore_errors=True)  # the adapters are not needed
    result = {
        "side": side,
        "wall_s": wall,
        "rss": rss,
        "steps": steps,
        "steps_per_s": metrics["train_steps_per_second"],
        "loop_s": metrics["train_runtime"],
        "bf16": bf16,
    }
    print(
        f"  {side} #{run}: {steps} steps, {result['steps_per_s']:.3f} steps/s in the loop, "
        f"{wall:.0f} s in all, peak RSS {rss / 2**20:.0f} MiB",
        file=sys.stderr,
    )
    return result


# --- the reference log-probs: scored once vs at every step -----------------------------------------


def check_precompute(pairs: Path) -> dict[str, Any]:
    """Reference log-probs as ``precompute_ref_log_probs`` stores them against those TRL scores at
    each step, batch by batch, on the real model in mipo's training precision (run in a child)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--check-child", str(pairs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench_train_memory: the precompute check failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_child(pairs: Path) -> dict[str, Any]:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from mipo.models import builtin_model_dir
    from mipo.run.pipeline import DEMO_TRAIN
    from mipo.train import TrainConfig, read_pairs
    from mipo.train.trainer import _dpo_args, _dpo_trainer_class, _lora_config

    config = TrainConfig(**DEMO_TRAIN)
    model = builtin_model_dir()
    with tempfile.TemporaryDirectory(prefix="mipo-bench-precompute-") as tmp:
        args = _dpo_args(config, Path(tmp))
        trainer = _dpo_trainer_class(config)(
            model=str(model),
            args=args,
            train_dataset=Dataset.from_polars(read_pairs(pairs)),
            processing_class=AutoTokenizer.from_pretrained(model),
            peft_config=_lora_config(config),
        )
        diffs, values = [], []
        for batch in trainer.get_train_dataloader():
            inputs = trainer._prepare_inputs(batch)
            chosen, rejected = trainer.compute_ref_log_probs(trainer.model, inputs)
            for now, stored in ((chosen, "ref_chosen_logps"), (rejected, "ref_rejected_logps")):
                diffs.append((now.float() - inputs[stored].float()).abs())
                values.append(inputs[stored].float())
        diff, value = torch.cat(diffs), torch.cat(values)
    return {
        "responses": int(diff.numel()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "logprob_sd": float(value.std()),
        "bf16": bool(args.bf16),
    }


# --- the section ---------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        if mine:
            out[side] = {
                "runs": len(mine),
                "rss": max(r["rss"] for r in mine),
                "steps_per_s": max(r["steps_per_s"] for r in mine),
                "wall_s": min(r["wall_s"] for r in mine),
                "steps": mine[0]["steps"],
                "bf16": mine[0]["bf16"],
            }
    return out


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| side | runs | peak RSS, worst run (MiB) | training loop, best run (steps/s) "
        "| whole process, best run (s) |",
        "|---|---|---|---|---|",
    ]
    for side, s in summary.items():
        lines.append(
            f"| {LABELS[side]} | {s['runs']} | {_mib(s['rss'])} | {s['steps_per_s']:.3f} "
            f"| {s['wall_s']:.0f} |"
        )
    m, p = summary["mipo"], summary["plain"]
    lines.append(
        f"| mipo / plain | | {m['rss'] / p['rss']:.2f} | {m['steps_per_s'] / p['steps_per_s']:.2f} "
        f"| {m['wall_s'] / p['wall_s']:.2f} |"
    )
    return "\n".join(lines)


def conclusions(
    summary: dict[str, dict[str, Any]], demo: dict[str, Any] | None, check: dict[str, Any]
) -> list[str]:
    m, p = summary["mipo"], summary["plain"]
    rss_ratio = m["rss"] / p["rss"]
    speed = m["steps_per_s"] / p["steps_per_s"]
    whole = p["wall_s"] / m["wall_s"]
    out = []
    if rss_ratio <= 0.5:
        mem = f"at most half the plain script's, as targeted ({rss_ratio:.2f}x)"
    else:
        over = m["rss"] - 0.5 * p["rss"]
        mem = f"{rss_ratio:.2f}x the plain script's: {_mib(over)} MiB over the target of half"
    if speed >= 1:
        fast = f"{speed:.2f}x the plain script's steps/s in the training loop (target >= 1: met)"
    else:
        fast = (
            f"{speed:.2f}x the plain script's steps/s in the training loop: "
            f"{(1 - speed) * 100:.0f}% short of the target of at least as fast"
        )
    out.append(
        f"In this run mipo's peak RSS was {mem}; it ran {fast}; the whole process, loading and "
        f"mipo's one-off reference scoring included, took {1 / whole:.2f}x the plain script's "
        f"time ({whole:.2f}x as fast)."
    )
    if "before" in summary:
        b = summary["before"]
        out.append(
            f"Against mipo's previous defaults, its peak RSS is {m['rss'] / b['rss']:.2f}x "
            f"({_mib(b['rss'])} -> {_mib(m['rss'])} MiB) at {m['steps_per_s'] / b['steps_per_s']:.2f}x "
            "their loop speed."
        )
    if demo is not None:
        verdict = (
            "within the 3 GB target"
            if demo["rss"] <= TARGET_BYTES
            else f"{(demo['rss'] - TARGET_BYTES) / 2**20:,.0f} MiB over the 3 GB target"
        )
        out.append(
            f"The demo's whole training ({demo['pairs']} pairs, {demo['steps']} steps over two "
            f"epochs, `mipo train` in its own process) peaked at {_mib(demo['rss'])} MiB "
            f"({demo['rss'] / GB:.2f} GB, {verdict}) and took {demo['wall_s']:.0f} s in all "
            f"({demo['loop_s']:.0f} s in the training loop)."
        )
    out.append(
        f"Reference log-probs scored once before training and those TRL scores at each step differ "
        f"by at most {check['max_abs_diff']:.2g} nats (mean {check['mean_abs_diff']:.2g}) over "
        f"{check['responses']} responses whose log-probs spread with s.d. "
        f"{check['logprob_sd']:.1f} nats ({'bf16 autocast' if check['bf16'] else 'fp32'})."
    )
    return out


def write_section(
    summary: dict[str, dict[str, Any]],
    demo: dict[str, Any] | None,
    check: dict[str, Any],
    quick: bool,
    pairs: int,
) -> str:
    from mipo.models import cpu_bf16_flags

    flags = ", ".join(sorted(cpu_bf16_flags())) or "no bf16 instructions"
    bf16 = summary["mipo"]["bf16"]
    block = "\n".join(
        [
            BEGIN,
            "Written by `benches/bench_train_memory.py`"
            + (" --quick" if quick else "")
            + f": {cpu_name()} ({flags}), {os.cpu_count()} cores ({load_note()}); mipo trained in "
            + ("bf16 autocast" if bf16 else "fp32")
            + ", as did the plain script (TRL's `use_cpu=True` default on a machine without a GPU "
            "is bf16 autocast). The built-in SmolLM2-135M-Instruct, LoRA r 16 on every linear "
            f"layer, batch 8, max_length 384, one epoch over {pairs} demo pairs "
            f"({summary['mipo']['steps']} steps) per run, each run a fresh process, the sides "
            "alternating. *mipo train*: the demo's options and mipo's defaults (response-only "
            "log-probs in bounded chunks, gradient checkpointing, reference scored once); "
            "*previous defaults*: TRL's fused LM head, no checkpointing, reference scored at every "
            "step; *plain TRL script*: `PLAIN_SCRIPT` in the bench, TRL's defaults otherwise "
            "(gradient checkpointing on). Peak RSS: the process's `ru_maxrss`; steps/s: TRL's "
            "`train_steps_per_second` (the training loop only).",
            "",
            table(summary),
            "",
            *[line + "\n" for line in conclusions(summary, demo, check)],
            END,
        ]
    )
    replace_section(block, BEGIN, END, HEADING)
    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 run per side, no demo")
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo's whole training")
    parser.add_argument("--no-before", action="store_true", help="skip the previous defaults")
    parser.add_argument("--pairs", type=Path, help="a build-pairs folder to train on")
    parser.add_argument("--steps", type=int, help="steps per comparison run")
    parser.add_argument("--repeats", type=int, help="runs per side")
    parser.add_argument("--check-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check_child:
        print(json.dumps(check_child(args.check_child)))
        return
    settings = {**(QUICK if args.quick else FULL)}
    settings["steps"] = args.steps or settings["steps"]
    settings["repeats"] = args.repeats or settings["repeats"]
    pairs_dir = args.pairs or build_pairs(WORK / "pairs")
    work = WORK / "runs"
    work.mkdir(parents=True, exist_ok=True)
    n = settings["steps"] * 8
    pairs = subset(pairs_dir, n, work / f"pairs-{n}")
    sides = [s for s in SIDES if not (s == "before" and args.no_before)]

    runs = []
    for run in range(settings["repeats"]):
        order = sides if run % 2 == 0 else sides[::-1]
        for side in order:
            runs.append(run_side(side, pairs, work, run))
    summary = summarize(runs)
    check = check_precompute(pairs)
    demo = None
    if not (args.quick or args.no_demo):
        import polars as pl

        demo = run_side("demo", pairs_dir, work, 0)
        demo["pairs"] = pl.read_parquet(pairs_dir / "pairs.parquet").height
    print(table(summary))
    for line in conclusions(summary, demo, check):
        print(line)
    if not args.no_write:
        write_section(summary, demo, check, args.quick, n)


if __name__ == "__main__":
    main()
