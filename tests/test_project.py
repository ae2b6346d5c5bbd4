"""The project's own promises: the README's commands, CI, clean lint (container: test_deploy)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_readme_opens_with_the_demo_and_the_test_command_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    assert commands[0] == (
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/personyze-sync demo"
    )
    install, test = commands[1].rsplit(" && ", 1)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test == ".venv/bin/pytest"
    assert ".venv/bin/pip install -q -e '.[test]'" in ci
    assert install == "python3 -m venv .venv && .venv/bin/pip install -e '.[test]'"


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "sync", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
