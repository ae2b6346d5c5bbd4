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


def area(module: str) -> str:
    """The top-level module or folder of sync a module belongs to: ``sync.run``."""
    return ".".join(module.split(".")[:2])


# What each area may import of sync, besides itself. The stages (extract, mapping, load,
# state) import only the shared types, errors and config (and databases, the engines'
# edge); only run/ joins stages; the CLI and the daemon call run/, admin, verify, wiring.
SHARED = {"sync.model", "sync.errors", "sync.config", "sync.shard_hash"}
ALLOWED = {
    "sync.model": set(),
    "sync.errors": set(),
    "sync.shard_hash": set(),  # which shard a key is in, in SQL and in Python alike
    "sync.config": {"sync.errors"},
    "sync.databases": {"sync.errors", "sync.shard_hash"},  # SQLite's hash function
    "sync.compare": set(),
    "sync.signals": set(),  # the one stop logic of every process (edges only)
    "sync.extract": SHARED | {"sync.databases"},
    "sync.mapping": SHARED | {"sync.compare"},
    "sync.load": SHARED | {"sync.compare"},
    "sync.state": SHARED | {"sync.databases"},
    "sync.wiring": SHARED
    | {"sync.databases", "sync.extract", "sync.mapping", "sync.load", "sync.state", "sync.logs"},
    "sync.adopt": SHARED
    | {"sync.compare", "sync.extract", "sync.mapping", "sync.load", "sync.state"},
    "sync.run": SHARED
    | {"sync.extract", "sync.mapping", "sync.load", "sync.state", "sync.adopt", "sync.wiring"}
    | {"sync.logs", "sync.signals"},
    "sync.verify": SHARED
    | {"sync.compare", "sync.extract", "sync.mapping", "sync.load", "sync.state", "sync.run"}
    | {"sync.wiring"},
    "sync.checks": SHARED | {"sync.databases", "sync.extract", "sync.mapping", "sync.wiring"},
    "sync.admin": SHARED
    | {"sync.adopt", "sync.checks", "sync.mapping", "sync.run", "sync.state", "sync.wiring"},
    "sync.daemon": SHARED
    | {"sync.run", "sync.wiring", "sync.alerts", "sync.health", "sync.metrics", "sync.logs"}
    | {"sync.signals"},
    "sync.api": SHARED | {"sync.admin", "sync.logs", "sync.run", "sync.wiring"},  # for programs
    "sync.cli": SHARED
    | {"sync.api", "sync.run", "sync.admin", "sync.verify", "sync.wiring", "sync.daemon"}
    | {"sync.demo"}
    | {"sync.sandbox", "sync.logs", "sync.signals", "sync"},
}


@pytest.mark.parametrize(("where", "allowed"), ALLOWED.items())
def test_each_area_imports_only_what_its_layer_allows(where: str, allowed: set[str]) -> None:
    broken = {
        f"{name} imports {used}"
        for name, path in MODULES.items()
        if area(name) == where
        for used in own(imports(path))
        if area(used) != where and area(used) not in allowed
    }
    assert not broken


def test_no_module_over_400_lines() -> None:
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long


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
