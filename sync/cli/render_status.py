"""What ``status`` prints: the JSON document and the text of each job."""

from __future__ import annotations

import textwrap
from typing import Any

from rich.markup import escape
from rich.table import Table

from sync.admin import Adoption, JobStatus, RunRecord, duration_text
from sync.cli.render import iso_utc, json_value, key_value, out, run_doc, utc


def status_doc(job: JobStatus) -> dict[str, Any]:
    return {
        "job": job.name,
        "object": job.object,
        "detect": job.detect,
        "checkpoint": None
        if job.checkpoint is None
        else {"cursor": json_value(job.checkpoint.cursor), "key": key_value(job.checkpoint.key)},
        "last_compared": iso_utc(job.last_compared),
        "lag_seconds": job.lag_s,
        "held_by": job.held_by,
        "held_since": iso_utc(job.held_since),
        "of_job": of_job(job),
        "shard": None if job.shard is None else {"index": job.shard.index, "of": job.shard.count},
        "running": job.running,
        "rows_done": job.rows_done,
        "rows_per_second": None if job.rows_per_second is None else round(job.rows_per_second, 1),
        "rows_known": job.rows_known,
        "rejected": job.rejected,
        "rejections": [
            {"key": r.key, "reason": r.reason, "status": r.status, "attempts": r.attempts}
            for r in job.rejections
        ],
        "collisions": [
            {"key": c.key, "user_id": c.user_id, "other_key": c.other_key} for c in job.collisions
        ],
        "runs": [run_doc(r) for r in job.runs],
        "adoption": adoption_doc(job.adoption),
        "duplicates": [
            {"key": k, "user_id": u, "kept_user_id": kept} for k, u, kept in job.duplicates
        ],
        "audience": None if job.audience is None else vars(job.audience),
    }


def adoption_doc(a: Adoption | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "state": a.state,
        "wanted": a.wanted,
        "found": a.found,
        "reads": a.reads,
        "after_user_id": a.after_user_id,
        "highest_user_id": a.highest_user_id,
        "started_at": iso_utc(a.started_at),
        "ended_at": iso_utc(a.ended_at),
    }


def adoption_line(a: Adoption | None) -> str:
    """How a part's identity map was built, for ``status``."""
    if a is None:
        return "identity map: built by its own runs"
    if a.state == "skipped":
        return f"identity map: adoption skipped on {iso_utc(a.ended_at or a.started_at)}"
    if a.state == "running":
        return (
            f"identity map: adoption in progress (read up to user_id {a.after_user_id} "
            f"of {a.highest_user_id})"
        )
    return (
        f"identity map: adopted {a.found} of {a.wanted} rows from Personyze's users on "
        f"{iso_utc(a.ended_at or a.started_at)} ({a.reads} reads)"
    )


def position_line(job: JobStatus) -> str:
    """Where the job got to: its checkpoint and lag, or a diff job's last comparison."""
    cp = job.checkpoint
    if job.detect == "diff":
        done = (
            f"last compared {utc(job.last_compared)}"
            if job.last_compared is not None
            else "no pass finished yet"
            if job.runs
            else "never run"
        )
        under_way = "" if cp is None else f"; the pass under way is at key {cp.key}"
        return f"diff: {done}, {job.rows_known} rows known{under_way}"
    if cp is None:
        return "checkpoint: none " + (
            "(the next run reads from the beginning)" if job.runs else "(never run)"
        )
    lag = "" if job.lag_s is None else f", lag {duration_text(job.lag_s)}"
    return f"checkpoint: {cp.cursor}" + ("" if cp.key is None else f" / key {cp.key}") + lag


def of_job(job: JobStatus) -> str:
    """The configured job a part belongs to (the name its commands take)."""
    return job.name if job.shard is None else job.name.removesuffix(f"#{job.shard.name}")


def rate_text(rate: float) -> str:
    return f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"


