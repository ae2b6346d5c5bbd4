"""The package tree is the architecture: data flows one way, I/O stays at the edges.

Read from the source with ``ast``, so a rule broken in a function's lazy import is
caught too (imports under ``if TYPE_CHECKING:`` are types only and are skipped).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sync"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The modules ``path`` imports (absolute names)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def own(names: set[str]) -> set[str]:
    """The modules of this package among ``names`` (``from sync.x import y`` of a name
    that is not a module counts as ``sync.x``)."""
    return {n for n in names if n in MODULES}


def test_the_mapper_touches_neither_database_nor_network() -> None:
    used = imports(MODULES["sync.mapping"])
    assert not {n for n in used if n.split(".")[0] in ("sqlalchemy", "httpx", "httpcore")}
    assert own(used) <= {"sync.config", "sync.config.jobs", "sync.errors", "sync.compare"}


DOWNSTREAM = {  # config -> extract -> map -> load -> checkpoint; errors under them all
    "sync.config": ("sync.extract", "sync.load", "sync.state", "sync.databases", "sync.app"),
    "sync.extract": ("sync.load", "sync.state", "sync.runner", "sync.app"),
    "sync.load": ("sync.extract.reader", "sync.databases", "sync.state.store", "sync.runner"),
    "sync.state": ("sync.load", "sync.extract.reader", "sync.runner", "sync.app"),
    "sync.errors": ("sync.",),
}


@pytest.mark.parametrize(("stage", "forbidden"), DOWNSTREAM.items())
def test_each_stage_imports_nothing_downstream_of_it(
    stage: str, forbidden: tuple[str, ...]
) -> None:
    broken = {
        f"{name} imports {used}"
        for name, path in MODULES.items()
        if name == stage or name.startswith(stage + ".")
        for used in own(imports(path))
        if not used.startswith(stage) and used.startswith(forbidden)
    }
    assert not broken


def test_no_module_imports_another_that_imports_it_back() -> None:
    """At import time (module level); a function's lazy import is no cycle."""
    graph = {
        name: own(imports(path, top_level_only=True)) - {name} for name, path in MODULES.items()
    }
    cycles = []
    for name in graph:  # a path from any module back to itself
        seen, todo = set(), list(graph[name])
        while todo:
            step = todo.pop()
            if step == name:
                cycles.append(name)
                break
            if step not in seen:
                seen.add(step)
                todo.extend(graph.get(step, ()))
    assert not cycles
