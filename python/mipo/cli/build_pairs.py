"""``mipo build-pairs`` and ``mipo merge``: click commands only (the work is in
:mod:`mipo.pairs.build` and :mod:`mipo.pairs.merge`; heavy imports happen inside the commands)."""

from __future__ import annotations

from typing import Any

import click

from mipo.cli._options import quiet_model_bars
from mipo.cli.fields import BUILD, COLUMNS, GENERATION, ConfigCommand, command_config


def _print_result(result: Any) -> None:
    from rich.console import Console

    from mipo.pairs.build import summary_table

    console = Console(soft_wrap=True)
    console.print(summary_table(result.stats))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.message:
        console.print(result.message, markup=False, highlight=False)


def build_pairs_fields() -> list[click.Option]:
    """The options of the command's config fields (see :mod:`mipo.cli.fields`)."""
    return [
        *BUILD.options(
            "model plan_only negatives executor num_workers seed shard keep_truncated "
            "drop_persona overwrite trust_remote_code progress",
        ),
        *COLUMNS.options("context_format", at="columns"),
        *GENERATION.options(
            "max_new_tokens temperature batch_size chunk_size backend dtype",
            at="generation",
        ),
        click.Option(
            ["--verbose"], is_flag=True, help="Also show transformers' model loading bars."
        ),
    ]


@click.command(
    "build-pairs",
    cls=ConfigCommand,
    config="mipo.pairs.config:BuildPairsConfig",
    fields=build_pairs_fields,
)
@click.argument("input", metavar="INPUT", required=False)
@click.option("-o", "--output", "out_dir", help="Output folder (a rerun continues).")
@click.pass_context
def build_pairs_cmd(ctx: click.Context, input: str | None, out_dir: str | None, **_: Any) -> None:
    """Build DPO preference pairs from a prompt corpus.

    INPUT is a Parquet, JSONL or CSV file, a folder, or a glob of shards. Stages (each resumable):
    plan (dedup, tokenize, negatives -> plan.parquet), generate (generations/), pairs
    (pairs.parquet + stats.json). OUTDIR/run.json records the resolved config: --config
    OUTDIR/run.json repeats the run.

    \b
    Example:
      mipo build-pairs python/mipo/data/sample_corpus.jsonl -o out --generation-max-new-tokens 64
    """
    from mipo.pairs.build import build_pairs

    given = {k: v for k, v in (("input", input), ("out_dir", out_dir)) if v is not None}
    config = command_config(ctx, given=given, required={"input": "INPUT", "out_dir": "-o/--output"})
    with quiet_model_bars(ctx.params["verbose"]):
        result = build_pairs(config)
    _print_result(result)


@click.command("merge")
@click.argument("out_dir", metavar="OUTDIR")
@click.argument("shard_dirs", nargs=-1, metavar="[SHARD_DIR]...")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle-based (.bin) weights.")
def merge_cmd(
    out_dir: str, shard_dirs: tuple[str, ...], trust_remote_code: bool, allow_pickle: bool
) -> None:
    """Join the shards of a `build-pairs --shard I/N` run and build its pairs.

    OUTDIR is the output folder of one shard (or the folder all shards shared); SHARD_DIRs are
    the other shards' folders when they ran elsewhere. Missing chunks are listed.
    """
    from mipo.pairs.merge import merge_shards

    _print_result(
        merge_shards(
            out_dir,
            list(shard_dirs),
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
    )


COMMANDS: list[click.Command] = [build_pairs_cmd, merge_cmd]
