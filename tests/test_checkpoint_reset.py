"""``checkpoint reset --reshard`` says what it does and does only that."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from sync.sandbox import SandboxServer
from sync.wiring import Wiring
from tests.support import Outcome, config_doc, load, make_customers, write_config


def checkpoints(config: Path) -> dict[str, object]:
    with Wiring(load(config)) as app:
        job = app.config.jobs[0]
        return {name: app.store.part(name).checkpoint() for name, _ in app.parts(job)}


def test_reshard_of_an_unsharded_job_moves_nothing_and_keeps_the_checkpoint(
    cli: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 21))
    doc = config_doc(
        source_url=sqlite_url, api_url=sandbox.url, state_url=f"sqlite:///{tmp_path}/s.db"
    )
    config = write_config(tmp_path / "sync.yaml", doc)
    assert cli("once", "-c", str(config)).code == 0
    before = checkpoints(config)
    assert before["customers"] is not None

    said = cli("checkpoint", "reset", "-c", str(config), "customers", "--reshard", key=None)
    assert said.code == 0, said.text
    assert said.out.strip() == (
        "customers: its state is already kept in 1 shard(s), as the config says: nothing "
        "to move; the checkpoint is unchanged"
    )
    assert checkpoints(config) == before  # it was reset to the start before
    sandbox.clear_requests()
    assert cli("once", "-c", str(config)).code == 0
    assert [r.method for r in sandbox.requests if r.method != "GET"] == []


def test_reshard_says_from_and_to_and_each_new_shard_starts_over(
    cli: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 31))
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/s.db",
        job={"shards": 3},
    )
    config = write_config(tmp_path / "sync.yaml", doc)
    assert cli("once", "-c", str(config)).code == 0
    doc["jobs"][0]["shards"] = 2
    config.write_text(yaml.safe_dump(doc))

    said = cli("checkpoint", "reset", "-c", str(config), "customers", "--reshard", key=None)
    assert said.code == 0, said.text
    assert said.out.strip() == (
        "customers: 30 synced row(s) moved to 2 shard(s) (from 3); each reads from the "
        "beginning and sends only what changed"
    )
    assert set(checkpoints(config).values()) == {None}

    again = cli(
        "checkpoint",
        "reset",
        "-c",
        str(config),
        "customers",
        "--reshard",
        "--to",
        "2024-05-01 12:00:10",
        key=None,
    )
    lines = again.out.splitlines()
    assert again.code == 0 and len(lines) == 2, again.text
    assert lines[0].endswith("kept in 2 shard(s), as the config says: nothing to move")
    assert lines[1] == "customers: the next run reads from cursor >= 2024-05-01 12:00:10"
    assert all(c is not None for c in checkpoints(config).values())
