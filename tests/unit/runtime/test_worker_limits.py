"""What a worker can make the server spend (issue 9, "Hardening"): the size of its answers, the
processes it leaves behind, and the lines it prints. Real worker processes (the fixtures in
tests/fixtures/models/), a real WorkerPool, and the real server over HTTP where memory matters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlbuild_runtime.server import Health, Settings, WorkerPool
from mlbuild_runtime.server._errors import PoolError, PredictTimeout, WorkerDied
from mlbuild_runtime.worker import protocol as P
from mlbuild_runtime.worker.launch import worker_command, worker_env

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"
MiB = 1 << 20


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _pool(model: str, **settings) -> WorkerPool:
    return WorkerPool(Settings(model_dir=FIXTURES / model, python=sys.executable, **settings))


def _start_worker(model: str, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen(worker_command(sys.executable), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**worker_env(os.environ, str(FIXTURES / model)), **env})  # fmt: skip
    for expected in (P.HELLO, P.READY):
        frame = P.read_frame(proc.stdout)
        assert frame is not None and frame[0] == expected, frame
    return proc


def _ask(proc: subprocess.Popen, body: bytes) -> tuple[str, object]:
    proc.stdin.write(P.encode(P.REQUEST, 1, body))
    proc.stdin.flush()
    kind, _, payload = P.read_frame(proc.stdout)
    return P.KIND_NAMES[kind], json.loads(payload)


# -- answer size ---------------------------------------------------------------------------------

def test_worker_sends_500_naming_the_limit_instead_of_an_oversized_answer():
    proc = _start_worker("returns_huge_string", MLBUILD_MAX_RESPONSE_SIZE="1000")
    try:
        assert _ask(proc, b"998") == ("RESULT", "x" * 998)  # 1000 bytes with the quotes
        kind, error = _ask(proc, b"999")
        assert kind == "ERROR" and error["status"] == 500
        assert error["error"] == "response larger than max_response_size (1000 bytes)"
        assert error["error_type"] == "ResponseTooLarge" and "1001 bytes" in error["message"]
        assert _ask(proc, b"3") == ("RESULT", "xxx")  # and it serves on
    finally:
        proc.kill()
        proc.wait()


FAKE_WORKER = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import protocol as p
rd = os.fdopen(os.dup(0), "rb", buffering=0)
wr = os.fdopen(os.dup(1), "wb", buffering=0)
def send(kind, rid, obj):
    wr.write(p.encode(kind, rid, json.dumps(obj).encode()))
send(p.HELLO, 0, {"protocol": 1, "pid": os.getpid(), "python": "3.11.9", "entrypoint": "predict:predict",
                  "input_schema": {}, "output_schema": {}})
send(p.READY, 0, {"load_seconds": 0.0})
while True:
    frame = p.read_frame(rd)
    if frame is None:
        sys.exit(0)
    kind, rid, body = frame
    if body == b'"huge"':  # claims 512 MiB, sends 2 MiB of it, then stalls
        wr.write(p.HEADER.pack(p.KIND_ID_SIZE + (512 << 20), p.RESULT, rid))
        wr.write(b"x" * (2 << 20))
        time.sleep(60)
    send(p.RESULT, rid, "small")
'''


def test_pool_refuses_an_oversized_frame_from_its_header_and_replaces_the_worker(tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    settings = Settings(model_dir=tmp_path, python=sys.executable, predict_timeout=10, max_response_size=MiB)
    pool = WorkerPool(settings, command=[sys.executable, str(script), str(Path(P.__file__).parent)], env={})

    async def main():
        await pool.start()
        await _until(lambda: pool.health().status is Health.READY)
        first_pid = pool._slots[0].worker.pid
        started = time.monotonic()
        with pytest.raises(PoolError) as caught:
            await pool.predict(b'"huge"')
        elapsed = time.monotonic() - started
        assert caught.value.status == 500
        assert caught.value.error == "prediction failed: response larger than max_response_size (1048576 bytes)"
        assert elapsed < 5, "the server waited for the oversized frame instead of refusing its header"
        await _until(lambda: pool.health().status is Health.READY)
        assert pool._slots[0].worker.pid != first_pid
        assert await pool.predict(b"1") == (P.RESULT, b'"small"')
        await pool.stop(5)

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path: Path, model: str, *args: str) -> tuple[subprocess.Popen, str, Path]:
    port = _free_port()
    log_path = tmp_path / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLBUILD_", "AIP_"))}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlbuild_runtime", "--model-dir", str(FIXTURES / model), "--host", "127.0.0.1",
             "--port", str(port), "--log-format", "json", *args], stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return proc, url, log_path
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_real_server_answers_500_for_a_huge_answer_and_its_memory_stays_bounded(tmp_path):
    proc, url, _ = _serve(tmp_path, "returns_huge_string")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.post("/predict", json=10).json() == "x" * 10
            baseline = _peak_rss_mib(proc.pid)
            huge = client.post("/predict", json=100 * MiB, headers={"x-request-id": "huge-1"})
            assert huge.status_code == 500
            assert huge.json() == {
                "error": "prediction failed: response larger than max_response_size (41943040 bytes)",
                "error_type": "ResponseTooLarge", "request_id": "huge-1"}  # fmt: skip
            assert _peak_rss_mib(proc.pid) - baseline < 20, "the server buffered the huge answer"
            # A big answer under the limit arrives whole, read into one buffer: the server's peak
            # grows by about one copy of it (it was two: a growing stream buffer, then a copy).
            big = client.post("/predict", json=30 * MiB)
            assert big.status_code == 200 and len(big.content) == 30 * MiB + 2
            assert _peak_rss_mib(proc.pid) - baseline < 1.5 * 30
    finally:
        _stop(proc)


# -- processes the model starts --------------------------------------------------------------------

def _alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _wait_dead(pids, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.02)
    return [p for p in pids if _alive(p)]


@pytest.fixture
def helpers():
    """Pids of helper processes seen in a test; any still alive at the end is killed (so a
    failing test leaks no `sleep 1000`)."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _check_escaped(pids: list[int], worker_pid: int) -> None:
    for pid in pids:
        assert _alive(pid)
        assert os.getpgid(pid) != worker_pid  # outside the worker's group: killpg misses it


