"""bench/run.py --quick runs end to end: every measurement in the table, every check PASS.

No timing is asserted (machines are noisy); the figures are the benchmark's business.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

TABLE_ROWS = [
    ("0 ms", "ceiling: wrk POST /rest/users"),
    ("0 ms", "baseline (sequential)"),
    ("0 ms", "personyze-sync backfill"),
    ("0 ms", "personyze-sync once, nothing changed"),
    ("0 ms", "personyze-sync once, 1% changed"),
    ("50 ms", "ceiling: concurrency ÷ latency"),
    ("50 ms", "baseline (sequential)"),
    ("50 ms", "personyze-sync backfill"),
    ("50 ms", "personyze-sync once, nothing changed"),
    ("50 ms", "personyze-sync once, 1% changed"),
    ("0 ms", "personyze-sync backfill, 500 rows"),
]


@pytest.fixture(scope="module")
def output() -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_the_table_has_a_row_per_measurement(output: str) -> None:
    assert re.search(r"^setting\s+what\s+rows\s+seconds\s+rows/s\s+requests/row", output, re.M)
    for setting, what in TABLE_ROWS:
        if what.startswith("ceiling: wrk") and "wrk is not installed" in output:
            continue
        assert re.search(rf"^{re.escape(setting)}\s+{re.escape(what)}\s+\S", output, re.M), what


def test_every_correctness_check_passes(output: str) -> None:
    checks = re.findall(r"^\[(PASS|FAIL)\] (.*)$", output, re.M)
    assert len(checks) >= 18, output
    assert all(verdict == "PASS" for verdict, _ in checks), [c for v, c in checks if v != "PASS"]
    assert re.search(r"^(\d+) of \1 correctness checks passed", output, re.M)


def test_every_target_is_reported(output: str) -> None:
    targets = output.split("\ntargets\n", 1)[1]
    for name in ("÷ baseline at 50 ms", "÷ (concurrency ÷ latency)", "peak RSS", "no-change run"):
        assert name in targets
    assert re.findall(r"^\s+\[(PASS|MISS)\]", targets, re.M)
