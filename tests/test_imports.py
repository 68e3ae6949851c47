"""The package imports cleanly: every module on its own, and no import cycle between modules."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import mrpo

PACKAGE_DIR = Path(mrpo.__file__).parent


def all_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__.py``)."""
    modules = {"mrpo": PACKAGE_DIR / "__init__.py"}
    for info in pkgutil.walk_packages(mrpo.__path__, "mrpo."):
        relative = info.name.removeprefix("mrpo.").replace(".", "/")
        path = PACKAGE_DIR / relative
        modules[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return modules


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, deferred ones inside functions included (a
    function-level import hides a cycle, it does not remove it), except those under
    ``if TYPE_CHECKING`` (never run)."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and (
            isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        ):
            pending += node.orelse
        else:
            pending += ast.iter_child_nodes(node)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (explicit imports, deferred ones included)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative import: resolve against this module's package
                    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # every module was found
    assert "mrpo.groups.checks" in graph and "mrpo.cli.preflight" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_validation_does_not_depend_on_what_it_validates() -> None:
    graph = import_graph()
    reachable, pending = set(), ["mrpo.groups.checks"]
    while pending:
        for nxt in graph[pending.pop()] - reachable:
            reachable.add(nxt)
            pending.append(nxt)
    # The checks never reach the training steps, entry points or the LightningModule (a
    # group's builder may name the checkpoint callbacks it builds: mrpo.training.checkpointing).
    forbidden = ("mrpo.cli", "mrpo.training.module", "mrpo.training.metrics")
    assert not {m for m in reachable if m.startswith(forbidden)}


def test_every_module_imports() -> None:
    for name in all_modules():
        importlib.import_module(name)


def test_no_module_has_import_side_effects_on_the_root_logger() -> None:
    # Importing the whole package configures nothing (logging handlers, torch threads).
    code = (
        "import logging, pkgutil, importlib, mrpo\n"
        "for m in pkgutil.walk_packages(mrpo.__path__, 'mrpo.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(len(logging.getLogger().handlers))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
