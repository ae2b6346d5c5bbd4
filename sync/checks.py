"""``validate --connect``: every check of what a config points at, each ok or its problem.

Per job: its database driver, its source, its table or query, each column it names,
its key's uniqueness, its ``delete_when``; then the state store and the API key. A
failed check never stops the others; the checks that need what failed (the source,
the table) are left out. A problem names the config's ``FILE:LINE`` of what it is about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sync.config import JobSettings
from sync.config.urls import redact_url
from sync.config.yaml import Document, KeyPath, compose
from sync.databases import shown
from sync.errors import AuthError, Stopped, SyncError
from sync.extract.reader import SourceTable, reach
from sync.mapping import Mapper
from sync.wiring import Wiring

T = TypeVar("T")
REPEATS_SHOWN = 3  # the keys a check of a non-unique key names


@dataclass(frozen=True)
class Check:
    """One thing checked: ``problem`` None when it passed; a ``warning`` does not fail it."""

    check: str
    job: str | None = None
    problem: str | None = None
    detail: str | None = None  # what an ok check found (where the store is)
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def config_check(wiring: Wiring) -> Check:
    jobs = wiring.config.jobs
    return Check("config", detail=f"{len(jobs)} job(s): " + ", ".join(j.name for j in jobs))


def connect_checks(wiring: Wiring) -> list[Check]:
    """Every check, in order: the config, each job's, the state store's, the API key's."""
    at = Lines.of(wiring.config_path)
    checks = [config_check(wiring)]
    for index, job in enumerate(wiring.config.jobs):
        checks.extend(_job(wiring, job, _within(at, index)))
    checks.append(_state_store(wiring, at))
    checks.append(_api_key(wiring, at))
    return checks


class Lines:
    """``FILE:LINE: `` of a config key, read from the config file's own lines."""

    def __init__(self, path: Path | None, doc: Document | None) -> None:
        self._path = path
        self._doc = doc

    @classmethod
    def of(cls, path: Path | None) -> Lines:
        try:
            text = path.read_text(encoding="utf-8") if path is not None else None
            return cls(path, None if text is None else compose(text, str(path)))
        except (OSError, SyncError):  # it was read and parsed once already: unlikely
            return cls(path, None)

    def __call__(self, *paths: KeyPath) -> str:
        """Where the first of ``paths`` that the file holds is; else its parent's; else ""."""
        if self._doc is None or not paths:
            return ""
        lines = self._doc.lines
        found = next((p for p in paths if p in lines), None)
        if found is None and not any(paths[0][:end] in lines for end in range(1, len(paths[0]))):
            return ""  # not in the file at all (a default)
        return f"{self._path}:{self._doc.line(found or paths[0])}: "


def _within(at: Lines, index: int) -> Callable[[KeyPath], str]:
    """Where a key of job ``index`` is: ``at`` for a path below ``jobs[index]``."""
    return lambda path: at(("jobs", index, *path))


def _attempt(work: Callable[[], T]) -> T | SyncError:
    """What ``work`` returns, or the error of our family it raised (a stop is no check)."""
    try:
        return work()
    except Stopped:
        raise
    except SyncError as exc:
        return exc


def _job(wiring: Wiring, job: JobSettings, at: Callable[[KeyPath], str]) -> Iterator[Check]:
    source = job.source
    url = source.url.get_secret_value()

    def failed(check: str, error: SyncError, *path: str | int) -> Check:
        return Check(check, job.name, at(path) + str(error))

    engine = _attempt(lambda: wiring.engine(job))
    if isinstance(engine, SyncError):
        yield failed("driver installed", engine, "source", "url")
        return
    yield Check(f"driver {engine.url.drivername} installed", job.name)
    reached = _attempt(lambda: reach(engine, source))
    if isinstance(reached, SyncError):
        yield failed("source reachable", reached, "source", "url")
        return
    yield Check("source reachable", job.name, detail=shown(url))
    read = "query readable" if source.table is None else f"table {source.table!r} readable"
    where = ("source", "query" if source.table is None else "table")
    table = _attempt(lambda: SourceTable(engine, source))
    if isinstance(table, SyncError):
        yield failed(read, table, *where)
        return
    named = [source.key, *([source.cursor] if source.cursor else []), *Mapper(job).source_columns]
    present = [c for c in dict.fromkeys(named) if table.missing(c) is None]
    readable = _attempt(lambda: table.read_nothing(present))
    if isinstance(readable, SyncError):
        yield failed(read, readable, *where)
    else:
        yield Check(read, job.name)
    yield from _columns(table, job, at, can_read=not isinstance(readable, SyncError))
    if isinstance(readable, SyncError):
        return  # what follows reads rows: it would fail as the read did
    if table.missing(source.key) is None:
        yield _unique(table, job, at(("source", "key")))
    if job.delete_when is not None:
        condition = _attempt(lambda: table.condition(str(job.delete_when)))
        if isinstance(condition, SyncError):
            yield failed("delete_when", condition, "delete_when")
        else:
            yield Check("delete_when", job.name)


