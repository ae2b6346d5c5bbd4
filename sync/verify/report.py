"""What a verify found: one finding per row not simply in step, and the report of a job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from sync.compare import Drift
from sync.state.records import Collision

Kind = Literal[
    "different",
    "missing",
    "unsynced",
    "collision",
    "vanished",
    "cannot_clear",
    "unsendable",
    "no_user",
]
DRIFT: tuple[Kind, ...] = ("different", "missing", "unsynced")  # what --repair can resend
SAMPLE = 100  # rows a verify checks when told neither --sample nor --all


# -- what verify found -----------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One row that is not simply in step.

    ``different``: its user holds other values; ``missing``: the identity map names a
    user Personyze no longer has; ``unsynced``: a sendable row with no user (never
    sent, or rejected: ``reason``); ``collision``: a row that shares its Personyze user
    with another row (an identity collision) and so cannot be in step, whatever is
    resent; ``vanished``: a known row gone from the source;
    ``cannot_clear``: in step but for columns emptied in the source; ``unsendable``:
    the mapping refuses the row now (see ``rejected list``); ``no_user``: with
    ``sync: update``, a row whose user Personyze does not have (a run never creates it).
    Only the first three are drift, which ``--repair`` resends (but for a row sent
    without an answer: the next run reconciles it).
    """

    kind: Kind
    key: str
    user_id: int | None = None
    columns: tuple[Drift, ...] = ()
    cannot_clear: tuple[Drift, ...] = ()
    modified_at: float | None = None  # the user's data_last_modified, Unix seconds
    reason: str | None = None
    note: str | None = None  # the other row of an identity collision

    @property
    def drift(self) -> bool:
        return self.kind in DRIFT


@dataclass(frozen=True)
class Repair:
    """What ``--repair`` resent and what a second look found still drifting."""

    keys: list[str]  # the rows resent: the report's ``queued``, no more, no fewer
    sent: int
    rejected: int
    still: list[Finding]  # the drift left: as checked again, or as found if not resent

    @property
    def resent(self) -> int:
        return len(self.keys)


@dataclass
class VerifyReport:
    job: str
    mode: Literal["sample", "all"]
    sample: int | None = None  # rows asked for with --sample
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # what --repair resends (--dry-run says)
    collisions: list[Collision] = field(default_factory=list)  # every one the job has
    repair: Repair | None = None
    object: str = "users"  # what the job feeds: an audience's rows are its members

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
    def drift_remaining(self) -> bool:
        """Drift left after this verify (after the repair, if there was one).

        Identity collisions are not drift: no resend gives each row its own user.
        """
        if self.repair is not None:
            return any(f.drift for f in self.repair.still)
        return any(f.drift for f in self.findings)


def combine(
    job: str,
    reports: Sequence[VerifyReport],
    *,
    sample: int | None,
    collisions: Sequence[Collision],
) -> VerifyReport:
    """The reports on a job's shards as one report on the job, with its collisions."""
    whole = VerifyReport(
        job, "all" if sample is None else "sample", sample=sample, collisions=list(collisions)
    )
    repairs = [r.repair for r in reports if r.repair is not None]
    for report in reports:
        whole.checked += report.checked
        whole.findings += report.findings
        whole.queued += report.queued
    if repairs:
        whole.repair = Repair(
            [k for r in repairs for k in r.keys],
            sum(r.sent for r in repairs),
            sum(r.rejected for r in repairs),
            [f for r in repairs for f in r.still],
        )
    return whole
