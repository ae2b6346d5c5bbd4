"""SQLite leases: a file serves one process at a time, one run per name within it.

:meth:`SqliteLeases.claim` takes an ``flock`` on ``<file>.lock``, which the kernel
frees when the process ends; inside the process, a set of the names running keeps
two threads off the same job. Takes write generations as on PostgreSQL (so
:meth:`Lease.fence` works the same), but need no heartbeat: the flock cannot be lost.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, inspect

from sync.errors import StateError
from sync.state.leases.interface import Lease, Leases, Transaction
from sync.state.records import LeaseInfo
from sync.state.schema import leases

CLAIM_TRIES = 5  # a probe by ``status`` holds the lock file for an instant: try again
CLAIM_WAIT = 0.1


@dataclass
class _Claim:
    """This process's hold on one SQLite file: its lock file, and the names running."""

    fd: int | None  # None: an in-memory database, which no other process can open
    users: int = 0
    names: set[str] = field(default_factory=set)


# Every store of this process on one file shares its claim (flock locks are per
# open file, so a second open in the same process would refuse itself).
_claims: dict[Path, _Claim] = {}
_claims_lock = threading.Lock()


class SqliteLeases(Leases):
    """One process per file (an flock), one run per name within it."""

    def __init__(
        self,
        database: str | None,
        holder: str,
        clock: Callable[[], float],
        transaction: Transaction,
        where: str,
        sleep: Callable[[float], None],
    ) -> None:
        super().__init__(holder, clock, transaction, where)
        self._sleep = sleep
        self.lock_path = (
            Path(f"{Path(database).resolve()}.lock")
            if database and database != ":memory:"
            else None
        )
        self._claim: _Claim | None = None

    def claim(self) -> None:
        """Take the file for this process, or raise StateError naming the one that has it.

        The first claim in a process also clears lease rows left by processes that
        died: with the file ours, no other process can be running anything.
        """
        with _claims_lock:
            if self._claim is not None:
                return
            if self.lock_path is None:
                self._claim = _Claim(fd=None, users=1)
                return
            claim = _claims.get(self.lock_path)
            if claim is None:
                claim = _Claim(fd=self._lock())
                try:
                    self._transaction(self._clear_rows, "clearing stale leases")
                except BaseException:
                    _unlock_file(claim)
                    raise
                _claims[self.lock_path] = claim
            claim.users += 1
            self._claim = claim

    def take(self, name: str) -> Lease | None:
        self.claim()
        claim = self._claim
        assert claim is not None  # claim() set it or raised
        with _claims_lock:
            if name in claim.names:
                return None
            claim.names.add(name)
        since = self._clock()
        try:
            generation, takeover_of = self._write_row(name, since)
        except BaseException:
            with _claims_lock:
                claim.names.discard(name)
            raise
        return self._remember(Lease(self, name, since, generation, takeover_of))

    def held(self) -> list[LeaseInfo]:
        with _claims_lock:
            claim = self._claim or (_claims.get(self.lock_path) if self.lock_path else None)
            running = set(claim.names) if claim is not None else None
        if running is not None:
            return [r for r in self._rows() if r.name in running]
        owner = self._other_owner()
        if owner is None:
            return []
        return [r for r in self._rows() if r.holder == owner.get("holder")]

    def _check(self, lease: Lease) -> bool:
        with _claims_lock:
            return self._claim is not None and lease.name in self._claim.names

    def _release(self, lease: Lease) -> None:
        self._drop_row(lease)
        with _claims_lock:
            if self._claim is not None:
                self._claim.names.discard(lease.name)
        self._forget(lease)

    def close(self) -> None:
        super().close()
        with _claims_lock:
            claim, self._claim = self._claim, None
            if claim is None:
                return
            claim.users -= 1
            if claim.users == 0 and self.lock_path is not None:
                _claims.pop(self.lock_path, None)
                _unlock_file(claim)

    def _lock(self) -> int:
        """The lock file, opened and flocked, with who we are written in it."""
        path = self.lock_path
        assert path is not None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(
                f"state store {self._where}: cannot open its lock file {path}: "
                f"{exc.strerror or exc}"
            ) from exc
        for attempt in range(1, CLAIM_TRIES + 1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == CLAIM_TRIES:
                    other = _owner(fd)
                    os.close(fd)
                    raise StateError(
                        f"state store {self._where}: another process holds {path} "
                        f"({_describe(other)}): a SQLite state store serves one process at "
                        f"a time: stop the other one (e.g. the daemon) first, or use a "
                        f"PostgreSQL state store (state.url: postgresql+psycopg://...) to run "
                        f"several replicas"
                    ) from None
                self._sleep(CLAIM_WAIT)
            except OSError as exc:
                os.close(fd)
                raise StateError(
                    f"state store {self._where}: cannot lock {path}: {exc.strerror or exc}"
                ) from exc
        owner = {
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": self._clock(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        return fd

    def _other_owner(self) -> dict[str, Any] | None:
        """Who holds the file now, when another process does; None when nobody does."""
        if self.lock_path is None:
            return None
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(
                f"state store {self._where}: cannot read its lock file {self.lock_path}: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _owner(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _clear_rows(conn: Connection) -> None:
        if inspect(conn).has_table(leases.name):
            conn.execute(delete(leases))


def _unlock_file(claim: _Claim) -> None:
    if claim.fd is not None:
        fcntl.flock(claim.fd, fcntl.LOCK_UN)
        os.close(claim.fd)
        claim.fd = None


def _owner(fd: int) -> dict[str, Any]:
    """What the process holding a lock file wrote in it ({} if it has not yet)."""
    try:
        found = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "one that has not yet said who it is"
    who = f"pid {owner.get('pid')} on {owner.get('host')}"
    since = owner.get("since")
    if isinstance(since, int | float):
        who += f", since {datetime.fromtimestamp(since, UTC).isoformat(timespec='seconds')}"
    return who
