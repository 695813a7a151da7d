"""The package's import graph: no cycles, no private names borrowed across modules.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a ``mipo`` module, wherever it stands — module level, inside a function,
or under ``if TYPE_CHECKING:`` — with relative imports resolved. ``from mipo.a import b`` is an
edge to the submodule ``mipo.a.b`` when there is one, else to ``mipo.a``. A package's parent
(``mipo.a`` for ``mipo.a.b``) runs first at import time but is not counted as an edge: only
what a module names.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "python" / "mipo"


@dataclass(frozen=True)
class Import:
    """One ``mipo`` import: who imports, which module, which names (empty for ``import x``)."""

    importer: str
    module: str
    names: tuple[str, ...]
    line: int


def module_names(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (``mipo.generate`` for its ``__init__``)."""
    modules = {}
    # A compiled module (mipo._engine) is known by its hand-written stub.
    stubs = [p for p in root.rglob("*.pyi") if not p.with_suffix(".py").exists()]
    for path in sorted([*root.rglob("*.py"), *stubs]):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _absolute(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """``from ..x import y`` inside ``importer`` -> the absolute module ``..x`` names."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The ``mipo`` imports of one module, each resolved to a module of the package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mipo":
                    found.append(
                        Import(name, _longest_module(alias.name, modules), (), node.lineno)
                    )
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(name, is_package, node.level, node.module)
            if target.split(".")[0] != "mipo":
                continue
            plain = [a.name for a in node.names if f"{target}.{a.name}" not in modules]
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:  # from package import submodule
                    found.append(Import(name, f"{target}.{alias.name}", (), node.lineno))
            if plain:
                module = _longest_module(target, modules)
                found.append(Import(name, module, tuple(plain), node.lineno))
    return found


def _longest_module(dotted: str, modules: dict[str, Path]) -> str:
    parts = dotted.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or dotted


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            if imp.module != name:
                graph[name].add(imp.module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


# Cycles that another change of issue 22 removes (item 1 moves each config beside its runner),
# each with why it is still here. The list is exact: a cycle not in it fails, and so does an
# entry whose cycle is gone (delete the entry then).
PENDING_CYCLES: dict[tuple[str, ...], str] = {}


def test_the_package_has_no_import_cycles() -> None:
    found = {tuple(c): " <-> ".join(c) for c in cycles(import_graph())}
    unexpected = [text for c, text in found.items() if c not in PENDING_CYCLES]
    assert unexpected == [], "import cycles (runtime, function-level or TYPE_CHECKING): " + (
        "; ".join(unexpected)
    )
    gone = [" <-> ".join(c) for c in PENDING_CYCLES if c not in found]
    assert gone == [], f"no longer cycles, delete them from PENDING_CYCLES: {gone}"


def private_imports() -> list[str]:
    """``from mipo.x import _name`` in a module other than ``mipo.x``, where ``_name`` is not a
    module (a private module such as ``mipo._engine`` or ``mipo.cli._options`` is the package's
    own business; a private function or constant is its module's)."""
    modules = module_names()
    found = []
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            for private in (n for n in imp.names if n.startswith("_") and not n.startswith("__")):
                found.append(f"{name}:{imp.line} imports {private} from {imp.module}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports() == []


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader finds relative, function-level and TYPE_CHECKING imports and the cycle they
    make, and a private name taken from another module (a checker that saw nothing would pass
    the two tests above)."""
    package = tmp_path / "mipo"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .a import run\n")
    (package / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mipo.sub.b import Thing\n"
        "def run():\n    from ..top import _helper\n"
    )
    (package / "sub" / "b.py").write_text("def f():\n    from . import a\n")
    (package / "top.py").write_text("import mipo.sub\n_helper = 1\n")
    modules = module_names(package)
    assert set(modules) == {"mipo", "mipo.sub", "mipo.sub.a", "mipo.sub.b", "mipo.top"}
    graph = {m: {i.module for i in imports_of(m, p, modules)} for m, p in modules.items()}
    assert graph["mipo.sub.a"] == {"mipo.sub.b", "mipo.top"}
    assert graph["mipo.sub.b"] == {"mipo.sub.a"}
    assert cycles(graph) == [["mipo.sub", "mipo.sub.a", "mipo.sub.b", "mipo.top"]]
    a_imports = imports_of("mipo.sub.a", modules["mipo.sub.a"], modules)
    assert [i.names for i in a_imports if i.module == "mipo.top"] == [("_helper",)]
