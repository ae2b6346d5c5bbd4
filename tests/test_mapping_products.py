"""The mapper of a products job, table-driven: the key sent as internal_id, prices with
the source's decimals (never a float's artefacts), is_in_stock as yes/no."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from sync.config import JobSettings
from sync.mapping import Mapper, Record, Rejection, catalog_value, exact_number

MAPPING = {"title": "title", "price": "price", "in_stock": "is_in_stock"}


def job(mapping: dict[str, str] | None = None, **more: Any) -> JobSettings:
    return JobSettings.model_validate(
        {
            "name": "catalog",
            "object": "products",
            "source": {"url": "sqlite://", "table": "p", "cursor": "updated_at", "key": "sku"},
            "mapping": mapping or MAPPING,
            **more,
        }
    )


def mapped(row: dict[str, Any], mapping: dict[str, str] | None = None, **more: Any) -> Any:
    return Mapper(job(mapping, **more)).map({"sku": "mug-1", "updated_at": None, **row})


def sent(value: Any) -> str:
    """The JSON text the client sends for a value."""
    return json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("19.99"), "19.99"),
        (Decimal("19.90"), "19.9"),  # the same number; JSON numbers carry no trailing zeros
        (Decimal("20.00"), "20"),
        (Decimal("0.10"), "0.1"),
        (Decimal("-3.25"), "-3.25"),
        (Decimal("1234567.891"), "1234567.891"),
        # more digits than a double holds: the exact text, never a rounded float
        (Decimal("123456789012345678.99"), '"123456789012345678.99"'),
        (Decimal("0.12345678901234567890"), '"0.12345678901234567890"'),
        (19.990000000000002, "19.99"),  # a float's artefact, rounded to 15 digits
        (0.1 + 0.2, "0.3"),
        (19.99, "19.99"),
        (1e-7, "1e-07"),
        (12, "12"),
        ("19.99", '"19.99"'),  # text stays text
    ],
)
def test_numbers_keep_the_source_decimals(value: Any, text: str) -> None:
    assert sent(catalog_value("price", value)) == text


def test_a_decimal_that_is_not_finite_is_refused() -> None:
    result = mapped({"title": "Mug", "price": Decimal("NaN"), "in_stock": True})
    assert isinstance(result, Rejection)
    assert result.reason == "column 'price': NaN is not a finite number"


def test_exact_number_never_prints_a_float_artefact() -> None:
    for cents in range(0, 100_000, 7):
        price = Decimal(cents) / 100
        shown = sent(exact_number(price))
        assert Decimal(shown.strip('"')) == price, (price, shown)
        assert "." not in shown or len(shown.split(".")[1]) <= 2, (price, shown)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "yes"),
        (False, "no"),
        (1, "yes"),
        (0, "no"),
        (Decimal("1"), "yes"),
        (Decimal("0"), "no"),
        (1.0, "yes"),
        ("yes", "yes"),
        ("No", "no"),
        (" true ", "yes"),
        ("0", "no"),
        ("", None),  # empty: not sent (the stored value stays)
        (None, None),
    ],
)
def test_is_in_stock_is_yes_or_no(value: Any, expected: str | None) -> None:
    result = mapped({"title": "Mug", "price": 1, "in_stock": value})
    assert isinstance(result, Record)
    assert result.payload.get("is_in_stock") == expected


@pytest.mark.parametrize("value", [5, -1, 0.5, "maybe", "in stock"])
def test_is_in_stock_that_is_not_true_or_false_rejects_the_row(value: Any) -> None:
    result = mapped({"title": "Mug", "price": 1, "in_stock": value})
    assert isinstance(result, Rejection)
    assert result.reason.startswith(f"column 'in_stock': {value!r} is not in stock or out of it")


def test_the_key_is_sent_as_internal_id_first_with_only_mapped_columns() -> None:
    row = {"title": "Mug", "price": Decimal("19.99"), "in_stock": 1, "cost": Decimal("4.10")}
    result = mapped(row)
    assert isinstance(result, Record)
    assert list(result.payload.items()) == [
        ("internal_id", "mug-1"),
        ("title", "Mug"),
        ("price", 19.99),
        ("is_in_stock", "yes"),
    ]  # cost is not mapped: never sent


def test_a_job_that_maps_the_key_sends_it_once() -> None:
    result = mapped({"price": 3}, {"sku": "internal_id", "price": "price"})
    assert isinstance(result, Record)
    assert result.payload == {"internal_id": "mug-1", "price": 3}


def test_a_numeric_key_is_sent_as_a_number() -> None:
    result = Mapper(job()).map({"sku": 42, "title": "Cup", "price": None, "in_stock": None})
    assert isinstance(result, Record)
    assert result.payload == {"internal_id": 42, "title": "Cup"}


def test_an_empty_key_rejects_the_row() -> None:
    result = mapped({"sku": "", "title": "Mug", "price": 1, "in_stock": 1})
    assert isinstance(result, Rejection)
    assert result.reason == "no internal_id: the key 'sku' is empty"


def test_a_product_needs_no_user_identifier() -> None:
    """A users job would reject a row without user_id/email/internal_id/fb_id."""
    assert isinstance(mapped({"title": "Mug", "price": 1, "in_stock": 0}), Record)


def test_a_template_sees_the_price_as_it_is_sent() -> None:
    transforms = {"title": [{"template": "{title} at {price}"}]}
    result = mapped(
        {"title": "Mug", "price": Decimal("19.90"), "in_stock": 1}, transforms=transforms
    )
    assert isinstance(result, Record)
    assert result.payload["title"] == "Mug at 19.9"


def test_the_fingerprint_changes_with_the_price_only() -> None:
    first = mapped({"title": "Mug", "price": Decimal("19.99"), "in_stock": 1})
    again = mapped({"title": "Mug", "price": Decimal("19.990"), "in_stock": True})
    changed = mapped({"title": "Mug", "price": Decimal("17.50"), "in_stock": 1})
    assert first.fingerprint == again.fingerprint != changed.fingerprint


def test_the_key_takes_no_transforms() -> None:
    """A delete finds the product by the key as read: a transformed internal_id would
    make that delete miss."""
    with pytest.raises(ValidationError, match="it takes no transforms"):
        job({"sku": "internal_id", "price": "price"}, transforms={"internal_id": ["upper"]})
