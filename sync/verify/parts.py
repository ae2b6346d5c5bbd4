"""``verify`` of a job: each of its parts read back in turn, and one report of them all."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from sync.config.jobs import JobSettings
from sync.errors import ConfigError, FatalError
from sync.model import RunStats, Shard
from sync.run.parts import job_run
from sync.state.leases import Lease
from sync.state.records import Collision
from sync.verify.audience import verify_audience
from sync.verify.report import DRIFT, SAMPLE, VerifyReport, combine
from sync.verify.verifier import Verifier
from sync.wiring import Wiring, part_name

log = logging.getLogger(__name__)


def verify(
    wiring: Wiring, job: JobSettings, *, sample: int | None, everything: bool, repair: bool
) -> VerifyReport:
    """Read ``job``'s users back from Personyze and compare them with the source now.

    ``sample`` rows of the identity map picked at random (default 100, shared out
    among the job's shards), or ``everything``: every source row, a batch at a time.
    Only GETs are sent unless ``repair``: then the rows found drifting are resent
    (users gone from Personyze are created anew) and checked again, under the
    job's leases, so never while a run of the job goes on elsewhere. Rows in an identity
    collision (of any of the job's parts) are reported as such, never resent.
    """
    if everything and sample is not None:
        raise ConfigError("--sample and --all exclude each other")
    if sample is not None and sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {sample}")
    count = None if everything else sample or SAMPLE
    if job.object == "audience":  # members, not values: read back from the list
        return verify_audience(wiring, job, sample=count, repair=repair)
    parts = wiring.parts(job)
    reports: list[VerifyReport] = []
    collisions = _collisions(wiring, parts)
    leases: dict[str, Lease] = {}  # a repair's: its resends are fenced by them
    with ExitStack() as held:
        if repair:
            wiring.store.claim()  # a SQLite state store serves one process
            for name, _ in parts:
                lease = wiring.store.lease(name)
                if lease is None:
                    raise FatalError(
                        f"job {name} is being run by another process; nothing was "
                        "resent: try verify --repair again when that run has finished"
                    )
                leases[name] = held.enter_context(lease)
        for i, (name, shard) in enumerate(parts):
            share = None if count is None else count // len(parts) + (i < count % len(parts))
            if share == 0:
                continue
            verifier = Verifier(
                job,
                reader=wiring.reader(job, shard),
                part=wiring.store.part(name),
                client=wiring.client,
                collisions=collisions,
                stop=wiring.stopping,
            )
            report = verifier.everything() if share is None else verifier.sample(share)
            if repair:

                def resend(
                    rows: list[dict[str, Any]], forget: list[str], shard: Shard | None = shard
                ) -> RunStats:
                    lease = leases[part_name(job, shard)]
                    with job_run(wiring, job, shard=shard, lease=lease) as run:
                        return run.resend(rows, forget=forget)

                report = verifier.repair(report, resend)
            reports.append(report)
    if repair:  # a row sent as new may have met another row's user
        collisions = _collisions(wiring, parts)
    whole = combine(job.name, reports, sample=count, collisions=collisions)
    log.info(
        "verify finished",
        extra={
            "job": job.name,
            "mode": whole.mode,
            "rows_checked": whole.checked,
            "rows_in_step": whole.in_step,
            **{f"rows_{kind}": whole.count(kind) for kind in DRIFT},
            "rows_collision": whole.count("collision"),
            "collisions": len(whole.collisions),
            "rows_resent": whole.repair.resent if whole.repair else 0,
            "drift_remaining": whole.drift_remaining,
        },
    )
    return whole


def _collisions(wiring: Wiring, parts: list[tuple[str, Shard | None]]) -> list[Collision]:
    """The job's identity collisions, of every part (a pair may span two shards)."""
    return [c for name, _ in parts for c in wiring.store.part(name).collisions()]
