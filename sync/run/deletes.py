"""Deletes a run makes: users of rows ``delete_when`` marks, and with ``sync: mirror``
users of rows that vanished from the source; never more than ``max_deletes_per_run``.

Every delete a run would make is counted before anything is sent: too many stop it
there, having deleted nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

from sync.config.jobs import JobSettings
from sync.errors import TooManyDeletes
from sync.extract.reader import SourceReader
from sync.load.targets import USERS, Target
from sync.load.writer import Delivered, Failed, Outgoing, Writer
from sync.model import Position, RunObserver, RunStats
from sync.run.commit import Commits
from sync.run.deliveries import delivery
from sync.state.part import PartState
from sync.state.records import BatchOutcome
from sync.state.schema import key_text

KEY_PAGE = 1000  # identity-map keys checked against the source per query (vanished rows)


class Deletes:
    """A run's deletes and what it may still delete (``left``)."""

    def __init__(
        self,
        job: JobSettings,
        *,
        reader: SourceReader,
        part: PartState,
        writer: Writer | None,
        commits: Commits,
        stats: RunStats,
        observer: RunObserver | None = None,
        target: Target = USERS,
    ) -> None:
        self.job = job
        self.target = target  # how a delete names its record
        self.reader = reader
        self.part = part
        self.writer = writer
        self.commits = commits
        self.stats = stats
        self.observer = observer
        self.left = 0  # deletes this run may still make (max_deletes_per_run)

    def plan(self, start: Position | None) -> None:
        """Count the deletes this run would make; stop now, deleting nothing, if too many.

        A dry run lists them instead.
        """
        job = self.job
        if self.reader.shape.deleted is None and job.sync != "mirror":
            return
        known = self.part.row_count()
        allowed = job.max_deletes_per_run.allowed(known)
        planned = 0
        listing = self.writer is None
        for key, user_id in self._soft_deletes(start):
            planned += 1
            if listing:
                entry = {"key": key, "user_id": user_id, "why": "delete_when"}
                self.stats.would_delete.append(entry)
            elif planned > allowed:
                break
        if job.sync == "mirror" and (listing or planned <= allowed):
            for gone in self.vanished_pages():
                planned += len(gone)
                if listing:
                    self.stats.would_delete += [
                        {"key": k, "user_id": u, "why": "vanished from the source"} for k, u in gone
                    ]
                elif planned > allowed:
                    break
        self.left = allowed
        if planned > allowed:
            reason = (
                f"job {self.part.name!r} would delete {'at least ' if not listing else ''}"
                f"{planned} Personyze {job.object}, more than max_deletes_per_run allows "
                f"({allowed}: {job.max_deletes_per_run} of the {known} {job.object} this job "
                "has synced); "
                "nothing was deleted and nothing sent. Check the source (run with --dry-run "
                "to list them), then raise max_deletes_per_run if the deletes are meant"
            )
            if listing:
                self.stats.too_many_deletes = reason
            else:
                raise TooManyDeletes(reason)

    def spend(self) -> None:
        """One more delete_when delete; too many saves what was read before, and stops."""
        self.left -= 1
        if self.left < 0:
            self.commits.finish()
            raise TooManyDeletes(
                f"job {self.part.name!r}: more rows were marked deleted while the run went "
                "on than max_deletes_per_run allows; the rest were not deleted"
            )

    def _soft_deletes(self, start: Position | None) -> Iterator[tuple[str, int]]:
        """Synced rows that ``delete_when`` now marks, from ``start`` on."""
        if self.reader.shape.deleted is None:
            return
        key = self.job.source.key
        for batch in self.reader.deleted_after(start, None):
            keys = [key_text(r[key]) for r in batch]
            known = self.part.lookup(keys, refused=False).known
            yield from ((k, known[k].user_id) for k in keys if k in known)

    def vanished_pages(self) -> Iterator[list[tuple[str, int]]]:
        """Synced rows whose keys the source no longer holds, a page at a time."""
        after: str | None = None
        while page := self.part.known_keys(after, KEY_PAGE):
            after = page[-1][0]
            gone = self._absent(page)
            if gone:
                yield gone

    def vanished(self, *, delete: bool) -> None:
        """Count synced rows that vanished; with ``delete``, delete their users.

        Every vanished row is counted before any is deleted (a source briefly empty at
        the end of a run stops it here, deleting nothing), and each page is checked
        against the source again right before its deletes. A deleted row is kept as
        vanished, so it is sent again if it comes back with an old cursor value.
        """
        gone = sum(len(page) for page in self.vanished_pages())
        self.stats.vanished += gone
        if not delete or self.writer is None or not gone:
            return
        if gone > self.left:
            raise TooManyDeletes(
                f"job {self.part.name!r}: {gone} rows vanished from the source while the run "
                f"went on, more than max_deletes_per_run still allows "
                f"({max(0, self.left)}); nothing was deleted. Check the source"
            )
        for page in self.vanished_pages():
            deletion = self.target.deletion
            items = [Outgoing(k, deletion(k, u), "delete") for k, u in self._absent(page)]
            self.left -= len(items)
            results = self.writer.send(items)
            outcome = BatchOutcome()
            for item, result in zip(items, results, strict=True):
                if found := delivery(item.key, item.action, item.payload, None, result):
                    outcome.deliveries.append(found)
                if isinstance(result, Failed):
                    self.commits.failure = self.commits.failure or result.error
                elif isinstance(result, Delivered):
                    outcome.vanished.append((item.key, result.user_id))
            self.part.commit(outcome)
            self.stats.deleted += len(outcome.vanished)
            if self.observer is not None and outcome.vanished:
                self.observer.rows_done(self.part.name, "deleted", len(outcome.vanished))
            if self.commits.failure is not None:
                self.commits.finish()

    def _absent(self, page: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The (key, user_id) of ``page`` whose keys the source does not hold now."""
        typed = [self.reader.typed_key(k) for k, _ in page]
        present = {key_text(k) for k in self.reader.present_keys(typed)}
        return [(k, u) for k, u in page if k not in present]
