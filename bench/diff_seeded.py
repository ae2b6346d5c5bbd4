"""The diff mode (``detect: diff``) over a large table, without sending it first.

    .venv/bin/python bench/diff_seeded.py [--rows 1000000] [--new-share 0.01]

What a diff run costs when little changed is reading, mapping and fingerprinting every
row. Sending a million rows first would take most of an hour on this machine, so this
script writes the state that first run would leave (a user_id and the job's own
fingerprint per row, through the state store's own ``PartState.commit``) and then measures,
each run a process of its own through ``bench/measure.py`` (wall time, CPU, peak RSS):

1. ``personyze-sync once`` with nothing changed: it must send no request;
2. the same after ``--new-share`` of new rows were inserted: exactly one request each,
   and the sandbox must then hold exactly those users.

It needs PostgreSQL on 127.0.0.1:5432 like ``bench/run.py``, whose helpers it reuses.
Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    API_KEY,
    DIFF_JOB,
    Report,
    Sandbox,
    fresh_database,
    make_table,
    measured,
    print_table,
    write_config,
)

from sync.config import load_config
from sync.mapping import Mapper
from sync.state.records import Ack, BatchOutcome
from sync.wiring import Wiring

CLI = str(Path(sys.executable).parent / "personyze-sync")


def seed_state(config: Path) -> int:
    """The identity map a first diff run would have left, written straight in."""
    with Wiring(load_config(config, {})) as app:
        job = app.config.job(DIFF_JOB)
        mapper, part = Mapper(job), app.store.part(job.name)
        seeded = 0
        for batch in app.reader(job).batches_after(None):
            acks = [Ack(str(r["id"]), int(r["id"]), mapper.map(r).fingerprint) for r in batch]
            part.commit(BatchOutcome(acks=acks))
            seeded += len(acks)
        return seeded


def measure_diff(
    report: Report, url: str, tmp: Path, sandbox: Sandbox, args: argparse.Namespace
) -> None:
    engine = create_engine(url)
    make_table(engine, "people", args.rows)
    config = write_config(
        tmp / "diff.yaml",
        url,
        sandbox,
        "people",
        args.concurrency,
        tmp / "state.db",
        diff=True,
    )
    t0 = time.monotonic()
    seeded = seed_state(config)
    print(f"seeded {seeded:,} identities in {time.monotonic() - t0:.1f} s", flush=True)
    cmd = [CLI, "once", "-c", str(config), DIFF_JOB]
    env_note = f"{args.rows:,} rows"
    row, _ = measured(
        report,
        sandbox,
        "0 ms",
        f"diff, nothing changed ({env_note})",
        cmd,
        lambda _usage: 0,
        timeout_s=3600,
    )
    report.check("diff, nothing changed: no request", row.requests == 0, f"{row.requests} requests")
    new = int(args.rows * args.new_share)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO people (id, email, first_name, last_name, score, vip, updated_at)"
                " SELECT id, 'new' || id || '@example.com', 'New', 'Row', 1.5, false, now()"
                " FROM generate_series(CAST(:a AS int), CAST(:b AS int)) AS id"
            ),
            {"a": args.rows + 1, "b": args.rows + new},
        )
    row, _ = measured(
        report,
        sandbox,
        "0 ms",
        f"diff, {new:,} new rows ({env_note})",
        cmd,
        lambda _usage: new,
        timeout_s=3600,
    )
    report.check(
        "diff, new rows: one request each",
        row.requests == new,
        f"{row.requests} requests for {new} rows",
    )
    users = len(sandbox.users())
    report.check("diff, new rows: the sandbox holds exactly them", users == new, f"{users} users")
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--new-share", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    report = Report()
    started = time.monotonic()
    with fresh_database() as url, tempfile.TemporaryDirectory() as tmp:
        sandbox = Sandbox(0.0)
        try:
            measure_diff(report, url, Path(tmp), sandbox, args)
        finally:
            sandbox.stop()
    print_table(report)

    for name, ok, detail in report.checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    failed = [name for name, ok, _ in report.checks if not ok]
    print(
        f"\n{len(report.checks) - len(failed)} of {len(report.checks)} checks passed "
        f"in {time.monotonic() - started:.0f} s (API key {API_KEY!r} is the bench's own)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
