"""Output: the two consoles, the one time format, JSON documents, the run report."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from sync.admin import AdoptionSummary, RunRecord, StoredRejection
from sync.cli.exits import FAILED, exit_code, stop_signal
from sync.errors import Stopped, SyncError
from sync.model import RunStats

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# One time format: UTC, ISO 8601 in JSON (``2026-12-02T14:05:00Z``), "YYYY-MM-DD
# HH:MM:SS UTC" in text (without the label in a table column). Every time a JSON
# document shows goes through iso_utc (ours) or json_value (a source's cursor).
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"
TEXT_UTC = "%Y-%m-%d %H:%M:%S"


def iso_utc(stamp: float | None) -> str | None:
    """A time we recorded (a Unix timestamp), for JSON."""
    return None if stamp is None else time.strftime(ISO_UTC, time.gmtime(stamp))


def utc(stamp: float, *, label: bool = True) -> str:
    return time.strftime(TEXT_UTC, time.gmtime(stamp)) + (" UTC" if label else "")


def json_value(value: Any) -> Any:
    """A source's value (a cursor) for JSON: a time with a zone in ISO 8601 UTC, one
    without as ISO 8601 with none (the source's own; lag reads it as UTC), a date as
    ``YYYY-MM-DD``, a number as is, anything else as text."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def key_value(key: Any) -> str | None:
    """A row's key for JSON: text, whatever the source's type (the identity map's form)."""
    return None if key is None else str(key)


def run_doc(run: RunRecord) -> dict[str, Any]:
    """A run of the history for JSON: its times in ISO 8601 UTC, the rows it found in
    step as ``rows_unchanged`` (the one word; the column keeps its old name)."""
    doc = {("rows_unchanged" if k == "rows_skipped" else k): v for k, v in vars(run).items()}
    return doc | {"started_at": iso_utc(run.started_at), "ended_at": iso_utc(run.ended_at)}


def print_json(doc: Any) -> None:
    """Every JSON document the commands print, on stdout."""
    out.print_json(json.dumps(doc, default=str))


def shown(value: Any) -> str:
    """A value in one line of text, cut at 80 characters."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 80 else text[:79] + "…"


def report(
    results: dict[str, RunStats | SyncError],
    seconds: float,
    *,
    as_json: bool,
    dry_run: bool,
    quiet: bool = False,
) -> None:
    """Print each job's outcome; exit as :func:`sync.cli.exits.exit_code` says.

    ``quiet``: print nothing when that is 0 (for cron, which mails what is printed).
    """
    code = exit_code(results, dry_run=dry_run)
    if quiet and not code:
        return
    if as_json:
        doc: dict[str, Any] = {
            name: {"stopped": str(r)}
            if isinstance(r, Stopped)
            else {"error": str(r)}
            if isinstance(r, SyncError)
            else {
                "read": r.read,
                "sent": r.sent,
                "unchanged": r.unchanged,
                "rejected": r.rejected,
                "collisions": r.collisions,
                "deleted": r.deleted,
                "missing": r.missing,
                "vanished": r.vanished,
                "unresolved": r.unresolved,
                "deleted_before_sync": r.deleted_before_sync,
                "waiting": r.waiting,
                "rejected_rows": [row | {"key": key_value(row["key"])} for row in r.rejected_rows],
                **(
                    {
                        "would_send": r.would_send,
                        "would_delete": [
                            row | {"key": key_value(row["key"])} for row in r.would_delete
                        ],
                        "too_many_deletes": r.too_many_deletes,
                        "would_stop": r.too_many_deletes is not None,
                    }
                    if dry_run
                    else {}
                ),
            }
            for name, r in results.items()
        }
        print_json({"jobs": doc, "seconds": round(seconds, 3)})
    else:
        for name, r in results.items():
            if isinstance(r, Stopped):
                print_stopped(name, r)
                continue
            if isinstance(r, SyncError):
                err.print(
                    f"[red]job {escape(name)} failed:[/red] {escape(str(r))}",
                    markup=True,
                    soft_wrap=True,
                )  # escaped: messages quote names and SQL with [...]
                continue
            if dry_run:
                for payload in r.would_send:  # one JSON document a line: never wrapped
                    out.print(
                        json.dumps(payload, default=str, ensure_ascii=False),
                        markup=False,
                        soft_wrap=True,
                    )
                for doomed in r.would_delete:
                    out.print(
                        f"would delete user {doomed['user_id']} (row {doomed['key']}: "
                        f"{doomed['why']})",
                        markup=False,
                        soft_wrap=True,
                    )
                if r.too_many_deletes:
                    err.print(f"a real run would stop: {r.too_many_deletes}", markup=False)
            verb, count = ("would send", len(r.would_send)) if dry_run else ("sent", r.sent)
            deletes = len(r.would_delete) if dry_run else r.deleted
            out.print(
                f"{name}: read {r.read}, {verb} {count}"
                f", unchanged {r.unchanged}, rejected {r.rejected}"
                + (f", {'would delete' if dry_run else 'deleted'} {deletes}" if deletes else "")
                + (f", missing in Personyze {r.missing}" if r.missing else "")
                + (f", vanished from the source {r.vanished}" if r.vanished else "")
                + (
                    f", unresolved {r.unresolved} (sent without a certain answer: the next "
                    "run reconciles them)"
                    if r.unresolved
                    else ""
                )
                + (f", identity collisions {r.collisions}" if r.collisions else "")
                + (f", waiting {r.waiting} (users not in Personyze yet)" if r.waiting else "")
                + (
                    f", deleted at the source before it was ever synced {r.deleted_before_sync}"
                    if r.deleted_before_sync
                    else ""
                )
                + f" ({seconds:.1f}s)",
                markup=False,
                soft_wrap=True,
            )
            print_rejected(name, r.rejected_rows)
    if code:
        raise click.exceptions.Exit(code)


def print_stopped(name: str, stop: Stopped) -> None:
    """A job a signal stopped: not a failure, and the next run resumes it."""
    why = str(stop).removeprefix("stopped").lstrip(";:, ")
    err.print(
        f"job {name} stopped ({stop_signal()}){': ' + why if why else ''}; run the command "
        "again to resume",
        markup=False,
        soft_wrap=True,
    )


SHOWN_REJECTED = 20  # rejected rows a run's summary names; `rejected list` shows them all


def print_rejected(job: str, rows: list[dict[str, Any]]) -> None:
    """The rows this run rejected, each with its key and Personyze's (or the mapping's)
    reason."""
    for row in rows[:SHOWN_REJECTED]:
        out.print(f"  rejected {row['key']}: {row['reason']}", markup=False, soft_wrap=True)
    if len(rows) > SHOWN_REJECTED:
        out.print(
            f"  ... and {len(rows) - SHOWN_REJECTED} more: personyze-sync rejected list "
            f"-c CONFIG {job}",
            markup=False,
            soft_wrap=True,
        )


def rejection_doc(r: StoredRejection) -> dict[str, Any]:
    return {
        "key": r.key,
        "reason": r.reason,
        "status": r.status,
        "refused_by": "mapping" if r.status is None else "personyze",
        "attempts": r.attempts,
        "first_seen": iso_utc(r.first_at),
        "last_seen": iso_utc(r.last_at),
        "payload": r.payload,
    }


def adoption_summary(s: AdoptionSummary) -> str:
    if s.already:
        ended = [a.ended_at for a in (s.parts or {}).values() if a is not None and a.ended_at]
        when = iso_utc(max(ended)) if ended else "earlier"
        if s.skipped:
            return f"{s.job}: its adoption was skipped on {when}; nothing was read"
        done = f"{s.found} of {s.wanted} rows"
        return f"{s.job}: already adopted on {when} ({done}); nothing was read"
    if s.skipped:
        return f"{s.job}: adoption skipped; the next run sends its rows as new users"
    return (
        f"{s.job}: adopted {s.found} of {s.wanted} rows ({s.in_step} already in step), "
        f"read {s.users_read} users in {s.reads} reads, {s.duplicates} duplicates"
        + (f" (resumed after user_id {s.resumed_after})" if s.resumed_after else "")
    )


def print_rejections(found: dict[str, list[StoredRejection]], *, as_json: bool) -> None:
    """``rejected list``: each job's rejected rows."""
    if as_json:
        doc = [{"job": n, "rejected": [rejection_doc(r) for r in rs]} for n, rs in found.items()]
        print_json(doc)
        return
    for name, rows in found.items():
        out.print(f"[bold]{escape(name)}[/bold]: {len(rows) or 'no'} rejected row(s)")
        for r in rows:
            status = "mapping" if r.status is None else f"HTTP {r.status}"
            out.print(
                f"  key {r.key}  {status}  attempts {r.attempts}  "
                f"first seen {utc(r.first_at)}  last seen {utc(r.last_at)}",
                markup=False,
            )
            out.print(f"    reason: {r.reason}", markup=False, soft_wrap=True)
            payload = json.dumps(r.payload, default=str, ensure_ascii=False)
            out.print(f"    payload: {payload}", markup=False, soft_wrap=True)


