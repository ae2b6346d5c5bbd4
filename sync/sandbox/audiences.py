"""The sandbox's audiences: ``user_lists`` and their members, ``user_list_users``.

What ``PERSONYZE_API.md`` says, emulated:

- ``POST /rest/user_lists`` with ``{"name": ...}`` creates an audience and answers
  its id. Names are NOT unique: the same name twice makes two audiences. ``GET
  /rest/user_lists`` lists them (the path language applies).
- ``POST /rest/user_list_users`` with ``user_list_id`` and one of ``user_email``,
  ``user_id``, ``user_internal_id`` adds an existing user to the audience
  (``user_internal_id`` resolves here, unlike on users, in either mode). When a user
  matched, the answer is a meaningless lastInsertId (a counter that only grows, the
  same for a first add and a repeated one: not the user's id, not a row count), so
  membership is confirmed by reading it back. When none matched it is 400 ``User
  not found by <field>``. Adding the same member twice is harmless: one membership.
- ``GET /rest/user_list_users/where/user_list_id=N`` (or ``user_id=M``) reads the
  memberships back, ``{"user_list_id": N, "user_id": M}`` each, under the live read
  limits of every object (a range read, ``...&user_id>M``, 50 rows at a time).

Our inferences, where the documentation is silent:

- A list's own number is the column ``id``; a list needs a name (400 without one);
  a PUT may rename lists (by id or ``where``); deleting a list deletes its
  memberships too. A GET of lists needs no order (Personyze's own node reads a plain
  ``GET /rest/user_lists``); a GET of memberships without ``where`` must be ordered
  by ``user_list_id`` or ``user_id``, as users must be by an indexed column.
- A membership POST naming a list that does not exist is 400 ``User list not found``;
  with more than one user key, the first of user_id, user_email, user_internal_id
  given decides; a user_internal_id held by several users adds the oldest (lowest
  user_id). Deleting a user leaves its memberships.
- Removing a member is not documented at all. The sandbox does what the wiki's
  general REST rules imply (DELETE with a ``where`` answers the rows affected), and
  only here: :meth:`AudienceStore.remove_members`, i.e.
  ``DELETE /rest/user_list_users/where/user_list_id=N&user_id=M``. PUT on
  memberships is refused (405): there is nothing in a membership to update.
"""

from __future__ import annotations

import threading
from typing import Any

from sync.sandbox.query import Query, RequestError, Row, index_key, normalize_body
from sync.sandbox.rest import Resource
from sync.sandbox.table import Table, require_target
from sync.sandbox.users import UserStore

__all__ = ["LAST_INSERT_ID_START", "MEMBER_KEYS", "AudienceStore"]

MEMBER_KEYS = (("user_id", "user_id"), ("user_email", "email"), ("user_internal_id", "internal_id"))
"""The keys a membership POST may name a user by, in the order they are tried, and
the users' column each resolves through."""

LAST_INSERT_ID_START = 1_000_000
"""The meaningless answer of a membership POST starts above this and only grows."""


class AudienceStore:
    """Thread-safe in-memory lists and memberships (one lock); users are resolved in ``users``."""

    def __init__(self, users: UserStore) -> None:
        self._users = users
        self._lock = threading.Lock()
        self._lists = Table("user_lists", key="id")
        self._members = Table(
            "user_list_users",
            key=None,
            hashed=("user_list_id", "user_id"),
            ordered=("user_list_id", "user_id"),
        )
        self._last_insert_id = LAST_INSERT_ID_START

    def resources(self) -> dict[str, Resource]:
        """The REST objects this store serves, by their paths."""
        return {
            "user_lists": Resource(
                "user_lists",
                get=self.read_lists,
                post=self.create_list,
                put=self.update_lists,
                delete=self.delete_lists,
            ),
            "user_list_users": Resource(
                "user_list_users",
                get=self.read_members,
                post=self.add_member,
                delete=self.remove_members,
            ),
        }

    # inspection

    def lists(self) -> list[Row]:
        """Copies of every list, ordered by id."""
        with self._lock:
            return self._lists.rows()

    def members(self, list_id: int) -> list[int]:
        """The user_ids in one list, ascending."""
        with self._lock:
            numbers = self._members.lookup("user_list_id", list_id)
            return sorted(int(self._members.row(n)["user_id"]) for n in numbers)

    def reset(self) -> None:
        with self._lock:
            self._lists.reset()
            self._members.reset()
            self._last_insert_id = LAST_INSERT_ID_START

    # user_lists

    def create_list(self, body: object) -> int:
        """POST: a new list, whatever lists of that name exist already; its id."""
        row = normalize_body(body)
        row.pop("id", None)
        if "name" not in row:
            raise RequestError("name is required")
        with self._lock:
            return self._lists.insert(row)

    def read_lists(self, query: Query) -> Any:
        with self._lock:
            return self._lists.read(query)

    def update_lists(self, query: Query, body: object) -> int:
        row = normalize_body(body)
        require_target(query, "PUT")
        with self._lock:
            numbers = self._lists.select(query)
            if "id" in row:
                if any(index_key(row["id"]) != n for n in numbers):
                    raise RequestError("id cannot be changed")
                del row["id"]
            for number in numbers:
                self._lists.write(number, row)
            return len(numbers)

    def delete_lists(self, query: Query) -> int:
        """DELETE: remove lists (and their memberships); the number of lists removed."""
        require_target(query, "DELETE")
        with self._lock:
            numbers = self._lists.select(query)
            for number in numbers:
                self._members.remove(self._members.lookup("user_list_id", number))
            return self._lists.remove(numbers)

    # user_list_users

    def add_member(self, body: object) -> int:
        """POST: add an existing user to a list; a meaningless number, or 400."""
        row = normalize_body(body)
        if "user_list_id" not in row:
            raise RequestError("user_list_id is required")
        given = [(field, column) for field, column in MEMBER_KEYS if field in row]
        if not given:
            raise RequestError("One of " + ", ".join(f for f, _ in MEMBER_KEYS) + " is required")
        field, column = given[0]
        with self._lock:
            list_id = index_key(row["user_list_id"])
            if not isinstance(list_id, int) or list_id not in self._lists:
                raise RequestError("User list not found")
            user_id = self._users.find(column, row[field])
            if user_id is None:
                raise RequestError(f"User not found by {field}")
            if not self._membership(list_id, user_id):
                self._members.insert({"user_list_id": list_id, "user_id": user_id})
            self._last_insert_id += 1
            return self._last_insert_id

    def read_members(self, query: Query) -> Any:
        with self._lock:
            return self._members.read(query)

    def remove_members(self, query: Query) -> int:
        """DELETE with ``where``: remove the memberships it selects; the rows affected.

        OUR INFERENCE, not documented behaviour: how Personyze removes a member is not
        documented; this is what its general REST rules imply (DELETE by ``where``
        answers the number of rows affected). Nothing else in the sandbox removes one.
        """
        if query.where is None:
            raise RequestError("DELETE of user_list_users needs a where condition")
        require_target(query, "DELETE")
        with self._lock:
            return self._members.remove(self._members.select(query))

    def _membership(self, list_id: int, user_id: int) -> bool:
        both = self._members.lookup("user_list_id", list_id)
        return bool(both & self._members.lookup("user_id", user_id))
