"""Registry fixtures: real docker-registry processes on 127.0.0.1, and tiny broken servers.

- ``registry``        session: plain registry on a free port (scripts/registry-fixture.sh)
- ``auth_registry``   session: same, with htpasswd (Basic) auth; user/password on the object
- ``failing_server``  a local HTTP server that answers every request 500 with a registry error
- ``slow_server``     a local HTTP server that answers nothing for 30 s
- ``saved_base``      session: ``docker save`` of the local base image, read as a docker-archive
- ``multiarch_base``  session: scripts/build-multiarch-base.sh pushed into ``registry``

When docker-registry is missing the registry tests skip, except in CI (CI=1/true), where
they fail: CI installs it, so its absence there is a broken CI, not a reason to skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from mlbuild._oci.auth import Credentials
from mlbuild._oci.registry import RegistryClient

REPO_ROOT = Path(__file__).resolve().parents[3]
FIXTURE_SCRIPT = REPO_ROOT / "scripts" / "registry-fixture.sh"
MULTIARCH_SCRIPT = REPO_ROOT / "scripts" / "build-multiarch-base.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(tool: str, why: str) -> None:
    """Skip without ``tool``, but fail in CI, which must have it."""
    if shutil.which(tool) is None:
        message = f"{tool} is not installed ({why})"
        if in_ci():
            pytest.fail(f"{message}; CI must install it", pytrace=False)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    return free_port()


@pytest.fixture(name="require_tool")
def require_tool_fixture():
    """``require_tool(tool, why)`` for tests: skip without it, fail in CI."""
    return require_tool


@dataclass(frozen=True)
class LocalRegistry:
    """A running docker-registry: ``host`` is ``127.0.0.1:PORT`` as used in references."""

    host: str
    pid: int
    directory: Path
    username: str | None = None
    password: str | None = None

    @property
    def credentials(self) -> Credentials | None:
        if self.username is None:
            return None
        return Credentials(self.username, self.password or "", "the auth_registry fixture")

    def client(self, **kwargs) -> RegistryClient:
        kwargs.setdefault("credentials", self.credentials)
        return RegistryClient(self.host, **kwargs)


def _start_registry(directory: Path, userpass: str | None = None) -> LocalRegistry:
    require_tool("docker-registry", "Debian package docker-registry")
    last_error = ""
    for _ in range(3):  # a free port can be taken between the probe and the bind: try another
        port = free_port()
        args = [str(FIXTURE_SCRIPT), "start", str(directory), str(port)] + ([userpass] if userpass else [])
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            pid = int(proc.stdout.strip().splitlines()[-1])
            host = f"127.0.0.1:{port}"
            _wait_for_v2(host)
            user, _, password = (userpass or "").partition(":")
            return LocalRegistry(host, pid, directory, user or None, password or None)
        last_error = proc.stderr.strip()
    pytest.fail(f"could not start docker-registry: {last_error}", pytrace=False)


def _wait_for_v2(host: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://{host}/v2/", timeout=2).status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"registry {host} did not answer /v2/ within {timeout} s", pytrace=False)
        time.sleep(0.1)


def _stop_registry(reg: LocalRegistry) -> None:
    subprocess.run([str(FIXTURE_SCRIPT), "stop", str(reg.directory)], capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    reg = _start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    _stop_registry(reg)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    userpass = f"mlbuild:{secrets.token_urlsafe(12)}"
    reg = _start_registry(tmp_path_factory.mktemp("auth-registry"), userpass)
    yield reg
    _stop_registry(reg)


class _FailingHandler(BaseHTTPRequestHandler):
    """Every request: 500 with the registry's JSON error shape."""

    def _answer(self) -> None:
        body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "storage backend exploded"}]}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


class _SlowHandler(BaseHTTPRequestHandler):
    """Accepts the connection, then answers nothing for a long time."""

    def _answer(self) -> None:
        self.server.stop_event.wait(30)  # type: ignore[attr-defined]

    do_GET = do_HEAD = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@dataclass(frozen=True)
class LocalServer:
    host: str
    requests: list[str]


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[LocalServer]:
    requests: list[str] = []

    class Recording(handler):  # type: ignore[misc, valid-type]
        def parse_request(self) -> bool:
            ok = super().parse_request()
            requests.append(f"{self.command} {self.path}")
            return ok

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    server.daemon_threads = True
    server.block_on_close = False
    server.stop_event = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalServer(f"127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.stop_event.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


@pytest.fixture
def failing_server() -> Iterator[LocalServer]:
    yield from _serve(_FailingHandler)


@pytest.fixture
def slow_server() -> Iterator[LocalServer]:
    yield from _serve(_SlowHandler)


@pytest.fixture(scope="session")
def multiarch_base(registry: LocalRegistry) -> str:
    """``<registry>/library/python:3.11-bookworm``, an index over linux/amd64 + linux/arm64."""
    for tool, why in (("docker", "Debian package docker.io"), ("debootstrap", "Debian package debootstrap")):
        require_tool(tool, why)
    proc = subprocess.run([str(MULTIARCH_SCRIPT), registry.host], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"build-multiarch-base.sh failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return f"{registry.host}/library/python:3.11-bookworm"


@pytest.fixture(scope="session")
def saved_base(base_image, tmp_path_factory) -> Path:
    """The local base image as a docker-archive tar (one `docker save` for the whole session)."""
    path = tmp_path_factory.mktemp("base") / "base.tar"
    subprocess.run(["docker", "save", "-o", str(path), base_image], check=True, timeout=600)
    return path
