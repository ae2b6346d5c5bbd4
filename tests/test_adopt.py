"""Adoption: a new, moved or lost state store takes over the users Personyze holds.

Against real servers: the sandbox over real HTTP, SQLite and PostgreSQL state stores,
the installed ``personyze-sync`` script for the command line (and SIGKILL).

The account in most cases: 30 users an earlier sync made of 30 email-less rows
(internal_id only: the live service merges on nothing else), then 500 visitors
Personyze tracked, some with internal_ids of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy import select, text

from sync import admin
from sync.adopt import INLINE_READS, Adopter, adopt_or_refuse, adoption_needed
from sync.errors import AdoptionNeeded
from sync.mapping import Mapper, Record
from sync.sandbox import Faults, SandboxServer
from sync.state.adoptions import Adoptions
from sync.state.schema import duplicates, rows
from sync.wiring import Wiring
from tests.support import (
    API_KEY,
    config_doc,
    execute,
    load,
    make_customers,
    users_by_internal_id,
    write_config,
)

CLI = str(Path(sys.executable).parent / "personyze-sync")
ROWS = 30
VISITORS = 500
IN_STEP = 20  # rows 1..20 hold what the source maps to; 21..30 an older first name


@dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def flat(self) -> str:
        return " ".join((self.out + self.err).split())


def cli(*args: str, stdin: Any = subprocess.DEVNULL, timeout: float = 120) -> Done:
    done = subprocess.run(
        [CLI, *args],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Done(done.returncode, done.stdout, done.stderr)


def page_reads(sandbox: SandboxServer, before: float | None = None) -> int:
    """Pages of users read by user_id keyset (``where/user_id>N``), asked for ``before``."""
    return sum(
        1
        for r in sandbox.requests
        if r.method == "GET"
        and "/where/user_id>" in unquote(r.path)
        and (before is None or r.start < before)
    )


def gets(sandbox: SandboxServer) -> int:
    return sum(1 for r in sandbox.requests if r.method == "GET")


def source_records(config: Path) -> dict[int, Record]:
    """What the job maps each source row to now, by key."""
    with Wiring(load(config)) as app:
        job = app.config.job("customers")
        rows = app.reader(job).rows_by_key(list(range(1, ROWS + 1)))
    mapper = Mapper(job)
    found = {}
    for row in rows:
        mapped = mapper.map(row)
        assert isinstance(mapped, Record)
        found[int(mapped.key)] = mapped
    return found


def earlier_sync(sandbox: SandboxServer, config: Path, ids: range) -> dict[int, int]:
    """The users an earlier sync made of rows ``ids``: row -> user_id."""
    made = {}
    records = source_records(config)
    for i in ids:
        payload = dict(records[i].payload)
        if i > IN_STEP:
            payload["first_name"] = f"Before{i}"  # changed in the source since then
        made[i] = sandbox.store.upsert(payload)
    return made


def visitors(sandbox: SandboxServer, count: int) -> None:
    for n in range(count):
        body: dict[str, Any] = {"last_session_time": 1_700_000_000 + n}
        if n % 5 == 0:
            body["internal_id"] = f"crm-{n}"  # an id from another system
        sandbox.store.upsert(body)


@pytest.fixture
def setup(tmp_path: Path, sqlite_url: str, sandbox: SandboxServer) -> Callable[..., Path]:
    """A config over ``ROWS`` email-less customers; ``state``: the state store's URL."""

    def write(*, state: str | None = None, name: str = "sync.yaml", **job: Any) -> Path:
        doc = config_doc(
            source_url=sqlite_url,
            api_url=sandbox.url,
            state_url=state or f"sqlite:///{tmp_path}/{name}.state.db",
            job=job or None,
        )
        return write_config(tmp_path / name, doc)

    make_customers(sqlite_url, range(1, ROWS + 1), email=None)
    return write


@pytest.fixture(params=["sqlite", "postgres"])
def any_state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/moved.db"
    return str(request.getfixturevalue("pg_url"))


def identity_map(config: Path, part: str = "customers") -> dict[str, tuple[int, str]]:
    with Wiring(load(config)) as app:
        found = app.store.transaction(
            lambda conn: [
                (r.row_key, r.user_id, r.fingerprint)
                for r in conn.execute(select(rows).where(rows.c.job == part))
            ],
            "test",
        )
    return {k: (u, f) for k, u, f in found}


# -- (a) a fresh store adopts exactly the users an earlier sync made -------------------


