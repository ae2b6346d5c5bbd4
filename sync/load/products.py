"""The product catalog on the Personyze API (``products``), on the client's plumbing
(retries, pacing, errors by kind).

What ``PERSONYZE_API.md`` documents, and all this relies on: ``internal_id`` (the
customer's product id) carries a UNIQUE index, and a POST inserts in patch mode: the
same internal_id again updates that product in place and leaves the fields it does not
send as they were. So a POST is idempotent per internal_id, and a resend after a lost
answer is harmless. ``DELETE /rest/products/where/internal_id=X`` removes one product.

Not documented, and what we do: the POST's answer is taken to be the product's own
number, as a users POST answers the user_id (it is kept in the identity map, never
sent); a read names a product's own number ``id`` (our inference, as for audiences).
An equality or in-list read (``where/internal_id:a,b,c``) is no range read, so it is
held only to the 1,000 rows of any read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from sync.errors import FatalError
from sync.load.answers import count
from sync.load.client import ID_CHUNK, PAGE, PersonyzeClient

PRODUCT_ID = "id"  # a product's own number in a read: our inference, not documented
KEY = "internal_id"


def post_once(client: PersonyzeClient, payload: dict[str, Any]) -> int:
    """One attempt at POSTing one product (created, or patched by internal_id); its id."""
    answer = client.send_once("POST", "products", payload)
    if isinstance(answer, str) and answer.isdigit():
        answer = int(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or answer <= 0:
        raise FatalError(
            f"Personyze answered {str(answer)[:100]!r} where the id of a product was "
            "expected: is personyze.base_url the REST API (https://app.personyze.com/rest)?"
        )
    return int(answer)


def delete_once(client: PersonyzeClient, internal_id: str) -> int:
    """One attempt at deleting the product with this internal_id; how many went (0:
    already gone, as wanted)."""
    where = f"{KEY}={quote(str(internal_id), safe='')}"
    return count(client.send_once("DELETE", f"products/where/{where}"))


def by_internal_id(
    client: PersonyzeClient, internal_ids: Sequence[Any], columns: Sequence[str]
) -> list[dict[str, Any]]:
    """The products with these internal_ids, asked for in chunks (in-list reads)."""
    cols = ",".join(dict.fromkeys([PRODUCT_ID, KEY, *columns]))
    wanted = list(dict.fromkeys(str(i) for i in internal_ids))
    found: list[dict[str, Any]] = []
    for at in range(0, len(wanted), ID_CHUNK):
        values = ",".join(quote(i, safe="") for i in wanted[at : at + ID_CHUNK])
        found += client.read(f"products/where/{KEY}:{values}/columns/{cols}/limit/{PAGE}")
    return found
