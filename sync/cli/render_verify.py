"""What ``verify`` prints: the JSON document, the findings table, the summary."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sync.cli.render import iso_utc, out, shown, utc
from sync.verify import Finding, VerifyReport
from sync.verify.report import Kind

DRIFT_KINDS: tuple[Kind, ...] = ("different", "missing", "unsynced", "vanished")


def finding_doc(f: Finding) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "key": f.key,
        "user_id": f.user_id,
        "columns": [{"column": d.column, "want": d.want, "have": d.have} for d in f.columns],
        "cannot_clear": [{"column": d.column, "have": d.have} for d in f.cannot_clear],
        "data_last_modified": iso_utc(f.modified_at),
        "reason": f.reason,
        "note": f.note,
    }


def verify_doc(report: VerifyReport) -> dict[str, Any]:
    repair = report.repair
    return {
        "job": report.job,
        "object": report.object,
        "mode": report.mode,
        "sample": report.sample,
        "checked": report.checked,
        "in_step": report.in_step,
        **{kind: report.count(kind) for kind in DRIFT_KINDS},
        "cannot_clear": report.cannot_clear,
        "unsendable": report.count("unsendable"),
        "no_user": report.count("no_user"),
        "findings": [finding_doc(f) for f in report.findings],
        "collision": report.count("collision"),
        "collisions": [
            {
                "key": c.key,
                "other_key": c.other_key,
                "user_id": c.user_id,
                "seen_at": iso_utc(c.seen_at),
            }
            for c in report.collisions
        ],
        "repair": None
        if repair is None
        else {
            "resent": repair.resent,
            "resent_keys": repair.keys,
            "delivered": repair.sent,
            "rejected": repair.rejected,
            "still_drifting": [finding_doc(f) for f in repair.still],
        },
        "drift_remaining": report.drift_remaining,
    }


def findings_table(findings: list[Finding]) -> Table:
    table = Table("finding", "key", "user_id", "last modified", "detail", box=None, pad_edge=False)
    for f in findings:
        lines = [f"{d.column}: want {shown(d.want)}, have {shown(d.have)}" for d in f.columns]
        lines += [
            f"{d.column}: empty in the source, Personyze keeps {shown(d.have)} (cannot clear)"
            for d in f.cannot_clear
        ]
        lines += [line for line in (f.reason, f.note) if line]
        table.add_row(
            f.kind.replace("_", " "),
            Text(f.key),
            "" if f.user_id is None else str(f.user_id),
            "" if f.modified_at is None else utc(f.modified_at),
            Text("\n".join(lines)),
        )
    return table


def some(keys: list[str], limit: int = 20) -> str:
    """Up to ``limit`` keys, and how many more (``--json`` lists them all)."""
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def print_verify(report: VerifyReport, would_resend: list[str] | None) -> None:
    if report.object == "audience":
        what = (
            "every recorded member and every row of the query"
            if report.mode == "all"
            else f"up to {report.sample} recorded members, picked at random"
        )
    else:
        what = (
            "every source row"
            if report.mode == "all"
            else f"up to {report.sample} rows of the identity map, picked at random"
        )
    out.print(f"[bold]{escape(report.job)}[/bold]: verify of {what}")
    if report.findings:
        out.print(findings_table(report.findings))
    extra = [
        f"{label} {n}"
        for label, n in (
            ("vanished from the source", report.count("vanished")),
            ("cannot clear", report.cannot_clear),
            ("unsendable", report.count("unsendable")),
            ("without a user", report.count("no_user")),
        )
        if n
    ]
    out.print(
        f"{report.job}: checked {report.checked}, in step {report.in_step}, "
        f"different {report.count('different')}, missing {report.count('missing')}, "
        f"unsynced {report.count('unsynced')}" + "".join(f", {e}" for e in extra),
        markup=False,
    )
    if report.collisions:
        out.print(
            f"{report.job}: collisions: {len(report.collisions)} (rows sharing one Personyze "
            "user: not drift, never resent)",
            markup=False,
        )
    for c in report.collisions[:10]:
        since = "" if c.seen_at is None else f", since {utc(c.seen_at)}"
        out.print(
            f"  rows {c.key} and {c.other_key} are one Personyze user ({c.user_id}){since}",
            markup=False,
        )
    if len(report.collisions) > 10:
        out.print(f"  and {len(report.collisions) - 10} more (--json lists them)")
    if would_resend is not None:
        which = f": {some(would_resend)}" if would_resend else ""
        out.print(
            f"dry run: would resend {len(would_resend)} row(s){which}; nothing was sent",
            markup=False,
        )
    repair = report.repair
    if repair is not None:
        which = f" ({some(repair.keys)})" if repair.keys else ""
        out.print(
            f"{report.job}: repair resent {repair.resent}{which}, delivered {repair.sent}, "
            f"rejected {repair.rejected}, still drifting {len(repair.still)}",
            markup=False,
        )
        if repair.still:
            out.print(findings_table(repair.still))