def test_a_fresh_store_adopts_the_earlier_users_and_stops_reading_early(
    setup: Callable[..., Path], sandbox: SandboxServer, any_state: str
) -> None:
    config = setup(state=any_state)
    made = earlier_sync(sandbox, config, range(1, ROWS + 1))
    visitors(sandbox, VISITORS)
    sandbox.clear_requests()

    done = cli("adopt", "-c", str(config), "customers", "--yes")
    assert done.code == 0, done.flat
    total = ROWS + VISITORS
    full_pass = -(-total // 50)
    assert f"Personyze holds users up to user_id {total}: about {full_pass} reads" in done.flat
    assert (
        f"adopted {ROWS} of {ROWS} rows ({IN_STEP} already in step), "
        "read 50 users in 1 reads, 0 duplicates"
    ) in done.flat
    # the 30 are among the first 50 users: one page, not a full pass
    assert page_reads(sandbox) == 1 < full_pass
    assert gets(sandbox) == 2  # the highest user_id, then the page

    adopted = identity_map(config)
    assert {k: u for k, (u, _) in adopted.items()} == {str(i): made[i] for i in made}
    records = source_records(config)
    for i in range(1, ROWS + 1):
        want = records[i].fingerprint if i <= IN_STEP else ""
        assert adopted[str(i)][1] == want, f"row {i}"

    before = gets(sandbox)
    again = cli("adopt", "-c", str(config), "customers", "--yes")
    assert again.code == 0, again.flat
    assert "already adopted" in again.flat and "nothing was read" in again.flat
    assert gets(sandbox) == before, "a second adopt read Personyze"


def test_a_run_after_the_adoption_makes_no_second_user(
    setup: Callable[..., Path], sandbox: SandboxServer
) -> None:
    config = setup()
    earlier_sync(sandbox, config, range(1, ROWS + 1))
    visitors(sandbox, VISITORS)
    assert cli("adopt", "-c", str(config), "customers", "--yes").code == 0
    sandbox.clear_requests()

    done = cli("once", "-c", str(config), "customers")
    assert done.code == 0, done.flat

    assert len(sandbox.users()) == ROWS + VISITORS, "a row became a second user"
    users = users_by_internal_id(sandbox.users())
    for i in range(1, ROWS + 1):
        [user] = users[str(i)]
        assert user["first_name"] == f"First{i}"
    posts = [r for r in sandbox.requests if r.method == "POST"]
    assert len(posts) == ROWS - IN_STEP  # only the rows out of step are resent ...
    assert all("user_id" in r.body for r in posts)  # ... each carrying its user_id


# -- (b) killed mid-way, it resumes where it stopped ------------------------------------


def test_b_sigkill_mid_adoption_resumes_from_the_last_page_saved(
    setup: Callable[..., Path], sandbox: SandboxServer
) -> None:
    config = setup()
    visitors(sandbox, 2000)  # the rows' users are the newest: a pass reads everything
    made = earlier_sync(sandbox, config, range(1, ROWS + 1))
    total = 2000 + ROWS
    full_pass = -(-total // 50)
    sandbox.faults = Faults(latency_s=0.03)
    sandbox.clear_requests()

    process = subprocess.Popen(
        [CLI, "adopt", "-c", str(config), "customers", "--yes"],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while page_reads(sandbox) < 15 and time.monotonic() < deadline:
        assert process.poll() is None, "the adoption ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    process.communicate()
    # what the killed process asked for (a request in flight is logged when answered)
    read_before = page_reads(sandbox, before=killed_at)
    assert 15 <= read_before < full_pass

    with Wiring(load(config)) as app:
        record = Adoptions(app.store).get("customers")
        [status] = admin.status(app)
    assert record is not None and record.state == "running"
    assert 0 < record.after_user_id <= read_before * 50 and record.after_user_id % 50 == 0
    assert record.highest_user_id == total and record.found == 0
    assert status.adoption == record
    shown = cli("status", "-c", str(config))
    assert (
        f"identity map: adoption in progress (read up to user_id {record.after_user_id} of {total})"
    ) in shown.flat

    sandbox.faults = Faults()
    done = cli("adopt", "-c", str(config), "customers", "--yes")
    assert done.code == 0, done.flat
    assert f"resuming after user_id {record.after_user_id:,}" in done.flat
    assert f"adopted {ROWS} of {ROWS} rows ({IN_STEP} already in step)" in done.flat
    assert f"(resumed after user_id {record.after_user_id})" in done.flat
    # one pass in all, give or take the page the kill interrupted
    assert full_pass <= page_reads(sandbox) <= full_pass + 1
    assert {k: u for k, (u, _) in identity_map(config).items()} == {str(i): made[i] for i in made}
    with Wiring(load(config)) as app:
        final = Adoptions(app.store).get("customers")
    assert final is not None and final.state == "done"
    # every page the resumed process read is saved: the killed one read what was saved
    # before the kill, and at most the one page it was killed reading
    killed_process_reads = page_reads(sandbox) - (final.reads - record.reads)
    assert killed_process_reads in (record.reads, record.reads + 1)


# -- (c) never a user twice, never another job's user ---------------------------------


def test_c_held_users_are_never_adopted_and_the_lowest_of_two_wins(
    setup: Callable[..., Path], sandbox: SandboxServer, any_state: str
) -> None:
    config = setup(state=any_state)
    payload = {i: dict(r.payload) for i, r in source_records(config).items()}
    held = sandbox.store.upsert(payload[1])  # another job's row holds this one
    first = sandbox.store.upsert(payload[1])  # the live service does not merge: a second
    two = sandbox.store.upsert(payload[2])
    two_again = sandbox.store.upsert(payload[2])  # a duplicate a lost answer left
    rest = {i: sandbox.store.upsert(payload[i]) for i in range(3, 11)}
    visitors(sandbox, 100)

    with Wiring(load(config)) as app:
        app.store.transaction(
            lambda conn: conn.execute(
                rows.insert().values(
                    job="others", row_key="o-1", user_id=held, fingerprint="", sent_at=0.0
                )
            ),
            "test",
        )
        summary = admin.adopt(app, app.config.job("customers"))
        kept = app.store.transaction(
            lambda conn: [
                (r.job, r.row_key, r.user_id, r.kept_user_id)
                for r in conn.execute(select(duplicates))
            ],
            "test",
        )
        [status] = admin.status(app)
    assert (summary.wanted, summary.found, summary.duplicates) == (ROWS, 10, 1)
    adopted = {k: u for k, (u, _) in identity_map(config).items()}
    assert adopted == {"1": first, "2": two, **{str(i): u for i, u in rest.items()}}
    assert held not in adopted.values()
    assert kept == [("customers", "2", two_again, two)]
    assert status.adoption is not None and status.adoption.found == 10
    # rows 11..30 have no user: the pass read every user, and nothing more
    assert page_reads(sandbox) == -(-len(sandbox.users()) // 50)


def test_c_one_pass_serves_every_shard(setup: Callable[..., Path], sandbox: SandboxServer) -> None:
    config = setup(shards=3)
    made = earlier_sync(sandbox, config, range(1, ROWS + 1))
    visitors(sandbox, VISITORS)
    sandbox.clear_requests()

    done = cli("adopt", "-c", str(config), "customers", "--yes")
    assert done.code == 0, done.flat
    assert page_reads(sandbox) == 1
    for index in range(3):
        part = f"customers#{index}/3"
        adopted = {k: u for k, (u, _) in identity_map(config, part).items()}
        assert adopted == {str(i): made[i] for i in made if i % 3 == index}
    shown = cli("status", "-c", str(config))
    assert shown.flat.count("identity map: adopted") == 3


# -- (d) --skip, confirmation and status -------------------------------------------------


def test_d_skip_records_it_and_status_says_how_the_map_was_built(
    setup: Callable[..., Path], sandbox: SandboxServer
) -> None:
    config = setup()
    other = setup(name="adopted.yaml")
    earlier_sync(sandbox, other, range(1, ROWS + 1))
    visitors(sandbox, VISITORS)

    refused = cli("adopt", "-c", str(config), "customers", "--skip")
    assert refused.code == 2, refused.flat  # not a terminal, no --yes: nothing asked
    assert "pass --yes" in refused.flat
    with Wiring(load(config)) as app:
        assert Adoptions(app.store).get("customers") is None

    shown = cli("status", "-c", str(config))
    assert "identity map: built by its own runs" in shown.flat

    sandbox.clear_requests()
    skipped = cli("adopt", "-c", str(config), "customers", "--skip", "--yes")
    assert skipped.code == 0, skipped.flat
    assert "adoption skipped" in skipped.flat
    assert page_reads(sandbox) == 0
    assert cli("adopt", "-c", str(config), "customers", "--yes").flat.count("skipped on") == 1

    text = cli("status", "-c", str(config))
    assert text.code == 0
    assert "identity map: adoption skipped on 20" in text.flat
    [doc] = json.loads(cli("status", "-c", str(config), "--json").out)
    assert doc["adoption"]["state"] == "skipped"
    assert doc["adoption"]["ended_at"].endswith("Z")

    assert cli("adopt", "-c", str(other), "customers", "--yes").code == 0
    text = cli("status", "-c", str(other))
    assert (
        f"identity map: adopted {ROWS} of {ROWS} rows from Personyze's users on 20"
    ) in text.flat
    assert "(1 reads)" in text.flat
    [doc] = json.loads(cli("status", "-c", str(other), "--json").out)
    assert doc["adoption"] == {
        "state": "done",
        "wanted": ROWS,
        "found": ROWS,
        "reads": 1,
        "after_user_id": 50,
        "highest_user_id": ROWS + VISITORS,
        "started_at": doc["adoption"]["started_at"],
        "ended_at": doc["adoption"]["ended_at"],
    }


def test_d_adopt_refuses_while_another_process_runs_the_job(
    setup: Callable[..., Path], sandbox: SandboxServer
) -> None:
    config = setup()
    with Wiring(load(config)) as app:
        app.store.claim()  # the SQLite store is this process's
        done = cli("adopt", "-c", str(config), "customers", "--yes")
    assert done.code == 1, done.flat
    with Wiring(load(config)) as app:
        assert Adoptions(app.store).get("customers") is None


# -- what a run calls -------------------------------------------------------------------


@pytest.fixture
def parts(setup: Callable[..., Path]) -> Iterator[Callable[..., tuple[Wiring, Any]]]:
    apps: list[Wiring] = []

    def make(**job: Any) -> tuple[Wiring, Any]:
        app = Wiring(load(setup(**job)))
        apps.append(app)
        settings = app.config.job("customers")
        pieces = [(name, app.reader(settings, shard)) for name, shard in app.parts(settings)]
        return app, pieces

    yield make
    for app in apps:
        app.close()


def refuse_or_adopt(app: Wiring, pieces: Any) -> Any:
    settings = app.config.job("customers")
    return adopt_or_refuse(
        settings,
        pieces,
        mapper=Mapper(settings),
        store=app.store,
        client=app.client,
        config_path="/etc/sync.yaml",
        requests_per_second=50,
    )


def test_a_run_adopts_inline_when_cheap(
    parts: Callable[..., tuple[Wiring, Any]], sandbox: SandboxServer
) -> None:
    app, pieces = parts()
    assert adoption_needed(app.store, "customers")
    for i in range(1, ROWS + 1):
        sandbox.store.upsert({"internal_id": i, "first_name": f"First{i}"})
    visitors(sandbox, INLINE_READS * 50 - ROWS)  # exactly INLINE_READS pages

    summary = refuse_or_adopt(app, pieces)
    assert summary is not None and (summary.wanted, summary.found) == (ROWS, ROWS)
    assert not adoption_needed(app.store, "customers")
    assert app.store.part("customers").row_count() == ROWS
    assert refuse_or_adopt(app, pieces) is None  # done: nothing more


def test_an_empty_account_costs_one_read(
    parts: Callable[..., tuple[Wiring, Any]], sandbox: SandboxServer
) -> None:
    app, pieces = parts()
    summary = refuse_or_adopt(app, pieces)
    assert summary is not None and summary.found == 0 and summary.reads == 0
    assert gets(sandbox) == 1
    assert not adoption_needed(app.store, "customers")


def test_a_run_refuses_when_the_account_is_large(
    parts: Callable[..., tuple[Wiring, Any]], sandbox: SandboxServer
) -> None:
    app, pieces = parts()
    visitors(sandbox, 1234)
    with pytest.raises(AdoptionNeeded) as refused:
        refuse_or_adopt(app, pieces)
    assert str(refused.value) == (
        "job customers: this state store has never synced the job, and Personyze already "
        "holds users (highest user_id 1234): rows without an email could become second "
        "users. Adopt them first: personyze-sync adopt -c /etc/sync.yaml customers (about 25 "
        "reads, ~1s at personyze.requests_per_second 50), or, if Personyze holds none of "
        "this job's users, personyze-sync adopt -c /etc/sync.yaml customers --skip"
    )
    assert gets(sandbox) == 1  # only the highest user_id was read
    assert adoption_needed(app.store, "customers")


def test_rows_that_all_carry_an_email_need_no_adoption(
    parts: Callable[..., tuple[Wiring, Any]], sandbox: SandboxServer, sqlite_url: str
) -> None:
    app, pieces = parts()
    execute(sqlite_url, text("UPDATE customers SET email = 'user' || id || '@example.com'"))
    visitors(sandbox, 1234)
    assert refuse_or_adopt(app, pieces) is None
    assert Adoptions(app.store).get("customers") is None


def test_a_job_that_maps_no_internal_id_is_looked_for_by_fb_id(
    parts: Callable[..., tuple[Wiring, Any]], sandbox: SandboxServer
) -> None:
    app, pieces = parts(mapping={"id": "fb_id", "first_name": "first_name"})
    uid = sandbox.store.upsert({"fb_id": 7, "first_name": "First7"})
    adopter = Adopter(
        app.config.job("customers"),
        pieces,
        mapper=Mapper(app.config.job("customers")),
        store=app.store,
        client=app.client,
    )
    assert adopter.identifier == "fb_id"
    summary = adopter.run()
    assert (summary.found, summary.in_step) == (1, 1)
    assert app.store.part("customers").lookup(["7"]).known["7"].user_id == uid
