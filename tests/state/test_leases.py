"""Run leases: one run of a job at a time, across stores, threads and processes.

Real PostgreSQL and SQLite, real processes killed with SIGKILL and real backends
terminated: a lease must free itself when its holder dies, ``leases()`` must never
report a dead holder, and a run whose lease was lost must find out (its heartbeat)
and write nothing more (its fence) once another holder took it over.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, make_url, text

from sync.errors import LeaseLost, StateError
from sync.state.leases import RENEW_S, Lease, key_halves, lease_key
from sync.state.records import LeaseInfo
from sync.state.store import StateStore, state_engine
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.5
JOB = "customers"

# A process that takes a lease and holds it until it is killed.
HOLD = """
import sys, time
from sync.state.store import StateStore, state_engine
store = StateStore(state_engine(sys.argv[1]), lambda: 1234.5, holder=sys.argv[2])
store.create_schema()
lease = store.lease(sys.argv[3])
print("held" if lease is not None else "refused", flush=True)
time.sleep(300)
"""
# A process that tries to claim a SQLite store and says what happened.
CLAIM = """
import sys, time
from sync.errors import StateError
from sync.state.store import StateStore, state_engine
store = StateStore(state_engine(sys.argv[1]), time.time)
try:
    store.claim()
except StateError as exc:
    print(exc, flush=True)
    sys.exit(3)
print("claimed", flush=True)
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/state.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def open_store(store_url: str) -> Iterator[Callable[..., StateStore]]:
    """Opens stores (holders "a", "b", ...) on the test's database, closed at the end."""
    opened: list[StateStore] = []

    def open_one(holder: str, clock: Callable[[], float] = lambda: T0) -> StateStore:
        store = StateStore(state_engine(store_url), clock, holder=holder)
        store.create_schema()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def hold_in_process(
    processes: list[subprocess.Popen[str]], url: str, holder: str, name: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, url, holder, name],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    processes.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def lease_row(url: str, name: str = JOB) -> dict[str, object]:
    """One psync_leases row as stored: holder, generation, renewed_at."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT holder, generation, renewed_at FROM psync_leases WHERE job = :j"),
                {"j": name},
            ).one()
            return dict(found._mapping)
    finally:
        engine.dispose()


def lease_rows(url: str) -> list[tuple[str, str]]:
    """The psync_leases rows as stored, stale ones included."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                (r.job, r.holder)
                for r in conn.execute(text("SELECT job, holder FROM psync_leases ORDER BY job"))
            ]
    finally:
        engine.dispose()


# -- both backends -----------------------------------------------------------------


def test_one_holder_at_a_time_until_released(open_store: Callable[..., StateStore]) -> None:
    a, b = open_store("a"), open_store("b")
    first = a.lease(JOB)
    assert first is not None
    assert (first.name, first.holder, first.since) == (JOB, "a", T0)
    assert b.lease(JOB) is None
    assert a.lease(JOB) is None  # not twice, even for its holder
    other = b.lease("orders")  # another job is free
    assert other is not None

    first.release()
    first.release()  # harmless twice
    assert not first.held()
    second = b.lease(JOB)
    assert second is not None
    assert second.held()
    assert a.lease(JOB) is None
    second.release()
    other.release()


def test_leases_shows_holder_and_since(
    open_store: Callable[..., StateStore], store_url: str
) -> None:
    a = open_store("a", lambda: T0)
    b = open_store("b", lambda: T0 + 7)
    assert a.leases() == []
    names = [JOB, "orders", "customers#2/3", "x" * 200]
    taken = [a.lease(names[0]), b.lease(names[1]), b.lease(names[2]), a.lease(names[3])]
    assert all(lease is not None for lease in taken)
    expected = sorted(
        [
            LeaseInfo(names[0], "a", T0),
            LeaseInfo(names[1], "b", T0 + 7),
            LeaseInfo(names[2], "b", T0 + 7),
            LeaseInfo(names[3], "a", T0),
        ],
        key=lambda i: i.name,
    )
    assert a.leases() == expected
    assert b.leases() == expected
    for lease in taken:
        assert lease is not None
        lease.release()
    assert a.leases() == []
    # released leases empty their rows (holder ""), which keep the generation for the next
    assert lease_rows(store_url) == [(name, "") for name in sorted(names)]


