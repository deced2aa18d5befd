"""Start the REAL server (`python -m mlbuild_runtime`) on a free port over a fixture model,
and talk HTTP to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "tests" / "fixtures" / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_for(lambda r: r.status_code == 200, "/health/ready", timeout)

    def wait_for(self, predicate, path: str, timeout: float = 60) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last = None
        with self.client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    last = client.get(path)
                    if predicate(last):
                        return last
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"{path} never matched; last={last and last.text}\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def start_server(tmp_path):
    servers: list[Server] = []

    def start(model: str, *args: str, env: dict | None = None, python: str | None = None,
              wait: str | None = "ready") -> Server:  # fmt: skip
        port = free_port()
        log_path = tmp_path / f"server-{port}.log"
        argv = [sys.executable, "-m", "mlbuild_runtime", "--port", str(port), "--host", "127.0.0.1",
                "--model-dir", str(MODELS / model), "--log-format", "json", *args]  # fmt: skip
        if python:
            argv += ["--python", python]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLBUILD_", "AIP_"))}
        full_env.update(env or {})
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path)
        server = Server(proc, port, log_path)
        servers.append(server)
        if wait == "ready":
            server.wait_ready()
        elif wait == "live":
            server.wait_for(lambda r: r.status_code == 200, "/health/live")
        return server

    yield start
    for server in servers:
        server.stop(10)
