"""The state store's contract, run against every backend it supports.

What one part reads and writes is tested through ``store.part(name)`` (a
:class:`PartState`), as a run holds it. Each test runs on an SQLite file (in a folder
that does not exist yet) and on a fresh PostgreSQL database. Time comes from a fake
clock, so every timestamp the store writes is asserted exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError

from sync.errors import ConfigError, StateError
from sync.model import PendingRow, Position
from sync.state import deliveries as deliveries_module
from sync.state import outcome as outcome_module
from sync.state.deliveries import Retention
from sync.state.part import PartState
from sync.state.records import (
    Ack,
    BatchOutcome,
    Collision,
    Delivery,
    KnownRow,
    Mark,
    RejectedRow,
    RunRecord,
    StoredDelivery,
    StoredRejection,
)
from sync.state.store import ANALYZE_FIRST, IN_CHUNK, StateStore, in_chunks, state_engine
from tests.support import FakeClock

JOB = "contacts"
OTHER = "orders"
HOLDER = "test-host:4242"
T0 = 1_700_000_000.25


def mark(key: str, internal_id: str) -> Mark:
    return Mark(key, {"internal_id": internal_id}, "m" * 32)


def pending_row(key: str, internal_id: str, at: float) -> PendingRow:
    return PendingRow(key, {"internal_id": internal_id}, "m" * 32, None, at)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        folder = tmp_path / "not" / "yet" / "there"
        assert not folder.exists()
        yield f"sqlite:///{folder}/state.db"
        assert (folder / "state.db").is_file()
    else:
        yield str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[StateStore]:
    state = StateStore(state_engine(store_url), clock, holder=HOLDER)
    state.create_schema()
    try:
        yield state
    finally:
        state.close()


@pytest.fixture
def part(store: StateStore) -> PartState:
    """The state of the job the tests write to."""
    return store.part(JOB)


@pytest.fixture
def other(store: StateStore) -> PartState:
    """The state of another job, which the writes to ``part`` must leave alone."""
    return store.part(OTHER)


def ack(key: str, user_id: int, fingerprint: str = "f" * 32) -> Ack:
    return Ack(key=key, user_id=user_id, fingerprint=fingerprint)


def reject(
    key: str,
    *,
    reason: str = "bad email",
    status: int | None = 400,
    fingerprint: str | None = "r" * 32,
    payload: dict[str, Any] | None = None,
) -> RejectedRow:
    return RejectedRow(
        key=key,
        payload=payload if payload is not None else {"email": "x"},
        reason=reason,
        status=status,
        fingerprint=fingerprint,
    )


# -- checkpoints -------------------------------------------------------------------

CURSOR_VALUES = [
    pytest.param(42, id="int"),
    pytest.param(-(2**70), id="int-beyond-64-bits"),
    pytest.param("2024-05-01 key/with:odd chars é", id="str"),
    pytest.param("", id="empty-str"),
    pytest.param(Decimal("12345.6789000"), id="decimal"),
    pytest.param(0.1 + 0.2, id="float"),
    pytest.param(datetime(2024, 5, 1, 13, 45, 7, 123456), id="naive-datetime"),
    pytest.param(
        datetime(2024, 5, 1, 13, 45, 7, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        id="aware-datetime",
    ),
    pytest.param(date(2024, 2, 29), id="date"),
    pytest.param(UUID("12345678-1234-5678-1234-567812345678"), id="uuid"),
]


def assert_same(got: Any, want: Any) -> None:
    """Equal, of the very same type, and (for decimals and datetimes) the same form."""
    assert type(got) is type(want)
    assert got == want
    if isinstance(want, Decimal):
        assert str(got) == str(want)  # trailing zeros (the precision) are kept
    if isinstance(want, datetime):
        assert got.tzinfo == want.tzinfo
        assert got.utcoffset() == want.utcoffset()


@pytest.mark.parametrize("value", CURSOR_VALUES)
def test_checkpoint_round_trip_keeps_the_type(
    part: PartState, other: PartState, value: Any
) -> None:
    # As a cursor, moved by hand; as a key, saved with a batch: both write paths.
    part.set_checkpoint(Position(cursor=value, key=7))
    other.commit(BatchOutcome(checkpoint=Position(cursor="c", key=value)))
    as_cursor, as_key = part.checkpoint(), other.checkpoint()
    assert as_cursor is not None
    assert as_key is not None
    assert_same(as_cursor.cursor, value)
    assert_same(as_cursor.key, 7)
    assert_same(as_key.cursor, "c")
    assert_same(as_key.key, value)


def test_checkpoint_with_no_key_means_from_this_cursor_on(part: PartState) -> None:
    part.set_checkpoint(Position(cursor=date(2024, 1, 1), key=None))
    assert part.checkpoint() == Position(cursor=date(2024, 1, 1), key=None)


def test_checkpoint_absent_then_moved_then_forgotten(part: PartState) -> None:
    assert part.checkpoint() is None
    part.set_checkpoint(Position(cursor=1, key="a"))
    part.set_checkpoint(Position(cursor=2, key="b"))
    assert part.checkpoint() == Position(cursor=2, key="b")
    part.set_checkpoint(None)
    assert part.checkpoint() is None
    part.set_checkpoint(None)  # forgetting twice is harmless
    assert part.checkpoint() is None


def test_checkpoints_of_jobs_are_independent(part: PartState, other: PartState) -> None:
    part.set_checkpoint(Position(cursor=1, key="a"))
    other.commit(BatchOutcome(checkpoint=Position(cursor=99, key="z")))
    assert part.checkpoint() == Position(cursor=1, key="a")
    assert other.checkpoint() == Position(cursor=99, key="z")
    part.set_checkpoint(None)
    assert part.checkpoint() is None
    assert other.checkpoint() == Position(cursor=99, key="z")


def test_commit_moves_an_existing_checkpoint(part: PartState) -> None:
    part.commit(BatchOutcome(checkpoint=Position(cursor=1, key="a")))
    part.commit(BatchOutcome(checkpoint=Position(cursor=2, key="b")))
    part.commit(BatchOutcome())  # no checkpoint: it stays where it was
    assert part.checkpoint() == Position(cursor=2, key="b")


def test_unsupported_cursor_type_is_a_state_error(part: PartState) -> None:
    with pytest.raises(StateError, match="bytes"):
        part.set_checkpoint(Position(cursor=b"raw", key=1))
    assert part.checkpoint() is None


# -- one batch, all or nothing -----------------------------------------------------


def test_commit_writes_everything(part: PartState, clock: FakeClock) -> None:
    outcome = BatchOutcome(
        acks=[ack("1", 101, "a" * 32), ack("2", 102, "b" * 32), ack("4", 101, "c" * 32)],
        rejected=[reject("3")],
        checkpoint=Position(cursor=10, key="4"),
    )
    part.commit(outcome)
    assert outcome.collisions == [Collision(key="4", user_id=101, other_key="1")]
    assert part.lookup(["1", "2", "3", "4"]).known == {
        "1": KnownRow(101, "a" * 32),
        "2": KnownRow(102, "b" * 32),
        "4": KnownRow(101, "c" * 32),
    }
    assert part.rejections() == [
        StoredRejection(
            key="3",
            payload={"email": "x"},
            reason="bad email",
            status=400,
            fingerprint="r" * 32,
            attempts=1,
            first_at=T0,
            last_at=T0,
        )
    ]
    assert part.collisions() == [Collision("4", 101, "1")]
    assert part.checkpoint() == Position(cursor=10, key="4")
    assert part.row_count() == 3


def test_commit_is_all_or_nothing(part: PartState, monkeypatch: pytest.MonkeyPatch) -> None:
    part.commit(
        BatchOutcome(acks=[ack("old", 1, "o" * 32)], checkpoint=Position(cursor=1, key="old"))
    )
    part.mark([mark("1", "int-1")])
    part.commit(BatchOutcome(rejected=[reject("2")]))

    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise OperationalError("INSERT INTO psync_rejected", {}, Exception("disk I/O error"))

    monkeypatch.setattr(outcome_module, "record_rejection", boom)  # what a commit writes
    acks = [ack("1", 201, "n" * 32), ack("2", 202, "n" * 32), ack("old", 9, "n" * 32)]
    with pytest.raises(StateError, match="disk I/O error") as caught:
        part.commit(
            BatchOutcome(
                acks=[*acks, ack("4", 201, "n" * 32)],  # "4" collides with "1"
                rejected=[reject("3")],
                checkpoint=Position(cursor=50, key="4"),
            )
        )
    assert isinstance(caught.value.__cause__, OperationalError)
    monkeypatch.undo()

    # Nothing of the failed batch stuck: not the acks written before the failure,
    # nor the pending mark and rejection they deleted, nor the collision, nor the checkpoint.
    assert part.lookup(["1", "2", "old"]).known == {"old": KnownRow(1, "o" * 32)}
    assert part.pending() == [pending_row("1", "int-1", T0)]
    assert [r.key for r in part.rejections()] == ["2"]
    assert part.collisions() == []
    assert part.checkpoint() == Position(cursor=1, key="old")
    assert part.row_count() == 1


# -- identities --------------------------------------------------------------------


def test_acks_upsert_identities_and_replace_fingerprints(
    part: PartState, other: PartState, clock: FakeClock
) -> None:
    part.commit(BatchOutcome(acks=[ack("1", 101, "a" * 32), ack("2", 102, "b" * 32)]))
    clock.advance(60)
    part.commit(BatchOutcome(acks=[ack("1", 111, "c" * 32), ack("3", 103, "d" * 32)]))
    assert part.lookup(["1", "2", "3", "missing"]).known == {
        "1": KnownRow(111, "c" * 32),
        "2": KnownRow(102, "b" * 32),
        "3": KnownRow(103, "d" * 32),
    }
    assert part.lookup([]).known == {}
    assert other.lookup(["1", "2", "3"]).known == {}
    assert part.row_count() == 3
    assert other.row_count() == 0


def test_same_key_twice_in_one_batch_the_last_wins(part: PartState) -> None:
    # "9" takes the users of "x" and of "y" in turn: two collisions of one key
    acks = [ack("x", 1), ack("y", 2), ack("9", 1, "a" * 32), ack("9", 2, "b" * 32)]
    part.commit(BatchOutcome(acks=acks))
    assert part.lookup(["9"]).known == {"9": KnownRow(2, "b" * 32)}
    assert part.collisions() == [Collision("9", 2, "y")]


def test_user_ids_beyond_32_bits_are_kept(part: PartState) -> None:
    big = 2**40 + 7
    part.commit(BatchOutcome(acks=[ack("1", big)]))
    assert part.lookup(["1"]).known == {"1": KnownRow(big, "f" * 32)}
    assert part.holders([big]) == {big: ["1"]}


def test_ack_clears_pending_mark_and_rejection_of_that_key_only(
    part: PartState, other: PartState
) -> None:
    part.mark([mark("1", "i-1"), mark("2", "i-2")])
    other.mark([mark("1", "i-1")])
    part.commit(BatchOutcome(rejected=[reject("1"), reject("3")]))
    other.commit(BatchOutcome(rejected=[reject("1")]))

    part.commit(BatchOutcome(acks=[ack("1", 101)]))

    assert [p.key for p in part.pending()] == ["2"]
    assert [r.key for r in part.rejections()] == ["3"]
    assert part.lookup(["1", "3"]).refused == {"3": "r" * 32}
    # The same key of another job is untouched.
    assert [p.key for p in other.pending()] == ["1"]
    assert [r.key for r in other.rejections()] == ["1"]


def test_holders_finds_keys_holding_user_ids(part: PartState, other: PartState) -> None:
    part.commit(BatchOutcome(acks=[ack("a", 1), ack("b", 2), ack("c", 1)]))
    other.commit(BatchOutcome(acks=[ack("z", 1), ack("y", 3)]))
    found = part.holders([1, 2, 3, 1])
    assert {uid: sorted(keys) for uid, keys in found.items()} == {1: ["a", "c"], 2: ["b"]}
    assert part.holders([]) == {}
    assert part.holders([404]) == {}
    assert other.holders(iter([1])) == {1: ["z"]}


# -- rejected rows -----------------------------------------------------------------


def test_rejection_recorded_again_counts_attempts_and_keeps_first_at(
    part: PartState, clock: FakeClock
) -> None:
    part.commit(
        BatchOutcome(rejected=[reject("1", reason="first", fingerprint="1" * 32, payload={"v": 1})])
    )
    t1 = clock.advance(30.5)
    part.commit(
        BatchOutcome(
            rejected=[
                reject("1", reason="second", status=422, fingerprint="2" * 32, payload={"v": 2})
            ]
        )
    )
    t2 = clock.advance(10)
    part.commit(
        BatchOutcome(rejected=[reject("1", reason="third", fingerprint="3" * 32, payload={"v": 3})])
    )
    assert t1 != T0
    assert part.rejections() == [
        StoredRejection(
            key="1",
            payload={"v": 3},
            reason="third",
            status=400,
            fingerprint="3" * 32,
            attempts=3,
            first_at=T0,
            last_at=t2,
        )
    ]


def test_rejected_fingerprints_and_mapper_rejections(part: PartState, other: PartState) -> None:
    part.commit(
        BatchOutcome(
            rejected=[
                reject("1", fingerprint="a" * 32),
                reject("2", reason="no email column", status=None, fingerprint=None),
            ]
        )
    )
    assert part.lookup(["1", "2", "3"]).refused == {"1": "a" * 32, "2": None}
    assert part.lookup([]).refused == {}
    assert other.lookup(["1", "2"]).refused == {}
    mapper = [r for r in part.rejections() if r.key == "2"]
    assert mapper == [
        StoredRejection(
            key="2",
            payload={"email": "x"},
            reason="no email column",
            status=None,
            fingerprint=None,
            attempts=1,
            first_at=T0,
            last_at=T0,
        )
    ]


def test_rejections_listed_oldest_first_and_dropped(
    part: PartState, other: PartState, clock: FakeClock
) -> None:
    part.commit(BatchOutcome(rejected=[reject("b")]))
    clock.advance(1)
    part.commit(BatchOutcome(rejected=[reject("a"), reject("c")]))
    other.commit(BatchOutcome(rejected=[reject("a")]))
    assert part.rejections()[0].key == "b"
    assert sorted(r.key for r in part.rejections()) == ["a", "b", "c"]

    part.drop_rejections(["a", "b", "not-there"])
    part.drop_rejections([])
    assert [r.key for r in part.rejections()] == ["c"]
    assert [r.key for r in other.rejections()] == ["a"]


@pytest.mark.parametrize(
    ("payload", "stored"),
    [
        pytest.param(
            {
                "email": "ä@例え.jp",
                "n": 3,
                "f": 1.5,
                "ok": True,
                "none": None,
                "list": [1, "two"],
                "nested": {"x": {"y": []}},
            },
            {
                "email": "ä@例え.jp",
                "n": 3,
                "f": 1.5,
                "ok": True,
                "none": None,
                "list": [1, "two"],
                "nested": {"x": {"y": []}},
            },
            id="json",
        ),
        pytest.param(
            {"at": datetime(2024, 1, 2, 3, 4, 5), "amount": Decimal("1.10")},
            {"at": "2024-01-02 03:04:05", "amount": "1.10"},
            id="not-json-as-text",
        ),
        pytest.param({}, {}, id="empty"),
    ],
)
def test_rejected_payload_round_trips_through_json(
    part: PartState, payload: dict[str, Any], stored: dict[str, Any]
) -> None:
    part.commit(BatchOutcome(rejected=[reject("1", payload=payload)]))
    [got] = part.rejections()
    assert got.payload == stored


# -- rows sent without an answer ---------------------------------------------------


def test_pending_marks_ordered_by_sent_at(
    part: PartState, other: PartState, clock: FakeClock
) -> None:
    part.mark([mark("b", "int-b")])
    t1 = clock.advance(5)
    part.mark([mark("a", "int-a")])
    t2 = clock.advance(5)
    part.mark([mark("c", "int-c"), mark("b", "int-b2")])  # "b" marked again: later
    part.mark([])
    other.mark([mark("x", "int-x")])
    assert t1 < t2
    got = part.pending()
    assert got[0] == pending_row("a", "int-a", t1)
    assert sorted(got[1:], key=lambda p: p.key) == [
        pending_row("b", "int-b2", t2),
        pending_row("c", "int-c", t2),
    ]
    assert other.pending() == [pending_row("x", "int-x", t2)]


def test_adopt_stores_user_id_with_empty_fingerprint(part: PartState, clock: FakeClock) -> None:
    part.mark([mark("1", "i-1"), mark("2", "i-2"), mark("3", "i-3")])
    part.commit(BatchOutcome(acks=[ack("2", 5, "old" + "0" * 29)]))
    clock.advance(3)
    part.adopt({"1": (901, ""), "2": (902, "")})
    part.adopt({})
    assert part.lookup(["1", "2", "3"]).known == {
        "1": KnownRow(901, ""),
        "2": KnownRow(902, ""),
    }
    assert part.pending() == [pending_row("3", "i-3", T0)]
    assert part.holders([901, 902]) == {901: ["1"], 902: ["2"]}


def test_clear_pending(part: PartState, other: PartState) -> None:
    part.mark([mark("1", "i-1"), mark("2", "i-2")])
    other.mark([mark("1", "i-1")])
    part.clear_pending(["1", "unknown"])
    part.clear_pending([])
    assert part.pending() == [pending_row("2", "i-2", T0)]
    assert other.pending() == [pending_row("1", "i-1", T0)]


# -- collisions and forgetting a job -----------------------------------------------


def test_collisions_found_by_commit_listed_and_updated(part: PartState, other: PartState) -> None:
    part.commit(BatchOutcome(acks=[ack("z", 8), ack("x", 7)]))
    part.commit(BatchOutcome(acks=[ack("b", 7), ack("a", 8)]))  # against earlier batches
    part.commit(BatchOutcome(acks=[ack("c", 9), ack("b", 9)]))  # within this batch
    part.commit(BatchOutcome(acks=[ack("x", 7)]))  # acked again, it holds its own user
    assert part.collisions() == [Collision("a", 8, "z"), Collision("b", 9, "c")]
    assert other.collisions() == []


def test_a_user_held_in_a_sibling_shard_is_a_collision(store: StateStore) -> None:
    shards = ["orders#0/2", "orders#1/2"]
    first, second = (store.part(name, parts=shards) for name in shards)
    alone = store.part("orders#0/2")  # without its siblings: its own rows only
    first.commit(BatchOutcome(acks=[ack("1", 5)]))
    second.commit(BatchOutcome(acks=[ack("2", 5)]))
    assert second.collisions() == [Collision("2", 5, "1")]
    assert first.collisions() == []
    assert {uid: sorted(keys) for uid, keys in second.holders([5]).items()} == {5: ["1", "2"]}
    assert alone.holders([5]) == {5: ["1"]}


def test_forget_job_removes_one_job_only(
    store: StateStore, part: PartState, other: PartState
) -> None:
    for state in (part, other):
        state.mark([mark("p", "i-p")])
        state.commit(
            BatchOutcome(
                acks=[ack("1", 1), ack("3", 1)],  # "3" collides with "1"
                rejected=[reject("2")],
                checkpoint=Position(cursor=5, key="3"),
            )
        )

    store.forget_job(JOB)

    assert part.checkpoint() is None
    assert part.lookup(["1"]).known == {}
    assert part.row_count() == 0
    assert part.pending() == []
    assert part.rejections() == []
    assert part.lookup(["2"]).refused == {}
    assert part.collisions() == []
    assert part.holders([1]) == {}

    assert other.checkpoint() == Position(cursor=5, key="3")
    assert other.lookup(["1"]).known == {"1": KnownRow(1, "f" * 32)}
    assert [p.key for p in other.pending()] == ["p"]
    assert [r.key for r in other.rejections()] == ["2"]
    assert other.collisions() == [Collision("3", 1, "1")]


# -- run history -------------------------------------------------------------------


def test_run_history_newest_first_with_exact_counts_and_times(
    store: StateStore, part: PartState, other: PartState, clock: FakeClock
) -> None:
    first = part.start_run("sync")
    t_end1 = clock.advance(12.5)
    part.finish_run(first, "ok", read=10, sent=8, unchanged=1, rejected=1, error=None)
    t_start2 = clock.advance(100)
    second = part.start_run("reconcile")
    elsewhere = other.start_run("sync")
    t_end2 = clock.advance(0.25)
    part.finish_run(
        second,
        "failed",
        read=3,
        sent=0,
        unchanged=0,
        rejected=0,
        error="state store unreachable",
    )
    third = part.start_run("sync")

    assert len({first, second, third, elsewhere}) == 4
    assert part.runs() == [
        RunRecord(
            id=third,
            job=JOB,
            kind="sync",
            started_at=t_end2,
            ended_at=None,
            outcome="running",
            rows_read=0,
            rows_sent=0,
            rows_skipped=0,
            rows_rejected=0,
            error=None,
            holder=HOLDER,
        ),
        RunRecord(
            id=second,
            job=JOB,
            kind="reconcile",
            started_at=t_start2,
            ended_at=t_end2,
            outcome="failed",
            rows_read=3,
            rows_sent=0,
            rows_skipped=0,
            rows_rejected=0,
            error="state store unreachable",
            holder=HOLDER,
        ),
        RunRecord(
            id=first,
            job=JOB,
            kind="sync",
            started_at=T0,
            ended_at=t_end1,
            outcome="ok",
            rows_read=10,
            rows_sent=8,
            rows_skipped=1,
            rows_rejected=1,
            error=None,
            holder=HOLDER,
        ),
    ]
    assert [r.id for r in part.runs(limit=2)] == [third, second]
    assert [r.id for r in other.runs()] == [elsewhere]
    assert store.part("nobody").runs() == []


# -- the delivery history ----------------------------------------------------------

DAY = 86400.0


def sent(key: str, payload: dict[str, Any], user_id: int = 7, op: str = "POST") -> Delivery:
    return Delivery(key, "sent", op, payload, "f" * 32, user_id=user_id)


def deliver(part: PartState, *found: Delivery) -> None:
    """A batch that acknowledged these deliveries, as a run commits it."""
    acks = [ack(d.key, d.user_id or 0) for d in found if d.outcome == "sent"]
    part.commit(BatchOutcome(acks=acks, deliveries=list(found)))


def test_deliveries_keep_run_time_operation_answer_and_changed_columns(
    store: StateStore, part: PartState, other: PartState, clock: FakeClock
) -> None:
    first = part.start_run("backfill")
    deliver(
        part,
        sent("1", {"email": "a@x.io", "first_name": "Ann", "user_id": 7}),
        Delivery("2", "rejected", "POST", {"email": "b@x"}, "b" * 32, 400, None, "bad email"),
        Delivery("3", "rejected", None, {"email": "c"}, "c" * 32, reason="column 'email': no"),
    )
    part.finish_run(first, "success", read=3, sent=1, unchanged=0, rejected=2, error=None)
    t1 = clock.advance(60)
    second = part.start_run("once")
    deliver(part, sent("1", {"email": "a@x.io", "first_name": "Anna", "city": "Oslo"}))
    deliver(other, sent("1", {"email": "other@x.io"}))  # another job's row "1"

    newest, oldest = store.deliveries(JOB, "1")
    assert newest == StoredDelivery(
        id=newest.id, part=JOB, key="1", run_id=second, at=t1, outcome="sent",
        operation="POST", fingerprint="f" * 32, columns=["city", "email", "first_name"],
        changed=["city", "first_name"], status=None, user_id=7, reason=None,
    )  # fmt: skip
    assert (oldest.run_id, oldest.at, oldest.columns, oldest.changed) == (
        first, T0, ["email", "first_name"], None  # user_id is the answer, not a column
    )  # fmt: skip
    assert newest.id > oldest.id
    [refused] = store.deliveries(JOB, "2")
    assert (refused.outcome, refused.operation, refused.status, refused.reason) == (
        "rejected", "POST", 400, "bad email"
    )  # fmt: skip
    [mapper] = store.deliveries(JOB, "3")
    assert (mapper.operation, mapper.status, mapper.reason) == (None, None, "column 'email': no")
    assert store.deliveries(JOB, "nobody") == []
    assert [d.part for d in store.deliveries(OTHER, "1")] == [OTHER]

    found = store.run_of(JOB, first)
    assert found is not None
    run, done = found
    assert (run.id, run.outcome, run.rows_read, run.rows_rejected) == (first, "success", 3, 2)
    assert [(d.key, d.outcome) for d in done] == [
        ("1", "sent"),
        ("2", "rejected"),
        ("3", "rejected"),
    ]
    assert store.run_of(OTHER, first) is None  # not that job's run
    assert store.run_of(JOB, 10**6) is None


def test_a_delivery_keeps_hashes_of_the_columns_sent_never_their_values(
    store: StateStore, part: PartState, store_url: str
) -> None:
    part.start_run("once")
    deliver(part, sent("1", {"email": "hidden-value@x.io", "notes": "sk_live_TOPSECRET"}))
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            stored = repr(conn.execute(text("SELECT * FROM psync_deliveries")).fetchall())
    finally:
        engine.dispose()
    assert "notes" in stored and "email" in stored
    assert "hidden-value" not in stored and "TOPSECRET" not in stored


def test_the_same_row_twice_in_a_batch_names_what_changed_in_between(
    store: StateStore, part: PartState
) -> None:
    part.start_run("once")
    twice = [sent("1", {"email": "a@x.io", "score": 1}), sent("1", {"email": "a@x.io", "score": 2})]
    deliver(part, *twice)
    deliver(part, Delivery("1", "deleted", "DELETE", {"user_id": 7}, None, user_id=7))
    deliver(part, sent("1", {"email": "a@x.io", "score": 2}))
    assert [(d.operation, d.changed) for d in store.deliveries(JOB, "1")] == [
        ("POST", []),  # a DELETE sends no columns: compared with the POST before it
        ("DELETE", None),
        ("POST", ["score"]),
        ("POST", None),
    ]


def test_a_row_is_found_in_any_shard_and_only_its_jobs(store: StateStore) -> None:
    for name in (f"{JOB}#0/2", f"{JOB}#1/2", "con_acts#0/2", "conXtacts#0/2", f"{JOB}x#0/2"):
        shard = store.part(name)
        shard.start_run("once")
        deliver(shard, sent("k", {"email": f"{name}@x.io"}))
    assert [d.part for d in store.deliveries(JOB, "k")] == [f"{JOB}#1/2", f"{JOB}#0/2"]
    assert [d.part for d in store.deliveries("con_acts", "k")] == [
        "con_acts#0/2"
    ]  # "_" is no wildcard


def test_history_off_writes_no_delivery(store: StateStore) -> None:
    quiet = store.part(JOB, history=None)
    run = quiet.start_run("once")
    deliver(quiet, sent("1", {"email": "a@x.io"}))
    quiet.finish_run(run, "success", read=1, sent=1, unchanged=0, rejected=0, error=None)
    assert store.deliveries(JOB, "1") == []
    assert quiet.lookup(["1"]).known == {"1": KnownRow(7, "f" * 32)}


def test_deliveries_older_than_the_retention_go_when_a_run_ends(
    store: StateStore, clock: FakeClock
) -> None:
    part = store.part(JOB, history=Retention(days=30))
    old = part.start_run("once")
    deliver(part, sent("1", {"email": "a@x.io"}), sent("2", {"email": "b@x.io"}))
    clock.advance(29 * DAY)
    deliver(part, sent("2", {"email": "b2@x.io"}))
    part.finish_run(old, "success", read=3, sent=3, unchanged=0, rejected=0, error=None)
    assert len(store.deliveries(JOB, "1")) == 1  # 29 days: kept
    clock.advance(1.5 * DAY)
    new = part.start_run("once")
    part.finish_run(new, "success", read=0, sent=0, unchanged=0, rejected=0, error=None)
    assert store.deliveries(JOB, "1") == []
    assert [d.changed for d in store.deliveries(JOB, "2")] == [["email"]]


def test_the_last_n_deliveries_of_each_row_are_kept(store: StateStore, clock: FakeClock) -> None:
    part = store.part(JOB, history=Retention(days=None, per_row=2))
    first = part.start_run("once")
    for n in range(3):
        deliver(part, sent("1", {"email": "a@x.io", "score": n}))
    deliver(part, sent("2", {"email": "b@x.io"}))
    part.finish_run(first, "success", read=4, sent=4, unchanged=0, rejected=0, error=None)
    second = part.start_run("once")
    deliver(part, sent("2", {"email": "b@x.io", "score": 1}))
    deliver(part, sent("2", {"email": "b@x.io", "score": 2}))
    clock.advance(400 * DAY)  # age does not count
    part.finish_run(second, "success", read=2, sent=2, unchanged=0, rejected=0, error=None)
    assert [d.changed for d in store.deliveries(JOB, "1")] == [["score"], ["score"]]
    assert [d.run_id for d in store.deliveries(JOB, "2")] == [second, second]


def test_deliveries_are_part_of_the_commit_all_or_nothing(
    store: StateStore, part: PartState, monkeypatch: pytest.MonkeyPatch
) -> None:
    part.start_run("once")

    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise OperationalError("INSERT INTO psync_deliveries", {}, Exception("disk I/O error"))

    monkeypatch.setattr(outcome_module, "record_rejection", boom)
    with pytest.raises(StateError, match="disk I/O error"):
        part.commit(BatchOutcome(rejected=[reject("2")], deliveries=[sent("1", {"email": "a"})]))
    monkeypatch.undo()
    assert store.deliveries(JOB, "1") == []
    assert deliveries_module.column_hashes({"a": 1}) == deliveries_module.column_hashes({"a": 1})


def test_forget_job_forgets_its_deliveries(
    store: StateStore, part: PartState, other: PartState
) -> None:
    for state in (part, other):
        state.start_run("once")
        deliver(state, sent("1", {"email": "a@x.io"}))
    store.forget_job(JOB)
    assert store.deliveries(JOB, "1") == []
    assert len(store.deliveries(OTHER, "1")) == 1


# -- schema, engines and failures --------------------------------------------------


def test_create_schema_twice_is_harmless(
    store: StateStore, part: PartState, store_url: str, clock: FakeClock
) -> None:
    part.set_checkpoint(Position(cursor=1, key="a"))
    store.create_schema()
    again = StateStore(state_engine(store_url), clock)
    try:
        again.create_schema()
        assert again.part(JOB).checkpoint() == Position(cursor=1, key="a")
    finally:
        again.close()


def test_unreachable_postgres_is_a_state_error_without_the_password(clock: FakeClock) -> None:
    secret = "s3cr3t-Pa55"
    state = StateStore(state_engine(f"postgresql+psycopg://sync:{secret}@127.0.0.1:1/state"), clock)
    try:
        with pytest.raises(StateError) as caught:
            state.create_schema()
    finally:
        state.close()
    message = str(caught.value)
    assert secret not in message
    assert "127.0.0.1:1" in message
    assert "creating its tables" in message


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://root:s3cr3t-Pa55@127.0.0.1:3306/state",
        "mssql+pyodbc://u:s3cr3t-Pa55@dsn",
        "postgresql+nosuchdriver://u:s3cr3t-Pa55@127.0.0.1/state",
        "postgresql+psycopg2://u:s3cr3t-Pa55@127.0.0.1/state",  # a driver not installed
        "not a url at all s3cr3t-Pa55",
    ],
)
def test_state_engine_refuses_other_databases_and_drivers(url: str) -> None:
    with pytest.raises(ConfigError, match=r"state\.url") as caught:
        state_engine(url)
    assert "s3cr3t-Pa55" not in str(caught.value)
    assert caught.value.__cause__ is None or "s3cr3t-Pa55" not in str(caught.value.__cause__)


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_postgres_url_uses_the_installed_driver(
    pg_url: str, scheme: str, clock: FakeClock
) -> None:
    url = pg_url.replace("postgresql+psycopg://", f"{scheme}://", 1)
    assert url != pg_url
    engine = state_engine(url)
    assert engine.dialect.name == "postgresql"
    assert engine.dialect.driver == "psycopg"
    state = StateStore(engine, clock)
    try:
        state.create_schema()
        part = state.part(JOB)
        part.set_checkpoint(Position(cursor=1, key="a"))
        assert part.checkpoint() == Position(cursor=1, key="a")
    finally:
        state.close()


def test_sqlite_folder_that_cannot_be_created_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StateError, match="folder"):
        state_engine(f"sqlite:///{blocker}/sub/state.db")


@pytest.mark.postgres
def test_a_growing_identity_map_keeps_its_planner_statistics(pg_url: str, clock: FakeClock) -> None:
    """PostgreSQL: ANALYZE once the rows written reach ANALYZE_FIRST, then at each doubling.

    Without statistics, PostgreSQL plans the identity-map lookups of a table it believes
    empty and reads every row of the job for each batch (this machine runs no
    autovacuum). SQLite needs nothing: its lookups always use the primary key.
    """
    store = StateStore(state_engine(pg_url), clock, holder=HOLDER)
    store.create_schema()
    part = store.part(JOB)
    engine = create_engine(pg_url)

    def estimated_rows() -> float:  # -1 until the table is first analyzed
        with engine.connect() as conn:
            query = "SELECT reltuples FROM pg_class WHERE relname = 'psync_rows'"
            found = conn.execute(text(query))
            return float(found.scalar_one())

    try:
        assert estimated_rows() == -1
        first = [ack(str(i), i) for i in range(ANALYZE_FIRST - 1)]
        part.commit(BatchOutcome(acks=first))
        assert estimated_rows() == -1
        part.commit(BatchOutcome(acks=[ack("last", 10**6)]))
        assert estimated_rows() == ANALYZE_FIRST
        more = [ack(f"m{i}", 10**6 + i) for i in range(ANALYZE_FIRST - 1)]
        part.commit(BatchOutcome(acks=more))
        assert estimated_rows() == ANALYZE_FIRST  # not yet doubled
        part.commit(BatchOutcome(acks=[ack("again", 3 * 10**6)]))
        assert estimated_rows() == 2 * ANALYZE_FIRST
    finally:
        engine.dispose()
        store.close()


@pytest.mark.parametrize(
    ("count", "lengths"),
    [
        (0, []),
        (1, [1]),
        (2, [2]),
        (3, [4]),
        (5, [8]),
        (1000, [1024]),
        (IN_CHUNK, [IN_CHUNK]),
        (IN_CHUNK + 1, [IN_CHUNK, 1]),
        (2 * IN_CHUNK + 3, [IN_CHUNK, IN_CHUNK, 4]),
    ],
)
def test_in_chunks_are_powers_of_two_padded_with_repeats(count: int, lengths: list[int]) -> None:
    values = list(range(count))
    chunks = in_chunks(values)
    assert [len(c) for c in chunks] == lengths
    assert [v for c in chunks for v in dict.fromkeys(c)] == values  # each once, in order


def test_lookups_and_commits_of_every_size_use_few_statement_shapes(
    store_url: str, clock: FakeClock
) -> None:
    """Batches of 1 to 120 rows reuse a handful of SQL texts, not one per size.

    Each SQL text is a prepared statement in SQLite's statement cache (and psycopg's):
    one per length of an IN list grew a long backfill's RSS by 30 MB. Lookups beyond
    one chunk are answered in full.
    """
    engine = state_engine(store_url)
    store = StateStore(engine, clock, holder=HOLDER)
    store.create_schema()
    part = store.part(JOB)
    texts: set[str] = set()
    event.listen(engine, "before_cursor_execute", lambda *a: texts.add(a[2]))
    try:
        first = 0
        for size in range(1, 121):
            keys = [str(k) for k in range(first, first + size)]
            part.lookup(keys)  # known and rejected rows
            acks = [ack(k, int(k) + 1) for k in keys]
            part.commit(BatchOutcome(acks=acks))  # with its holders
            part.holders(a.user_id for a in acks)
            first += size
        assert first == 7260
        assert len(texts) < 60, f"{len(texts)} distinct statements"
        every = [str(k) for k in range(first)]
        known = part.lookup(every).known  # 8 chunks
        assert len(known) == first
        assert known["7259"] == KnownRow(7260, "f" * 32)
        holders = part.holders(range(1, first + 1))
        assert holders[7260] == ["7259"]
        assert sum(len(v) for v in holders.values()) == first
    finally:
        store.close()
