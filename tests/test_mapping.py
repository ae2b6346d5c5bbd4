"""The mapper, table-driven: source rows in, payloads or rejections out."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from sync.config import JobSettings
from sync.mapping import Mapper, Record, Rejection, coerce, fingerprint


def job(mapping: dict[str, str], transforms: dict[str, Any] | None = None) -> JobSettings:
    return JobSettings.model_validate(
        {
            "name": "t",
            "source": {"url": "sqlite://", "table": "t", "cursor": "updated_at", "key": "id"},
            "mapping": mapping,
            "transforms": transforms or {},
        }
    )


def mapped(
    row: dict[str, Any], mapping: dict[str, str], transforms: dict[str, Any] | None = None
) -> Record | Rejection:
    return Mapper(job(mapping, transforms)).map({"id": 1, "updated_at": None, **row})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, 1),
        (False, 0),
        (7, 7),
        (2.5, 2.5),
        (Decimal("12.00"), 12),
        (Decimal("12.50"), 12.5),
        ("text", "text"),
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02 03:04:05"),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))), "2024-01-02 01:04:05"),
        (date(2024, 1, 2), "2024-01-02"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    ],
)
def test_default_coercions(value: Any, expected: Any) -> None:
    assert coerce(value) == expected
    assert type(coerce(value)) is type(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x00\x01", "binary value"),
        ({"a": 1}, "nested value"),
        ([1, 2], "nested value"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (Decimal("NaN"), "not a finite number"),
        ("bad \udcff text", "not valid UTF-8"),
        (timedelta(seconds=3), "type timedelta"),
    ],
)
def test_unsendable_values_reject_the_row_naming_the_column(value: Any, reason: str) -> None:
    result = mapped(
        {"email": "a@example.com", "blob": value}, {"email": "email", "blob": "custom_t_1"}
    )
    assert isinstance(result, Rejection)
    assert "'blob'" in result.reason and reason in result.reason


@pytest.mark.parametrize(
    ("row", "mapping", "transforms", "payload"),
    [
        # renaming, camelCase sent as snake_case, only mapped columns sent
        (
            {"email": "a@example.com", "lastName": "Lee", "password": "x"},
            {"email": "email", "lastName": "lastName"},
            None,
            {"email": "a@example.com", "last_name": "Lee"},
        ),
        # emails are stripped and lower-cased by default
        ({"email": "  Ada@Example.COM "}, {"email": "email"}, None, {"email": "ada@example.com"}),
        # empty values are not sent (the API drops them anyway)
        (
            {"email": "a@example.com", "city": "", "name": None},
            {"email": "email", "city": "current_city", "name": "first_name"},
            None,
            {"email": "a@example.com"},
        ),
        # transforms, in order
        (
            {"email": "a@example.com", "city": "  paris "},
            {"email": "email", "city": "current_city"},
            {"current_city": ["strip", "upper"]},
            {"email": "a@example.com", "current_city": "PARIS"},
        ),
        (
            {"email": "a@example.com", "n": "42"},
            {"email": "email", "n": "custom_i_1"},
            {"custom_i_1": ["int"]},
            {"email": "a@example.com", "custom_i_1": 42},
        ),
        (
            {"email": "a@example.com", "n": "4.5"},
            {"email": "email", "n": "custom_f_1"},
            {"custom_f_1": ["float"]},
            {"email": "a@example.com", "custom_f_1": 4.5},
        ),
        (
            {"email": "a@example.com", "n": "yes"},
            {"email": "email", "n": "custom_i_2"},
            {"custom_i_2": ["bool"]},
            {"email": "a@example.com", "custom_i_2": 1},
        ),
        (
            {"email": "a@example.com", "n": 12},
            {"email": "email", "n": "custom_t_1"},
            {"custom_t_1": ["str"]},
            {"email": "a@example.com", "custom_t_1": "12"},
        ),
        (
            {"email": "a@example.com", "d": "2024-03-04T05:06:07"},
            {"email": "email", "d": "birthday"},
            {"birthday": ["date"]},
            {"email": "a@example.com", "birthday": "2024-03-04"},
        ),
        (
            {"email": "a@example.com", "d": "2024-03-04T05:06:07+01:00"},
            {"email": "email", "d": "custom_d_1"},
            {"custom_d_1": ["datetime"]},
            {"email": "a@example.com", "custom_d_1": "2024-03-04 04:06:07"},
        ),
        (
            {"email": "a@example.com", "d": datetime(1970, 1, 2, tzinfo=UTC)},
            {"email": "email", "d": "custom_i_3"},
            {"custom_i_3": ["unix"]},
            {"email": "a@example.com", "custom_i_3": 86400},
        ),
        # a template makes a column from several source columns; a constant adds one
        (
            {"email": "a@example.com", "first_name": "Ada", "last_name": "Lovelace"},
            {"email": "email"},
            {
                "full_name": [{"template": "{first_name} {last_name}"}],
                "origin": [{"constant": "shop"}],
            },
            {"email": "a@example.com", "full_name": "Ada Lovelace", "origin": "shop"},
        ),
        # internal_id alone identifies a row
        ({"ext": 99}, {"ext": "internal_id"}, None, {"internal_id": 99}),
    ],
)
def test_rows_map_to_payloads(
    row: dict[str, Any],
    mapping: dict[str, str],
    transforms: dict[str, Any] | None,
    payload: dict[str, Any],
) -> None:
    result = mapped(row, mapping, transforms)
    assert isinstance(result, Record), result
    assert result.payload == payload
    assert result.fingerprint == fingerprint(payload)
    assert result.key == 1


@pytest.mark.parametrize(
    ("row", "mapping", "transforms", "reason"),
    [
        (
            {"email": None, "ext": None},
            {"email": "email", "ext": "internal_id"},
            None,
            "no identifier",
        ),
        ({"email": "  "}, {"email": "email"}, {"email": ["strip"]}, "no identifier"),
        ({"email": "not-an-email"}, {"email": "email"}, None, "not a valid email address"),
        ({"email": "a@b"}, {"email": "email"}, None, "not a valid email address"),
        ({"uid": -4}, {"uid": "user_id"}, None, "not a positive whole number"),
        (
            {"email": "a@example.com", "n": "abc"},
            {"email": "email", "n": "custom_i_1"},
            {"custom_i_1": ["int"]},
            "'abc' is not a whole number",
        ),
        (
            {"email": "a@example.com", "n": "maybe"},
            {"email": "email", "n": "custom_i_1"},
            {"custom_i_1": ["bool"]},
            "not true or false",
        ),
        (
            {"email": "a@example.com", "d": "soon"},
            {"email": "email", "d": "birthday"},
            {"birthday": ["date"]},
            "not a date or time",
        ),
    ],
)
def test_rows_that_cannot_be_sent_are_rejected_with_a_reason(
    row: dict[str, Any], mapping: dict[str, str], transforms: dict[str, Any] | None, reason: str
) -> None:
    result = mapped(row, mapping, transforms)
    assert isinstance(result, Rejection)
    assert reason in result.reason
    assert result.key == 1


# -- templates see the transformed values (issue 17, item 14) -----------------------------


def test_the_readmes_example_a_template_sees_the_stripped_last_name() -> None:
    """README: ``last_name: [strip]`` and ``full_name: [{template: "{first_name} {lastName}"}]``."""
    result = mapped(
        {"email": "ada@example.com", "first_name": "Ada", "lastName": " Lovelace "},
        {"email": "email", "first_name": "first_name", "lastName": "last_name"},
        {"last_name": ["strip"], "full_name": [{"template": "{first_name} {lastName}"}]},
    )
    assert isinstance(result, Record), result
    assert result.payload == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "full_name": "Ada Lovelace",
    }


@pytest.mark.parametrize(
    ("row", "mapping", "transforms", "column", "expected"),
    [
        # a mapped column, as its transforms made it, coerced as it is sent
        ({"vip": "yes"}, {"vip": "custom_i_1"}, {"custom_i_1": ["bool"]}, "label", "vip=1"),
        ({"n": "4.5"}, {"n": "custom_f_1"}, {"custom_f_1": ["float"]}, "label", "n=4.5"),
        (
            {"c": " Paris "},
            {"c": "current_city"},
            {"current_city": ["strip", "upper"]},
            "label",
            "c=PARIS",
        ),
        # a mapped column that is empty is written as nothing, as when it is read NULL
        ({"c": "   "}, {"c": "current_city"}, {"current_city": ["strip"]}, "label", "c="),
        ({"c": None}, {"c": "current_city"}, {"current_city": ["strip"]}, "label", "c="),
        # a column nobody maps is seen as it was read
        ({"c": " Paris "}, {}, {}, "label", "c= Paris"),
    ],
)
def test_a_template_sees_mapped_columns_after_their_transforms(
    row: dict[str, Any],
    mapping: dict[str, str],
    transforms: dict[str, Any],
    column: str,
    expected: str,
) -> None:
    (name,) = row
    template = {"template": f"{name}={{{name}}}"}
    result = mapped(
        {"email": "a@example.com", **row},
        {"email": "email", **mapping},
        {**transforms, column: [template]},
    )
    assert isinstance(result, Record), result
    assert result.payload[column] == expected


def test_a_column_is_made_after_the_columns_its_template_reads() -> None:
    """``x`` is listed first, but its template reads ``b``, which ``y``'s transforms make."""
    job_settings = job(
        {"email": "email", "a": "x", "b": "y"},
        {"x": [{"template": "{a}+{b}"}], "y": ["upper"]},
    )
    assert job_settings.columns_in_order() == ("email", "y", "x")
    result = Mapper(job_settings).map({"id": 1, "email": "a@example.com", "a": "q", "b": "w"})
    assert isinstance(result, Record), result
    assert result.payload == {"email": "a@example.com", "y": "W", "x": "q+W"}


