"""How the commands end: a port in use, a stop by signal, rows still rejected, a dry run
that a real run would stop, each with its own exit code (the README's table).

Ports in use and signals run the installed console script as a real process: a real
socket is bound first, a real SIGINT is sent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import run_script


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
