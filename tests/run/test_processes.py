"""The pure parts of ``sync/run/processes.py``: what each process of a backfill runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import Config
from sync.errors import ConfigError
from sync.run.processes import check, share
from tests.support import config_doc, load, write_config


def config_with(tmp_path: Path, state_url: str, **personyze: object) -> Config:
    doc = config_doc(
        source_url="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        api_url="http://127.0.0.1:9/rest",
        state_url=state_url,
        personyze=personyze,
        job={"shards": 4},
    )
    return load(write_config(tmp_path / "sync.yaml", doc))


PG_STATE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.mark.parametrize(
    ("concurrency", "rate", "processes", "each_concurrency"),
    [
        (32, None, 2, 16),
        (5, 100.0, 2, 3),  # rounded up: never less than one request in flight
        (1, 9.0, 3, 1),
        (8, 10.0, 1, 8),
    ],
)
def test_each_process_gets_its_share_of_concurrency_and_the_whole_rate_budget(
    tmp_path: Path,
    concurrency: int,
    rate: float | None,
    processes: int,
    each_concurrency: int,
) -> None:
    """The rate is not divided here: the processes share it through the state store
    (sync/load/budget.py), among as many as send at the time."""
    config = config_with(tmp_path, PG_STATE, concurrency=concurrency, requests_per_second=rate)
    each = share(config, processes)
    assert each.personyze.concurrency == each_concurrency
    assert each.personyze.requests_per_second == rate
    assert each.jobs == config.jobs and each.state == config.state
    assert config.personyze.concurrency == concurrency  # the original is left alone


@pytest.mark.parametrize(
    ("state_url", "processes", "message"),
    [
        ("sqlite:///state.db", 2, "a SQLite state store serves one process"),
        (PG_STATE, 5, "job customers has 4 shard(s)"),
    ],
)
def test_layouts_that_processes_cannot_share_are_refused(
    tmp_path: Path, state_url: str, processes: int, message: str
) -> None:
    config = config_with(tmp_path, state_url)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(config, config.jobs[0], processes)


def test_a_layout_processes_can_share_passes(tmp_path: Path) -> None:
    config = config_with(tmp_path, PG_STATE)
    check(config, config.jobs[0], 4)
