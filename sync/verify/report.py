"""What a verify found: one finding per row not simply in step, and the report of a job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from sync.compare import Drift
from sync.state.records import Collision

Kind = Literal[
    "different", "missing", "unsynced", "vanished", "cannot_clear", "unsendable", "no_user"
]
DRIFT: tuple[Kind, ...] = ("different", "missing", "unsynced")  # what --repair resends
SAMPLE = 100  # rows a verify checks when told neither --sample nor --all


# -- what verify found -----------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One row that is not simply in step.

    ``different``: its user holds other values; ``missing``: the identity map names a
    user Personyze no longer has; ``unsynced``: a sendable row with no user (never
    sent, or rejected: ``reason``); ``vanished``: a known row gone from the source;
    ``cannot_clear``: in step but for columns emptied in the source; ``unsendable``:
    the mapping refuses the row now (see ``rejected list``); ``no_user``: with
    ``sync: update``, a row whose user Personyze does not have (a run never creates it).
    Only the first three are drift, which ``--repair`` resends.
    """

    kind: Kind
    key: str
    user_id: int | None = None
    columns: tuple[Drift, ...] = ()
    cannot_clear: tuple[Drift, ...] = ()
    modified_at: float | None = None  # the user's data_last_modified, Unix seconds
    reason: str | None = None
    note: str | None = None  # e.g. an identity collision

    @property
    def drift(self) -> bool:
        return self.kind in DRIFT


@dataclass(frozen=True)
class Repair:
    """What ``--repair`` resent and what a second look found still drifting."""

    resent: int
    sent: int
    rejected: int
    still: list[Finding]  # the repaired rows that still drift, as checked again


@dataclass
class VerifyReport:
    job: str
    mode: Literal["sample", "all"]
    sample: int | None = None  # rows asked for with --sample
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)
    repair: Repair | None = None

    def count(self, kind: Kind) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    @property
    def in_step(self) -> int:
        """Rows whose user holds what the source maps to (cannot-clear columns aside)."""
        return self.checked - sum(1 for f in self.findings if f.kind != "cannot_clear")

    @property
    def cannot_clear(self) -> int:
        return sum(1 for f in self.findings if f.cannot_clear)

    @property
    def to_repair(self) -> int:
        return sum(1 for f in self.findings if f.drift)

    @property
    def drift_remaining(self) -> bool:
        """Drift left after this verify (after the repair, if there was one)."""
        if self.repair is not None:
            return any(f.drift for f in self.repair.still)
        return self.to_repair > 0


def with_notes(findings: Sequence[Finding], notes: Mapping[str, str]) -> list[Finding]:
    return [
        replace(f, note=notes[f.key]) if f.key in notes and f.note is None else f for f in findings
    ]


def combine(job: str, reports: Sequence[VerifyReport], *, sample: int | None) -> VerifyReport:
    """The reports on a job's shards as one report on the job."""
    whole = VerifyReport(job, "all" if sample is None else "sample", sample=sample)
    repairs = [r.repair for r in reports if r.repair is not None]
    for report in reports:
        whole.checked += report.checked
        whole.findings += report.findings
        whole.collisions += report.collisions
    if repairs:
        whole.repair = Repair(
            sum(r.resent for r in repairs),
            sum(r.sent for r in repairs),
            sum(r.rejected for r in repairs),
            [f for r in repairs for f in r.still],
        )
    return whole
