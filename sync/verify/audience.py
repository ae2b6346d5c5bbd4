"""``verify`` of an audience job: the members it recorded, read back from its Personyze list.

An audience holds no values, only who is in it, so there is nothing to compare column by
column: verify reads the recorded members back (``user_list_users`` in-lists, GETs
only). A recorded member the list no longer holds (removed by hand in Personyze, say) is
``missing``, and ``--repair`` adds it again. With ``--all`` every row of the query is
placed too, as a run places it: a row whose user is known but not added yet is
``unsynced`` (repair adds it), a row with no user yet is ``no_user`` (it waits), a
recorded member whose row left the query is ``vanished`` (the next mirror run removes
it; ``sync: add`` keeps it).
"""

from __future__ import annotations

import random
from contextlib import ExitStack

from sync.config.jobs import JobSettings
from sync.errors import ConfigError, FatalError
from sync.run.audience import AudienceRun
from sync.verify.report import Finding, Repair, VerifyReport
from sync.wiring import Wiring


def verify_audience(
    wiring: Wiring, job: JobSettings, *, sample: int | None, repair: bool
) -> VerifyReport:
    """Check ``sample`` recorded members picked at random, or (None) every member and
    every row of the query; with ``repair``, add back what is missing, under the job's
    lease, and check those members again."""
    report = VerifyReport(
        job.name, "all" if sample is None else "sample", sample=sample, object="audience"
    )
    with ExitStack() as held:
        lease = None
        if repair:
            wiring.store.claim()  # a SQLite state store serves one process
            lease = wiring.store.lease(job.name)
            if lease is None:
                raise FatalError(
                    f"job {job.name} is being run by another process; nothing was added: "
                    "try verify --repair again when that run has finished"
                )
            held.enter_context(lease)
        run = AudienceRun(wiring, job, lease)
        list_id = run.find_list(create=False)
        recorded = run.state.members()  # user_id -> row key
        if list_id is None:
            if recorded:  # members recorded, yet no list: find_list would have said so
                raise FatalError(f"job {job.name}: its audience's list is not known")
            if repair:
                raise ConfigError(
                    f"audience {job.audience!r} does not exist in Personyze yet: nothing "
                    f"was added. Run the job once to create it: personyze-sync once "
                    f"-c CONFIG {job.name}"
                )
            return report
        checked = list(recorded)
        if sample is not None:
            checked = random.sample(checked, min(sample, len(checked)))
        gone: set[int] = set()  # recorded members whose rows left the query (--all)
        wanted: dict[int, str] = {}  # user_id -> row key: what a repair adds
        if sample is None:
            gone = _place_the_query(run, recorded, report, wanted)
        present = run.client.members_among(list_id, [u for u in checked if u not in gone])
        for user_id in checked:
            if user_id not in present and user_id not in gone:
                wanted[user_id] = recorded[user_id]
                report.findings.append(
                    Finding(
                        "missing",
                        recorded[user_id],
                        user_id,
                        reason=f"recorded as a member, but list {list_id} does not hold "
                        "this user now (removed in Personyze?)",
                    )
                )
        report.checked += len(checked) if sample is not None else len(gone)
        report.queued = list(wanted.values())
        if repair:
            report.repair = _add_again(run, list_id, wanted, report)
    return report


def _place_the_query(
    run: AudienceRun, recorded: dict[int, str], report: VerifyReport, wanted: dict[int, str]
) -> set[int]:
    """Every row of the query placed as a run would; the recorded members that left it."""
    members = run.members()
    for user_id, key in members.wanted.items():
        if user_id not in recorded:
            wanted[user_id] = key
            reason = "in the query, not added yet: the next run adds it"
            report.findings.append(Finding("unsynced", key, user_id, reason=reason))
    for key in members.waiting:
        reason = "no Personyze user yet (by the users job or by email): it waits"
        report.findings.append(Finding("no_user", key, reason=reason))
    after = "the next run removes it" if run.job.sync == "mirror" else "sync: add keeps it"
    gone = {u for u, key in recorded.items() if u not in members.wanted and key not in members.keys}
    for user_id in sorted(gone):
        reason = f"left the query; {after}"
        report.findings.append(Finding("vanished", recorded[user_id], user_id, reason=reason))
    report.checked = len(members.keys)
    return gone


def _add_again(
    run: AudienceRun, list_id: int, wanted: dict[int, str], report: VerifyReport
) -> Repair:
    """Add the wanted members, then look at what the list still lacks."""
    run.add(list_id, list(wanted), wanted)
    present = run.client.members_among(list_id, list(wanted))
    still = [f for f in report.findings if f.drift and f.user_id not in present]
    return Repair(list(wanted.values()), len(wanted) - len(still), 0, still)
