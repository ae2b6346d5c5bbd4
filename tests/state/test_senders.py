"""psync_senders, the rate budget's census, on SQLite and PostgreSQL alike.

Two processes are two ``Senders`` of one store under two holder names. A row's age is
set in SQL where the store's clock is PostgreSQL's (it cannot be faked there).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from sync.state.schema import senders
from sync.state.senders import LIVE_S, STALE_S, Senders
from sync.state.store import StateStore, state_engine
from tests.support import FakeClock


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    url = (
        f"sqlite:///{tmp_path}/state.db"
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    state = StateStore(state_engine(url), FakeClock(), holder="host:1")
    state.create_schema()
    try:
        yield state
    finally:
        state.close()


def pair(store: StateStore) -> tuple[Senders, Senders]:
    clock = FakeClock()
    return Senders(store.transaction, "host:1", clock), Senders(store.transaction, "host:2", clock)


def age(store: StateStore, holder: str, seconds: float) -> None:
    """Make ``holder``'s last beat ``seconds`` older."""
    store.transaction(
        lambda conn: conn.execute(
            update(senders)
            .where(senders.c.holder == holder)
            .values(seen_at=senders.c.seen_at - seconds)
        ),
        "ageing a sender",
    )


def holders(store: StateStore) -> set[str]:
    return set(
        store.transaction(lambda conn: conn.execute(select(senders.c.holder)).scalars().all(), "")
    )


def test_each_sender_counts_the_others_that_send(store: StateStore) -> None:
    one, two = pair(store)
    assert one.beat(True, None).others == 0
    assert two.beat(True, None).others == 1
    assert one.beat(True, None).others == 1
    assert two.beat(False, None).others == 1  # one still sends; two left
    assert one.beat(True, None).others == 0
    assert holders(store) == {"host:1"}


def test_a_sender_that_stopped_beating_stops_counting_and_is_deleted_later(
    store: StateStore,
) -> None:
    one, two = pair(store)
    two.beat(True, None)
    age(store, "host:2", LIVE_S + 1)  # killed: no more beats
    assert one.beat(True, None).others == 0
    assert holders(store) == {"host:1", "host:2"}
    age(store, "host:2", STALE_S)
    one.beat(True, None)
    assert holders(store) == {"host:1"}


def test_a_cut_is_seen_by_the_others_with_its_age_and_not_by_its_maker(
    store: StateStore,
) -> None:
    one, two = pair(store)
    two.beat(True, None)
    assert one.beat(True, 42.0).cut_rate is None  # its own cut is not news to it
    seen = two.beat(True, None)
    assert seen.cut_rate == 42.0 and seen.cut_at is not None
    assert 0.0 <= seen.cut_age_s < 5.0
    again = two.beat(True, None)
    assert again.cut_at == seen.cut_at  # a beat without a cut keeps the last one
    one.beat(True, 30.0)
    assert two.beat(True, None).cut_rate == 30.0


def test_leaving_deletes_the_row(store: StateStore) -> None:
    one, two = pair(store)
    one.beat(True, 10.0)
    one.leave()
    census = two.beat(True, None)
    assert (census.others, census.cut_rate) == (0, None)
