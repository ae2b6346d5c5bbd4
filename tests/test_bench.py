"""bench/run.py, bench/replicas.py, bench/hostile.py, bench/history.py and
bench/products.py --quick run end to end: every check PASS, every table row printed.

No timing is asserted (machines are noisy); the figures are the benchmark's business.
Each script runs once, in one test that checks all it printed (a fixture shared by
several tests would run once per pytest-xdist worker that drew one of them).
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
    ("0 ms", "ceiling: HTTP client only, 2 processes"),
    ("0 ms", "ceiling: httpx + httpcore only, 1 process"),
    ("0 ms", "baseline (sequential)"),
    ("0 ms", "personyze-sync backfill"),
    ("0 ms", "personyze-sync once, nothing changed"),
    ("0 ms", "personyze-sync once, 1% changed"),
    ("0 ms", "personyze-sync backfill in 2 processes"),
    ("0 ms", "personyze-sync diff: first run"),
    ("0 ms", "personyze-sync diff: nothing changed"),
    ("0 ms", "personyze-sync diff: 1% changed"),
    ("50 ms", "ceiling: wrk POST /rest/users"),
    ("50 ms", "ceiling: concurrency ÷ latency"),
    ("50 ms", "baseline (sequential)"),
    ("50 ms", "personyze-sync backfill"),
    ("50 ms", "personyze-sync once, nothing changed"),
    ("50 ms", "personyze-sync once, 1% changed"),
    ("0 ms", "personyze-sync backfill, 120 rows"),
]


def bench(script: str) -> str:
    """``bench/SCRIPT --quick``'s output; it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_bench_run_prints_every_measurement_and_passes_every_check() -> None:
    output = bench("run.py")
    the_table_has_a_row_per_measurement(output)
    the_httpx_only_ceiling_is_measured(output)
    the_diff_mode_is_measured_and_an_unchanged_table_costs_no_request(output)
    the_backfill_in_two_processes_sends_each_row_once(output)
    every_correctness_check_passes(output)
    every_target_is_reported(output)


def the_table_has_a_row_per_measurement(output: str) -> None:
    assert re.search(r"^setting\s+what\s+rows\s+seconds\s+rows/s\s+requests/row", output, re.M)
    for setting, what in TABLE_ROWS:
        if what.startswith("ceiling: wrk") and "wrk is not installed" in output:
            continue
        assert re.search(rf"^{re.escape(setting)}\s+{re.escape(what)}\s+\S", output, re.M), what


def the_httpx_only_ceiling_is_measured(output: str) -> None:
    """--quick runs bench/httpx_ceiling.py with 2 processes; it needs no wrk."""
    found = re.search(
        r"^0 ms\s+ceiling: HTTP client only, 2 processes\s+([\d,]+)\s+([\d.]+)\s+([\d,]+)\s+(\S+)"
        r"\s+([\d.]+)\s",
        output,
        re.M,
    )
    assert found, output
    rows, seconds, rate, per_row, cpu = found.groups()
    assert int(rows.replace(",", "")) > 0
    assert float(seconds) > 0
    assert int(rate.replace(",", "")) > 0
    assert per_row == "1.000"
    assert float(cpu) > 0
    assert re.search(
        r"^\[PASS\] 0 ms ceiling: HTTP client only, 2 processes: every answer 200", output, re.M
    )
    targets = output.split("\ntargets\n", 1)[1]
    line = re.search(r"^\s+\[INFO\] best HTTP-client-only ÷ wrk ceiling at 0 ms.*$", targets, re.M)
    assert line, targets
    if "wrk is not installed" not in output:
        assert re.search(r"\d+% \(2 processes, [\d,]+ req/s", line.group(0)), line.group(0)


