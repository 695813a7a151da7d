"""``mipo train`` and ``mipo accelerate-config``: click commands only (the work is in
:mod:`mipo.train`; heavy imports happen inside the commands)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from mipo.cli.fields import TRAIN, ConfigCommand, command_config, load


def _accelerate_names() -> str:
    return ", ".join(load("mipo.train.config:ACCELERATE_CONFIGS"))


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


def train_fields() -> list[click.Option]:
    """The options of the command's config fields (see :mod:`mipo.cli.fields`)."""
    return [
        *TRAIN.options(
            "model beta loss_type epochs max_steps learning_rate batch_size "
            "gradient_accumulation_steps max_length lora lora_r lora_alpha merge report_to "
            "seed resume overwrite allow_foreign_pairs trust_remote_code",
        ),
        click.Option(
            ["--verbose"],
            is_flag=True,
            help="Also show transformers/datasets/TRL progress bars and the trainer's log lines.",
        ),
    ]


@click.command(
    "train", cls=ConfigCommand, config="mipo.train.config:TrainConfig", fields=train_fields
)
@click.argument("pairs", type=click.Path(path_type=Path), required=False)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Output directory (model/, train_config.json, train_log.jsonl).",
)
@click.pass_context
def train_cmd(ctx: click.Context, pairs: Path | None, output: Path | None, **_: Any) -> None:
    """Train with DPO on PAIRS and save the model to OUTPUT.

    PAIRS: a build-pairs folder or its pairs.parquet, a .jsonl file (one prompt/chosen/rejected
    object per line), or a datasets folder saved with save_to_disk. Defaults are the paper's
    (full fine-tuning at lr 5e-7, beta 0.1, cosine to 10% with 3% warmup, Adam betas 0.9, 0.95).

    \b
    Several GPUs (DDP, DeepSpeed ZeRO-2/3, FSDP):
      accelerate launch --config_file "$(mipo accelerate-config ddp)" \\
          -m mipo train PAIRS -o OUTDIR
    """
    from mipo.errors import ConfigError
    from mipo.train import train

    config = command_config(ctx)
    if pairs is None or output is None:
        raise ConfigError("pass PAIRS and -o/--output (the pairs to train on, the output folder)")
    result = train(pairs, output, config, verbose=bool(ctx.params["verbose"]))
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
