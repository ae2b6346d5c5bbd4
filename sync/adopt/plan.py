"""The plan of an adoption: whether a part needs one, what its pass costs, what a run
says when it refuses; and the summary a pass returns. The pass itself is ``adopter``."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from sync.config.jobs import JobSettings
from sync.state.adoptions import Adoption, Adoptions
from sync.state.store import StateStore

INLINE_READS = 20  # a run adopts by itself when the pass costs at most this many reads
IDENTIFIER_ORDER = ("internal_id", "fb_id")  # what a row is looked for by, in Personyze


@dataclass(frozen=True)
class Estimate:
    """What a pass over Personyze's users costs: ``reads`` pages of 50 users."""

    highest_user_id: int | None  # None: Personyze holds no user
    reads: int
    after_user_id: int = 0  # a pass already under way resumes after this user

    def seconds(self, requests_per_second: float | None) -> float | None:
        """The time the reads take at the client's rate ceiling (None: no ceiling)."""
        if not requests_per_second:
            return None
        return self.reads / requests_per_second


@dataclass
class AdoptionSummary:
    """What an adoption did (``already``: it was done before; nothing was read)."""

    job: str
    wanted: int = 0
    found: int = 0
    in_step: int = 0
    reads: int = 0  # pages of users read, over the whole adoption (also before a crash)
    users_read: int = 0  # users read by this process
    duplicates: int = 0
    resumed_after: int | None = None  # the pass resumed after this user_id
    already: bool = False
    skipped: bool = False
    parts: dict[str, Adoption | None] | None = None  # each part's record, at the end


def identifier_of(job: JobSettings) -> str | None:
    """The column a job's rows are looked for by: internal_id, else fb_id (None: neither
    is mapped, so every row merges by email or carries its user_id)."""
    targets = set(job.mapping.values()) | set(job.transforms)
    return next((c for c in IDENTIFIER_ORDER if c in targets), None)


def mapped_columns(job: JobSettings) -> tuple[str, ...]:
    """Every Personyze column the job maps (the columns an adoption reads and compares)."""
    return tuple(dict.fromkeys([*job.mapping.values(), *job.transforms]))


def identifier_text(value: Any) -> str | None:
    """An identifier's value as the text rows and users are matched by (None: empty)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    text = str(value).strip()
    return text or None


def adoption_needed(store: StateStore, part: str) -> bool:
    """Whether a run of ``part`` must adopt first: the store never synced it (no row in
    the identity map, no checkpoint) and no adoption of it was ever recorded."""
    state = store.part(part)
    return (
        Adoptions(store).get(part) is None and state.row_count() == 0 and state.checkpoint() is None
    )


_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def duration_text(seconds: float) -> str:
    """A duration in its two largest units: ``42s``, ``8m 14s``, ``2h 5m``, ``1d 1h``
    (an estimate, a lag); a part of a second counts as one."""
    total = max(1, round(seconds)) if seconds > 0 else 0
    for (unit, size), (small, small_size) in itertools.pairwise(_UNITS):
        if total >= size:
            big, rest = divmod(total, size)
            below = rest // small_size
            return f"{big}{unit}" + (f" {below}{small}" if below else "")
    return f"{total}s"


def cost_text(estimate: Estimate, requests_per_second: float | None) -> str:
    """``about 24,692 reads, ~8m 14s at personyze.requests_per_second 50``."""
    seconds = estimate.seconds(requests_per_second)
    if seconds is None:
        return f"about {estimate.reads:,} reads; no personyze.requests_per_second ceiling is set"
    return (
        f"about {estimate.reads:,} reads, ~{duration_text(seconds)} at "
        f"personyze.requests_per_second {requests_per_second:g}"
    )


def refusal(
    job: str, estimate: Estimate, *, requests_per_second: float | None, config_path: str
) -> str:
    """What a run says when it will not send before an adoption."""
    return (
        f"job {job}: this state store has never synced the job, and Personyze already holds "
        f"users (highest user_id {estimate.highest_user_id}): rows without an email could "
        f"become second users. Adopt them first: personyze-sync adopt -c {config_path} {job} "
        f"({cost_text(estimate, requests_per_second)}), or, if Personyze holds none of this "
        f"job's users, personyze-sync adopt -c {config_path} {job} --skip"
    )
