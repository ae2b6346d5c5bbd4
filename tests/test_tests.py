"""The tests' own rules: one home for what they share, no test module importing another.

What tests share lives in ``tests/support.py`` (helpers) and ``tests/conftest.py``
(fixtures). A test module that imports another runs that module's tests' imports and
fixtures wherever it goes, and a second copy of a helper drifts from the first: both
are caught here, from the source, with ``ast``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support.py"
FILES = sorted(TESTS.rglob("*.py"))

# defined once, in tests/support.py
SHARED = {"wait_until", "free_port", "FakeClock", "FakeTime", "SocketServer"}
TEST_MODULE = re.compile(r"^tests(\.\w+)*\.test_\w+$")


def where(path: Path) -> str:
    return str(path.relative_to(TESTS.parent))


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)


def imported(path: Path, tree: ast.Module) -> set[str]:
    """Every module ``path`` imports, relative imports made absolute; ``from a import b``
    counts as ``a`` and as ``a.b`` (b may be a module)."""
    package = module_of(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", FILES, ids=where)
def test_no_test_module_imports_another(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    others = sorted(m for m in imported(path, tree) if TEST_MODULE.match(m))
    assert not others, (
        f"{where(path)} imports the test module(s) {others}: move what they share "
        "into tests/support.py (helpers) or tests/conftest.py (fixtures)"
    )


@pytest.mark.parametrize("path", [p for p in FILES if p != SUPPORT], ids=where)
def test_shared_helpers_are_defined_only_in_support(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    again = sorted(
        f"{node.name} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.name in SHARED
    )
    assert not again, f"{where(path)} defines {again} again: use tests/support.py's"


def test_support_defines_each_shared_helper() -> None:
    tree = ast.parse(SUPPORT.read_text(encoding="utf-8"))
    defined = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in SHARED
    }
    assert defined == SHARED - {"FakeTime"}  # FakeClock is both


def test_the_rules_see_a_breach() -> None:
    """The checks above, on sources that break them."""
    source = (
        "from tests.integration.test_daemon import Daemon\n"
        "from . import test_writer\n"
        "import tests.test_cli\n"
        "from tests import support\n"
    )
    path = TESTS / "load" / "test_example.py"
    found = imported(path, ast.parse(source))
    assert sorted(m for m in found if TEST_MODULE.match(m)) == [
        "tests.integration.test_daemon",
        "tests.load.test_writer",
        "tests.test_cli",
    ]
    assert not TEST_MODULE.match("tests.support") and not TEST_MODULE.match("tests.conftest")
