"""The real server (`python -m mlbuild_runtime`) as a child process, for tests that talk to it
over HTTP, and what they need to talk to it: raw-socket requests and responses (for limits no
client library lets one break), metrics samples, and waits on a condition with a deadline.

Used by tests/unit/runtime/test_*.py and by tests/integration/runtime/conftest.py (which puts
this directory on sys.path). Every wait here polls a condition until a deadline; nothing sleeps
for a fixed time to let something happen."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "tests" / "fixtures" / "models"

# How long any wait may take beyond what it should: the machine is shared (2 cores), so a test
# fails because a limit did not act, never because the scheduler was slow.
SLACK = 10.0
WAIT = 2 * SLACK  # the default deadline of a wait on a condition (a worker starting, a count)


# -- waiting ----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, what: str = "condition",
               interval: float = 0.02) -> object:  # fmt: skip
    """Poll ``predicate`` until it is truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:g} s"
        time.sleep(interval)
    return value


async def until(predicate: Callable[[], object], timeout: float = WAIT, what: str = "condition") -> None:
    """``wait_until`` for a test running inside an event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:g} s"
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without settings the server would read, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLBUILD_", "AIP_"))}
    env.update(extra or {})
    return env


# -- the server process -----------------------------------------------------------------------


class ServerProcess:
    """``python -m mlbuild_runtime`` over ``model`` on a free port of 127.0.0.1, its output in
    ``log_dir``. ``with ServerProcess(...) as srv:`` waits for /health/ready and stops it after."""

    def __init__(self, model: str | Path, log_dir: Path, *args: str, env: Mapping[str, str] | None = None,
                 log_format: str = "json", python: str | None = None, cwd: Path | None = None) -> None:  # fmt: skip
        self.port = free_port()
        self.log_path = log_dir / f"server-{self.port}.log"
        model_dir = MODELS / model if isinstance(model, str) else model
        argv = [sys.executable, "-m", "mlbuild_runtime", "--model-dir", str(model_dir), "--host", "127.0.0.1",
                "--port", str(self.port), "--log-format", log_format, *args]  # fmt: skip
        if python:
            argv += ["--python", python]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=server_env(env), cwd=cwd)

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.settimeout(timeout)
        return s

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_for(lambda r: r.status_code == 200, "/health/ready", timeout)

    def wait_for(self, predicate: Callable[[httpx.Response], bool], path: str, timeout: float = 60) -> httpx.Response:
        """GET ``path`` until ``predicate(response)``; fails at once if the server exits."""
        deadline = time.monotonic() + timeout
        last = None
        with self.client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
                try:
                    last = client.get(path)
                    if predicate(last):
                        return last
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"{path} never matched; last={last and last.text}\n{self.log()[-3000:]}")

    def metrics(self) -> str:
        with self.connect() as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return read_response(s)[2].decode()

    def sample(self, sample: str) -> float | None:
        """The value of one exposition line, e.g. ``name{label="x"}``; None when absent."""
        return sample_value(self.metrics(), sample)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def sample_value(text: str, sample: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# -- raw HTTP/1.1 -----------------------------------------------------------------------------


class Reader:
    """Reads HTTP/1.1 responses (content-length bodies) from one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self.fill():
                raise EOFError(f"connection closed before a response; got {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self.fill():
                raise EOFError("connection closed inside a body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        """True when the server closed the connection (EOF or reset) before the timeout."""
        try:
            while self.fill():
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    return Reader(sock).response()


def predict_request(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


def send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    # The server answers once a limit is passed and may stop reading what follows.
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


# -- processes --------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def status_mib(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (``VmRSS``, ``VmHWM``: the peak) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")
