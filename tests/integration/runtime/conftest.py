"""Start the REAL server (`python -m mlbuild_runtime`) on a free port over a fixture model,
and talk HTTP to it. The server process and the waits are tests/unit/runtime/_server_process.py,
shared with the unit tests that run the server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "runtime"))

from _server_process import ServerProcess  # noqa: E402 - found through the line above


@pytest.fixture
def start_server(tmp_path):
    """``start_server(model, *args, env=, python=, wait="ready"|"live"|None)``: a server over
    tests/fixtures/models/<model>, stopped after the test."""
    servers: list[ServerProcess] = []

    def start(model: str, *args: str, env: dict | None = None, python: str | None = None,
              wait: str | None = "ready") -> ServerProcess:  # fmt: skip
        server = ServerProcess(model, tmp_path, *args, env=env, python=python, cwd=tmp_path)
        servers.append(server)
        if wait == "ready":
            server.wait_ready()
        elif wait == "live":
            server.wait_for(lambda r: r.status_code == 200, "/health/live")
        return server

    yield start
    for server in servers:
        server.stop(10)
