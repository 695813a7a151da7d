"""``mipo train`` and ``mipo eval``. Only click is imported here; the stages import the rest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from mipo.cli_options import pop_vllm_options, vllm_options

_ACCELERATE_NAMES = ("ddp", "zero2", "zero3", "fsdp")


def _print_accelerate_config(
    ctx: click.Context, _param: click.Parameter, value: str | None
) -> None:
    if value is None or ctx.resilient_parsing:
        return
    from mipo.train import accelerate_config_path

    click.echo(str(accelerate_config_path(value)))
    ctx.exit(0)


def _explicit(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Only the options the user actually gave (so a --config file's values are not overridden
    by click defaults)."""
    out = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT",):
            out[name] = value
    return out


@click.command("train")
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output directory (model/, train_config.json, train_log.jsonl).",
)
@click.option(
    "--model",
    default=None,
    help="Model to train (= the frozen reference). Default: the model that generated "
    "the pairs (run.json beside them).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML file of options (field names of TrainConfig); command-line flags win.",
)
@click.option("--beta", type=float, help="DPO beta  [default: 0.1]")
@click.option("--loss-type", help="TRL DPO loss (comma-separate to combine)  [default: sigmoid]")
@click.option("--epochs", type=float, help="Passes over the pairs  [default: 1]")
@click.option("--max-steps", type=int, help="Stop after N optimizer steps (overrides --epochs).")
@click.option(
    "--learning-rate",
    "--lr",
    "learning_rate",
    type=float,
    help="Peak learning rate  [default: 5e-7, or 5e-5 with --lora]",
)
@click.option(
    "--lr-scheduler",
    help="cosine_with_min_lr, cosine, linear, constant, ...  [default: cosine_with_min_lr]",
)
@click.option(
    "--min-lr-ratio", type=float, help="Final lr / peak lr for cosine_with_min_lr  [default: 0.1]"
)
@click.option("--warmup-ratio", type=float, help="Warmup fraction of the steps  [default: 0.03]")
@click.option("--batch-size", type=int, help="Pairs per device per step  [default: 4]")
@click.option(
    "--gradient-accumulation-steps",
    "--grad-accum",
    "gradient_accumulation_steps",
    type=int,
    help="Forward passes per optimizer step  [default: 1]",
)
@click.option("--max-length", type=int, help="Max prompt + response tokens  [default: 1024]")
@click.option("--lora/--no-lora", default=None, help="Train a LoRA adapter (PEFT).")
@click.option("--lora-r", type=int, help="LoRA rank  [default: 16]")
@click.option("--lora-alpha", type=int, help="LoRA alpha  [default: 32]")
@click.option("--lora-dropout", type=float, help="LoRA dropout  [default: 0.05]")
@click.option("--lora-target-modules", help="'all-linear' or comma-separated module names.")
@click.option("--merge/--no-merge", default=None, help="With --lora, also save OUTDIR/merged.")
@click.option(
    "--precompute-ref-log-probs/--no-precompute-ref-log-probs",
    default=None,
    help="Score the reference once before training (saves memory).",
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=None,
    help="Recompute activations: less memory, slower.",
)
@click.option("--bf16/--no-bf16", default=None, help="bf16 mixed precision  [default: on GPU]")
@click.option("--report-to", type=click.Choice(["none", "tensorboard"]), help="Extra logging.")
@click.option("--logging-steps", type=int, help="Steps between log entries  [default: 1]")
@click.option("--save-steps", type=int, help="Steps between checkpoints  [default: 500]")
@click.option(
    "--keep-checkpoints/--no-keep-checkpoints",
    default=None,
    help="Keep OUTDIR/checkpoints after success.",
)
@click.option("--seed", type=int, help="Random seed  [default: 0]")
@click.option("--resume", is_flag=True, default=None, help="Continue from the last checkpoint.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing run in OUTDIR.")
@click.option(
    "--allow-foreign-pairs",
    is_flag=True,
    default=None,
    help="Train even if the pairs come from a model with another tokenizer.",
)
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow model code.")
@click.option(
    "--print-accelerate-config",
    type=click.Choice(_ACCELERATE_NAMES),
    expose_value=False,
    is_eager=True,
    callback=_print_accelerate_config,
    help="Print the path of a shipped accelerate config and exit.",
)
@click.pass_context
def train_cmd(
    ctx: click.Context, pairs: Path, output: Path, config_file: Path | None, **options: Any
) -> None:
    """Train with DPO on PAIRS (pairs.parquet from build-pairs) and save the model to OUTPUT.

    Paper defaults: beta 0.1, one epoch, full fine-tuning at lr 5e-7, cosine to 10% with 3%
    warmup, Adam betas (0.9, 0.95), batch 4, sigmoid loss on summed log-probs.

    \b
    Several GPUs (DDP, DeepSpeed ZeRO-2/3, FSDP):
      accelerate launch --config_file $(mipo train x -o x --print-accelerate-config ddp) \\
          -m mipo train PAIRS -o OUTDIR
    """
    from mipo.train import TrainConfig, train

    overrides = _explicit(ctx, options)
    config = (
        TrainConfig.from_yaml(config_file, **overrides) if config_file else TrainConfig(**overrides)
    )
    result = train(pairs, output, config)
    if os.environ.get("RANK", "0") != "0":  # under accelerate/torchrun only rank 0 reports
        return
    final: dict[str, Any] = next(
        (e for e in reversed(_log_entries(result.log_path)) if "loss" in e), {}
    )
    click.echo(
        f"trained on {result.num_pairs} pairs: {result.global_steps} steps in "
        f"{result.train_runtime_s:.1f}s"
    )
    if final:
        click.echo(
            f"final loss {final.get('loss', float('nan')):.4f}, reward margin "
            f"{final.get('rewards/margins', float('nan')):.4f}, reward accuracy "
            f"{final.get('rewards/accuracies', float('nan')):.2f}"
        )
    click.echo(f"model: {result.model_dir}")
    if result.merged_dir:
        click.echo(f"merged model: {result.merged_dir}")
    click.echo(f"log: {result.log_path}")


