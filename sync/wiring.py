"""Where the world is wired in: database engines, the state store, the HTTP transport,
the sending threads and the clock, built from a validated config on first use.

It runs nothing: :mod:`sync.run` runs jobs with these parts, :mod:`sync.admin` looks at
and fixes their state. Tests inject a transport, a wall clock or a sleep here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import Engine

from sync.config.jobs import JobSettings
from sync.config.load import Config
from sync.databases import source_engine
from sync.extract.reader import SourceReader
from sync.load.budget import Budget
from sync.load.client import PersonyzeClient
from sync.load.targets import target_for
from sync.load.writer import SenderThreads, Writer
from sync.logs import redact
from sync.mapping import Mapper
from sync.model import RunObserver, Shard
from sync.state.leases import Lease
from sync.state.senders import Senders
from sync.state.store import StateStore, state_engine


def part_name(job: JobSettings, shard: Shard | None) -> str:
    """What the state store knows a job, or one of its shards, by: ``customers#2/3``."""
    return job.name if shard is None else f"{job.name}#{shard.name}"


def layout(job: JobSettings, shards: int) -> list[tuple[str, Shard | None]]:
    """The parts of ``job`` split into ``shards``: its own name alone when 1."""
    if shards == 1:
        return [(job.name, None)]
    return [(part_name(job, s), s) for s in (Shard(i, shards) for i in range(shards))]


class Wiring:
    """One config's state store, Personyze client, engines and readers.

    ``stopping`` is set by a signal: runs end after their batch in flight.
    """

    def __init__(
        self,
        config: Config,
        *,
        transport: httpx.BaseTransport | None = None,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        observer: RunObserver | None = None,
        on_response: Callable[[int | None, float], None] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # named in messages that give a command to run
        self.stopping = threading.Event()
        self.wall = wall
        self.observer = observer
        self._transport = transport
        self._sleep = sleep
        self._on_response = on_response
        self._lock = threading.Lock()  # the daemon runs jobs in several threads
        self._engines: dict[str, Engine] = {}
        self._readers: dict[str, SourceReader] = {}
        self._store: StateStore | None = None
        self._client: PersonyzeClient | None = None
        self._budget: Budget | None = None

    @property
    def store(self) -> StateStore:
        with self._lock:
            if self._store is None:
                url = self.config.state.url.get_secret_value()
                store = StateStore(state_engine(url), self.wall)
                store.create_schema()
                self._store = store
            return self._store

    @property
    def client(self) -> PersonyzeClient:
        """The Personyze client; on a PostgreSQL state store its rate is the account's
        budget, shared with every process that sends on the store (:mod:`sync.load.budget`)."""
        if self._client is not None:
            return self._client
        shared = self.config.state.url.get_secret_value().startswith("postgres")
        store = self.store if shared else None  # (its own lock: taken first)
        with self._lock:
            if self._client is None:
                client = PersonyzeClient(
                    self.config.personyze,
                    transport=self._transport,
                    sleep=self._sleep,
                    on_response=self._on_response,
                    mask=redact,
                    stop=self.stopping,
                )
                if store is not None:
                    account = Senders(store.transaction, store.holder, self.wall)
                    self._budget = Budget(client.pacing, account, client.pacing.now).start()
                self._client = client
            return self._client

    def engine(self, job: JobSettings) -> Engine:
        url = job.source.url.get_secret_value()
        with self._lock:
            if url not in self._engines:
                self._engines[url] = source_engine(url)
            return self._engines[url]

    def reader(self, job: JobSettings, shard: Shard | None = None) -> SourceReader:
        """The job's (or shard's) reader, its table reflected once for the life of this."""
        name = part_name(job, shard)
        with self._lock:
            reader = self._readers.get(name)
        if reader is None:
            reader = SourceReader(
                self.engine(job),
                job.source,
                Mapper(job).source_columns,
                delete_when=job.delete_when,
                shard=shard,
            )
            with self._lock:
                self._readers[name] = reader
        return reader

    @contextmanager
    def writer(self, job: JobSettings, lease: Lease | None = None) -> Iterator[Writer]:
        """A writer for one run of ``job``; its sending threads end with it.

        ``lease``: the run's; a run that lost it starts no more requests.
        """

        def stop() -> bool:
            return self.stopping.is_set() or (lease is not None and lease.lost.is_set())

        concurrency = self.config.personyze.concurrency
        with SenderThreads(concurrency, name=f"send-{job.name}", stop=stop) as pool:
            target = target_for(job.object)
            yield Writer(self.client, pool, stop=stop, clock=time.monotonic, target=target)

    def jobs(self, names: Sequence[str] = ()) -> list[JobSettings]:
        return [self.config.job(n) for n in names] if names else list(self.config.jobs)

    def parts(self, job: JobSettings) -> list[tuple[str, Shard | None]]:
        """The names the state store knows a job by: the job's, or one per shard."""
        return layout(job, job.shards)

    def close(self) -> None:
        if self._budget is not None:
            self._budget.close()
        if self._client is not None:
            self._client.close()
        if self._store is not None:
            self._store.close()
        for engine in self._engines.values():
            engine.dispose()

    def __enter__(self) -> Wiring:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
