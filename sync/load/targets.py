"""What a job's rows become in Personyze: the one place where users and products differ.

A :class:`Target` knows how one object is written, deleted and read back, and whether
a resend after a lost answer is harmless. The run (:mod:`sync.run`) asks it and never
asks which object it feeds.

- :data:`USERS`: a POST merges only by ``user_id`` or ``email`` (the live service merges
  on neither internal_id nor fb_id), so every later write of a row carries the user_id
  the identity map keeps, and a first send that cannot merge is marked, reconciled
  after a lost answer and preceded by an adoption (:mod:`sync.load.reconcile`,
  :mod:`sync.adopt`).
- :data:`PRODUCTS`: a POST patches the product with the payload's internal_id (a
  UNIQUE index), so every write is idempotent: nothing to mark, reconcile or adopt. The
  identity map keeps the product's id Personyze answers; nothing sends it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from sync.load import products
from sync.load.client import PersonyzeClient

Action = Literal["upsert", "update", "delete"]
MERGING_IDENTIFIERS = ("user_id", "email")  # the only ones the live service resolves


def merges(payload: Mapping[str, Any]) -> bool:
    """Whether Personyze merges a resend of this users payload into the user it made."""
    return any(payload.get(name) not in (None, "") for name in MERGING_IDENTIFIERS)


class Target(Protocol):
    """How one Personyze object is written, deleted and read back."""

    @property
    def object(self) -> str:
        """The object's name, as a job's ``object:`` says it (``users``, ``products``)."""

    @property
    def idempotent(self) -> bool:
        """Every write may be resent after a lost answer: no marks, no reconciliation,
        no adoption."""

    def payload(self, mapped: Mapping[str, Any], known_id: int | None) -> dict[str, Any]:
        """What a row sends: its mapped payload, and what the identity map adds."""

    def deletion(self, key: str, known_id: int) -> dict[str, Any]:
        """The payload of a delete of the row ``key``, whose id the identity map keeps."""

    def repeatable(self, action: Action, payload: Mapping[str, Any]) -> bool:
        """Whether this request may be retried after a failure that may have applied it."""

    def apply(self, client: PersonyzeClient, action: Action, payload: dict[str, Any]) -> int | None:
        """One attempt at one request: the id Personyze keeps the row under, or None
        when an update found no such record (it created none)."""

    def read_back(
        self,
        client: PersonyzeClient,
        rows: Sequence[tuple[int, Mapping[str, Any]]],
        columns: Sequence[str],
    ) -> list[dict[str, Any]]:
        """The records of these rows (their known id and payload now), each with its id
        under ``user_id`` (``verify``)."""


class Users:
    """Personyze users, merged by user_id or email."""

    object = "users"
    idempotent = False

    def payload(self, mapped: Mapping[str, Any], known_id: int | None) -> dict[str, Any]:
        out = dict(mapped)
        if known_id is not None and "user_id" not in out:
            out["user_id"] = known_id  # every later write carries it: no duplicate user
        return out

    def deletion(self, key: str, known_id: int) -> dict[str, Any]:
        return {"user_id": known_id}

    def repeatable(self, action: Action, payload: Mapping[str, Any]) -> bool:
        return action != "upsert" or merges(payload)

    def apply(self, client: PersonyzeClient, action: Action, payload: dict[str, Any]) -> int | None:
        if action == "upsert":
            return client.upsert_once(payload)
        user_id = int(payload["user_id"])
        if action == "delete":
            client.delete_once(user_id)  # 0: already gone, as wanted
            return user_id
        changes = {k: v for k, v in payload.items() if k != "user_id"}
        return user_id if client.update_once("user_id", user_id, changes) else None

    def read_back(
        self,
        client: PersonyzeClient,
        rows: Sequence[tuple[int, Mapping[str, Any]]],
        columns: Sequence[str],
    ) -> list[dict[str, Any]]:
        return client.users_by_id([known for known, _ in rows], columns)


class Products:
    """The product catalog, patched by internal_id (the job's key)."""

    object = "products"
    idempotent = True

    def payload(self, mapped: Mapping[str, Any], known_id: int | None) -> dict[str, Any]:
        return dict(mapped)  # only the mapped columns and internal_id: a patch

    def deletion(self, key: str, known_id: int) -> dict[str, Any]:
        return {products.KEY: key, products.PRODUCT_ID: known_id}  # the id is not sent

    def repeatable(self, action: Action, payload: Mapping[str, Any]) -> bool:
        return True

    def apply(self, client: PersonyzeClient, action: Action, payload: dict[str, Any]) -> int | None:
        if action == "delete":
            products.delete_once(client, str(payload[products.KEY]))  # 0: already gone
            return int(payload[products.PRODUCT_ID])
        if action != "upsert":  # the config allows upsert and mirror only
            raise ValueError(f"products are written by POST, not by {action}")
        return products.post_once(client, payload)

    def read_back(
        self,
        client: PersonyzeClient,
        rows: Sequence[tuple[int, Mapping[str, Any]]],
        columns: Sequence[str],
    ) -> list[dict[str, Any]]:
        wanted = [payload[products.KEY] for _, payload in rows if products.KEY in payload]
        read = [c for c in columns if c != "data_last_modified"]  # a users column
        found = products.by_internal_id(client, wanted, read) if wanted else []
        return [{**p, "user_id": p.get(products.PRODUCT_ID)} for p in found]


USERS: Target = Users()
PRODUCTS: Target = Products()
TARGETS: dict[str, Target] = {"users": USERS, "products": PRODUCTS}


def target_for(feeds: str) -> Target:
    """The target of a job's ``object`` (an audience job has none: it syncs a set)."""
    try:
        return TARGETS[feeds]
    except KeyError:
        raise ValueError(f"no row target for object {feeds!r}") from None