def test_a_lease_is_a_context_manager(open_store: Callable[..., StateStore]) -> None:
    a, b = open_store("a"), open_store("b")
    with a.lease(JOB) as lease:
        assert lease is not None
        assert b.lease(JOB) is None
    assert not lease.held()
    with b.lease(JOB) as again:
        assert again is not None


def test_close_releases_the_leases_of_that_store(open_store: Callable[..., StateStore]) -> None:
    a, b = open_store("a"), open_store("b")
    assert a.lease(JOB) is not None
    assert b.lease(JOB) is None
    a.close()
    lease = b.lease(JOB)
    assert lease is not None
    assert [i.holder for i in b.leases()] == ["b"]


def test_threads_racing_for_one_job_get_one_lease(open_store: Callable[..., StateStore]) -> None:
    stores = [open_store(f"h{i}") for i in range(6)]
    ready = threading.Barrier(len(stores) * 2)
    got: list[object] = []
    lock = threading.Lock()

    def race(store: StateStore) -> None:
        ready.wait()
        lease = store.lease(JOB)
        with lock:
            got.append(lease)

    threads = [threading.Thread(target=race, args=(s,)) for s in stores * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(got) == len(threads)
    assert len([g for g in got if g is not None]) == 1


def test_runs_record_their_holder(open_store: Callable[..., StateStore], store_url: str) -> None:
    a = open_store("replica-a")
    part = a.part(JOB)
    part.start_run("sync")
    assert part.runs()[0].holder == "replica-a"
    default = StateStore(state_engine(store_url), lambda: T0)
    try:
        assert default.holder == f"{socket.gethostname()}:{os.getpid()}"
        default.part(JOB).start_run("sync")
        assert default.part(JOB).runs()[0].holder == default.holder
    finally:
        default.close()


def test_every_take_bumps_the_generation(
    open_store: Callable[..., StateStore], store_url: str
) -> None:
    a, b = open_store("a"), open_store("b")
    first = a.lease(JOB)
    assert first is not None
    assert (first.generation, first.takeover_of) == (1, None)
    assert not first.lost.is_set()
    first.release()
    second = b.lease(JOB)
    assert second is not None
    assert (second.generation, second.takeover_of) == (2, None)  # released: nothing in flight
    assert lease_row(store_url)["generation"] == 2
    second.release()
    third = a.lease(JOB)
    assert third is not None
    assert (third.generation, third.takeover_of) == (3, None)
    other = a.lease("orders")  # generations are per name
    assert other is not None
    assert other.generation == 1
    row = lease_row(store_url)
    assert (row["holder"], row["generation"]) == ("a", 3)
    assert isinstance(row["renewed_at"], float)
    third.release()
    other.release()


def test_the_fence_passes_for_the_holder_and_stops_any_other(
    open_store: Callable[..., StateStore],
) -> None:
    a, b = open_store("a"), open_store("b")
    first = a.lease(JOB)
    assert first is not None

    def write(lease: Lease, job: str) -> Callable[[Connection], None]:
        def fenced(conn: Connection) -> None:
            lease.fence(conn)
            conn.execute(text("INSERT INTO psync_jobs (job, shards) VALUES (:j, 1)"), {"j": job})

        return fenced

    def jobs() -> list[str]:
        return a.transaction(
            lambda conn: list(conn.execute(text("SELECT job FROM psync_jobs")).scalars()), "reading"
        )

    a.transaction(write(first, "written"), "fencing and writing")  # the holder writes on
    assert jobs() == ["written"]
    assert not first.lost.is_set()

    stale = first
    stale.release()
    second = b.lease(JOB)
    assert second is not None
    with pytest.raises(LeaseLost, match=f"the lease of {JOB} was lost") as lost:
        a.transaction(write(stale, "never"), "fencing and writing")
    assert jobs() == ["written"]  # the old run wrote nothing more
    assert "this run writes nothing more" in str(lost.value)
    assert "the process that holds it now goes on" in str(lost.value)
    b.transaction(second.fence, "fencing")  # the new holder is not disturbed
    assert second.held()
    second.release()
    with pytest.raises(LeaseLost):  # a released lease fences nothing in
        b.transaction(second.fence, "fencing")


def test_the_store_clock(open_store: Callable[..., StateStore], store_url: str) -> None:
    clock = [T0]
    a = open_store("a", lambda: clock[0])
    lease = a.lease(JOB)
    assert lease is not None
    now = lease.store_now()
    if store_url.startswith("sqlite"):
        assert now == T0  # SQLite's is the injected clock
        assert lease_row(store_url)["renewed_at"] == T0
    else:  # PostgreSQL's own, whatever this process's clock says
        assert abs(now - time.time()) < 60
        renewed = lease_row(store_url)["renewed_at"]
        assert isinstance(renewed, float)
        assert renewed <= now < renewed + 60
    lease.release()


def test_sqlite_leases_have_no_heartbeat(state_url: str) -> None:
    store = StateStore(state_engine(state_url), lambda: T0, holder="quiet")
    try:
        store.create_schema()
        lease = store.lease(JOB)
        assert lease is not None
        assert heartbeats("quiet") == []
        assert lease.held()
        assert not lease.lost.is_set()
        lease.release()
    finally:
        store.close()


# -- PostgreSQL ----------------------------------------------------------------------


@pytest.mark.postgres
def test_lease_keys_are_stable_signed_64_bit_and_match_pg_locks(pg_url: str) -> None:
    assert lease_key(JOB) == lease_key(JOB) != lease_key("orders")
    keys = [lease_key(f"job-{i}") for i in range(200)]
    assert all(-(2**63) <= k < 2**63 for k in keys)
    assert min(keys) < 0 < max(keys)  # both signs occur, and both must be found in pg_locks
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            for key in (min(keys), max(keys)):
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                found = conn.execute(
                    text(
                        "SELECT classid::bigint, objid::bigint FROM pg_locks"
                        " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                    )
                ).all()
                assert [tuple(r) for r in found] == [key_halves(key)]
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_killed_holder_frees_its_lease(
    pg_url: str, processes: list[subprocess.Popen[str]]
) -> None:
    store = StateStore(state_engine(pg_url), lambda: T0, holder="survivor")
    try:
        store.create_schema()
        doomed = hold_in_process(processes, pg_url, "doomed", JOB)
        assert store.lease(JOB) is None
        assert store.leases() == [LeaseInfo(JOB, "doomed", 1234.5)]

        kill(doomed)

        wait_until(lambda: store.leases() == [])
        assert lease_rows(pg_url) == [(JOB, "doomed")]  # the stale row, not reported
        lease = store.lease(JOB)
        assert lease is not None
        assert store.leases() == [LeaseInfo(JOB, "survivor", T0)]
        lease.release()
    finally:
        store.close()


@pytest.mark.postgres
def test_a_lease_whose_connection_is_lost_says_so(pg_url: str) -> None:
    a = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    b = StateStore(state_engine(pg_url), lambda: T0, holder="b")
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        a.create_schema()
        lease = a.lease(JOB)
        assert lease is not None
        assert lease.held()
        hi, lo = key_halves(lease_key(JOB))
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid::bigint = :hi AND objid::bigint = :lo"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                ),
                {"hi": hi, "lo": lo},
            ).scalars()
            assert list(killed) == [True]
        wait_until(lambda: not lease.held())
        wait_until(lambda: b.lease(JOB) is not None)
        lease.release()  # on a dead connection: quietly done
        assert [i.holder for i in b.leases()] == ["b"]
    finally:
        a.close()
        b.close()
        admin.dispose()


@pytest.mark.postgres
def test_lease_connections_are_not_left_in_a_transaction(pg_url: str) -> None:
    store = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        store.create_schema()
        lease = store.lease(JOB)
        assert lease is not None
        assert lease.held()
        with admin.connect() as conn:
            states = conn.execute(
                text(
                    "SELECT state FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalars()
            assert "idle in transaction" not in list(states)
        lease.release()
    finally:
        store.close()
        admin.dispose()


@pytest.mark.postgres
def test_claim_does_nothing_on_postgres(pg_url: str) -> None:
    a = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    b = StateStore(state_engine(pg_url), lambda: T0, holder="b")
    try:
        a.create_schema()
        a.claim()
        a.claim()
        b.claim()  # replicas share a PostgreSQL store
    finally:
        a.close()
        b.close()


@pytest.fixture
def admin(pg_url: str) -> Iterator[Engine]:
    """An AUTOCOMMIT engine on another database of the server: no setting of the test's
    database (idle_session_timeout) reaches it."""
    engine = create_engine(make_url(pg_url).set(database="test"), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def lease_pids(admin: Engine, pg_url: str, name: str = JOB) -> list[int]:
    """The backends holding the advisory lock of ``name`` in the test's database."""
    hi, lo = key_halves(lease_key(name))
    with admin.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid::bigint = :hi AND objid::bigint = :lo AND database ="
                    " (SELECT oid FROM pg_database WHERE datname = :db)"
                ),
                {"hi": hi, "lo": lo, "db": make_url(pg_url).database},
            ).scalars()
        )


def terminate_lease(admin: Engine, pg_url: str, name: str = JOB) -> None:
    """pg_terminate_backend on the connection holding ``name``'s lock."""
    (pid,) = lease_pids(admin, pg_url, name)
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    wait_until(lambda: lease_pids(admin, pg_url, name) == [])


def heartbeats(holder: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"lease heartbeat {holder}"]


def stays(check: Callable[[], bool], seconds: float) -> None:
    """``check`` holds at every look, each 0.1 s, for ``seconds``.

    Not a wait for something to happen: the time it lasts is the scenario (a lease kept
    for that long, through renewals and idle timeouts), looked at all along.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), "it stopped holding"
        time.sleep(0.1)


@pytest.mark.postgres
def test_a_take_over_an_unreleased_lease_says_when_its_holder_last_renewed(
    pg_url: str, admin: Engine
) -> None:
    a = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    b = StateStore(state_engine(pg_url), lambda: T0, holder="b")
    try:
        a.create_schema()
        first = a.lease(JOB)
        assert first is not None
        taken = lease_row(pg_url)["renewed_at"]
        assert isinstance(taken, float)
        wait_until(lambda: lease_row(pg_url)["renewed_at"] > taken)  # type: ignore[operator]

        terminate_lease(admin, pg_url)
        wait_until(first.lost.is_set)  # no more renewals from a
        last = lease_row(pg_url)
        assert (last["holder"], last["generation"]) == ("a", 1)

        second = b.lease(JOB)
        assert second is not None
        assert second.generation == 2
        assert second.takeover_of == last["renewed_at"]
        assert second.takeover_of is not None
        assert 0 <= second.store_now() - second.takeover_of < 30
        assert lease_row(pg_url)["holder"] == "b"
        first.release()  # on a dead connection, and the row is b's now: b's is untouched
        assert lease_row(pg_url)["holder"] == "b"
        assert second.held()
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_the_fence_stops_a_run_whose_lease_was_taken_over(pg_url: str, admin: Engine) -> None:
    a = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    b = StateStore(state_engine(pg_url), lambda: T0, holder="b")
    try:
        a.create_schema()
        first = a.lease(JOB)
        assert first is not None
        a.transaction(first.fence, "fencing")
        terminate_lease(admin, pg_url)
        second = b.lease(JOB)
        assert second is not None
        with pytest.raises(LeaseLost, match=f"the lease of {JOB} was lost"):
            a.transaction(first.fence, "fencing")
        assert first.lost.is_set()
        assert not first.held()
        # Not only the heartbeat's verdict: the row itself refuses the old generation.
        first.lost.clear()
        with pytest.raises(LeaseLost):
            a.transaction(first.fence, "fencing")
        assert first.lost.is_set()
        b.transaction(second.fence, "fencing")
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_a_take_waits_for_a_write_that_passed_the_fence(pg_url: str, admin: Engine) -> None:
    a = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    b = StateStore(state_engine(pg_url), lambda: T0, holder="b")
    writer = create_engine(pg_url)
    try:
        a.create_schema()
        first = a.lease(JOB)
        assert first is not None
        taken: list[Lease | None] = []
        with writer.begin() as conn:
            first.fence(conn)  # a write of a's run, under way
            terminate_lease(admin, pg_url)
            thread = threading.Thread(target=lambda: taken.append(b.lease(JOB)))
            thread.start()

            def waiting() -> bool:
                with admin.connect() as look:
                    return bool(
                        look.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type ="
                                " 'Lock' AND query LIKE '%psync_leases%' AND datname = :db"
                            ),
                            {"db": make_url(pg_url).database},
                        ).scalar()
                    )

            wait_until(waiting)  # b's take waits for the write to end ...
            assert taken == []
        thread.join(timeout=30)  # ... and goes on once it committed
        (second,) = taken
        assert second is not None
        assert second.generation == 2
        with pytest.raises(LeaseLost):
            a.transaction(first.fence, "fencing")
    finally:
        a.close()
        b.close()
        writer.dispose()


@pytest.mark.postgres
def test_the_heartbeat_finds_a_terminated_connection_by_itself(
    pg_url: str, admin: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    try:
        store.create_schema()
        with caplog.at_level(logging.WARNING, logger="sync.state.leases"):
            lease = store.lease(JOB)
            assert lease is not None
            terminate_lease(admin, pg_url)
            wait_until(lease.lost.is_set, timeout=5)
        assert not lease.held()
        (record,) = [r for r in caplog.records if r.getMessage() == "lease lost"]
        assert record.lease == JOB  # type: ignore[attr-defined]
        assert "failed while renewing a lease" in record.error  # type: ignore[attr-defined]
        lease.release()  # quietly, on a dead connection
    finally:
        store.close()


@pytest.mark.postgres
def test_a_write_holding_the_row_does_not_make_the_heartbeat_lose_the_lease(
    pg_url: str,
) -> None:
    store = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    writer = create_engine(pg_url)
    try:
        store.create_schema()
        lease = store.lease(JOB)
        assert lease is not None
        with writer.begin() as conn:
            lease.fence(conn)  # a long write of the run: it holds the row
            stays(lambda: not lease.lost.is_set(), seconds=3 * RENEW_S)
        before = lease_row(pg_url)["renewed_at"]
        wait_until(lambda: lease_row(pg_url)["renewed_at"] > before)  # type: ignore[operator]
        assert lease.held()
    finally:
        store.close()
        writer.dispose()


@pytest.mark.postgres
def test_the_heartbeat_is_a_daemon_that_ends_with_the_leases(pg_url: str) -> None:
    store = StateStore(state_engine(pg_url), lambda: T0, holder="beating")
    try:
        store.create_schema()
        assert heartbeats("beating") == []
        first, other = store.lease(JOB), store.lease("orders")
        assert first is not None and other is not None
        (beat,) = heartbeats("beating")  # one for every lease of the store
        assert beat.daemon
        first.release()
        other.release()
        wait_until(lambda: not beat.is_alive())  # nothing held: it ends
        again = store.lease(JOB)
        assert again is not None
        (beat,) = heartbeats("beating")  # a take starts it again
        started = time.monotonic()
        store.close()
        assert time.monotonic() - started < 1.0  # close does not wait for a beat
        wait_until(lambda: not beat.is_alive())
        assert not again.held()
    finally:
        store.close()


@pytest.mark.postgres
def test_the_heartbeat_keeps_a_lease_past_idle_session_timeout(pg_url: str, admin: Engine) -> None:
    name = make_url(pg_url).database
    with admin.connect() as conn:
        version = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        assert version >= 140000, "idle_session_timeout needs PostgreSQL 14 or later"
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET idle_session_timeout = '1500ms'"))
    store = StateStore(state_engine(pg_url), lambda: T0, holder="a")
    idle = create_engine(pg_url, isolation_level="AUTOCOMMIT")  # idle, not in a transaction
    try:
        store.create_schema()
        # The timeout bites: a connection left idle is ended by the server.
        with idle.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

            def gone() -> bool:
                with admin.connect() as look:
                    return not look.execute(
                        text("SELECT 1 FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                    ).first()

            wait_until(gone)
            conn.invalidate()
        lease = store.lease(JOB)
        assert lease is not None
        (holding,) = lease_pids(admin, pg_url)
        # Nothing here touches the lease's connection (held() would, itself keeping it
        # busy): only the heartbeat does, and the lock stays with the same backend.
        stays(
            lambda: not lease.lost.is_set() and lease_pids(admin, pg_url) == [holding],
            seconds=5,
        )
        assert lease.held()
        lease.release()
        assert lease_pids(admin, pg_url) == []
    finally:
        store.close()
        idle.dispose()


# -- SQLite --------------------------------------------------------------------------


def test_a_second_process_cannot_claim_a_sqlite_store(
    state_url: str, processes: list[subprocess.Popen[str]]
) -> None:
    store = StateStore(state_engine(state_url), lambda: T0, holder="first")
    try:
        store.create_schema()
        store.claim()
        store.claim()  # idempotent
        refused = subprocess.run(
            [sys.executable, "-c", CLAIM, state_url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 3, refused.stderr
        message = refused.stdout
        lock_file = state_url.removeprefix("sqlite:///") + ".lock"
        assert f"another process holds {lock_file}" in message
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert "a SQLite state store serves one process at a time" in message
        assert "stop the other one (e.g. the daemon) first" in message
        assert "state.url: postgresql+psycopg://" in message
    finally:
        store.close()
    # Closed: the next process may claim it.
    claimed = subprocess.run(
        [sys.executable, "-c", CLAIM, state_url], cwd=ROOT, capture_output=True, text=True
    )
    assert (claimed.returncode, claimed.stdout.strip()) == (0, "claimed"), claimed.stderr


def test_a_killed_sqlite_holder_leaves_no_live_lease(
    state_url: str, processes: list[subprocess.Popen[str]]
) -> None:
    store = StateStore(state_engine(state_url), lambda: T0, holder="survivor")
    try:
        store.create_schema()
        doomed = hold_in_process(processes, state_url, "doomed", JOB)
        # Seen from a process that does not hold the file (like ``status``):
        assert store.leases() == [LeaseInfo(JOB, "doomed", 1234.5)]
        with pytest.raises(StateError, match=f"pid {doomed.pid} on "):
            store.claim()
        with pytest.raises(StateError, match="serves one process at a time"):
            store.lease(JOB)

        kill(doomed)

        assert lease_rows(state_url) == [(JOB, "doomed")]  # left behind ...
        assert store.leases() == []  # ... and not reported
        store.claim()
        assert lease_rows(state_url) == []  # the file is ours: every row left was stale
        lease = store.lease(JOB)
        assert lease is not None
        assert store.leases() == [LeaseInfo(JOB, "survivor", T0)]
    finally:
        store.close()


def test_sqlite_leases_are_per_name_within_the_process(state_url: str) -> None:
    a = StateStore(state_engine(state_url), lambda: T0, holder="a")
    b = StateStore(state_engine(state_url), lambda: T0, holder="b")
    try:
        a.create_schema()
        lease = a.lease(JOB)
        assert lease is not None
        assert a.lease(JOB) is None
        assert b.lease(JOB) is None  # another store of this process: the same file
        found: list[object] = []
        thread = threading.Thread(target=lambda: found.append(a.lease(JOB)))
        thread.start()
        thread.join(timeout=10)
        assert found == [None]
        b.close()  # one store closing keeps the file claimed for the other
        assert a.lease("orders") is not None
        lease.release()
        assert a.lease(JOB) is not None
    finally:
        a.close()
        b.close()


def test_an_in_memory_sqlite_store_has_leases_too() -> None:
    store = StateStore(state_engine("sqlite://"), lambda: T0, holder="a")
    try:
        store.create_schema()
        store.claim()
        lease = store.lease(JOB)
        assert lease is not None
        assert store.lease(JOB) is None
        assert store.leases() == [LeaseInfo(JOB, "a", T0)]
        lease.release()
        assert store.leases() == []
    finally:
        store.close()