def test_a_template_reads_its_own_column_as_read() -> None:
    result = mapped(
        {"email": "a@example.com", "nick": " Bo "},
        {"email": "email", "nick": "custom_t_1"},
        {"custom_t_1": ["upper", {"template": "[{nick}]"}]},
    )
    assert isinstance(result, Record), result
    assert result.payload["custom_t_1"] == "[ Bo ]"


def test_a_template_whose_format_a_value_does_not_take_rejects_the_row() -> None:
    transforms = {"label": [{"template": "{n:.2f}"}]}
    result = mapped(
        {"email": "a@example.com", "n": "abc"}, {"email": "email", "n": "custom_t_1"}, transforms
    )
    assert isinstance(result, Rejection)
    assert "column 'label': template '{n:.2f}'" in result.reason
    transforms["custom_t_1"] = ["float"]
    result = mapped(
        {"email": "a@example.com", "n": "4.5"}, {"email": "email", "n": "custom_t_1"}, transforms
    )
    assert isinstance(result, Record), result
    assert result.payload["label"] == "4.50"


def test_templates_that_wait_for_each_other_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"templates read each other's columns in a loop \(x -> y -> x\)"
    ):
        job(
            {"email": "email", "a": "x", "b": "y"},
            {"x": [{"template": "{b}"}], "y": [{"template": "{a}"}]},
        )


def test_fingerprint_ignores_key_order_and_sees_every_value() -> None:
    assert fingerprint({"a": 1, "b": "x"}) == fingerprint({"b": "x", "a": 1})
    assert fingerprint({"a": 1, "b": "x"}) != fingerprint({"a": 1, "b": "y"})
    assert fingerprint({"a": 1}) != fingerprint({"a": "1"})


def test_mapper_lists_the_source_columns_it_reads() -> None:
    mapper = Mapper(
        job(
            {"email": "email", "fname": "first_name"}, {"full": [{"template": "{fname} {surname}"}]}
        )
    )
    assert mapper.source_columns == ("email", "fname", "surname")