def _log_entries(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@click.command("eval")
@click.argument("data", nargs=-1, required=True)
@click.option(
    "--model", required=True, help="Model to evaluate (folder, train OUTDIR, adapter, name)."
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output directory (report.md, report.html, metrics.json, plots).",
)
@click.option(
    "--reference",
    default=None,
    help="Reference model for PMI  [default: the model --model was trained from]",
)
@click.option("--compare", default=None, help="Baseline model, same prompts and seeds.")
@click.option(
    "--judge",
    default=None,
    help="Judge model for the personalization win rate (needs --compare)  [default: none]",
)
@click.option(
    "--judge-url",
    default=None,
    help="OpenAI-compatible API base of a judge server (http://host:port/v1); key from "
    "$MIPO_JUDGE_API_KEY (else $OPENAI_API_KEY).",
)
@click.option(
    "--judge-model", default=None, help="The served judge model's name (with --judge-url)."
)
@click.option(
    "--judge-concurrency", default=8, show_default=True, type=int, help="Judge requests in flight."
)
@click.option(
    "--judge-timeout",
    "judge_timeout_s",
    default=60.0,
    show_default=True,
    type=float,
    help="Seconds per judge request before it is retried.",
)
@click.option(
    "-k",
    "--contrasts",
    "k",
    default=8,
    show_default=True,
    type=int,
    help="Contrast prompts per prompt and contrast set for PMI.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of generation, contrast draws and bootstrap.",
)
@click.option(
    "--max-new-tokens",
    default=256,
    show_default=True,
    type=int,
    help="Most tokens per response to a PMI prompt (paper: 512).",
)
@click.option(
    "--math-max-new-tokens",
    default=None,
    type=int,
    help="Most tokens per math solution  [default: 1024 (paper) on GPU, 512 on CPU]",
)
@click.option(
    "--math-shots",
    default=8,
    show_default=True,
    type=int,
    help="Worked examples before each math question (chain of thought); 0 = zero-shot.",
)
@click.option(
    "--math-fewshot",
    default=None,
    help="JSONL/Parquet/CSV of worked examples (question, answer ending '#### N')  [default: "
    "shipped 8]",
)
@click.option(
    "--temperature",
    default=0.1,
    show_default=True,
    type=float,
    help="Sampling temperature (paper: 0.1; 0 = greedy).",
)
@click.option(
    "--top-p", default=0.9, show_default=True, type=float, help="Nucleus mass (paper: 0.9)."
)
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=int,
    help="Rows per forward pass when generating and scoring.",
)
@click.option("--limit", default=None, type=int, help="At most N rows of each file.")
@click.option(
    "--n-bootstrap",
    default=2000,
    show_default=True,
    type=int,
    help="Bootstrap resamples per confidence interval.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "hf", "vllm"]),
    default="auto",
    show_default=True,
    help="Generation backend (auto: vLLM when usable — installed with a GPU, its CPU build, or "
    "through --vllm-python — else transformers).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16"]),
    default="auto",
    show_default=True,
    help="Precision of generation and scoring (auto: bf16 on GPUs and AMX CPUs, else fp32).",
)
@vllm_options
@click.option(
    "--cache-dir",
    default=None,
    help="Reuse per-model results across evaluations (a sweep scores its baseline once).",
)
@click.option(
    "--train-log", default=None, help="train_log.jsonl to plot  [default: the model's own]"
)
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
@click.option("--trust-remote-code", is_flag=True, help="Allow models that ship Python code.")
def eval_cmd(data: tuple[str, ...], output: Path, **options: Any) -> None:
    """Evaluate a model on DATA files: PMI, multiple choice, math, judged win rate.

    \b
    DATA kinds (detected from columns, or prefixed kind:path):
      pmi     held-out prompts (question/context/user_id, or messages)
      choice  JSONL with question, choices, answer
      math    JSONL with question, answer ('... #### N'); asked 8-shot chain of
              thought by default (--math-shots)
    """
    from mipo.evaluate import EvalConfig, run_eval
    from mipo.evaluate.report import fmt_ci

    vllm = pop_vllm_options(options)
    config = EvalConfig(
        data=list(data),
        vllm_options=vllm,
        **options,
    )
    result = run_eval(config, output)
    m = result.metrics
    for name, stats in m["pmi"].items():
        for key, label in (
            ("pmi_same_question", "same question, other users"),
            ("pmi_random", "random"),
        ):
            if key not in stats["model"]:
                continue
            line = f"PMI {name} ({label}): model {fmt_ci(stats['model'][key])}"
            if "difference" in stats:
                line += f", model − baseline {fmt_ci(stats['difference'][key])}"
            click.echo(line)
        for finding in stats.get("findings", []):
            click.echo(f"  {finding}")
    for section in ("multiple_choice", "math"):
        for name, stats in m[section].items():
            line = (
                f"{section.replace('_', ' ')} {name}: accuracy {fmt_ci(stats['model']['accuracy'])}"
            )
            if "baseline" in stats:
                line += f" (baseline {fmt_ci(stats['baseline']['accuracy'])})"
            click.echo(line)
    for name, stats in m["judge"].items():
        line = (
            f"judge {name}: win rate {stats['win_rate_ties_as_wins']:.3f} (ties as wins), "
            f"{stats['win_rate_ties_as_half']:.3f} (ties as half)"
        )
        if "unparsed" in stats:
            line += f"; unparsed replies {sum(stats['unparsed'].values())}"
        click.echo(line)
    click.echo(f"report: {result.report_md}")


COMMANDS: list[click.Command] = [train_cmd, eval_cmd]
