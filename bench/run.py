"""personyze-sync side by side with a sequential script and with the API's own ceiling.

    .venv/bin/python bench/run.py [--rows N | --million] [--latency-ms 50]
                                  [--concurrency 32] [--baseline-seconds 20] [--quick]

In one run on this machine: N rows in a fresh PostgreSQL database, the sandbox as a
separate process (once with no added latency, once with ``--latency-ms`` per request),
and for each setting personyze-sync's backfill, a no-change incremental run and an
incremental run after 1% of the rows changed (at 0 ms, the same three with
``detect: diff``: a first run, a no-change run, a run after 1% changed); the sequential baseline
(``bench/baseline.py``); and the ceilings (``wrk`` against the sandbox, the best
P processes of bare httpx POSTs reach, ``bench/httpx_ceiling.py``, and concurrency ÷
latency). Every run is checked against the source. See bench/README.md.

Exit status: 0 when every correctness check passed (targets missed are reported, not
failed), 1 when one did not.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import Engine, create_engine, text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import Usage, run_measured  # noqa: E402

PYTHON = sys.executable
CLI = str(Path(sys.executable).parent / "personyze-sync")
API_KEY = "bench"
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = "2025-01-01 08:00:00"  # the first updated_at
TIE = 500  # rows sharing one updated_at
SAMPLE = 1000  # random rows compared column by column, besides every changed row
CHANGED = 0.01  # share of rows changed before the second incremental run
MAPPING = {
    "id": "internal_id",
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "score": "custom_f_1",
    "vip": "custom_i_1",
}
COLUMNS = tuple(MAPPING.values())
WRK = "ceiling: wrk POST /rest/users"
DIFF_JOB = "bench-diff"  # the job of the detect: diff config
DIFF = "personyze-sync diff"  # the diff runs' rows start with this
DIFF_ROUND = 3  # change_rows round of the diff runs (the cursor runs use 1 and 2)
HTTPX_ONLY = "ceiling: HTTP client only"  # httpx through personyze-sync's connection
HTTPCORE_ONLY = "ceiling: httpx + httpcore only"  # httpx's default transport, for comparison
PROCS_JOB = "bench-procs"  # the job of the backfill --processes run


# --- results ------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a measured (or computed) run."""

    setting: str
    what: str
    rows: int | None
    seconds: float | None
    rate: float | None = None  # rows/s; computed from rows/seconds when None
    requests: int | None = None
    cpu_s: float | None = None
    rss_mb: float | None = None

    @property
    def rows_per_s(self) -> float | None:
        if self.rate is not None:
            return self.rate
        if self.rows and self.seconds:
            return self.rows / self.seconds
        return None


