"""What one row's request came to, as the delivery history keeps it (``history``, ``runs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sync.load.writer import Delivered, Failed, Gone, Missing, Refused, Result, Unresolved
from sync.state.records import Delivery

OPERATIONS = {"upsert": "POST", "update": "PUT", "delete": "DELETE"}
MISSING = "Personyze has no such user (sync: update creates none)"
GONE = "Personyze no longer has the user the identity map named: sent again as new"


def delivery(
    key: str,
    action: str,
    payload: Mapping[str, Any],
    fingerprint: str | None,
    result: Result | None,
    reason: str | None = None,
) -> Delivery | None:
    """The delivery of one finished row (``reason``: the mapper refused it, and that is
    kept too); None when no request went out."""
    if reason is not None:
        return Delivery(key, "rejected", None, payload, fingerprint, reason=reason)
    op = OPERATIONS[action]
    user_id = payload.get("user_id")
    if isinstance(result, Delivered):
        outcome = "deleted" if action == "delete" else "sent"
        return Delivery(key, outcome, op, payload, fingerprint, user_id=result.user_id)
    if isinstance(result, Refused):
        return Delivery(
            key, "rejected", op, payload, fingerprint, status=result.status, reason=result.reason
        )
    if isinstance(result, Missing):
        return Delivery(key, "missing", op, payload, fingerprint, user_id=user_id, reason=MISSING)
    if isinstance(result, Gone):
        return Delivery(key, "gone", op, payload, fingerprint, user_id=user_id, reason=GONE)
    if isinstance(result, Unresolved):
        why = f"no certain answer ({result.error}): the next run reconciles it"
        return Delivery(key, "unresolved", op, payload, fingerprint, reason=why)
    if isinstance(result, Failed) and result.sent:
        return Delivery(key, "failed", op, payload, fingerprint, reason=str(result.error))
    return None  # no request went out (a stop, an abort), or none was needed
