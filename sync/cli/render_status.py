"""What ``status`` prints: the JSON document and the text of each job."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sync.admin import Adoption, JobStatus
from sync.cli.render import iso_utc, out, utc


def status_doc(job: JobStatus) -> dict[str, Any]:
    return {
        "job": job.name,
        "checkpoint": None
        if job.checkpoint is None
        else {"cursor": job.checkpoint.cursor, "key": job.checkpoint.key},
        "lag_seconds": job.lag_s,
        "held_by": job.held_by,
        "held_since": job.held_since,
        "rows_known": job.rows_known,
        "rejected": job.rejected,
        "rejections": [
            {"key": r.key, "reason": r.reason, "status": r.status, "attempts": r.attempts}
            for r in job.rejections
        ],
        "collisions": [
            {"key": c.key, "user_id": c.user_id, "other_key": c.other_key} for c in job.collisions
        ],
        "runs": [r.__dict__ for r in job.runs],
        "adoption": adoption_doc(job.adoption),
        "duplicates": [
            {"key": k, "user_id": u, "kept_user_id": kept} for k, u, kept in job.duplicates
        ],
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


def print_status(job: JobStatus) -> None:
    cp = job.checkpoint
    out.print(f"[bold]{escape(job.name)}[/bold]")
    out.print(
        f"  checkpoint: {'none (never run)' if cp is None else f'{cp.cursor} / key {cp.key}'}"
        + (f", lag {job.lag_s:.0f}s" if job.lag_s is not None else ""),
        markup=False,
    )
    if job.held_by is not None and job.held_since is not None:
        out.print(f"  running now in {job.held_by} since {utc(job.held_since)}", markup=False)
    out.print(
        f"  users known: {job.rows_known}, rejected rows: {job.rejected}, "
        f"identity collisions: {len(job.collisions)}",
        markup=False,
    )
    out.print(f"  {adoption_line(job.adoption)}", markup=False)
    for rej in job.rejections[:10]:
        out.print(f"    rejected row {rej.key}: {rej.reason}", markup=False, soft_wrap=True)
    for c in job.collisions[:10]:
        out.print(
            f"    row {c.key} and row {c.other_key} are one Personyze user ({c.user_id})",
            markup=False,
        )
    for key, user_id, kept in job.duplicates[:10]:
        out.print(
            f"    row {key} is held by two Personyze users: {kept} (kept) and {user_id} "
            "(a duplicate: delete it in Personyze)",
            markup=False,
        )
    if job.runs:
        table = Table(
            "started",
            "kind",
            "outcome",
            "read",
            "sent",
            "unchanged",
            "rejected",
            "seconds",
            "error",
            box=None,
            pad_edge=False,
        )
        for r in job.runs:
            took = "" if r.ended_at is None else f"{r.ended_at - r.started_at:.1f}"
            table.add_row(
                utc(r.started_at, label=False),
                r.kind,
                r.outcome,
                str(r.rows_read),
                str(r.rows_sent),
                str(r.rows_skipped),
                str(r.rows_rejected),
                took,
                Text(r.error or ""),
            )
        out.print(table)
