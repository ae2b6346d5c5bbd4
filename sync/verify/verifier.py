"""Read one part's users back from Personyze and compare them with the source as it is now.

The comparison of one row with one user is pure (:mod:`sync.compare` says how lenient
it is, and why): it takes the payload the mapper makes from the source row now and the
user Personyze returned, and names each column that differs.

:class:`Verifier` walks rows (a random sample of the identity map, or every source
row a batch at a time), reads their users by ``user_id`` (GETs only) and classifies
each row; with a ``resend`` callback it then resends what drifted and checks those
rows again. A row in an identity collision (its Personyze user is another row's too) is
a ``collision``, never drift and never resent: one user cannot hold two rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sync.compare import MODIFIED, as_number, compare, modified_at
from sync.config.jobs import JobSettings
from sync.errors import FatalError, Stopped
from sync.extract.query import DELETED
from sync.extract.reader import Row, SourceReader
from sync.load.client import PersonyzeClient
from sync.load.targets import target_for
from sync.mapping import Mapper, Record, Rejection
from sync.model import RunStats
from sync.state.part import PartState
from sync.state.records import Collision, KnownRow
from sync.state.schema import key_text
from sync.verify.report import Finding, Kind, Repair, VerifyReport

# -- walking rows ------------------------------------------------------------------------

Resend = Callable[[list[Row], list[str]], RunStats]


class Verifier:
    """One verify of one job (or of one shard of it, with ``reader`` and ``part`` to match).

    It reads only, unless :meth:`repair` is given a ``resend``. ``collisions``: the job's
    identity collisions (of all its parts: a pair may span two shards).
    """

    def __init__(
        self,
        job: JobSettings,
        *,
        reader: SourceReader,
        part: PartState,
        client: PersonyzeClient,
        collisions: Sequence[Collision] = (),
        stop: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.reader = reader
        self.mapper = Mapper(job)
        self.part = part  # the state of the job, or of the shard ``reader`` reads
        self.client = client
        self.target = target_for(job.object)  # users read by user_id, products by internal_id
        self.stop = stop or threading.Event()
        # Every Personyze column the job writes (targets are snake_case already).
        self.columns = tuple(dict.fromkeys([*job.mapping.values(), *job.transforms]))
        self._read = tuple(dict.fromkeys([*self.columns, MODIFIED]))
        self._rejections: dict[str, str] | None = None
        self._pending: set[str] | None = None
        self._repair: dict[str, Row] = {}  # key -> source row: the drifting rows to resend
        self._shared: dict[str, str] = {}  # key of a row in a collision -> a note saying so
        for c in collisions:
            self._shared.setdefault(
                c.key, f"shares Personyze user {c.user_id} with row {c.other_key}"
            )
            self._shared.setdefault(
                c.other_key, f"shares Personyze user {c.user_id} with row {c.key}"
            )
        self._forget: list[str] = []  # keys whose users Personyze no longer has

    def sample(self, count: int) -> VerifyReport:
        """Up to ``count`` rows of the identity map, picked at random."""
        report = VerifyReport(self.job.name, "sample", sample=count)
        keys = self.part.sample_keys(count)
        size = self.job.source.batch_size
        for at in range(0, len(keys), size):
            self._check_stop()
            chunk = keys[at : at + size]
            rows = self.reader.rows_by_key([self.reader.typed_key(k) for k in chunk])
            marked = {key_text(r[self.job.source.key]) for r in rows if r.get(DELETED)}
            rows = [r for r in rows if not r.get(DELETED)]  # delete_when's rows: not users
            known = self.part.lookup(chunk, refused=False).known
            found = {key_text(r[self.job.source.key]) for r in rows}
            for key in chunk:
                if key not in found and key not in marked and key in known:
                    report.findings.append(self._noted(self._vanished(key, known[key])))
            report.checked += len(chunk) - len(marked)
            report.findings += self._check(rows, known)
        return self._finish(report)

    def everything(self) -> VerifyReport:
        """Every source row, a batch at a time (never the whole table at once)."""
        report = VerifyReport(self.job.name, "all")
        for batch in self.reader.batches_after(None):
            self._check_stop()
            rows = [r for r in batch if not r.get(DELETED)]  # delete_when's rows: not users
            keys = [key_text(r[self.job.source.key]) for r in rows]
            report.checked += len(rows)
            known = self.part.lookup(keys, refused=False).known
            report.findings += self._check(rows, known)
        return self._finish(report)

    def repair(self, report: VerifyReport, resend: Resend) -> VerifyReport:
        """Resend the rows of ``report.queued`` (what ``--repair --dry-run`` names, and
        nothing else), then read their users back and check again.

        Drift not resent (a row sent without an answer) stays in ``Repair.still`` as it
        was found. Rows in an identity collision are never queued: a resend would only
        move the difference from one row to the other.
        """
        queued = {k: self._repair[k] for k in report.queued}
        forget = [k for k in self._forget if k in queued]
        left = [f for f in report.findings if f.drift and f.key not in queued]
        stats = resend(list(queued.values()), forget) if queued else RunStats()
        self._rejections = self._pending = None  # the resend changed them
        seen, again = self._recheck(list(queued.values()))
        self._repair, self._forget = {}, []  # one repair: the second look queues nothing
        still = [f for f in left if f.key not in seen] + [f for f in again if f.drift]
        report.repair = Repair(list(queued), stats.sent, stats.rejected, still)
        return report

    def _recheck(self, rows: list[Row]) -> tuple[set[str], list[Finding]]:
        """These rows checked again, with the other rows holding the same users.

        Returns the keys checked and what was found.
        """
        seen: set[str] = set()
        again: dict[str, Finding] = {}  # by key: a row sharing users may come twice
        size = self.job.source.batch_size
        for at in range(0, len(rows), size):
            chunk = rows[at : at + size]
            keys = [key_text(r[self.job.source.key]) for r in chunk]
            known = self.part.lookup(keys, refused=False).known
            holders = self.part.holders(k.user_id for k in known.values())
            others = {k for held in holders.values() for k in held} - set(keys)
            if others:
                typed = [self.reader.typed_key(k) for k in sorted(others)]
                partners = [r for r in self.reader.rows_by_key(typed) if not r.get(DELETED)]
                chunk = chunk + partners
                known |= self.part.lookup(sorted(others), refused=False).known
            seen.update(key_text(r[self.job.source.key]) for r in chunk)
            again.update((f.key, f) for f in self._check(chunk, known))
        return seen, list(again.values())

    # -- one batch -------------------------------------------------------------------

    def _check(self, rows: list[Row], known: dict[str, KnownRow]) -> list[Finding]:
        """Classify each row against its user; queue the drifting ones for a repair."""
        mapped = [self.mapper.map(r) for r in rows]
        wanted = [(known[k].user_id, m.payload) for m in mapped if (k := key_text(m.key)) in known]
        users = _by_id(self.target.read_back(self.client, wanted, self._read) if wanted else [])
        creates = self.job.sync != "update"  # sync: update never creates a user
        by_email = {} if creates else self._by_email(mapped, known)
        findings: list[Finding] = []
        for row, m in zip(rows, mapped, strict=True):
            key = key_text(m.key)
            previous = known.get(key)
            if isinstance(m, Rejection):
                uid = previous.user_id if previous is not None else None
                findings.append(self._noted(Finding("unsendable", key, uid, reason=m.reason)))
                continue
            if previous is not None:
                user = users.get(previous.user_id)
            else:
                user = by_email.get(_email(m.payload))
            if user is None:
                found, due = self._no_user(key, previous, creates)
            else:
                result = compare(m.payload, user, self.columns)
                if not (result.different or result.cannot_clear):
                    continue
                kind: Kind = "different" if result.different else "cannot_clear"
                reason = None
                if result.different and previous is None:  # sync: update, found by email
                    kind, reason = "unsynced", self._why_unsynced(key)[0]
                found, due = (
                    Finding(
                        kind,
                        key,
                        int(user["user_id"]),
                        result.different,
                        result.cannot_clear,
                        modified_at(user),
                        reason,
                    ),
                    bool(result.different),
                )
            found = self._noted(found)
            if due and found.drift:
                self._repair[key] = row
                if found.kind == "missing":
                    self._forget.append(key)
            findings.append(found)
        return findings

    def _noted(self, finding: Finding) -> Finding:
        """A row in an identity collision: a ``collision`` where it would be drift."""
        note = self._shared.get(finding.key)
        if note is None:
            return finding
        return replace(finding, kind="collision" if finding.drift else finding.kind, note=note)

    def _vanished(self, key: str, known: KnownRow) -> Finding:
        thing = "product" if self.job.object == "products" else "user"
        after = (
            f"the next run deletes its {thing}"
            if self.job.sync == "mirror"
            else f"its Personyze {thing} stays"
        )
        return Finding("vanished", key, known.user_id, reason=f"the source row is gone; {after}")

    def _no_user(self, key: str, previous: KnownRow | None, creates: bool) -> tuple[Finding, bool]:
        """A sendable row whose user Personyze does not have, and whether a repair is due."""
        if not creates:  # sync: update: nothing to repair, a run would not create it
            return Finding(
                "no_user",
                key,
                None if previous is None else previous.user_id,
                reason=(
                    "Personyze has no user with this row's email"
                    if previous is None
                    else "Personyze has no user with this user_id any more"
                )
                + "; sync: update never creates one",
            ), False
        if previous is not None:
            reason = (
                "Personyze has no product with this internal_id any more"
                if self.job.object == "products"
                else "Personyze has no user with this user_id any more"
            )
            return Finding("missing", key, previous.user_id, reason=reason), True
        reason, repairable = self._why_unsynced(key)
        return Finding("unsynced", key, reason=reason), repairable

    def _by_email(
        self, mapped: Sequence[Record | Rejection], known: Mapping[str, KnownRow]
    ) -> dict[str, dict[str, Any]]:
        """``sync: update``: the users of rows never synced, found by email as a run would."""
        emails = [
            _email(m.payload)
            for m in mapped
            if isinstance(m, Record) and key_text(m.key) not in known and _email(m.payload)
        ]
        found: dict[str, dict[str, Any]] = {}
        users = _by_id(self.client.users_by_email(emails, self._read) if emails else [])
        for uid in sorted(users, reverse=True):  # the lowest user_id wins, as a run's lookup
            found[_email(users[uid])] = users[uid]
        return found

    def _why_unsynced(self, key: str) -> tuple[str, bool]:
        """Why a sendable row has no user, and whether resending it now is safe."""
        if self._rejections is None:
            self._rejections = {r.key: r.reason for r in self.part.rejections()}
            self._pending = {p.key for p in self.part.pending()}
        assert self._pending is not None
        if key in self._rejections:
            return f"rejected: {self._rejections[key]}", True
        if key in self._pending:
            # resending before the next run reconciles it could make a second user
            return "sent without an answer; the next run reconciles it", False
        return "never sent", True

    def _finish(self, report: VerifyReport) -> VerifyReport:
        report.queued = list(self._repair)
        return report

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped("verify stopped; nothing was changed")


def _by_id(users: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Users Personyze returned, by user_id."""
    found: dict[int, dict[str, Any]] = {}
    for user in users:
        uid = as_number(user.get("user_id"))
        if not isinstance(uid, int):
            raise FatalError("Personyze answered a read of users with a user without a user_id")
        found[uid] = {**user, "user_id": uid}
    return found


def _email(values: Mapping[str, Any]) -> str:
    return str(values.get("email") or "").strip().lower()
