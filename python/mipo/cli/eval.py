"""``mipo eval``: click command only (the work is in :mod:`mipo.evaluate`; heavy imports happen
inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mipo.cli._options import quiet_model_bars
from mipo.cli.fields import EVAL, EVAL_GENERATION, ConfigCommand, command_config


def eval_fields() -> list[click.Option]:
    """The options of the command's config fields (see :mod:`mipo.cli.fields`)."""
    return [
        *EVAL.options(
            "model reference compare judge judge_url judge_model context_format k seed "
            "limit n_bootstrap cache_dir overwrite trust_remote_code",
        ),
        *EVAL_GENERATION.options("max_new_tokens batch_size backend dtype device", at="generation"),
        click.Option(["--no-progress"], is_flag=True, help="No progress display."),
        click.Option(
            ["--verbose"], is_flag=True, help="Also show transformers' model loading bars."
        ),
    ]


@click.command(
    "eval", cls=ConfigCommand, config="mipo.evaluate.config:EvalConfig", fields=eval_fields
)
@click.argument("data", nargs=-1)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Output directory (report.md, report.html, metrics.json, plots).",
)
@click.pass_context
def eval_cmd(ctx: click.Context, data: tuple[str, ...], output: Path | None, **_: Any) -> None:
    """Evaluate a model on DATA files: PMI, multiple choice, math, judged win rate.

    \b
    DATA kinds (detected from columns, or prefixed kind:path):
      pmi     held-out prompts (question/context/user_id, or messages)
      choice  JSONL with question, choices, answer
      math    JSONL with question, answer ('... #### N'); asked 8-shot chain of
              thought by default (--set math_shots=N)
    """
    from mipo.errors import ConfigError
    from mipo.evaluate import run_eval
    from mipo.evaluate.report import fmt_ci
    from mipo.progress import off

    config = command_config(
        ctx,
        given={"data": list(data)} if data else None,
        required={"data": "DATA", "model": "--model"},
    )
    if output is None:
        raise ConfigError("pass -o/--output: the folder the report is written to")
    with quiet_model_bars(ctx.params["verbose"]), off(ctx.params["no_progress"]):
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


COMMANDS: list[click.Command] = [eval_cmd]