def test_worker_ends_setsid_helpers_when_it_shuts_down(helpers):
    proc = _start_worker("spawns_setsid_child")
    try:
        kind, pids = _ask(proc, b'"pids"')
        helpers.extend(pids)
        _check_escaped(pids, proc.pid)
        proc.stdin.write(P.encode(P.SHUTDOWN, 0))
        proc.stdin.flush()
        assert proc.wait(10) == 0
        assert _wait_dead(pids) == [], "a helper outlived its worker's graceful exit"
    finally:
        proc.kill()
        proc.wait()


def test_pool_ends_setsid_helpers_after_a_crash_and_on_stop(helpers):
    async def main():
        pool = _pool("spawns_setsid_child")
        await pool.start()
        try:
            await _until(lambda: pool.health().status is Health.READY)
            first = json.loads((await pool.predict(b'"pids"'))[1])
            helpers.extend(first)
            _check_escaped(first, pool._slots[0].worker.pid)
            with pytest.raises(WorkerDied):
                await pool.predict(b'"exit"')  # os._exit: the worker cleans nothing up itself
            assert _wait_dead(first) == [], "a helper outlived its crashed worker"
            await _until(lambda: pool.health().status is Health.READY)
            second = json.loads((await pool.predict(b'"pids"'))[1])
            helpers.extend(second)
            assert set(second).isdisjoint(first) and all(_alive(p) for p in second)
        finally:
            await pool.stop(5)
        assert _wait_dead(second) == [], "a helper outlived the pool's stop"

    asyncio.run(main())


def test_timeout_kill_ends_setsid_helpers(helpers):
    async def main():
        pool = _pool("spawns_setsid_child", predict_timeout=1)
        await pool.start()
        try:
            await _until(lambda: pool.health().status is Health.READY)
            pids = json.loads((await pool.predict(b'"pids"'))[1])
            helpers.extend(pids)
            with pytest.raises(PredictTimeout):
                await pool.predict(b'"hang"')
            assert _wait_dead(pids) == [], "a helper outlived its timed-out worker"
        finally:
            await pool.stop(5)

    asyncio.run(main())


# -- model output --------------------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_model_output_is_rate_limited_with_a_count_of_what_was_dropped():
    from mlbuild_runtime.server import _worker

    # the documented defaults: 100 lines/s, bursts of 200
    burst, rate = getattr(_worker, "STDERR_BURST", 200), getattr(_worker, "STDERR_LINES_PER_S", 100)
    handler = _Records()
    worker_log = logging.getLogger("mlbuild.worker")
    worker_log.addHandler(handler)
    old_level = worker_log.level
    worker_log.setLevel(logging.INFO)
    lines = 100_000

    async def main():
        pool = _pool("prints_flood", workers=2)
        await pool.start()
        lag = 0.0
        stop = asyncio.Event()

        async def ticker():  # how late the event loop runs a 10 ms timer during the flood
            nonlocal lag
            while not stop.is_set():
                before = time.monotonic()
                await asyncio.sleep(0.01)
                lag = max(lag, time.monotonic() - before - 0.01)

        try:
            await _until(lambda: pool.health().status is Health.READY)
            tick = asyncio.create_task(ticker())
            started = time.monotonic()
            flood = asyncio.create_task(pool.predict(str(lines).encode()))
            # The other worker answers promptly while the first one floods the log.
            while not flood.done():
                t0 = time.monotonic()
                assert (await pool.predict(b"1"))[0] == P.RESULT
                assert time.monotonic() - t0 < 1.0
                await asyncio.sleep(0.02)
            assert await flood == (P.RESULT, str(lines).encode())
            elapsed = time.monotonic() - started
            stop.set()
            await tick
        finally:
            await pool.stop(5)
        return elapsed, lag

    try:
        elapsed, lag = asyncio.run(main())
    finally:
        worker_log.removeHandler(handler)
        worker_log.setLevel(old_level)
    relayed = [r for r in handler.records if r.levelno == logging.INFO]
    reports = [r for r in handler.records if r.getMessage().startswith("dropped ")]
    dropped = sum(r.fields["dropped_lines"] for r in reports)
    budget = burst + rate * (elapsed + 1.5) + 10
    assert len(relayed) < budget, (len(relayed), budget)
    assert reports and all(r.levelno == logging.WARNING for r in reports)
    assert reports[0].getMessage().startswith(f"dropped {reports[0].fields['dropped_lines']} lines of worker output")
    flood_lines = sum(1 for r in relayed if r.getMessage().startswith("flood line"))
    assert flood_lines + dropped >= lines  # every line either relayed or counted
    assert len(relayed) + dropped <= lines + 50
    assert lag < 0.5, f"the event loop stalled for {lag:.2f} s during the flood"
