"""What a new user meets on the command line: the config found without -c, backfill
without a JOB when there is one, an example in every command's help, a sandbox that
says how to log in.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import click
import httpx
import pytest
import yaml

from sync.cli import cli as group
from tests.support import API_KEY, free_port, script, wait_until

# -- the config file: -c, else PERSONYZE_SYNC_CONFIG, else ./personyze-sync.yaml ----------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own, and no PERSONYZE_SYNC_CONFIG."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("PERSONYZE_SYNC_CONFIG", raising=False)
    return folder


def test_the_config_is_found_in_the_working_directory(cli, setup, sandbox, elsewhere):
    shutil.copy(setup(), elsewhere / "personyze-sync.yaml")
    result = cli("once")
    assert result.code == 0, result.text
    assert "customers: read 10, sent 10" in result.out
    assert cli("status", "--json").json()[0]["job"] == "customers"


def test_the_config_is_found_from_the_environment(cli, setup, sandbox, elsewhere, monkeypatch):
    (elsewhere / "personyze-sync.yaml").write_text("not: a config\n")  # the variable wins
    monkeypatch.setenv("PERSONYZE_SYNC_CONFIG", setup())
    result = cli("once")
    assert result.code == 0, result.text
    assert "customers: read 10, sent 10" in result.out


def test_c_wins_over_the_environment(cli, setup, sandbox, elsewhere, monkeypatch):
    monkeypatch.setenv("PERSONYZE_SYNC_CONFIG", str(elsewhere / "nowhere.yaml"))
    result = cli("validate", "-c", setup())
    assert result.code == 0, result.text


def test_no_config_anywhere_names_every_place_it_looked(cli, elsewhere):
    result = cli("status")
    assert result.code == 2, result.text
    (line,) = result.err.strip().splitlines()
    assert "-c FILE" in line and "PERSONYZE_SYNC_CONFIG" in line
    assert str(elsewhere / "personyze-sync.yaml") in line


def test_a_variable_naming_no_file_says_so(cli, elsewhere, monkeypatch):
    missing = elsewhere / "gone.yaml"
    monkeypatch.setenv("PERSONYZE_SYNC_CONFIG", str(missing))
    result = cli("once")
    assert result.code == 2, result.text
    assert f"config file not found: {missing} (named by PERSONYZE_SYNC_CONFIG)" in result.err


# -- backfill without a JOB ----------------------------------------------------------------


def test_backfill_of_the_only_job_needs_no_name(cli, setup, sandbox):
    result = cli("backfill", "-c", setup(), "--json")
    assert result.code == 0, result.text
    assert result.json()["jobs"]["customers"]["sent"] == 10


def test_backfill_of_one_of_several_jobs_needs_its_name(cli, setup, sandbox, tmp_path):
    config = setup()
    doc = yaml.safe_load(Path(config).read_text())
    doc["jobs"].append({**doc["jobs"][0], "name": "others"})
    Path(config).write_text(yaml.safe_dump(doc))
    result = cli("backfill", "-c", config)
    assert result.code == 2, result.text
    assert "name the JOB to backfill: the config has 2 jobs (customers, others)" in result.err
    assert sandbox.requests == []


# -- help: an example in each command's ----------------------------------------------------


def commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(command, click.Group):
        found = []
        for name, sub in command.commands.items():
            found += commands(sub, (*path, name))
        return found
    return [path]


@pytest.mark.parametrize("path", commands(group), ids=" ".join)
def test_every_command_s_help_has_an_example(cli, path):
    result = cli(*path, "--help")
    assert result.code == 0, result.text
    examples = result.out[result.out.index("Example") :]
    assert re.search(rf"^\s+personyze-sync {' '.join(path)}\b", examples, re.M), result.out


@pytest.mark.parametrize("path", commands(group), ids=" ".join)
def test_every_option_is_described(cli, path):
    result = cli(*path, "--help")
    options = result.out[result.out.index("Options:") :].splitlines()[1:]
    blocks: list[list[str]] = []
    for line in options:
        if line.lstrip().startswith("-"):
            blocks.append([line.strip()])
        elif blocks and line.strip():
            blocks[-1].append(line.strip())
    for flag, *rest in (" ".join(b).split("  ", 1) for b in blocks):
        described = re.sub(r"\[(default|required)[^]]*\]", "", " ".join(rest)).strip()
        assert described, f"{' '.join(path)}: {flag} has no help"


# -- the sandbox says how to log in ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "login"),
    [
        (
            [],
            "curl -u api:sandbox-key http://127.0.0.1:{port}/rest/users/order_by/user_id/limit/10",
        ),
        (
            ["--api-key", API_KEY],
            "curl -u api:KEY http://127.0.0.1:{port}/rest/users/order_by/user_id",
        ),
    ],
    ids=["default key", "a key of its own: not printed"],
)
def test_the_sandbox_banner_says_how_to_log_in(args, login):
    port = free_port()
    process = subprocess.Popen(
        [script(), "sandbox", "--port", str(port), *args],
        env=os.environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def listening() -> bool:
        assert process.poll() is None, process.communicate()
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, timeout=20, what="the sandbox")
        url = login.format(port=port).split()[-1]
        key = "sandbox-key" if "sandbox-key" in login else API_KEY
        answer = httpx.get(url, auth=("api", key), timeout=5)  # the banner's login works
        assert (answer.status_code, answer.json()) == (200, []), answer.text
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert login.format(port=port) in err, err
    assert API_KEY not in out + err
    assert process.returncode == 0, err