def retry_report(
    results: dict[str, RunStats | SyncError],
    before: dict[str, int],
    after: dict[str, int],
    *,
    dry_run: bool,
    as_json: bool,
    quiet: bool = False,
) -> None:
    """``rejected retry``: per job, retried, delivered, still rejected; exit 1 if a job
    failed or rows are still rejected (not in a dry run: nothing was tried). ``quiet``:
    nothing printed when all went well."""
    code = exit_code(results)
    if not code and not dry_run and any(after.values()):
        code = FAILED  # not everything was delivered: a script must be able to tell
    if quiet and not code:
        return
    doc: dict[str, Any] = {}
    for name, r in results.items():
        if isinstance(r, Stopped):
            doc[name] = {"stopped": str(r)}
            if not as_json:
                print_stopped(name, r)
            continue
        if isinstance(r, SyncError):
            doc[name] = {"error": str(r)}
            if not as_json:
                err.print(f"job {name} failed: {r}", markup=False, soft_wrap=True)
            continue
        if dry_run:
            doc[name] = {"rejected": before[name], "would_send": r.would_send}
            if not as_json:
                for payload in r.would_send:
                    out.print(json.dumps(payload, default=str, ensure_ascii=False), markup=False)
                out.print(
                    f"{name}: {before[name]} rejected row(s), would send {len(r.would_send)}",
                    markup=False,
                )
            continue
        gone = max(0, before[name] - r.sent - after[name])
        doc[name] = {"retried": before[name], "delivered": r.sent, "still_rejected": after[name]}
        if not as_json:
            out.print(
                f"{name}: retried {before[name]}, delivered {r.sent}, still rejected {after[name]}"
                + (f", no longer in the source {gone}" if gone else ""),
                markup=False,
            )
    if as_json:
        print_json({"jobs": doc})
    if code:
        raise click.exceptions.Exit(code)
