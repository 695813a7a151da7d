"""``mipo train`` and ``mipo eval``. Only click is imported here; the stages import the rest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from mipo.cli_options import (
    EVAL,
    RUN,
    TRAIN,
    config_default,
    config_value,
    default_beside,
    given_options,
    learning_rate_default,
    output_option,
    pop_vllm_options,
    vllm_options,
)


def _accelerate_names() -> str:
    return ", ".join(config_value("mipo.train:ACCELERATE_CONFIGS"))


class _AccelerateConfigCommand(click.Command):
    """Lists the shipped configs in its --help (read from mipo.train when the help is shown)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        with formatter.indentation():
            formatter.write_paragraph()
            formatter.write_text(f"NAME is one of: {_accelerate_names()}.")


@click.command(
    "accelerate-config",
    cls=_AccelerateConfigCommand,
    short_help="Print the path of a shipped multi-GPU accelerate config.",
)
@click.argument("name")
def accelerate_config_cmd(name: str) -> None:
    """Print the path of the shipped accelerate config NAME, for `accelerate launch`.

    \b
    Example (several GPUs):
      accelerate launch --config_file "$(mipo accelerate-config ddp)" \\
          -m mipo train PAIRS -o OUTDIR
    """
    from mipo.train import accelerate_config_path

    click.echo(str(accelerate_config_path(name)))  # an unknown NAME: ConfigError, one line


def _print_accelerate_config(
    ctx: click.Context, _param: click.Parameter, value: str | None
) -> None:
    """Deprecated ``mipo train --print-accelerate-config NAME`` (now ``mipo accelerate-config``)."""
    if value is None or ctx.resilient_parsing:
        return
    click.echo(
        "warning: `mipo train --print-accelerate-config` is deprecated; use "
        "`mipo accelerate-config NAME`",
        err=True,
    )
    ctx.invoke(accelerate_config_cmd, name=value)
    ctx.exit(0)