def the_diff_mode_is_measured_and_an_unchanged_table_costs_no_request(output: str) -> None:
    """detect: diff on the same table: every row, then nothing, then exactly the 1% changed."""
    first = re.search(
        r"^0 ms\s+personyze-sync diff: first run\s+1,200\s+[\d.]+\s+[\d,]+\s+1\.000\s+[\d.]+"
        r"\s+[\d.]+$",
        output,
        re.M,
    )
    assert first, output
    noop = re.search(
        r"^0 ms\s+personyze-sync diff: nothing changed\s+0\s+([\d.]+)\s+-\s+0 req\s+-\s+([\d.]+)$",
        output,
        re.M,
    )
    assert noop, output
    assert float(noop.group(1)) > 0 and float(noop.group(2)) > 0
    changed = re.search(
        r"^0 ms\s+personyze-sync diff: 1% changed\s+12\s+[\d.]+\s+[\d,]+\s+1\.000\s", output, re.M
    )
    assert changed, output
    for what in ("first run", "nothing changed", "1% changed"):
        assert re.search(rf"^\[PASS\] 0 ms diff, {what}: requests == rows changed", output, re.M)
        assert re.search(rf"^\[PASS\] 0 ms diff, {what}: sandbox == source", output, re.M)
    assert re.search(
        r"^\[PASS\] 0 ms diff, nothing changed: requests == rows changed: 0 requests", output, re.M
    )
    targets = output.split("\ntargets\n", 1)[1]
    assert re.search(
        r"^\s+\[PASS\] 0 ms diff, nothing changed: requests == 0\s+0 requests;", targets, re.M
    ), targets
    assert re.search(
        r"^\s+\[INFO\] diff peak RSS vs the 0 ms cursor backfill's \(informational\)\s+first run "
        r"[\d.]+, nothing changed [\d.]+, 1% changed [\d.]+ MB vs [\d.]+ MB",
        targets,
        re.M,
    ), targets


def the_backfill_in_two_processes_sends_each_row_once(output: str) -> None:
    """backfill --processes 2 of the table in 2 shards: every row once, sandbox == source."""
    row = re.search(
        r"^0 ms\s+personyze-sync backfill in 2 processes\s+1,200\s+[\d.]+\s+[\d,]+\s+1\.000\s",
        output,
        re.M,
    )
    assert row, output
    assert re.search(r"^\[PASS\] 0 ms personyze-sync backfill in 2 processes: exit", output, re.M)
    assert re.search(r"^\[PASS\] 0 ms backfill in 2 processes: sandbox == source", output, re.M)
    targets = output.split("\ntargets\n", 1)[1]
    assert re.search(
        r"^\s+\[(PASS|MISS)\] personyze-sync in 2 processes ÷ wrk ceiling at 0 ms", targets, re.M
    ) or ("wrk is not installed" in output), targets


def every_correctness_check_passes(output: str) -> None:
    checks = re.findall(r"^\[(PASS|FAIL)\] (.*)$", output, re.M)
    assert len(checks) >= 27, output
    assert all(verdict == "PASS" for verdict, _ in checks), [c for v, c in checks if v != "PASS"]
    assert re.search(r"^(\d+) of \1 correctness checks passed", output, re.M)


def every_target_is_reported(output: str) -> None:
    targets = output.split("\ntargets\n", 1)[1]
    for name in ("÷ baseline at 50 ms", "÷ (concurrency ÷ latency)", "peak RSS", "no-change run"):
        assert name in targets
    assert re.findall(r"^\s+\[(PASS|MISS)\]", targets, re.M)


# --- bench/replicas.py --------------------------------------------------------------


def test_bench_replicas_prints_a_row_per_replica_count_and_passes_every_check() -> None:
    """bench/replicas.py --quick: 1,200 rows, 1 then 3 replicas, 20 ms a request."""
    output = bench("replicas.py")
    replicas_has_a_row_per_replica_count_with_one_request_per_row(output)
    replicas_every_check_passes(output)


