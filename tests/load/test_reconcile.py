"""Which user a mark made: the pure decision, table by table."""

from __future__ import annotations

from typing import Any

import pytest

from sync.load.reconcile import MARGIN_S, decide, since
from sync.model import PendingRow

PART = "leads"


def mark(key: str, watermark: int | None = 1000, **payload: Any) -> PendingRow:
    return PendingRow(key, payload, f"fp-{key}", watermark, 5_000.0)


def user(uid: int, **columns: Any) -> dict[str, Any]:
    return {"user_id": uid, "data_last_modified": 1_000, **columns}


@pytest.mark.parametrize(
    ("marks", "users", "held", "adopted", "duplicates", "lost"),
    [
        pytest.param(
            [mark("1", internal_id=1, first_name="Ann")],
            [user(7, internal_id="1", first_name="Ann")],
            {},
            {"1": (7, "fp-1")},
            [],
            [],
            id="internal_id and every sent column match",
        ),
        pytest.param(
            [mark("1", internal_id=1, first_name="Lead")],
            [user(7, internal_id="1", first_name="Customer")],
            {},
            {},
            [],
            ["1"],
            id="another job's user: its columns differ",
        ),
        pytest.param(
            [mark("1", internal_id=1, first_name="Ann")],
            [user(7, internal_id="1", first_name="Ann")],
            {7: [("customers", "1")]},
            {},
            [],
            ["1"],
            id="held by a row of another job",
        ),
        pytest.param(
            [mark("1", internal_id=1)],
            [user(7, internal_id="1")],
            {7: [(PART, "1")]},
            {"1": (7, "fp-1")},
            [],
            [],
            id="held by this very row",
        ),
        pytest.param(
            [mark("1", internal_id=1, first_name="Ann")],
            [user(9, internal_id="1", first_name="Ann"), user(7, internal_id=1, first_name="Ann")],
            {},
            {"1": (7, "fp-1")},
            [("1", 9, 7)],
            [],
            id="two users: the lowest adopted, the other a duplicate",
        ),
        pytest.param(
            [mark("1", email="ann@example.com", internal_id=1, first_name="Ann")],
            [user(3, email="Ann@Example.com", first_name="Ann", internal_id="1")],
            {},
            {"1": (3, "fp-1")},
            [],
            [],
            id="by email, without regard to case",
        ),
        pytest.param(
            [mark("1", fb_id="fb-1", custom_i_1=5)],
            [user(4, fb_id="fb-1", custom_i_1="5")],
            {},
            {"1": (4, "fp-1")},
            [],
            [],
            id="by fb_id; numbers compare as numbers",
        ),
        pytest.param(
            [mark("1", internal_id=1), mark("2", internal_id=2)],
            [],
            {},
            {},
            [],
            ["1", "2"],
            id="nothing answers: sent again",
        ),
    ],
)
def test_decide(
    marks: list[PendingRow],
    users: list[dict[str, Any]],
    held: dict[int, list[tuple[str, str]]],
    adopted: dict[str, tuple[int, str]],
    duplicates: list[tuple[str, int, int]],
    lost: list[str],
) -> None:
    found = decide(PART, marks, users, held)
    assert (found.adopted, found.duplicates, found.lost) == (adopted, duplicates, lost)


def test_a_user_is_never_adopted_for_two_rows() -> None:
    marks = [mark("1", internal_id=5), mark("2", internal_id=5)]
    found = decide(PART, marks, [user(8, internal_id="5")], {})
    assert found.adopted == {"1": (8, "fp-1")} and found.lost == ["2"]


def test_the_read_back_starts_at_personyzes_own_watermark_less_the_margin() -> None:
    assert since([mark("1", 10_000), mark("2", 9_000)]) == 9_000 - MARGIN_S
    assert since([mark("1", 50)]) == 0
    legacy = PendingRow("1", {"internal_id": 1}, None, None, 7_200.0)  # before watermarks
    assert since([legacy]) == 3_600
