"""Rows sent without a certain answer: find the users Personyze made of them.

Every first send of a row (no user_id known yet) is marked in the state store, before
it is sent, with the payload sent and, for a payload that cannot merge (no email),
the newest ``data_last_modified`` Personyze held just before (its watermark). A run
that died, or a write that timed out and may still land, leaves its mark behind. The
next run reads back the candidates:

- by email, for marks that sent one (an in-list read: cheap, and no clock involved);
- by ``data_last_modified >= watermark - MARGIN_S`` (50 a page, by keyset) for the
  others, matched on internal_id or fb_id. The watermark is Personyze's own value,
  so neither this host's clock nor the Date header of an answer can defeat it.

A candidate is adopted only when no other row of any job holds it already, and it
holds every column the mark sent (so a user of another job that maps the same id is
never taken). Of several that qualify the lowest user_id is adopted and the others
are reported as duplicates. A mark nothing answers for was not applied: its row is
sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync.compare import compare
from sync.load.client import PersonyzeClient
from sync.model import PendingRow

MARGIN_S = 120  # how far Personyze's database clock may step back between mark and write
UNMATCHED_IDENTIFIERS = ("internal_id", "fb_id")  # stored and returned, but never merged on
LEGACY_MARGIN_S = 3600  # a mark from before watermarks: this host's clock, widely


@dataclass
class Reconciled:
    """What the read-back found: users to adopt, duplicates, and marks nobody answers."""

    adopted: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (uid, fp)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)  # key, uid, kept
    lost: list[str] = field(default_factory=list)  # keys to send again


Holders = Callable[[Iterable[int]], dict[int, list[tuple[str, str]]]]


def reconcile(
    client: PersonyzeClient, part: str, marks: Sequence[PendingRow], holders: Holders
) -> Reconciled:
    """Read back the users these marks may have made; decide what to adopt."""
    columns = sorted({c for m in marks for c in m.payload} | set(UNMATCHED_IDENTIFIERS))
    users: dict[int, dict[str, Any]] = {}
    emails = [str(m.payload["email"]) for m in marks if m.payload.get("email")]
    if emails:
        for user in client.users_by_email(emails, columns):
            users[int(user["user_id"])] = user
    others = [m for m in marks if not m.payload.get("email")]
    if others:
        wanted = {_text(m.payload.get(c)) for m in others for c in UNMATCHED_IDENTIFIERS} - {""}
        for user in client.users_changed_since(since(others), columns):
            if any(_text(user.get(c)) in wanted for c in UNMATCHED_IDENTIFIERS):
                users[int(user["user_id"])] = user
    held = holders(users)
    return decide(part, marks, list(users.values()), held)


def since(marks: Sequence[PendingRow]) -> int:
    """Where the read of users changed since the marks begins: Personyze's own time."""
    starts = [
        m.watermark - MARGIN_S if m.watermark is not None else int(m.sent_at) - LEGACY_MARGIN_S
        for m in marks
    ]
    return max(0, min(starts))


def decide(
    part: str,
    marks: Sequence[PendingRow],
    users: Sequence[dict[str, Any]],
    held: dict[int, list[tuple[str, str]]],
) -> Reconciled:
    """Pure: which user each mark made, if any (see the module's docstring)."""
    result = Reconciled()
    taken: set[int] = set()
    for mark in marks:
        fits = sorted(
            int(u["user_id"])
            for u in users
            if _same_identity(mark.payload, u)
            and all(h == (part, mark.key) for h in held.get(int(u["user_id"]), []))
            and not compare(_data(mark.payload), u).different
        )
        fits = [uid for uid in fits if uid not in taken]
        if not fits:
            result.lost.append(mark.key)
            continue
        kept = fits[0]
        taken.update(fits)
        result.adopted[mark.key] = (kept, mark.fingerprint or "")
        result.duplicates += [(mark.key, uid, kept) for uid in fits[1:]]
    return result


def _same_identity(payload: dict[str, Any], user: dict[str, Any]) -> bool:
    """The user carries the payload's identifier: its email, else internal_id or fb_id."""
    if payload.get("email"):
        return _text(payload["email"]).lower() == _text(user.get("email")).lower()
    return any(
        payload.get(c) not in (None, "") and _text(payload[c]) == _text(user.get(c))
        for c in UNMATCHED_IDENTIFIERS
    )


def _data(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != "user_id"}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
