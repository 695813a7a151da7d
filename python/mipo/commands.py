"""Stage commands of the CLI (build-pairs, synth, train, eval, run).

Each command module exposes a click command; this module collects them so ``cli.py`` stays thin.
Only click is imported at module level.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add every available stage command to ``group``."""
    # Filled in as the stages land; each import is cheap (click only).
    return None
