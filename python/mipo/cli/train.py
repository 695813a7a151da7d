"""``mipo train`` and ``mipo accelerate-config``: click commands only (the work is in
:mod:`mipo.train`; heavy imports happen inside the commands)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from mipo.cli._options import (
    TRAIN,
    config_default,
    config_file_options,
    config_value,
    epochs_default,
    given_options,
    learning_rate_default,
    output_option,
    resolve_config,
)


def _accelerate_names() -> str:
    return ", ".join(config_value("mipo.train.config:ACCELERATE_CONFIGS"))


class _AccelerateConfigCommand(click.Command):
    """Lists the shipped configs in its --help (read from mipo.train.config when the help is shown)."""

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
@click.argument("pairs", type=click.Path(path_type=Path), required=False)
@output_option(
    "output",
    type=click.Path(path_type=Path),
    required=False,
    help="Output directory (model/, train_config.json, train_log.jsonl).",
)
@config_file_options
@click.option(
    "--model",
    default=None,
    help="Model to train (= the frozen reference). Default: the model that generated "
    "the pairs (run.json beside them).",
)
@click.option("--beta", type=float, help="DPO beta", **config_default(TRAIN + ".beta"))
@click.option(
    "--loss-type",
    help="TRL DPO loss (comma-separate to combine)",
    **config_default(TRAIN + ".loss_type"),
)
@click.option(
    "--loss-weights",
    help="Weights of the --loss-type terms, comma-separated (sigmoid,sft with 1,0.5)",
)
@click.option(
    "--epochs", type=float, help="Passes over the pairs", **config_default(epochs_default)
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
    ctx: click.Context,
    pairs: Path | None,
    output: Path | None,
    config_file: str | None,
    print_config: bool,
    **options: Any,
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
    from mipo.errors import ConfigError
    from mipo.train import TrainConfig, train

    verbose = bool(options.pop("verbose"))
    overrides = given_options(ctx, options)
    config = resolve_config(TrainConfig, config_file, overrides, print_config=print_config)
    if pairs is None or output is None:
        raise ConfigError("pass PAIRS and -o/--output (the pairs to train on, the output folder)")
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


COMMANDS: list[click.Command] = [train_cmd, accelerate_config_cmd]