def replicas_has_a_row_per_replica_count_with_one_request_per_row(
    replicas_output: str,
) -> None:
    assert re.search(
        r"^\s*replicas\s+rows\s+seconds\s+rows/s\s+speedup\s+requests/row\s+CPU s/1k rows"
        r"\s+peak RSS MB$",
        replicas_output,
        re.M,
    ), replicas_output
    for count in (1, 3):
        row = re.search(
            rf"^\s+{count}\s+1,200\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)×\s+(\S+)\s+([\d.]+)\s+([\d.]+)$",
            replicas_output,
            re.M,
        )
        assert row, replicas_output
        seconds, rate, speedup, per_row, cpu, rss = row.groups()
        assert per_row == "1.000"
        assert float(seconds) > 0 and int(rate.replace(",", "")) > 0 and float(speedup) > 0
        assert float(cpu) > 0 and float(rss) > 0
    assert re.search(r"^\s+1\s+1,200\s+\S+\s+\S+\s+1\.00×", replicas_output, re.M)
    assert re.search(r"^\s+3 × 8 ÷ 20 ms = 1,200 rows/s", replicas_output, re.M)


def replicas_every_check_passes(replicas_output: str) -> None:
    checks = re.findall(r"^\[(PASS|FAIL)\] (.*)$", replicas_output, re.M)
    assert len(checks) == 6, replicas_output  # 3 checks for each of 1 and 3 replicas
    assert all(verdict == "PASS" for verdict, _ in checks), checks
    for count, name in ((1, "1 replica"), (3, "3 replicas")):
        assert f"[PASS] {name}: requests == rows: 1200 requests for 1200 rows" in replicas_output
        assert f"[PASS] {name}: every process exited 0: {[0] * count}" in replicas_output
        assert f"[PASS] {name}: sandbox holds one user per source row: 1200 users" in (
            replicas_output
        )


def test_the_hostile_bench_measures_targets_a_b_and_c_and_every_run_is_correct() -> None:
    """bench/hostile.py --quick: each run exits 0 with the sandbox equal to the source,
    and A, B and C are each reported (PASS or MISS: the figures are not asserted)."""
    output = bench("hostile.py")
    runs = re.findall(r"^(\w): .* rows/s .* 429 .* CPU s  ok$", output, re.M)
    assert sorted(runs) == ["A", "A", "B", "B", "C"], output
    for target in "ABC":
        assert re.search(rf"^{target}  .*(PASS|MISS)", output, re.M), output


def test_the_history_bench_measures_a_backfill_with_the_history_off_and_on() -> None:
    output = bench("history.py")
    for setting in ("off", "on"):
        row = rf"^backfill, history {setting}, round 1\s+2,000\s+[\d.]+\s+[\d,]+\s+[\d.]+\s"
        assert re.search(row, output, re.M), setting
        assert f"[PASS] backfill, history {setting}, round 1: deliveries kept" in output
    assert re.search(r"^\[(PASS|MISS)\] the history costs -?[\d.]+% of backfill", output, re.M)
    assert "[FAIL]" not in output


def test_the_audience_bench_syncs_members_beside_the_users_backfill() -> None:
    output = bench("audience.py")
    for latency in ("0 ms", "50 ms"):
        for run in ("users backfill", "audience: first sync", "audience: nothing changed"):
            assert re.search(rf"^{latency}\s+{re.escape(run)}\s+[\d.]+\s", output, re.M), run
        change = r"audience: 5% leave, 3% join\s+[\d.]+\s+80\s+[\d,]+\s+[\d,]+\s+\S+\s+80$"
        assert re.search(rf"^{latency}\s+{change}", output, re.M), output
    assert "PASS every check" in output


def test_the_products_bench_measures_a_backfill_beside_users_and_every_check_passes() -> None:
    output = bench("products.py")
    for latency in ("0 ms", "50 ms"):
        for what, rows, per_row in (
            ("users backfill", "1,200", "1.000"),
            ("products backfill", "1,200", "1.000"),  # one request per product
            ("products: nothing changed", "0", "-"),
            ("products: 1% changed", "12", "1.000"),
        ):
            figures = rf"\s+[\d.]+\s+{rows}\s+[\d,]+\s+{re.escape(per_row)}$"
            row = rf"^{latency}\s+{re.escape(what)}{figures}"
            assert re.search(row, output, re.M), (latency, what, output)
    assert "PASS every check" in output and "FAIL" not in output
