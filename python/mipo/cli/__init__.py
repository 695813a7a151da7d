"""The ``mipo`` command line. Thin: parse options, call the stage, print the result.

This package holds the click group and its error handling; each command is a module of its own
(:mod:`mipo.cli.build_pairs`, ``train``, ``eval``, ``run``, ``synth``) and the option decorators
they share are in :mod:`mipo.cli._options`; the options derived from the configs in
:mod:`mipo.cli.fields`.

Heavy imports (polars, torch, transformers, trl, vllm) happen inside the commands so that
``mipo --help`` is instant. Every :class:`~mipo.errors.MipoError` becomes one line on stderr and a
non-zero exit code, never a traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import click

from mipo import __version__
from mipo.errors import MipoError


class _Group(click.Group):
    """Click group that turns mipo's errors into one clear line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MipoError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo(
                "interrupted: finished chunks are kept; rerun the same command to resume", err=True
            )
            ctx.exit(130)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="mipo")
def cli() -> None:
    """mipo: Mutual Information Preference Optimization.

    Improve an instruct model at personalization with no new labels:
    build-pairs (corpus -> chosen/rejected pairs), train (DPO), eval (PMI, accuracy, win rate).
    """
    # transformers 5 renamed gradient checkpointing; TRL and PEFT still call the old name inside
    # every training and adapter load. Nothing a mipo user can act on, so keep it off the console.
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )


@cli.command("engine-info")
def engine_info_cmd() -> None:
    """Show the native engine's version, thread count and features."""
    from mipo import engine

    info = engine.engine_info()
    click.echo(f"mipo {__version__}")
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        click.echo(f"{key}: {value}")


def _register_commands() -> None:
    """Attach the stage commands: one module per command, each importing only click at module
    level (the stages' heavy imports happen inside the commands)."""
    from mipo.cli import build_pairs, eval, run, synth, train

    for module in (synth, build_pairs, train, eval, run):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="mipo", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