@dataclass
class Report:
    """Everything measured and checked in a run."""

    rows: list[Row] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        print(f"[{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
        return ok

    def find(self, setting: str, what: str) -> Row | None:
        return next((r for r in self.rows if r.setting == setting and r.what == what), None)


# --- the source ---------------------------------------------------------------------


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database for this run (its URL), dropped at the end."""
    name = f"personyze_bench_{os.getpid()}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_table(engine: Engine, table: str, rows: int) -> None:
    """``rows`` people made by generate_series; every TIE rows share one updated_at."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {table} (id int PRIMARY KEY, email text NOT NULL, "
                "first_name text NOT NULL, last_name text NOT NULL, score numeric(12,2) NOT NULL, "
                "vip boolean NOT NULL, updated_at timestamp NOT NULL)"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO {table} SELECT i, 'Person' || i || '@Example.com', 'First' || i, "
                "'Last' || i, i * 1.25, i % 7 = 0, "
                f"timestamp '{T0}' + (i / {TIE}) * interval '1 minute' "
                "FROM generate_series(1, :n) i"
            ),
            {"n": rows},
        )
        conn.execute(text(f"CREATE INDEX {table}_cursor ON {table} (updated_at, id)"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {table}"))


def change_rows(engine: Engine, table: str, share: float, round_: int) -> int:
    """Change ``share`` of the rows (a new name, score and updated_at); how many changed."""
    step = round(1 / share)
    with engine.begin() as conn:
        result = conn.execute(
            text(
                f"UPDATE {table} SET first_name = 'Changed' || :r || '-' || id, "
                "score = score + 1, updated_at = clock_timestamp() WHERE id % :step = :r"
            ),
            {"r": round_ % step, "step": step},
        )
    return int(result.rowcount)


def expected(row: Any) -> dict[str, Any]:
    """What Personyze must hold for a source row, computed without the product's mapper."""
    return {
        "internal_id": row.id,
        "email": row.email.strip().lower(),
        "first_name": row.first_name,
        "last_name": row.last_name,
        "custom_f_1": float(Decimal(row.score)),
        "custom_i_1": int(row.vip),
    }


def same(want: Any, have: Any) -> bool:
    if isinstance(want, int | float) and not isinstance(want, bool):
        try:
            return float(have) == float(want)
        except (TypeError, ValueError):
            return False
    return bool(want == have)


# --- the sandbox --------------------------------------------------------------------


class Sandbox:
    """``bench/sandbox_server.py`` as a separate process."""

    def __init__(self, latency_ms: float, faults: dict[str, Any] | None = None) -> None:
        self.latency_ms = latency_ms
        self.process = subprocess.Popen(
            [
                PYTHON,
                str(HERE / "sandbox_server.py"),
                "--latency-ms",
                str(latency_ms),
                "--faults",
                json.dumps(faults or {}),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready = json.loads(self.process.stdout.readline())
        self.url: str = ready["api"]
        self.stats_url: str = ready["stats"]
        self.http = httpx.Client(timeout=60)

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.stats_url}/stats").json())

    def requests(self) -> int:
        return int(self.stats()["requests"])

    def reset(self) -> None:
        self.http.post(f"{self.stats_url}/reset").raise_for_status()

    def users(self) -> list[dict[str, Any]]:
        """Every user, read through the API with keyset pages, many pages at a time."""
        with httpx.Client(base_url=self.url, auth=("api", API_KEY), timeout=60) as api:
            last = api.get("/users/order_by_desc/user_id/limit/1").json()
            top = int(last[0]["user_id"]) if last else 0

            def page(after: int) -> list[dict[str, Any]]:  # an in-list: not a range read
                ids = ",".join(str(i) for i in range(after + 1, after + 1001))
                answer = api.get(f"/users/where/user_id:{ids}/order_by/user_id/limit/1000")
                answer.raise_for_status()
                return list(answer.json())

            with ThreadPoolExecutor(16) as pool:
                pages = pool.map(page, range(0, top, 1000))
                return [user for chunk in pages for user in chunk]

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def compare(
    engine: Engine, table: str, sandbox: Sandbox, keys: set[int] | None, must: set[int]
) -> tuple[bool, str]:
    """Does the sandbox hold exactly the rows ``keys`` (None: all) of ``table``, right?

    Every user is checked for identity (one user per row, none extra); a random
    sample of SAMPLE rows and every row in ``must`` are compared column by column.
    """
    with engine.connect() as conn:
        ids = {int(i) for (i,) in conn.execute(text(f"SELECT id FROM {table}"))}
    wanted = ids if keys is None else keys
    users = sandbox.users()
    by_key: dict[int, dict[str, Any]] = {}
    doubled = 0
    for user in users:
        key = int(user.get("internal_id", -1))
        doubled += key in by_key
        by_key[key] = user
    missing = wanted - by_key.keys()
    extra = by_key.keys() - wanted
    if doubled or missing or extra:
        return False, (
            f"{len(users)} users for {len(wanted)} rows: {len(missing)} missing "
            f"(e.g. {sorted(missing)[:5]}), {len(extra)} unknown, {doubled} doubled"
        )
    sample = set(random.Random(len(wanted)).sample(sorted(wanted), min(SAMPLE, len(wanted))))
    sample |= must & wanted
    wrong: list[str] = []
    with engine.connect() as conn:
        found = conn.execute(
            text(f"SELECT * FROM {table} WHERE id = ANY(:ids)"), {"ids": sorted(sample)}
        )
        for row in found:
            want, have = expected(row), by_key[row.id]
            bad = [c for c in COLUMNS if not same(want[c], have.get(c))]
            if bad:
                wrong.append(f"id {row.id}: {bad[0]} {have.get(bad[0])!r} != {want[bad[0]]!r}")
    if wrong:
        return False, f"{len(wrong)} of {len(sample)} compared rows differ, e.g. {wrong[:3]}"
    return True, f"{len(users)} users == {len(wanted)} rows; {len(sample)} compared by column"


# --- the measured runs --------------------------------------------------------------


def write_config(
    path: Path,
    source_url: str,
    sandbox: Sandbox,
    table: str,
    concurrency: int,
    state: Path,
    *,
    diff: bool = False,
) -> Path:
    """A config of one job: ``bench`` (cursor ``updated_at``) or ``bench-diff`` (``diff``).

    The diff job reads the same table in key order with ``detect: diff`` (no cursor, no
    lookback); give it a state file of its own.
    """
    source: dict[str, Any] = {"url": source_url, "table": table}
    if diff:
        source |= {"detect": "diff", "key": "id", "batch_size": 1000}
    else:
        source |= {"cursor": "updated_at", "key": "id", "batch_size": 1000, "lookback": 0}
    doc = {
        "personyze": {
            "api_key": API_KEY,
            "base_url": sandbox.url,
            "concurrency": concurrency,
            "requests_per_second": None,
            "timeout_s": 30,
            "max_attempts": 8,
        },
        "state": {"url": f"sqlite:///{state}"},
        "jobs": [
            {
                "name": DIFF_JOB if diff else "bench",
                "source": source,
                "mapping": dict(MAPPING),
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def measured(
    report: Report,
    sandbox: Sandbox,
    setting: str,
    what: str,
    cmd: list[str],
    rows: Callable[[Usage], int],
    timeout_s: float,
) -> tuple[Row, Usage]:
    """Run ``cmd`` measured, count the sandbox requests it made, add its table row."""
    before = sandbox.requests()
    usage = run_measured(cmd, timeout_s=timeout_s)
    requests = sandbox.requests() - before
    ok = report.check(
        f"{setting} {what}: exit status", usage.returncode == 0, str(usage.returncode)
    )
    if not ok:
        print(usage.stdout[-2000:], usage.stderr[-2000:], sep="\n", file=sys.stderr)
    done = rows(usage) if ok else 0
    row = Row(setting, what, done, usage.wall_s, None, requests, usage.cpu_s, usage.maxrss_mb)
    report.rows.append(row)
    return row, usage


def sync_runs(
    report: Report,
    sandbox: Sandbox,
    setting: str,
    engine: Engine,
    source_url: str,
    args: argparse.Namespace,
    tmp: Path,
    round_: int,
) -> None:
    """Backfill, a no-change incremental run, and an incremental run after 1% changed."""
    state = tmp / f"state-{setting}.db"
    config = write_config(
        tmp / f"sync-{setting}.yaml", source_url, sandbox, "people", args.concurrency, state
    )
    timeout = max(600.0, args.rows / 50)
    sandbox.reset()
    measured(
        report,
        sandbox,
        setting,
        "personyze-sync backfill",
        [CLI, "backfill", "-c", str(config), "bench"],
        lambda _: args.rows,
        timeout,
    )
    report.check(
        f"{setting} backfill: sandbox == source", *compare(engine, "people", sandbox, None, set())
    )

    measured(
        report,
        sandbox,
        setting,
        "personyze-sync once, nothing changed",
        [CLI, "once", "-c", str(config)],
        lambda _: 0,
        timeout,
    )
    report.check(
        f"{setting} once, nothing changed: sandbox == source",
        *compare(engine, "people", sandbox, None, set()),
    )

    changed = change_rows(engine, "people", CHANGED, round_)
    with engine.connect() as conn:
        touched = {
            int(i)
            for (i,) in conn.execute(
                text("SELECT id FROM people WHERE id % :step = :r"),
                {"step": round(1 / CHANGED), "r": round_ % round(1 / CHANGED)},
            )
        }
    measured(
        report,
        sandbox,
        setting,
        f"personyze-sync once, {CHANGED:.0%} changed",
        [CLI, "once", "-c", str(config)],
        lambda _: changed,
        timeout,
    )
    report.check(
        f"{setting} once, {CHANGED:.0%} changed: sandbox == source",
        *compare(engine, "people", sandbox, None, touched),
    )


def processes_run(
    report: Report,
    sandbox: Sandbox,
    setting: str,
    engine: Engine,
    source_url: str,
    args: argparse.Namespace,
    tmp: Path,
) -> None:
    """``backfill --processes P`` of the same table split in P shards, on an emptied sandbox.

    A job of its own (``bench-procs``, ``shards: P``) keeps its state in the bench's
    PostgreSQL database (a SQLite state store serves one process); ``concurrency`` is
    the same total, divided among the processes.
    """
    n = args.processes
    config = write_config(
        tmp / "sync-procs.yaml", source_url, sandbox, "people", args.concurrency, tmp / "x.db"
    )
    doc = yaml.safe_load(config.read_text())
    doc["state"]["url"] = source_url
    doc["jobs"][0] |= {"name": PROCS_JOB, "shards": n}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    sandbox.reset()
    measured(
        report,
        sandbox,
        setting,
        procs_label(n),
        [CLI, "backfill", "-c", str(config), PROCS_JOB, "--processes", str(n)],
        lambda _: args.rows,
        max(600.0, args.rows / 50),
    )
    report.check(
        f"{setting} backfill in {n} processes: sandbox == source",
        *compare(engine, "people", sandbox, None, set()),
    )


def procs_label(processes: int) -> str:
    return f"personyze-sync backfill in {processes} processes"


def diff_runs(
    report: Report,
    sandbox: Sandbox,
    setting: str,
    engine: Engine,
    source_url: str,
    args: argparse.Namespace,
    tmp: Path,
) -> None:
    """``detect: diff`` on the same table: a first run, a no-change run, a run after 1% changed.

    A config of its own (job ``bench-diff``, key ``id``, no cursor) and a fresh state
    file, on an emptied sandbox. Each run is ``personyze-sync once``: the first sends
    every row; the second reads every row and must send nothing; the third must send
    exactly the changed rows (any mapped column counts: the cursor plays no part).
    """
    config = write_config(
        tmp / "sync-diff.yaml",
        source_url,
        sandbox,
        "people",
        args.concurrency,
        tmp / "state-diff.db",
        diff=True,
    )
    timeout = max(600.0, args.rows / 50)
    once = [CLI, "once", "-c", str(config), DIFF_JOB]
    step = round(1 / CHANGED)
    sandbox.reset()

    def run(what: str, rows: int, must: set[int]) -> None:
        row, usage = measured(
            report, sandbox, setting, f"{DIFF}: {what}", once, lambda _: rows, timeout
        )
        if usage.returncode == 0:
            report.check(
                f"{setting} diff, {what}: requests == rows changed",
                row.requests == rows,
                f"{row.requests} requests for {rows} rows",
            )
        report.check(
            f"{setting} diff, {what}: sandbox == source",
            *compare(engine, "people", sandbox, None, must),
        )

    run("first run", args.rows, set())
    run("nothing changed", 0, set())
    changed = change_rows(engine, "people", CHANGED, DIFF_ROUND)
    with engine.connect() as conn:
        touched = {
            int(i)
            for (i,) in conn.execute(
                text("SELECT id FROM people WHERE id % :step = :r"),
                {"step": step, "r": DIFF_ROUND % step},
            )
        }
    run(f"{CHANGED:.0%} changed", changed, touched)


def baseline_run(
    report: Report,
    sandbox: Sandbox,
    setting: str,
    engine: Engine,
    source_url: str,
    seconds: float,
) -> None:
    """The sequential script, time-boxed; the sandbox must hold exactly the rows it did."""
    sandbox.reset()
    cmd = [
        PYTHON,
        str(HERE / "baseline.py"),
        "--source-url",
        source_url,
        "--table",
        "people",
        "--api-url",
        sandbox.url,
        "--api-key",
        API_KEY,
        "--seconds",
        str(seconds),
    ]

    def done(usage: Usage) -> int:
        return int(json.loads(usage.stdout.strip().splitlines()[-1])["rows"])

    row, usage = measured(
        report, sandbox, setting, "baseline (sequential)", cmd, done, seconds + 120
    )
    if usage.returncode == 0:
        row.seconds = float(json.loads(usage.stdout.strip().splitlines()[-1])["seconds"])
    with engine.connect() as conn:
        keys = {
            int(i)
            for (i,) in conn.execute(
                text("SELECT id FROM people ORDER BY updated_at, id LIMIT :n"), {"n": row.rows}
            )
        }
    report.check(
        f"{setting} baseline: sandbox == the {row.rows} rows it sent",
        *compare(engine, "people", sandbox, keys, set()),
    )


def wrk_ceiling(
    report: Report, args: argparse.Namespace, seconds: int, latency_ms: float = 0.0
) -> None:
    """The sandbox's own request rate, measured by wrk against a sandbox of its own.

    With ``latency_ms``, what the sandbox really allows at that latency and the
    concurrency: its own handling under load adds to the latency, so this is lower
    than concurrency ÷ latency.
    """
    setting = f"{latency_ms:g} ms"
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: no ceiling measured (apt-get install -y wrk)", flush=True)
        return
    sandbox = Sandbox(latency_ms)
    try:
        auth = "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()
        base = sandbox.url.removesuffix("/rest")
        cmd = [wrk, "-t2", f"-c{args.concurrency}", f"-d{seconds}s"]
        cmd += ["-s", str(HERE / "post_users.lua"), base, "--", auth]
        before = sandbox.requests()
        usage = run_measured(cmd, timeout_s=seconds + 60)
        requests = sandbox.requests() - before
        rate = re.search(r"Requests/sec:\s*([\d.]+)", usage.stdout)
        count = re.search(r"(\d+) requests in ([\d.]+)(m?s)", usage.stdout)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", usage.stdout)
        ok = usage.returncode == 0 and rate is not None and count is not None and errors is None
        report.check(
            f"{setting} wrk: ran, every answer 2xx",
            ok,
            usage.stdout.strip()[-300:] if not ok else "",
        )
        if rate is None or count is None:
            return
        unit = 1000 if count.group(3) == "ms" else 1
        report.rows.append(
            Row(
                setting,
                WRK,
                int(count.group(1)),
                float(count.group(2)) / unit,
                float(rate.group(1)),
                requests,
                usage.cpu_s,
                usage.maxrss_mb,
            )
        )
    finally:
        sandbox.stop()


def httpx_label(processes: int, prefix: str = HTTPX_ONLY) -> str:
    return f"{prefix}, {processes} process{'' if processes == 1 else 'es'}"


def httpx_ceiling(report: Report, args: argparse.Namespace) -> None:
    """The best a Python HTTP client reaches here: ``bench/httpx_ceiling.py`` for each P.

    personyze-sync's own connection in P processes for each P, then httpx's default
    transport (httpcore) in one, for comparison. A sandbox of its own with no added
    latency, emptied before each run; the rate is the workers' 200 answers over their
    timed span, the CPU their own process time.
    """
    runs = [(p, "sync", httpx_label(p)) for p in args.httpx_processes]
    runs.append((1, "httpcore", httpx_label(1, HTTPCORE_ONLY)))
    sandbox = Sandbox(0)
    try:
        for processes, transport, what in runs:
            sandbox.reset()
            cmd = [PYTHON, str(HERE / "httpx_ceiling.py"), "--api-url", sandbox.url]
            cmd += ["--api-key", API_KEY, "--processes", str(processes)]
            cmd += ["--seconds", str(args.httpx_seconds), "--transport", transport]
            before = sandbox.requests()
            usage = run_measured(cmd, timeout_s=args.httpx_seconds + 120)
            requests = sandbox.requests() - before
            try:
                figures = json.loads(usage.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                figures = None
            if figures is None:
                report.check(
                    f"0 ms {what}: ran",
                    False,
                    f"exit status {usage.returncode}: {usage.stderr.strip()[-500:]}",
                )
                continue
            report.check(
                f"0 ms {what}: every answer 200",
                usage.returncode == 0 and figures["failures"] == 0 and figures["ok"] > 0,
                f"{figures['ok']} of {figures['requests']} answered 200"
                + (f"; first failure: {figures['first_failure']}" if figures["failures"] else ""),
            )
            users = int(sandbox.stats()["users"])
            report.check(
                f"0 ms {what}: sandbox holds one user per answer",
                users == figures["ok"],
                f"{users} users for {figures['ok']} answers",
            )
            report.rows.append(
                Row(
                    "0 ms",
                    what,
                    int(figures["ok"]),
                    float(figures["seconds"]),
                    float(figures["requests_per_s"]),
                    requests,
                    float(figures["cpu_s"]),
                    usage.maxrss_mb,
                )
            )
    finally:
        sandbox.stop()


def memory_flatness(
    report: Report, engine: Engine, source_url: str, args: argparse.Namespace, tmp: Path
) -> None:
    """A backfill of a tenth of the rows (no latency), to see whether peak RSS grows."""
    small = max(args.rows // 10, 1)
    make_table(engine, "people_small", small)
    sandbox = Sandbox(0)
    try:
        config = write_config(
            tmp / "sync-small.yaml",
            source_url,
            sandbox,
            "people_small",
            args.concurrency,
            tmp / "state-small.db",
        )
        measured(
            report,
            sandbox,
            "0 ms",
            f"personyze-sync backfill, {small:,} rows",
            [CLI, "backfill", "-c", str(config), "bench"],
            lambda _: small,
            600,
        )
        report.check(
            f"0 ms backfill of {small:,} rows: sandbox == source",
            *compare(engine, "people_small", sandbox, None, set()),
        )
    finally:
        sandbox.stop()


# --- the report ---------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: Report) -> None:
    head = (
        f"{'setting':<8} {'what':<42} {'rows':>9} {'seconds':>8} {'rows/s':>9} "
        f"{'requests/row':>12} {'CPU s/1k rows':>13} {'peak RSS MB':>11}"
    )
    print()
    print(head)
    print("-" * len(head))
    for r in report.rows:
        if r.requests is None:
            per_row = "-"
        elif r.rows:
            per_row = f"{r.requests / r.rows:.3f}"
        else:
            per_row = f"{r.requests} req"
        cpu = r.cpu_s / r.rows * 1000 if r.cpu_s is not None and r.rows else None
        print(
            f"{r.setting:<8} {r.what:<42} {fmt(r.rows, ',d'):>9} {fmt(r.seconds, '.2f'):>8} "
            f"{fmt(r.rows_per_s, ',.0f'):>9} {per_row:>12} {fmt(cpu, '.3f'):>13} "
            f"{fmt(r.rss_mb, '.1f'):>11}"
        )
    print()


def print_targets(report: Report, args: argparse.Namespace) -> None:
    """The issue's targets, each with what was measured and PASS or MISS."""
    slow = f"{args.latency_ms:g} ms"
    lines: list[tuple[str, str, bool | str | None]] = []  # PASS/MISS, a word, or not measured

    def share(a: Row | None, b: Row | None) -> float | None:
        ra, rb = (a.rows_per_s if a else None), (b.rows_per_s if b else None)
        return None if ra is None or not rb else ra / rb

    def ratio(name: str, a: Row | None, b: Row | None, target: float, note: str = "") -> None:
        value = share(a, b)
        if value is None:
            lines.append((name, "not measured", None))
            return
        shown = f"{value:.1f}×" if target >= 2 else f"{value:.0%}"
        want = f">= {target:g}×" if target >= 2 else f">= {target:.0%}"
        lines.append((f"{name} {want}", shown + note, value >= target))

    wrk = report.find("0 ms", WRK)
    httpx_rows = [r for r in report.rows if r.what.startswith(HTTPX_ONLY) and r.rows_per_s]
    best_httpx = max(httpx_rows, key=lambda r: r.rows_per_s or 0.0, default=None)

    backfill_slow = report.find(slow, "personyze-sync backfill")
    backfill_fast = report.find("0 ms", "personyze-sync backfill")
    ratio(
        f"personyze-sync ÷ baseline at {slow}",
        backfill_slow,
        report.find(slow, "baseline (sequential)"),
        25,
    )
    ratio(
        f"personyze-sync ÷ (concurrency ÷ latency) at {slow}",
        backfill_slow,
        report.find(slow, "ceiling: concurrency ÷ latency"),
        0.85,
    )
    wrk_slow, cap = report.find(slow, WRK), report.find(slow, "ceiling: concurrency ÷ latency")
    if wrk_slow is not None and backfill_slow is not None:
        lines.append(
            (
                f"wrk and personyze-sync ÷ (concurrency ÷ latency) at {slow} (informational)",
                f"wrk {fmt(share(wrk_slow, cap), '.0%')}, personyze-sync "
                f"{fmt(share(backfill_slow, wrk_slow), '.0%')} of wrk's rate (not a target)",
                "INFO",
            )
        )
    for label, row in (
        ("personyze-sync ÷ wrk ceiling at 0 ms", backfill_fast),
        (
            f"personyze-sync in {args.processes} processes ÷ wrk ceiling at 0 ms",
            report.find("0 ms", procs_label(args.processes)),
        ),
    ):
        of_httpx = share(row, best_httpx)
        ratio(
            label,
            row,
            wrk,
            0.60,
            "" if of_httpx is None else f" ({of_httpx:.0%} of the best HTTP-client-only rate)",
        )
    httpx_of_wrk = share(best_httpx, wrk)
    info = (
        "not measured"
        if best_httpx is None or httpx_of_wrk is None
        else f"{httpx_of_wrk:.0%} ({best_httpx.what.removeprefix(HTTPX_ONLY + ', ')}, "
        f"{best_httpx.rows_per_s:,.0f} req/s; not a target)"
    )
    lines.append(("best HTTP-client-only ÷ wrk ceiling at 0 ms (informational)", info, "INFO"))
    for r in report.rows:
        if not r.what.startswith("personyze-sync") or r.requests is None:
            continue
        name = f"{r.setting} {r.what}: requests == rows changed"
        lines.append((name, f"{r.requests} requests for {r.rows} rows", r.requests == r.rows))
    for setting in ("0 ms", slow):
        noop = report.find(setting, "personyze-sync once, nothing changed")
        if noop and noop.seconds is not None:
            lines.append(
                (
                    f"{setting} no-change run < 2 s (target for 1,000,000 rows)",
                    f"{noop.seconds:.2f} s over {args.rows:,} rows",
                    noop.seconds < 2,
                )
            )
    peaks = [r for r in report.rows if r.what == "personyze-sync backfill" and r.rss_mb]
    if peaks:
        peak = max(r.rss_mb or 0 for r in peaks)
        lines.append(
            (
                "backfill peak RSS < 200 MB (target for 1,000,000 rows)",
                f"{peak:.1f} MB at {args.rows:,} rows",
                peak < 200,
            )
        )
    small = next((r for r in report.rows if r.what.startswith("personyze-sync backfill, ")), None)
    if backfill_fast and backfill_fast.rss_mb and small and small.rss_mb:
        growth = backfill_fast.rss_mb / small.rss_mb - 1
        lines.append(
            (
                "backfill peak RSS within 10% of a tenth of the rows",
                f"{backfill_fast.rss_mb:.1f} MB vs {small.rss_mb:.1f} MB ({growth:+.0%})",
                abs(growth) <= 0.10,
            )
        )
    diff_noop = report.find("0 ms", f"{DIFF}: nothing changed")
    if diff_noop is not None and diff_noop.requests is not None:
        read_cpu = None if diff_noop.cpu_s is None else diff_noop.cpu_s / args.rows * 1000
        lines.append(
            (
                "0 ms diff, nothing changed: requests == 0",
                f"{diff_noop.requests} requests; {fmt(diff_noop.seconds, '.2f')} s, "
                f"{fmt(diff_noop.cpu_s, '.2f')} CPU s "
                f"({fmt(read_cpu, '.3f')} per 1k rows read), "
                f"{fmt(diff_noop.rss_mb, '.1f')} MB over {args.rows:,} rows",
                "PASS" if diff_noop.requests == 0 else "FAIL",
            )
        )
    diffs = [r for r in report.rows if r.what.startswith(DIFF) and r.rss_mb]
    if diffs and backfill_fast and backfill_fast.rss_mb:
        top = max(r.rss_mb or 0.0 for r in diffs)
        growth = round((top / backfill_fast.rss_mb - 1) * 100)
        each = ", ".join(f"{r.what.removeprefix(DIFF + ': ')} {r.rss_mb:.1f}" for r in diffs)
        lines.append(
            (
                "diff peak RSS vs the 0 ms cursor backfill's (informational)",
                f"{each} MB vs {backfill_fast.rss_mb:.1f} MB (largest {growth:+d}%; not a target)",
                "INFO",
            )
        )
    print("targets")
    for name, shown, ok in lines:
        verdict = ok if isinstance(ok, str) else {True: "PASS", False: "MISS", None: "----"}[ok]
        print(f"  [{verdict}] {name:<68} {shown}")
    print()


# --- main ---------------------------------------------------------------------------


def processes_list(value: str) -> tuple[int, ...]:
    """``1,2,4`` as (1, 2, 4): each a number of processes, at least 1."""
    try:
        found = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {value}"
        ) from None
    if not found or min(found) < 1:
        raise argparse.ArgumentTypeError(f"each number of processes must be at least 1: {value}")
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--rows", type=int, default=100_000, help="rows to make (100,000)")
    size.add_argument("--million", action="store_true", help="1,000,000 rows")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added per request")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--wrk-seconds", type=int, default=10)
    parser.add_argument(
        "--httpx-seconds", type=float, help="each HTTP-client-only run (default: --wrk-seconds)"
    )
    parser.add_argument(
        "--httpx-processes",
        type=processes_list,
        default=(1, 2, 4),
        help="worker processes of the HTTP-client-only runs, comma-separated (1,2,4)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="processes of the backfill --processes run at 0 ms (2)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1,200 rows, baseline 1 s, wrk 1 s, HTTP-client-only 1 s (for the tests)",
    )
    args = parser.parse_args(argv)
    if args.million:
        args.rows = 1_000_000
    if args.quick:
        # two batches of 1,000 (so the keyset's second page and the pass's upper bound
        # are exercised), and every run as short as it can be: the tests check the
        # table's shape and the correctness checks, never the figures
        args.rows, args.baseline_seconds, args.wrk_seconds = 1_200, 1.0, 1
        args.httpx_seconds, args.httpx_processes = 1.0, (2,)
    if args.httpx_seconds is None:
        args.httpx_seconds = float(args.wrk_seconds)
    if args.latency_ms <= 0:
        parser.error("--latency-ms must be above 0 (the no-latency setting always runs)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    slow = f"{args.latency_ms:g} ms"
    print(
        f"personyze-sync bench: {args.rows:,} rows, concurrency {args.concurrency}, "
        f"added latency 0 ms and {slow}, {os.cpu_count()} CPUs",
        flush=True,
    )
    began = time.monotonic()
    with fresh_database() as source_url, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        engine = create_engine(source_url)
        try:
            made = time.monotonic()
            make_table(engine, "people", args.rows)
            print(f"made {args.rows:,} rows in {time.monotonic() - made:.1f} s", flush=True)
            wrk_ceiling(report, args, args.wrk_seconds)
            httpx_ceiling(report, args)
            for round_, (setting, latency) in enumerate(
                (("0 ms", 0.0), (slow, args.latency_ms)), start=1
            ):
                if latency:
                    wrk_ceiling(report, args, args.wrk_seconds, latency)
                    report.rows.append(
                        Row(
                            setting,
                            "ceiling: concurrency ÷ latency",
                            None,
                            None,
                            args.concurrency / (latency / 1000),
                        )
                    )
                sandbox = Sandbox(latency)
                try:
                    baseline_run(
                        report, sandbox, setting, engine, source_url, args.baseline_seconds
                    )
                    sync_runs(report, sandbox, setting, engine, source_url, args, tmp, round_)
                    if not latency:
                        processes_run(report, sandbox, setting, engine, source_url, args, tmp)
                        diff_runs(report, sandbox, setting, engine, source_url, args, tmp)
                finally:
                    sandbox.stop()
            memory_flatness(report, engine, source_url, args, tmp)
        finally:
            engine.dispose()
    print_table(report)
    print_targets(report, args)
    failed = [name for name, ok, _ in report.checks if not ok]
    print(
        f"{len(report.checks) - len(failed)} of {len(report.checks)} correctness checks passed "
        f"in {time.monotonic() - began:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
