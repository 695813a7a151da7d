"""Code shape (issue 22 item 6): no function or method in the package is longer than
:data:`MAX_LINES` lines, from its ``def`` line to its last (docstring included, decorators not:
a click command's options are declarations), so each reads as one named step."""

from __future__ import annotations

import ast
from pathlib import Path

MAX_LINES = 80
PACKAGE = Path(__file__).resolve().parents[1] / "python" / "mipo"

ALLOWED: dict[str, str] = {}
"""``path:qualified.name`` -> why it may stay longer for now. The goal is an empty dict."""


def long_functions(root: Path, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """Every function under ``root`` longer than ``limit`` lines, as (``path:qualname``,
    lines), the path relative to ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = prefix
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{prefix}{child.name}."
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (child.end_lineno or child.lineno) - child.lineno + 1
                    if lines > limit:
                        found.append((f"{path.relative_to(root).as_posix()}:{name[:-1]}", lines))
                stack.append((child, name))
    return sorted(found)


def test_no_function_is_longer_than_the_limit() -> None:
    found = long_functions(PACKAGE)
    stale = sorted(set(ALLOWED) - {name for name, _ in found})
    assert not stale, f"allowed but no longer over {MAX_LINES} lines (remove from ALLOWED): {stale}"
    too_long = [(name, n) for name, n in found if name not in ALLOWED]
    assert not too_long, f"functions over {MAX_LINES} lines (split them into named steps):\n" + (
        "\n".join(f"  {name}: {n} lines" for name, n in too_long)
    )


def test_the_measure_finds_long_functions_methods_and_nested_ones(tmp_path: Path) -> None:
    def body(lines: int) -> str:
        return "".join(f"    x{i} = {i}\n" for i in range(lines - 1))

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text(
        f"def short():\n{body(MAX_LINES)}\n"
        f"@decorator\ndef decorated():\n{body(MAX_LINES)}\n"
        f"def long():\n{body(MAX_LINES + 1)}\n"
        "class C:\n"
        + "".join(
            "    " + line + "\n" for line in f"def method():\n{body(MAX_LINES + 1)}".split("\n")
        )
        + f"def outer():\n    def inner():\n{''.join('    ' + ln for ln in body(MAX_LINES + 1).splitlines(True))}"
    )
    assert long_functions(tmp_path) == [
        ("sub/m.py:C.method", MAX_LINES + 1),
        ("sub/m.py:long", MAX_LINES + 1),
        ("sub/m.py:outer", MAX_LINES + 2),
        ("sub/m.py:outer.inner", MAX_LINES + 1),
    ]
