"""What ``PRAGMA synchronous=FULL`` costs the SQLite state store, beside NORMAL.

A backfill writes, per batch, the marks of its first sends (before sending) and then
the batch's outcome (acknowledgements, checkpoint). With WAL and NORMAL a power cut
may roll back the last commits, marks included, and an internal_id-only row whose
mark is gone would be sent again as a new user. FULL syncs the WAL on every commit.
This times both on the same disk, with the store's own methods, and prints a table.

    .venv/bin/python bench/sqlite_synchronous.py [--rows 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from sync.extract.query import Position
from sync.state.records import Ack, BatchOutcome, Mark
from sync.state.store import StateStore, state_engine


def run(folder: Path, mode: str, rows: int, batch: int) -> float:
    engine = state_engine(f"sqlite:///{folder}/{mode}.db")

    @event.listens_for(engine, "connect")
    def _mode(dbapi_conn: Any, _record: Any) -> None:  # after the store's own pragmas
        dbapi_conn.execute(f"PRAGMA synchronous={mode}")

    store = StateStore(engine, time.time)
    store.create_schema()
    part = store.part("bench")
    started = time.perf_counter()
    for at in range(0, rows, batch):
        keys = [str(k) for k in range(at, min(rows, at + batch))]
        marks = [Mark(k, {"internal_id": k, "first_name": f"F{k}"}, "f" * 32, 1) for k in keys]
        part.mark(marks)
        for quarter in range(0, len(keys), batch // 4):  # the runner commits per quarter
            done = keys[quarter : quarter + batch // 4]
            part.commit(
                BatchOutcome(
                    acks=[Ack(k, int(k) + 1, "f" * 32) for k in done],
                    checkpoint=Position(int(done[-1]), int(done[-1])),
                ),
            )
    seconds = time.perf_counter() - started
    store.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = {mode: run(Path(tmp), mode, args.rows, args.batch) for mode in ("NORMAL", "FULL")}
    print(f"state-store writes for {args.rows:,} rows in batches of {args.batch}")
    print(f"{'synchronous':<12} {'seconds':>8} {'µs per row':>11} {'rows/s':>10}")
    for mode, seconds in figures.items():
        per_row = seconds / args.rows * 1e6
        print(f"{mode:<12} {seconds:8.2f} {per_row:11.1f} {args.rows / seconds:10,.0f}")
    extra = (figures["FULL"] - figures["NORMAL"]) / args.rows * 1e6
    print(f"FULL costs {extra:.1f} µs more per row")


if __name__ == "__main__":
    main()
