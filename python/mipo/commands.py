"""Stage commands of the CLI, collected so that ``cli.py`` stays thin.

Each ``cli_*`` module defines click commands and imports only click at module level.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add every stage command to ``group``."""
    from mipo import cli_pairs, cli_run, cli_synth, cli_train

    for module in (cli_synth, cli_pairs, cli_train, cli_run):
        for command in module.COMMANDS:
            group.add_command(command)
