"""An audience job's state on SQLite and PostgreSQL: its list, found or created once, and
the members it confirmed; every write refused once the run's lease is lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.errors import LeaseLost
from sync.state.audiences import AudienceState, AudienceStatus, audience_status
from sync.state.store import StateStore, state_engine
from tests.support import FakeClock


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    url = f"sqlite:///{tmp_path}/state.db" if request.param == "sqlite" else None
    url = url or str(request.getfixturevalue("pg_url"))
    state = StateStore(state_engine(url), FakeClock(1000.0), holder="test:1")
    state.create_schema()
    try:
        yield state
    finally:
        state.close()


def test_the_list_goes_from_creating_to_known(store: StateStore) -> None:
    state = AudienceState(store, "vip", clock=FakeClock(1000.0))
    assert state.record() is None
    assert audience_status(store, "vip", "VIP") == AudienceStatus("VIP", None, 0, 0)
    state.creating("VIP")
    record = state.record()
    assert record is not None and (record.name, record.list_id) == ("VIP", None)
    state.set_list("VIP", 7)
    state.set_waiting(3)
    record = state.record()
    assert record is not None and (record.list_id, record.waiting) == (7, 3)
    other = AudienceState(store, "churn", clock=FakeClock(1000.0))
    assert other.record() is None  # per job


def test_members_are_added_removed_and_forgotten(store: StateStore) -> None:
    state = AudienceState(store, "vip", clock=FakeClock(1000.0))
    state.set_list("VIP", 7)
    state.added({u: f"k{u}" for u in range(1, 2001)})
    state.added({5: "k5-again"})  # one membership per user
    assert state.count() == 2000 and state.members()[5] == "k5-again"
    state.removed(range(1, 1501))
    assert sorted(state.members()) == list(range(1501, 2001))
    assert audience_status(store, "vip", "VIP") == AudienceStatus("VIP", 7, 500, 0)
    state.forget()
    assert state.record() is None and state.members() == {}


def test_a_run_that_lost_its_lease_writes_nothing(store: StateStore) -> None:
    lease = store.lease("vip")
    assert lease is not None
    state = AudienceState(store, "vip", fence=lease, clock=FakeClock(1000.0))
    state.set_list("VIP", 7)
    state.added({1: "k1"})
    lease.release()
    taken = store.lease("vip")  # another run has it now
    assert taken is not None
    with pytest.raises(LeaseLost):
        state.added({2: "k2"})
    with pytest.raises(LeaseLost):
        state.removed([1])
    assert state.members() == {1: "k1"}
    taken.release()
