"""The delivery history: what was sent for one row, and what one run did.

Both read the state store only, so neither needs the API key.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sync.cli.common import config_option, json_option, log_options, open_app
from sync.cli.render import SHOWN_REJECTED, iso_utc, out, print_json, utc
from sync.config import HistorySettings
from sync.errors import ConfigError

if TYPE_CHECKING:
    from sync.state.records import RunRecord, StoredDelivery

SHOWN_DELIVERIES = 100  # the newest deliveries of a row that `history` shows (--limit)


@click.command()
@config_option
@click.argument("job")
@click.argument("key")
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=SHOWN_DELIVERIES,
    show_default=True,
    help="Show at most this many deliveries, the newest.",
)
@json_option
@log_options()
def history(config_path: Path, job: str, key: str, limit: int, as_json: bool) -> None:
    """What was sent for the row KEY of JOB, newest first: when, by which run, POST, PUT
    or DELETE, the columns sent (and which changed since the delivery before), and what
    Personyze answered. Values are never kept, only a hash of each column.

    \b
    Examples:
      personyze-sync history customers 42
      personyze-sync history customers 42 --json | jq '.[0].changed'
    """
    with open_app(config_path, needs_key=False) as app:
        settings = app.config.job(job)
        if settings.object == "audience":
            raise ConfigError(
                f"job {job} feeds an audience: its members are not deliveries of rows and no "
                f"history is kept of them; status shows its members, verify {job} reads "
                "them back"
            )
        kept = settings.history or app.config.state.history
        found = app.store.deliveries(settings.name, key, limit)
    if as_json:
        print_json([delivery_doc(d) for d in found])
        return
    if not found:
        out.print(f"{job}: no delivery of key {key} is kept ({retention_text(kept)})", markup=False)
        return
    out.print(
        f"{job} key {key}: {len(found)} deliveries, newest first ({retention_text(kept)})",
        markup=False,
    )
    for d in found:
        out.print(f"  {utc(d.at)}  {run_text(d.run_id)}  {delivery_line(d)}", markup=False)
        if d.columns:
            out.print(f"    columns: {', '.join(d.columns)}", markup=False, soft_wrap=True)
            out.print(f"    changed: {changed_text(d.changed)}", markup=False, soft_wrap=True)


@click.command()
@config_option
@click.argument("job")
@click.argument("run_id", metavar="RUN_ID", type=int)
@json_option
@log_options()
def runs(config_path: Path, job: str, run_id: int, as_json: bool) -> None:
    """What run RUN_ID of JOB did: its counts, its deliveries by outcome, the rows it
    rejected with their reasons, and its error (`history` and `status --json` show runs'
    ids).

    \b
    Examples:
      personyze-sync runs customers 12
      personyze-sync runs customers 12 --json | jq '.rejected_rows'
    """
    with open_app(config_path, needs_key=False) as app:
        settings = app.config.job(job)
        found = app.store.run_of(settings.name, run_id)
    if found is None:
        raise click.BadParameter(
            f"job {job} has no run {run_id} (personyze-sync status --json lists its latest)",
            param_hint="RUN_ID",
        )
    run, done = found
    doc = run_doc(run, done)
    if as_json:
        print_json(doc)
        return
    print_run(doc)


def delivery_doc(d: StoredDelivery) -> dict[str, Any]:
    return {
        "at": iso_utc(d.at),
        "run_id": d.run_id,
        "part": d.part,
        "key": d.key,
        "operation": d.operation,
        "outcome": d.outcome,
        "status": d.status,
        "user_id": d.user_id,
        "reason": d.reason,
        "columns": d.columns,
        "changed": d.changed,
        "fingerprint": d.fingerprint,
    }


def run_doc(run: RunRecord, done: list[StoredDelivery]) -> dict[str, Any]:
    """The run as ``status --json`` shows its runs, with its deliveries by outcome and
    the rows it rejected."""
    return {
        "id": run.id,
        "job": run.job,
        "kind": run.kind,
        "outcome": run.outcome,
        "started_at": iso_utc(run.started_at),
        "ended_at": iso_utc(run.ended_at),
        "seconds": None if run.ended_at is None else round(run.ended_at - run.started_at, 3),
        "rows_read": run.rows_read,
        "rows_sent": run.rows_sent,
        "rows_unchanged": run.rows_skipped,
        "rows_rejected": run.rows_rejected,
        "error": run.error,
        "holder": run.holder,
        "deliveries": dict(sorted(Counter(d.outcome for d in done).items())),
        "rejected_rows": [
            {"key": d.key, "status": d.status, "reason": d.reason, "at": iso_utc(d.at)}
            for d in done
            if d.outcome == "rejected"
        ],
    }


def print_run(doc: dict[str, Any]) -> None:
    out.print(f"run {doc['id']} of {doc['job']}: {doc['kind']}, {doc['outcome']}", markup=False)
    ended = doc["ended_at"]
    until = f", ended {ended} ({doc['seconds']:g} s)" if ended else ", not ended"
    out.print(f"  started {doc['started_at']}{until}", markup=False)
    counts = ", ".join(f"{k} {doc['rows_' + k]}" for k in ("read", "sent", "unchanged", "rejected"))
    out.print(f"  rows: {counts}", markup=False)
    kept = ", ".join(f"{k} {n}" for k, n in doc["deliveries"].items()) or "none kept"
    out.print(f"  deliveries: {kept}", markup=False)
    rows = doc["rejected_rows"]
    for row in rows[:SHOWN_REJECTED]:
        status = "mapping" if row["status"] is None else f"HTTP {row['status']}"
        out.print(f"  rejected {row['key']} ({status}): {row['reason']}", markup=False)
    if len(rows) > SHOWN_REJECTED:
        out.print(f"  ... and {len(rows) - SHOWN_REJECTED} more: --json lists them", markup=False)
    if doc["error"]:
        out.print(f"  error: {doc['error']}", markup=False, soft_wrap=True)


def delivery_line(d: StoredDelivery) -> str:
    """``POST sent: user_id 9001``, ``PUT rejected: HTTP 400 bad email``."""
    what = d.operation or "not sent"
    if d.outcome in ("sent", "deleted"):
        return f"{what} {d.outcome}: user_id {d.user_id}"
    status = f"HTTP {d.status} " if d.status is not None else ""
    return f"{what} {d.outcome}: {status}{d.reason or ''}".rstrip()


def run_text(run_id: int | None) -> str:
    return "run ?" if run_id is None else f"run {run_id}"


def changed_text(changed: list[str] | None) -> str:
    if changed is None:
        return "(no earlier delivery kept)"
    return ", ".join(changed) or "none"


def retention_text(kept: HistorySettings) -> str:
    if not kept.enabled:
        return "the history is off: history.enabled is false"
    if kept.keep_per_row is not None:
        return f"the last {kept.keep_per_row} per row are kept"
    days = 30.0 if kept.keep_for is None else kept.keep_for.total_seconds() / 86400
    return f"the last {days:g} days are kept"
