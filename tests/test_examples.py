"""The package's examples: pytest runs them (``--doctest-modules`` over ``python/mipo`` in
pyproject.toml); an example that cannot run here (it needs a model, a GPU, a network server, a
trained output folder) is marked ``# doctest: +SKIP`` and says why in a comment line just above it.
"""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "python" / "mipo"
SKIP = doctest.OPTIONFLAGS_BY_NAME["SKIP"]


def docstrings(path: Path) -> list[tuple[str, int, str]]:
    """``(name, line, docstring)`` of the module and every class and function in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node, clean=False)
            if text:
                name = getattr(node, "name", "<module>")
                found.append((name, getattr(node, "lineno", 1), text))
    return found


def examples(text: str) -> list[str]:
    """The examples of a docstring, each its ``>>>`` line and ``...`` lines, prompts removed
    (doctest's own parser drops comment-only examples, which are the reasons looked for here).
    """
    found: list[list[str]] = []
    in_example = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>"):
            found.append([stripped[4:]])
            in_example = True
        elif stripped.startswith("...") and in_example:
            found[-1].append(stripped[4:])
        else:
            in_example = False  # output or prose ends an example
    return ["\n".join(lines) for lines in found]


def unexplained_skips(text: str) -> list[str]:
    """The first line of each run of skipped examples that no comment example (``>>> # why``)
    introduces."""
    found = examples(text)
    missing = []
    for i, source in enumerate(found):
        if "doctest: +SKIP" not in source:
            continue
        before = found[i - 1] if i else ""
        if "doctest: +SKIP" in before:
            continue  # the run's first example was checked
        if not before.startswith("#"):
            missing.append(source.splitlines()[0])
    return missing


def test_every_skipped_example_says_why() -> None:
    missing = [
        f"{path.relative_to(PACKAGE_ROOT.parent)}:{line} {name}: {source}"
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
        for name, line, text in docstrings(path)
        for source in unexplained_skips(text)
    ]
    assert missing == [], "skipped examples without a '>>> # why' line above them:\n" + "\n".join(
        missing
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (">>> a()  # doctest: +SKIP\n", ["a()  # doctest: +SKIP"]),
        (">>> 1 + 1\n2\n>>> a()  # doctest: +SKIP\n", ["a()  # doctest: +SKIP"]),
        (
            ">>> # why\n>>> a()  # doctest: +SKIP\n>>> 1\n1\n>>> b()  # doctest: +SKIP\n",
            ["b()  # doctest: +SKIP"],
        ),
        (">>> # why\n>>> f(1,\n...   2)  # doctest: +SKIP\n>>> g()  # doctest: +SKIP\n", []),
        (">>> # why\n>>> a()  # doctest: +SKIP\n", []),
    ],
)
def test_the_check_finds_unexplained_skips(text: str, expected: list[str]) -> None:
    assert unexplained_skips(text) == expected


def test_examples_keep_continuation_lines() -> None:
    assert examples(">>> # why\n>>> f(1,\n...   2)\n3\n>>> g()\n") == ["# why", "f(1,\n  2)", "g()"]