def rows_done_line(job: JobStatus) -> str | None:
    """What the latest run has done: rows sent, unchanged and rejected, and how fast."""
    if not job.runs or job.rows_done is None:
        return None
    run = job.runs[0]
    counts = (
        f"{job.rows_done} rows done ({run.rows_sent} sent, {run.rows_skipped} unchanged, "
        f"{run.rows_rejected} rejected)"
    )
    rate = "" if job.rows_per_second is None else f", {rate_text(job.rows_per_second)} rows/s"
    if job.running:
        return f"this run ({run.kind}): {counts} so far{rate}"
    if run.outcome == "running":  # its process ended before the run did
        return f"last run ({run.kind}, its process died): {counts}"
    took = "" if run.ended_at is None else f" in {duration_text(run.ended_at - run.started_at)}"
    return f"last run ({run.kind}, {run.outcome}): {counts}{took}{rate}"


def say(text: str, indent: int = 2) -> None:
    """A line of ``status``, wrapped at spaces to the console's width (later lines two
    further in); a word longer than the width stays whole, never cut."""
    for line in textwrap.wrap(
        text,
        width=max(40, out.width),
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + 2),
        break_long_words=False,
        break_on_hyphens=False,
    ):
        out.print(line, markup=False, soft_wrap=True)


def print_status(job: JobStatus) -> None:
    shard = "" if job.shard is None else f", shard {job.shard.index} of {job.shard.count}"
    out.print(f"[bold]{escape(job.name)}[/bold] ({escape(job.object)}{shard})")
    if (a := job.audience) is not None:  # a set: no checkpoint, identity map or rejections
        where = "not found or created yet" if a.list_id is None else f"list {a.list_id}"
        say(f"audience {a.name!r} ({where}): {a.members} members, {a.waiting} rows waiting "
            "for their users")  # fmt: skip
    else:
        say(position_line(job))
    if job.held_by is not None and job.held_since is not None:
        say(f"running now in {job.held_by} since {utc(job.held_since)}")
    if (done := rows_done_line(job)) is not None:
        say(done)
    if a is None:
        say(
            f"{job.object} known: {job.rows_known}, rejected rows: {job.rejected}, "
            f"identity collisions: {len(job.collisions)}"
        )
        say(adoption_line(job.adoption))
    for rej in job.rejections[:10]:
        say(f"rejected row {rej.key}: {rej.reason}", 4)
    for c in job.collisions[:10]:
        say(f"row {c.key} and row {c.other_key} are one Personyze user ({c.user_id})", 4)
    for key, user_id, kept in job.duplicates[:10]:
        say(
            f"row {key} is held by two Personyze users: {kept} (kept) and {user_id} "
            "(a duplicate: delete it in Personyze)",
            4,
        )
    if job.runs:
        out.print(runs_table(job.runs, out.width))
    for r in job.runs:
        if r.error:
            say(f"{utc(r.started_at)} {r.kind} {r.outcome}: {r.error}")


RUN_COLUMNS = ("started", "kind", "outcome", "read", "sent", "unchanged", "rejected", "seconds")
DROPPED_FIRST = ("seconds", "kind")  # when the table is too wide even with ``started`` wrapped
GAP = 2  # the spaces between two columns
WRAPPED_START = len("2026-12-02")  # ``started`` wraps at its one space when it must


def runs_table(runs: list[RunRecord], width: int) -> Table:
    """The latest runs (their errors are printed below it, wrapped at words): a column
    is dropped, ``seconds`` then ``kind``, when even a wrapped ``started`` leaves too
    little room, so that no cell is cut."""
    rows = [
        (
            utc(r.started_at, label=False),
            r.kind,
            r.outcome,
            str(r.rows_read),
            str(r.rows_sent),
            str(r.rows_skipped),
            str(r.rows_rejected),
            "" if r.ended_at is None else f"{r.ended_at - r.started_at:.1f}",
        )
        for r in runs
    ]
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(RUN_COLUMNS)]
    widths[0] = WRAPPED_START
    shown = list(RUN_COLUMNS)
    for column in DROPPED_FIRST:
        needed = sum(w for c, w in zip(RUN_COLUMNS, widths, strict=True) if c in shown)
        if needed + GAP * (len(shown) - 1) <= width:
            break
        shown.remove(column)
    table = Table(box=None, pad_edge=False)
    for name in shown:
        figure = name not in ("started", "kind", "outcome")
        table.add_column(name, no_wrap=name != "started", justify="right" if figure else "left")
    for row in rows:
        table.add_row(*(v for c, v in zip(RUN_COLUMNS, row, strict=True) if c in shown))
    return table
