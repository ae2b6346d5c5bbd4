"""``verify`` and identity collisions (issue 17 item 3), through the real binary.

Two source rows sharing an email are one Personyze user (the state store records the
pair as a collision). No resend can give each row its own user, so verify reports the
pair as a collision, not as drift: it does not exit 1 for it, and ``--repair`` never
resends it. ``--repair --dry-run`` announces exactly the rows ``--repair`` then resends.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sync.sandbox import SandboxServer
from sync.sandbox.store import Query
from tests.support import (
    change_customers,
    config_doc,
    customers,
    make_customers,
    users_by_internal_id,
    write_config,
)

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def backfilled(cli, tmp_path: Path, sqlite_url: str, state_url: str, sandbox: SandboxServer) -> str:
    """Customers 1..5, row 4 with row 2's email, backfilled; the config's path."""
    make_customers(sqlite_url, range(1, 6))
    change_customers(sqlite_url, customers.c.id == 4, email="user2@example.com")
    doc = config_doc(source_url=sqlite_url, api_url=sandbox.url, state_url=state_url)
    path = str(write_config(tmp_path / "sync.yaml", doc))
    result = cli("backfill", "-c", path, "customers")
    assert result.code == 0, result.text
    assert len(sandbox.users()) == 4  # rows 2 and 4: one user
    sandbox.clear_requests()
    return path


def verify(cli, config: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("verify", "-c", config, "customers", "--json", *args)
    assert result.code in (0, 1), result.text
    return result.code, result.json()


def user_id_of(sandbox: SandboxServer, internal_id: int) -> int:
    (user,) = users_by_internal_id(sandbox.users())[str(internal_id)]
    return int(user["user_id"])


def sent_keys(sandbox: SandboxServer) -> list[str]:
    """The rows the sync wrote to Personyze since the last clear, by internal_id."""
    keys: list[str] = []
    for r in sandbox.requests:
        if r.method in ("POST", "PUT"):
            bodies = r.body if isinstance(r.body, list) else [r.body]
            keys += [str(b["internal_id"]) for b in bodies]
    return sorted(keys)


def test_a_collision_alone_is_reported_as_such_and_verify_exits_0(
    cli, tmp_path, sqlite_url, state_url, sandbox
):
    config = backfilled(cli, tmp_path, sqlite_url, state_url, sandbox)
    (shared,) = {int(u["user_id"]) for u in sandbox.users() if u["email"] == "user2@example.com"}

    code, doc = verify(cli, config, "--all")
    assert code == 0, doc
    assert doc["collisions"] == [
        {
            "key": "4",
            "other_key": "2",
            "user_id": shared,
            "seen_at": doc["collisions"][0]["seen_at"],
        }
    ]
    assert ISO.fullmatch(doc["collisions"][0]["seen_at"])
    assert (doc["different"], doc["missing"], doc["unsynced"]) == (0, 0, 0)
    assert doc["drift_remaining"] is False and doc["collision"] == 1
    (finding,) = doc["findings"]  # the row whose values the shared user does not hold
    assert (finding["kind"], finding["user_id"]) == ("collision", shared)
    assert finding["key"] in ("2", "4")  # which row's values the user holds: the last sent
    assert finding["note"].startswith(f"shares Personyze user {shared} with row ")
    assert ISO.fullmatch(finding["data_last_modified"])
    assert (doc["checked"], doc["in_step"]) == (5, 4)

    text = cli("verify", "-c", config, "customers", "--all")
    assert text.code == 0, text.text
    assert "customers: collisions: 1" in text.out
    assert f"rows 4 and 2 are one Personyze user ({shared})" in text.flat
    assert {r.method for r in sandbox.requests} <= {"GET"}


def test_repair_dry_run_announces_exactly_what_repair_resends_and_never_a_collision(
    cli, tmp_path, sqlite_url, state_url, sandbox
):
    config = backfilled(cli, tmp_path, sqlite_url, state_url, sandbox)
    uid = user_id_of(sandbox, 1)
    assert sandbox.store.update(Query(user_id=uid), {"first_name": "Changed"}) == 1
    assert sandbox.store.delete(Query(user_id=user_id_of(sandbox, 3))) == 1
    sandbox.clear_requests()

    code, dry = verify(cli, config, "--all", "--repair", "--dry-run")
    assert code == 1, dry  # drift remains: nothing was resent
    assert {r.method for r in sandbox.requests} <= {"GET"}
    announced = dry["would_resend_keys"]
    assert sorted(announced) == ["1", "3"] and dry["would_resend"] == 2
    text = cli("verify", "-c", config, "customers", "--all", "--repair", "--dry-run")
    assert re.search(r"dry run: would resend 2 row\(s\): (1, 3|3, 1); nothing was sent", text.flat)

    code, done = verify(cli, config, "--all", "--repair")
    assert code == 0, done
    repair = done["repair"]
    assert sorted(repair["resent_keys"]) == sorted(announced)
    assert repair["resent"] == dry["would_resend"] and repair["still_drifting"] == []
    assert sent_keys(sandbox) == sorted(announced), "the collision's rows are never resent"
    assert [c["key"] for c in done["collisions"]] == ["4"]

    code, after = verify(cli, config, "--all")
    assert code == 0, after
    assert (after["different"], after["missing"], after["unsynced"]) == (0, 0, 0)
    assert len(after["collisions"]) == 1
    code, again = verify(cli, config, "--all", "--repair", "--dry-run")
    assert code == 0 and again["would_resend"] == 0 and again["would_resend_keys"] == []


def test_a_collision_across_two_shards_is_not_drift_in_either(
    cli, tmp_path, sqlite_url, state_url, sandbox
):
    make_customers(sqlite_url, range(1, 7))
    change_customers(sqlite_url, customers.c.id == 2, email="user1@example.com")  # shards 1, 0
    doc = config_doc(
        source_url=sqlite_url, api_url=sandbox.url, state_url=state_url, job={"shards": 2}
    )
    config = str(write_config(tmp_path / "sync.yaml", doc))
    assert cli("backfill", "-c", config, "customers").code == 0
    sandbox.clear_requests()

    code, doc = verify(cli, config, "--all", "--repair")
    assert code == 0, doc
    assert [(c["key"], c["other_key"]) for c in doc["collisions"]] in ([("1", "2")], [("2", "1")])
    (finding,) = doc["findings"]
    assert finding["kind"] == "collision" and finding["key"] in ("1", "2")
    assert doc["repair"]["resent_keys"] == [] and sent_keys(sandbox) == []
