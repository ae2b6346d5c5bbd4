"""How the commands end: a port in use, a stop by signal, rows still rejected, a dry run
that a real run would stop, each with its own exit code (the README's table).

Ports in use and signals run the installed console script as a real process: a real
socket is bound first, a real SIGINT is sent.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from sync.sandbox import Faults
from tests.support import (
    API_KEY,
    DEFAULT_MAPPING,
    config_doc,
    execute,
    make_customers,
    run_script,
    script,
    wait_until,
    write_config,
)

EMAIL_ONLY = {**DEFAULT_MAPPING, "id": "custom_i_2"}  # a row without an email: no identifier


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- a port in use: one line naming it and the option that moves it, exit 2 ---------------


def test_sandbox_on_a_port_in_use(taken_port):
    result = run_script("sandbox", "--port", str(taken_port), timeout=20)
    assert result.code == 2, result.text
    assert "Traceback" not in result.text
    (line,) = result.err.strip().splitlines()
    assert f"cannot listen on 127.0.0.1:{taken_port}: the port is in use" in line
    assert "--port" in line


def test_daemon_on_a_port_in_use(setup, taken_port):
    config = setup()
    result = run_script("run", "-c", config, "--http-port", str(taken_port), timeout=30)
    assert result.code == 2, result.text
    assert "Traceback" not in result.text
    (line,) = result.err.strip().splitlines()
    assert f":{taken_port}: the port is in use" in line
    assert "--http-port" in line


def test_daemon_on_the_configured_port_in_use(setup, taken_port):
    """No --http-port: the port came from the config, which the line names too."""
    config = setup()
    doc = yaml.safe_load(Path(config).read_text())
    doc["daemon"] = {"http_host": "127.0.0.1", "http_port": taken_port}
    Path(config).write_text(yaml.safe_dump(doc))
    result = run_script("run", "-c", config, timeout=30)
    assert result.code == 2, result.text
    (line,) = result.err.strip().splitlines()
    assert f"cannot listen on 127.0.0.1:{taken_port}: the port is in use" in line
    assert "daemon.http_port" in line and "--http-port" in line


def test_sandbox_default_port_is_not_rstudio_s(cli):
    result = cli("sandbox", "--help")
    assert result.code == 0, result.text
    assert "8787" not in result.out
    assert "[default: 8742]" in result.out


# -- rows still rejected after a retry: exit 1 --------------------------------------------


def test_rejected_retry_exits_1_while_rows_stay_rejected(cli, setup, sandbox, sqlite_url):
    config = setup(mapping=EMAIL_ONLY)
    execute(sqlite_url, text("UPDATE customers SET email = NULL WHERE id = 4"))
    assert cli("once", "-c", config).code == 0  # a rejected row is no failed run

    result = cli("rejected", "retry", "-c", config)
    assert result.code == 1, result.text
    assert "customers: retried 1, delivered 0, still rejected 1" in result.out
    result = cli("rejected", "retry", "-c", config, "--json")
    assert result.code == 1, result.text
    assert result.json()["jobs"]["customers"]["still_rejected"] == 1
    assert cli("rejected", "retry", "-c", config, "--dry-run").code == 0  # nothing was tried

    execute(sqlite_url, text("UPDATE customers SET email = 'four@example.com' WHERE id = 4"))
    result = cli("rejected", "retry", "-c", config)
    assert result.code == 0, result.text
    assert "delivered 1, still rejected 0" in result.out


# -- a dry run that a real run would stop at the delete limit: exit 3 ----------------------


def test_dry_run_that_would_stop_on_the_delete_limit(cli, tmp_path, sqlite_url, sandbox):
    make_customers(sqlite_url, range(1, 11))
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state/state.db",
        job={"mapping": DEFAULT_MAPPING, "sync": "mirror", "max_deletes_per_run": 2},
    )
    config = str(write_config(tmp_path / "sync.yaml", doc))
    assert cli("once", "-c", config).code == 0
    execute(sqlite_url, text("DELETE FROM customers WHERE id > 6"))

    dry = cli("once", "-c", config, "--dry-run")
    assert dry.code == 3, dry.text
    assert "a real run would stop" in dry.err
    dry = cli("once", "-c", config, "--dry-run", "--json")
    assert dry.code == 3, dry.text
    job = dry.json()["jobs"]["customers"]
    assert job["would_stop"] is True
    assert "more than max_deletes_per_run allows (2" in job["too_many_deletes"]
    assert len(job["would_delete"]) == 4
    assert [r for r in sandbox.requests if r.method == "DELETE"] == []

    assert cli("once", "-c", config).code == 1  # the real run stops, as announced
    execute(sqlite_url, text("DELETE FROM customers WHERE id > 8"))  # nothing more gone
    doc["jobs"][0]["max_deletes_per_run"] = 10
    write_config(tmp_path / "sync.yaml", doc)
    dry = cli("once", "-c", config, "--dry-run", "--json")
    assert dry.code == 0, dry.text
    assert dry.json()["jobs"]["customers"]["would_stop"] is False


# -- Ctrl-C: "stopped", exit 130, and the next run resumes ----------------------------------


@pytest.mark.parametrize(
    ("command", "sig", "code"),
    [
        (["backfill", "customers"], signal.SIGINT, 130),
        (["once"], signal.SIGINT, 130),
        (["once"], signal.SIGTERM, 143),  # as a shell reports it: 128 + the signal
    ],
)
def test_ctrl_c_says_stopped_and_exits_130(command, sig, code, setup, sandbox, sqlite_url):
    config = setup(rows=range(1, 401))
    sandbox.faults = Faults(latency_s=0.05)
    process = subprocess.Popen(
        [script(), *command, "-c", config],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def posting() -> bool:
            assert process.poll() is None, process.communicate()
            return any(r.method == "POST" for r in sandbox.requests)

        wait_until(posting, what="a POST")
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    text_ = out + err
    assert process.returncode == code, text_
    assert "Traceback" not in text_
    assert f"job customers stopped ({sig.name})" in err
    assert "run the command again to resume" in err
    assert "failed" not in text_
    assert 0 < len(sandbox.users()) < 400

    sandbox.faults = Faults()
    again = run_script(*command, "-c", config)
    assert again.code == 0, again.text
    assert len(sandbox.users()) == 400


def test_ctrl_c_where_no_stop_is_listened_for_exits_130_too():
    """The demo has no stop of its own: Ctrl-C ends it at once, "stopped", exit 130."""
    process = subprocess.Popen(
        [script(), "demo", "--rows", "20000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as a terminal's shell starts it (a background job, as pytest's, ignores SIGINT)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        assert "1. backfill" in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    assert "stopped (SIGINT)" in err
    assert "Traceback" not in out + err and "aborted" not in err
