"""The sandbox's products: the catalog Personyze recommends from.

What ``PERSONYZE_API.md`` says, emulated: ``internal_id`` (the customer's product
id) carries a UNIQUE index, and POST inserts in patch mode: a POST whose internal_id
is already stored updates that product in place, the fields it does not send keep
their values, and the answer is the product's id either way. Any fields are taken
(internal_id, title, price, sale_price, is_in_stock yes/no, guide_url,
image_big_url, sku, brand, custom_1..custom_10, ...); names are normalised and empty
values dropped as on users, so an empty value never clears a stored one. GET, PUT and
DELETE take the path language (``DELETE /rest/products/where/internal_id=X`` removes
one and answers the rows affected), with the live read limits of every object.

Where the documentation is silent, our inferences (kept to the rules of users and
of a UNIQUE index): the product's own number is the column ``id`` (answered by
POST, found by ``/rest/products/<id>``, never taken from a body: a POST's ``id`` is
ignored, a PUT may not change it); a POST without internal_id inserts a new product
each time (a UNIQUE index lets missing values repeat); a PUT that would give two
products the same internal_id is refused with 400; a GET without ``where`` must be
ordered by an indexed column (``id`` or ``internal_id``), as on users.
"""

from __future__ import annotations

import threading
from typing import Any

from sync.sandbox.query import Query, RequestError, Row, index_key, normalize_body
from sync.sandbox.rest import Resource
from sync.sandbox.table import Table, require_target

__all__ = ["ProductStore"]

KEY = "internal_id"


class ProductStore:
    """Thread-safe in-memory products; every public method holds the one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table = Table("products", key="id", hashed=(KEY,), ordered=("id", KEY))

    def resources(self) -> dict[str, Resource]:
        """The REST object this store serves, by its path."""
        return {
            "products": Resource(
                "products", get=self.get, post=self.upsert, put=self.update, delete=self.delete
            )
        }

    # inspection

    def products(self) -> list[Row]:
        """Copies of every product, ordered by id."""
        with self._lock:
            return self._table.rows()

    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def reset(self) -> None:
        with self._lock:
            self._table.reset()

    # the methods

    def upsert(self, body: object) -> int:
        """POST in patch mode: update the product with this internal_id, else insert; its id."""
        row = normalize_body(body)
        row.pop("id", None)
        with self._lock:
            found = self._table.lookup(KEY, row[KEY]) if KEY in row else set()
            if not found:
                return self._table.insert(row)
            number = min(found)
            self._table.write(number, row)
            return number

    def get(self, query: Query) -> Any:
        with self._lock:
            return self._table.read(query)

    def update(self, query: Query, body: object) -> int:
        """PUT: update the products an id or ``where`` selects; the number selected."""
        row = normalize_body(body)
        require_target(query, "PUT")
        with self._lock:
            numbers = self._table.select(query)
            if "id" in row:
                if any(index_key(row["id"]) != n for n in numbers):
                    raise RequestError("id cannot be changed")
                del row["id"]
            if KEY in row and numbers:
                owners = self._table.lookup(KEY, row[KEY])
                if len(numbers) > 1 or owners - set(numbers):
                    raise RequestError(f"Duplicate entry '{row[KEY]}' for key '{KEY}'")
            for number in numbers:
                self._table.write(number, row)
            return len(numbers)

    def delete(self, query: Query) -> int:
        """DELETE: remove the products an id or ``where`` selects; the number removed."""
        require_target(query, "DELETE")
        with self._lock:
            return self._table.remove(self._table.select(query))