@click.command("train")
@click.argument("pairs", type=click.Path(path_type=Path))
@output_option(
    "output",
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
@click.option("--beta", type=float, help="DPO beta", **config_default(TRAIN + ".beta"))
@click.option(
    "--loss-type",
    help="TRL DPO loss (comma-separate to combine)",
    **config_default(TRAIN + ".loss_type"),
)
@click.option(
    "--epochs", type=float, help="Passes over the pairs", **config_default(TRAIN + ".epochs")
)
@click.option("--max-steps", type=int, help="Stop after N optimizer steps (overrides --epochs).")
@click.option(
    "--learning-rate",
    "--lr",
    "learning_rate",
    type=float,
    help="Peak learning rate",
    **config_default(learning_rate_default),
)
@click.option(
    "--lr-scheduler",
    help="cosine_with_min_lr, cosine, linear, constant, ...",
    **config_default(TRAIN + ".lr_scheduler"),
)
@click.option(
    "--min-lr-ratio",
    type=float,
    help="Final lr / peak lr for cosine_with_min_lr",
    **config_default(TRAIN + ".min_lr_ratio"),
)
@click.option(
    "--warmup-ratio",
    type=float,
    help="Warmup fraction of the steps",
    **config_default(TRAIN + ".warmup_ratio"),
)
@click.option(
    "--batch-size",
    type=int,
    help="Pairs per device per step",
    **config_default(TRAIN + ".batch_size"),
)
@click.option(
    "--gradient-accumulation-steps",
    "--grad-accum",
    "gradient_accumulation_steps",
    type=int,
    help="Forward passes per optimizer step",
    **config_default(TRAIN + ".gradient_accumulation_steps"),
)
@click.option(
    "--max-length",
    type=int,
    help="Max prompt + response tokens",
    **config_default(TRAIN + ".max_length"),
)
@click.option("--lora/--no-lora", default=None, help="Train a LoRA adapter (PEFT).")
@click.option("--lora-r", type=int, help="LoRA rank", **config_default(TRAIN + ".lora_r"))
@click.option("--lora-alpha", type=int, help="LoRA alpha", **config_default(TRAIN + ".lora_alpha"))
@click.option(
    "--lora-dropout", type=float, help="LoRA dropout", **config_default(TRAIN + ".lora_dropout")
)
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
@click.option(
    "--logging-steps",
    type=int,
    help="Steps between log entries",
    **config_default(TRAIN + ".logging_steps"),
)
@click.option(
    "--save-steps",
    type=int,
    help="Steps between checkpoints",
    **config_default(TRAIN + ".save_steps"),
)
@click.option(
    "--keep-checkpoints/--no-keep-checkpoints",
    default=None,
    help="Keep OUTDIR/checkpoints after success.",
)
@click.option("--seed", type=int, help="Random seed", **config_default(TRAIN + ".seed"))
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
    "--verbose",
    is_flag=True,
    help="Also show transformers/datasets/TRL progress bars and the trainer's log lines.",
)
@click.option(
    "--print-accelerate-config",
    expose_value=False,
    is_eager=True,
    hidden=True,
    callback=_print_accelerate_config,
    help="Deprecated: `mipo accelerate-config NAME`.",
)
@click.pass_context
def train_cmd(
    ctx: click.Context, pairs: Path, output: Path, config_file: Path | None, **options: Any
) -> None:
    """Train with DPO on PAIRS and save the model to OUTPUT.

    PAIRS: a build-pairs folder or its pairs.parquet, a .jsonl file (one prompt/chosen/rejected
    object per line), or a datasets folder saved with save_to_disk.

    Paper defaults: beta 0.1, one epoch, full fine-tuning at lr 5e-7, cosine to 10% with 3%
    warmup, Adam betas (0.9, 0.95), batch 4, sigmoid loss on summed log-probs.

    \b
    Several GPUs (DDP, DeepSpeed ZeRO-2/3, FSDP):
      accelerate launch --config_file "$(mipo accelerate-config ddp)" \\
          -m mipo train PAIRS -o OUTDIR
    """
    from mipo.train import TrainConfig, train

    verbose = bool(options.pop("verbose"))
    overrides = given_options(ctx, options)
    config = (
        TrainConfig.from_yaml(config_file, **overrides) if config_file else TrainConfig(**overrides)
    )
    result = train(pairs, output, config, verbose=verbose)
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
@output_option(
    "output",
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
    "--judge-concurrency",
    type=int,
    help="Judge requests in flight.",
    **config_default(EVAL + ".judge_concurrency"),
)
@click.option(
    "--judge-timeout",
    "judge_timeout_s",
    type=float,
    help="Seconds per judge request before it is retried.",
    **config_default(EVAL + ".judge_timeout_s"),
)
@click.option(
    "-k",
    "--contrasts",
    "k",
    type=int,
    help="Contrast prompts per prompt and contrast set for PMI.",
    **config_default(EVAL + ".k"),
)
@click.option(
    "--seed",
    type=int,
    help="Seed of generation, contrast draws and bootstrap.",
    **config_default(EVAL + ".seed"),
)
@click.option(
    "--max-new-tokens",
    type=int,
    help="Most tokens per response to a PMI prompt (paper: 512; shorter than build-pairs' "
    "default, to keep evaluation quick).",
    **config_default(EVAL + ".max_new_tokens"),
)
@click.option(
    "--math-max-new-tokens",
    default=None,
    type=int,
    help="Most tokens per math solution  [default: 1024 (paper) on GPU, 512 on CPU]",
)
@click.option(
    "--math-shots",
    type=int,
    help="Worked examples before each math question (chain of thought); 0 = zero-shot.",
    **config_default(EVAL + ".math_shots"),
)
@click.option(
    "--math-fewshot",
    default=None,
    help="JSONL/Parquet/CSV of worked examples (question, answer ending '#### N')  [default: "
    "shipped 8]",
)
@click.option(
    "--temperature",
    type=float,
    help="Sampling temperature (paper: 0.1; 0 = greedy).",
    **config_default(EVAL + ".temperature"),
)
@click.option(
    "--top-p", type=float, help="Nucleus mass (paper: 0.9).", **config_default(EVAL + ".top_p")
)
@click.option(
    "--batch-size",
    type=int,
    help="Rows per forward pass when generating and scoring: speed and memory.",
    **config_default(
        default_beside(EVAL + ".batch_size", RUN + ".eval_batch_size", "mipo run --eval-batch-size")
    ),
)
@click.option("--limit", default=None, type=int, help="At most N rows of each file.")
@click.option(
    "--n-bootstrap",
    type=int,
    help="Bootstrap resamples per confidence interval.",
    **config_default(EVAL + ".n_bootstrap"),
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "hf", "vllm"]),
    help="Generation backend (auto: vLLM when usable — installed with a GPU, its CPU build, or "
    "through --vllm-python — else transformers).",
    **config_default(EVAL + ".backend"),
)
@click.option("--device", help="auto, cpu, cuda or cuda:N.", **config_default(EVAL + ".device"))
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16"]),
    help="Precision of generation and scoring (auto: bf16 on GPUs and AMX CPUs, else fp32).",
    **config_default(EVAL + ".dtype"),
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
@click.pass_context
def eval_cmd(ctx: click.Context, data: tuple[str, ...], output: Path, **options: Any) -> None:
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
    # Options not given keep EvalConfig's defaults (the ones --help shows).
    config = EvalConfig(data=list(data), vllm_options=vllm, **given_options(ctx, options))
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


COMMANDS: list[click.Command] = [train_cmd, eval_cmd, accelerate_config_cmd]
