"""``mipo run``: click command only (the work is in :mod:`mipo.run`; heavy imports happen inside
the command)."""

from __future__ import annotations

from typing import Any

import click

from mipo.cli._options import quiet_model_bars
from mipo.cli.fields import (
    EVAL_GENERATION,
    GENERATION,
    RUN,
    TRAIN,
    ConfigCommand,
    command_config,
)


def run_fields() -> list[click.Option]:
    """The options of the command's config fields (see :mod:`mipo.cli.fields`)."""
    return [
        click.Option(
            ["--recipe"],
            help="A shipped recipe's settings (mipo recipes lists them); --config, --set and "
            "flags override it.",
        ),
        click.Option(["--demo"], is_flag=True, help="= --recipe demo (what make demo runs)."),
        # --seed is the training's too (RunConfig does not pass its seed on to train).
        *RUN.options(
            "model rounds eval_fraction max_prompts seed negatives keep_truncated",
            also={"seed": ["train.seed"]},
        ),
        *GENERATION.options("max_new_tokens batch_size", at="generation"),
        *TRAIN.options("lora learning_rate beta epochs max_steps batch_size", at="train"),
        *EVAL_GENERATION.options("batch_size", at="eval_generation"),
        *RUN.options("eval_k overwrite"),
        click.Option(
            ["--verbose"], is_flag=True, help="Also show transformers' model loading bars."
        ),
    ]


@click.command("run", cls=ConfigCommand, config="mipo.run.config:RunConfig", fields=run_fields)
@click.argument("corpus", required=False, metavar="[CORPUS]")
@click.option("-o", "--output", "out_dir", help="Output folder (a rerun continues).")
@click.pass_context
def run_cmd(ctx: click.Context, corpus: str | None, out_dir: str | None, **_: Any) -> None:
    """Build pairs, train and evaluate in one command, for one or more rounds.

    CORPUS is a prompt corpus as build-pairs reads it. A share of it (whole users) is held out;
    each round builds pairs with the previous round's model, trains from it, and evaluates it
    against the base model on the held-out prompts. A rerun skips finished stages. Writes
    OUTDIR/report.md, report.html and metrics.json.

    \b
    Examples:
      mipo run --demo -o demo-out
      mipo run --recipe paper-personalization corpus.jsonl -o out
      mipo run corpus.jsonl -o out --lora --generation-max-new-tokens 128 --rounds 2
    """
    from mipo.errors import ConfigError
    from mipo.run import run_pipeline
    from mipo.run.recipes import load_recipe

    demo, recipe = ctx.params["demo"], ctx.params["recipe"]
    if demo and recipe not in (None, "demo"):
        raise ConfigError(f"--demo is --recipe demo: pass --demo or --recipe {recipe}, not both")
    name = "demo" if demo else recipe
    given = {k: v for k, v in (("corpus", corpus), ("out_dir", out_dir)) if v is not None}
    config = command_config(
        ctx,
        given=given,
        base=load_recipe(name).config if name else None,
        required={
            "corpus": "CORPUS (or --demo, the bundled sample corpus)",
            "out_dir": "-o/--output",
        },
    )
    with quiet_model_bars(ctx.params["verbose"]):
        result = run_pipeline(config, log=lambda line: click.echo(line, err=True))
    _print_summary(result)


def _print_summary(result: Any) -> None:
    from mipo.evaluate.report import fmt_ci

    for entry in result.metrics["rounds"]:
        for key, label in (
            ("pmi_same_question", "same-question PMI (personalization)"),
            ("pmi_random", "random-contrast PMI"),
        ):
            if not entry["pmi"].get(key):
                continue
            line = f"round {entry['round']}: held-out {label} {fmt_ci(entry['pmi'].get(key))}"
            line += f", − base {fmt_ci(entry['vs_base'].get(key))}"
            click.echo(line)
        judge = entry.get("judge")
        if judge:
            click.echo(
                f"round {entry['round']}: judged win rate (ties as half) "
                f"{judge['win_rate_ties_as_half']:.3f}"
            )
        for finding in entry.get("findings", []):
            click.echo(f"  {finding}")
    for key, label in (("pmi_same_question", "same-question"), ("pmi_random", "random-contrast")):
        base = result.metrics["base"]["pmi"].get(key)
        if base:
            click.echo(f"base model: held-out {label} PMI {fmt_ci(base)}")
    headline = result.metrics.get("personalization")
    if headline:
        above = "above 0" if headline["gain_above_zero"] else "not above 0"
        click.echo(
            f"personalization: same-question PMI gain {fmt_ci(headline['gain'])} nats "
            f"(95% cluster-bootstrap interval {above}; metrics.json: personalization)"
        )
    last = result.metrics["rounds"][-1] if result.metrics["rounds"] else {}
    if headline and last.get("reader_criteria"):
        missed = [name for name, met in last["reader_criteria"].items() if not met]
        click.echo(
            "would a reader call it personal? persona adoption (speaks as the user) "
            f"{fmt_ci(headline.get('persona_baseline'))} -> {fmt_ci(headline.get('persona_model'))}"
            f", fluency {fmt_ci(headline.get('logprob_per_token_change'))} nats/token, adjusted "
            f"gain {fmt_ci((headline.get('adjusted_gain') or {}).get('all'))}: "
            + ("all criteria met" if not missed else "misses " + "; ".join(missed))
        )
    seconds = result.metrics["total_stage_seconds"]
    click.echo(f"time: {seconds / 60:.1f} min over all stages")
    click.echo(f"report: {result.report_md} (and {result.report_html.name}, metrics.json)")


@click.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes (mipo run --recipe NAME; --print-config shows one in full)."""
    from mipo.run.recipes import load_recipe, recipe_names

    for name in recipe_names():
        recipe = load_recipe(name)
        click.echo(f"{name}\n  {recipe.description}")


COMMANDS: list[click.Command] = [run_cmd, recipes_cmd]
