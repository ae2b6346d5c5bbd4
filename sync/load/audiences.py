"""Audiences on the Personyze API: lists (``user_lists``) and their members
(``user_list_users``), on the client's plumbing (retries, pacing, errors by kind).

What ``PERSONYZE_API.md`` documents, and all this relies on:

- ``POST user_lists`` with ``{"name": ...}`` creates a list and answers its id; names
  are not unique (the same name twice makes two lists), so a list is looked up by
  name before one is created, and a create is never resent blindly: it is sent as not
  repeatable (retried only after failures that certainly changed nothing).
- ``POST user_list_users`` with ``user_list_id`` and ``user_id`` adds an existing user;
  it answers "User not found by ..." (400) when no user matches and otherwise a
  meaningless number, so membership is confirmed by reading it back
  (:meth:`AudienceClient.members_among`: equality and in-list reads, not range reads,
  so not held to 50 rows). Adding a member twice leaves one membership, so an add whose
  answer was lost is safe to send again.
- Not documented: the name of a list's own id column in a read (``id``: :data:`LIST_ID`)
  and how a member is removed (:meth:`AudienceClient.remove_member`, the one place).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar
from urllib.parse import quote

from sync.errors import FatalError, RejectedError, SyncError
from sync.load.answers import count
from sync.load.client import ID_CHUNK, PAGE, PersonyzeClient

T = TypeVar("T")

LIST_ID = "id"  # a list's id in a read of user_lists: our inference, not documented
NOT_FOUND = "User not found"  # the start of the 400 for a user that does not exist (yet)
CHUNK = ID_CHUNK  # members per read-back (and per batch of adds or removals)


def user_not_found(error: BaseException | None) -> bool:
    """Whether an add was refused because no such user exists (yet): the row waits."""
    return isinstance(error, RejectedError) and error.reason.startswith(NOT_FOUND)


class AudienceClient:
    """One account's audiences; ``concurrency``: adds or removals in flight at once."""

    def __init__(self, client: PersonyzeClient, concurrency: int = 1) -> None:
        self.client = client
        self._concurrency = max(1, concurrency)

    # -- lists -----------------------------------------------------------------------

    def lists_named(self, name: str) -> list[int]:
        """The ids of every list called exactly ``name``, ascending."""
        rows = self.client.read(f"user_lists/where/name={quote(name, safe='')}")
        return sorted(_list_id(r) for r in rows if r.get("name") == name)

    def list_exists(self, list_id: int) -> bool:
        return bool(self.client.read(f"user_lists/where/{LIST_ID}={int(list_id)}"))

    def create_list(self, name: str) -> int:
        """POST a new list; its id. Not resent after a failure that may have created it:
        the caller looks for it by name first."""
        answer = self.client.call("POST", "user_lists", json={"name": name}, repeatable=False)
        if isinstance(answer, str) and answer.isdigit():
            answer = int(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or answer <= 0:
            raise FatalError(
                f"Personyze answered {str(answer)[:100]!r} where the id of a new audience "
                "was expected: is personyze.base_url the REST API (https://app.personyze.com/rest)?"
            )
        return int(answer)

    # -- members ---------------------------------------------------------------------

    def add_member(self, list_id: int, user_id: int) -> None:
        """POST one membership; its answer is meaningless (confirm by reading back)."""
        body = {"user_list_id": int(list_id), "user_id": int(user_id)}
        self.client.call("POST", "user_list_users", json=body)

    def remove_member(self, list_id: int, user_id: int) -> int:
        """DELETE one membership; the rows affected (0: it was not there).

        NOT DOCUMENTED: Personyze documents no way to remove a member. This is what its
        general REST rules imply (a DELETE with a ``where`` removes the rows it selects
        and answers how many), and the only place personyze-sync removes one; a removal
        counts only once a read of the list shows the member gone.
        """
        where = f"user_list_id={int(list_id)}&user_id={int(user_id)}"
        return count(self.client.call("DELETE", f"user_list_users/where/{where}"))

    def members_among(self, list_id: int, user_ids: Sequence[int]) -> set[int]:
        """Which of these users the list holds now, read back in chunks."""
        found: set[int] = set()
        wanted = list(dict.fromkeys(int(u) for u in user_ids))
        for at in range(0, len(wanted), CHUNK):
            ids = ",".join(str(u) for u in wanted[at : at + CHUNK])
            rows = self.client.read(
                f"user_list_users/where/user_list_id={int(list_id)}&user_id:{ids}"
                f"/columns/user_list_id,user_id/limit/{PAGE}"
            )
            found |= {int(r["user_id"]) for r in rows if "user_id" in r}
        return found

    def each(
        self, call: Callable[[int, int], object], list_id: int, user_ids: Sequence[int]
    ) -> Iterator[tuple[int, SyncError | None]]:
        """``call(list_id, user_id)`` for each user, ``concurrency`` at a time: each user
        and its error (None: answered 2xx) as soon as it is done, so that one slow retry
        holds back no other. Errors other than ours are raised. Leaving the loop early
        cancels what has not started."""

        def one(user_id: int) -> SyncError | None:
            try:
                call(list_id, user_id)
            except SyncError as exc:
                return exc
            return None

        if self._concurrency == 1 or len(user_ids) < 2:
            yield from ((u, one(u)) for u in user_ids)
            return
        pool = ThreadPoolExecutor(min(self._concurrency, len(user_ids)))
        try:
            started = {pool.submit(one, u): u for u in user_ids}
            for done in as_completed(started):
                yield started[done], done.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def users_by_email(self, emails: Sequence[str]) -> dict[str, int]:
        """The user_id of each of these emails Personyze holds (the lowest, if several)."""
        found: dict[str, int] = {}
        for user in self.client.users_by_email(emails, []):
            email, user_id = str(user.get("email", "")).strip().lower(), _int(user.get("user_id"))
            if email and user_id is not None:
                found[email] = min(user_id, found.get(email, user_id))
        return found


def _list_id(row: dict[str, Any]) -> int:
    list_id = _int(row.get(LIST_ID))
    if list_id is None:
        raise FatalError(
            f"Personyze answered a read of audiences without their {LIST_ID!r} "
            f"({str(row)[:80]!r}); nothing was changed"
        )
    return list_id


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