def _columns(
    table: SourceTable, job: JobSettings, at: Callable[[KeyPath], str], *, can_read: bool
) -> Iterator[Check]:
    """The key, the cursor (and its NULLs, if rows can be read) and each mapped column."""
    source = job.source
    named: list[tuple[str, str, KeyPath]] = [
        (f"key column {source.key!r}", source.key, ("source", "key"))
    ]
    if source.cursor is not None:
        named.append((f"cursor column {source.cursor!r}", source.cursor, ("source", "cursor")))
    for name in Mapper(job).source_columns:
        path: KeyPath = ("mapping", name) if name in job.mapping else ("transforms",)
        named.append((f"mapped column {name!r}", name, path))
    for check, name, path in named:
        missing = table.missing(name)
        if missing is not None:
            yield Check(check, job.name, at(path) + str(missing))
        elif name == source.cursor and can_read:
            yield _nulls(table, job, check, name, at(path))
        else:
            yield Check(check, job.name)


def _nulls(table: SourceTable, job: JobSettings, check: str, name: str, where: str) -> Check:
    nulls = _attempt(lambda: table.nulls(name))
    if isinstance(nulls, SyncError):
        return Check(check, job.name, where + str(nulls))
    if not nulls:
        return Check(check, job.name)
    warning = f"{nulls} row(s) have a NULL {name!r} and will never be synced"
    return Check(check, job.name, warning=warning)


def _unique(table: SourceTable, job: JobSettings, where: str) -> Check:
    key = job.source.key
    check = f"key {key!r} unique"
    repeated = _attempt(lambda: table.repeated_keys(REPEATS_SHOWN))
    if isinstance(repeated, SyncError):
        return Check(check, job.name, where + str(repeated))
    nulls = _attempt(lambda: table.nulls(key))
    if isinstance(nulls, SyncError):
        return Check(check, job.name, where + str(nulls))
    problems = []
    if repeated:
        examples = ", ".join(f"{k!r} is in {n} rows" for k, n in repeated)
        more = " (and maybe more)" if len(repeated) == REPEATS_SHOWN else ""
        problems.append(f"key {key!r} is not unique in {table.what}: {examples}{more}")
    if nulls:
        problems.append(f"{nulls} row(s) have a NULL {key!r}")
    if not problems:
        return Check(check, job.name)
    rule = "each row needs a key of its own, never NULL"
    return Check(check, job.name, where + "; ".join(problems) + f": {rule}")


def _state_store(wiring: Wiring, at: Lines) -> Check:
    pinged = _attempt(lambda: wiring.store.ping())
    if isinstance(pinged, SyncError):
        return Check("state store reachable", problem=at(("state", "url")) + str(pinged))
    url = redact_url(wiring.config.state.url.get_secret_value())
    return Check("state store reachable", detail=url)


def _api_key(wiring: Wiring, at: Lines) -> Check:
    checked = _attempt(lambda: wiring.client.check_key(once=True))  # one attempt, no retries
    if not isinstance(checked, SyncError):
        return Check("API key accepted")
    key = ("personyze", "api_key"), ("personyze", "api_key_file")
    where = at(*key) if isinstance(checked, AuthError) else at(("personyze", "base_url"))
    return Check("API key accepted", problem=where + str(checked))
