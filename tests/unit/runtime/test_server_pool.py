"""WorkerPool against a tiny fake worker that speaks the real frame protocol (real processes,
real pipes; no model env). The fake's behaviour is chosen by FAKE_MODE and by the body."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from _fakes import FAKE_WORKER_PRELUDE
from _server_process import SLACK, until
from mlbuild_runtime.server import Health, Settings, WorkerPool
from mlbuild_runtime.server._errors import NoWorkerReady, PredictTimeout, WorkerDied
from mlbuild_runtime.server._pool import backoff_delay
from mlbuild_runtime.worker import protocol

FAKE_WORKER = FAKE_WORKER_PRELUDE + r'''
os.dup2(2, 1)
mode = os.environ.get("FAKE_MODE", "echo")
if mode == "exit_early":
    print("cannot find the model", file=sys.stderr, flush=True)
    sys.exit(4)
send(p.HELLO, 0, {"protocol": 99 if mode == "bad_protocol" else 1, "pid": os.getpid(), "python": "3.11.9",
                  "entrypoint": "predict:Model", "input_schema": {"type": "object"},
                  "output_schema": {"type": "object"}})
if mode == "fatal":
    send(p.FATAL, 0, {"phase": "load", "error_type": "ValueError", "message": "no weights", "traceback": "Traceback..."})
    sys.exit(1)
send(p.READY, 0, {"load_seconds": 0.0})
while True:
    frame = p.read_frame(rd)
    if frame is None:
        sys.exit(0)
    kind, rid, body = frame
    if kind == p.SHUTDOWN:
        with open(os.environ["FAKE_MARKER"], "a") as f:
            f.write("shutdown\n")
        sys.exit(0)
    if body == b'"crash"':
        os._exit(3)
    if body.startswith(b'"sleep'):
        time.sleep(float(body.strip(b'"').split(b" ")[1]))
    if body == b'"hold"':  # busy until the test creates the go-file (see `release`)
        while not os.path.exists(os.environ["FAKE_MARKER"] + ".go"):
            time.sleep(0.005)
    if body == b'"error"':
        send(p.ERROR, rid, {"status": 500, "error_type": "KeyError", "message": "x", "traceback": "tb"})
        continue
    send(p.RESULT, rid, body)
'''


@pytest.fixture
def fake(tmp_path: Path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    marker = tmp_path / "marker"

    def make(mode: str = "echo", workers: int = 1, timeout: float = 5.0, backoff=None, **env):
        settings = Settings(model_dir=tmp_path, python=sys.executable, workers=workers, predict_timeout=timeout)
        full_env = {"FAKE_MODE": mode, "FAKE_MARKER": str(marker), **env}
        kwargs = {"backoff": backoff} if backoff else {}
        command = [sys.executable, str(script), str(Path(protocol.__file__).parent)]
        return WorkerPool(settings, command=command, env=full_env, **kwargs)

    make.marker = marker
    make.release = lambda: Path(f"{marker}.go").touch()  # every worker holding on '"hold"' answers
    return make


def _busy(pool: WorkerPool) -> bool:
    """Every ready worker is taken (none idle): the next request must wait."""
    return not pool._idle



def _run(coro):
    return asyncio.run(coro)


def test_backoff_grows_then_caps():
    assert [backoff_delay(n) for n in (0, 1, 2, 3, 4)] == [0.0, 0.0, 0.5, 1.0, 2.0]
    assert backoff_delay(50) == 30.0


def test_requests_round_trip_and_health(fake):
    async def main():
        pool = fake(workers=2)
        assert pool.health().status is Health.STARTING
        await pool.start()
        await until(lambda: pool.health().status is Health.READY)
        results = await asyncio.gather(*(pool.predict(json.dumps({"i": i}).encode()) for i in range(10)))
        assert [json.loads(payload)["i"] for _, payload in results] == list(range(10))
        assert {kind for kind, _ in results} == {protocol.RESULT}
        assert pool.hello["python"] == "3.11.9"
        kind, payload = await pool.predict(b'"error"')
        assert kind == protocol.ERROR and json.loads(payload)["error_type"] == "KeyError"
        await pool.stop(5)
        assert pool.health().status is Health.STOPPING

    _run(main())


def test_stop_sends_shutdown_to_every_worker(fake):
    async def main():
        pool = fake(workers=2)
        await pool.start()
        await until(lambda: pool.health().status is Health.READY)
        await pool.stop(5)

    _run(main())
    assert fake.marker.read_text().splitlines() == ["shutdown", "shutdown"]


def test_crash_fails_the_request_then_worker_is_restarted(fake):
    async def main():
        pool = fake()
        await pool.start()
        await until(lambda: pool.health().status is Health.READY)
        with pytest.raises(WorkerDied, match="exited with code 3"):
            await pool.predict(b'"crash"')
        assert pool.health().status in (Health.RESTARTING, Health.STARTING, Health.READY)
        await until(lambda: pool.health().status is Health.READY)
        assert pool.restarts["crash"] == 1
        assert (await pool.predict(b"1"))[1] == b"1"
        await pool.stop(5)

    _run(main())


def test_timeout_kills_and_replaces_the_worker(fake):
    timeout = 0.5

    async def main():
        pool = fake(timeout=timeout)
        await pool.start()
        await until(lambda: pool.health().status is Health.READY)
        first_pid = pool._slots[0].worker.pid
        # The fake would sleep 30 s: the answer must come from the timeout, well before that.
        with pytest.raises(PredictTimeout):
            await asyncio.wait_for(pool.predict(b'"sleep 30"'), timeout + SLACK)
        await until(lambda: pool.health().status is Health.READY)
        assert pool._slots[0].worker.pid != first_pid
        assert pool.restarts["timeout"] == 1
        assert (await pool.predict(b"2"))[1] == b"2"
        await pool.stop(5)

    _run(main())


def test_load_failure_keeps_reason_and_backs_off(fake):
    delays = []

    def backoff(failures):
        delays.append(failures)
        return 0.05

    async def main():
        # A request waiting for a worker would wait out predict_timeout (60 s); failing fast, it
        # is answered well within the deadline.
        pool = fake(mode="fatal", backoff=backoff, timeout=60)
        await pool.start()
        await until(lambda: len(delays) >= 3)
        report = pool.health()
        assert report.status is Health.FAILED
        assert report.reason == "load() raised ValueError: no weights"
        with pytest.raises(NoWorkerReady, match="no weights"):
            await asyncio.wait_for(pool.predict(b"1"), SLACK)
        await pool.stop(5)
        assert pool.restarts["load_failure"] >= 3

    _run(main())
    assert delays[:3] == [1, 2, 3]  # failures in a row grow: the real backoff would be 0, .5, 1


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("exit_early", "exited with code 4 before the model was ready (last output: cannot find the model)"),
        ("bad_protocol", "worker protocol error: worker speaks protocol 99, server speaks 1"),
    ],
)
def test_worker_that_never_gets_ready_says_why(fake, mode, reason):
    async def main():
        pool = fake(mode=mode, backoff=lambda n: 60)
        await pool.start()
        await until(lambda: pool.health().status is Health.FAILED)
        assert reason in pool.health().reason
        await pool.stop(5)

    _run(main())


def test_busy_workers_queue_requests_in_order(fake):
    async def main():
        pool = fake(workers=1)
        await pool.start()
        await until(lambda: pool.health().status is Health.READY)
        held = asyncio.create_task(pool.predict(b'"hold"'))
        await until(lambda: _busy(pool), what="the worker taken by the held request")
        queued = [asyncio.create_task(pool.predict(str(i).encode())) for i in range(3)]
        await until(lambda: len(pool._waiters) == 3, what="three requests queued")
        assert not held.done()
        fake.release()
        results = await asyncio.gather(held, *queued)
        assert [p for _, p in results] == [b'"hold"', b"0", b"1", b"2"]
        await pool.stop(5)

    _run(main())


def test_waiters_fail_fast_when_the_last_worker_dies(fake):
    async def main():
        # No quick recovery (restart in 60 s), and a waiter that is not failed would wait out
        # predict_timeout (60 s): failing fast, it is answered well within the deadline.
        pool = fake(workers=1, backoff=lambda n: 60, timeout=60)
        await pool.start()
        await until(lambda: pool.health().status is Health.READY)
        held = asyncio.create_task(pool.predict(b'"hold"'))
        await until(lambda: _busy(pool), what="the worker taken by the held request")
        waiter = asyncio.create_task(pool.predict(b'"crash"'))
        waiter2 = asyncio.create_task(pool.predict(b"3"))
        await until(lambda: len(pool._waiters) == 2, what="two requests queued")
        fake.release()
        assert (await held)[1] == b'"hold"'
        with pytest.raises(WorkerDied):
            await waiter  # got the worker, which then crashed
        with pytest.raises((NoWorkerReady, WorkerDied)) as failed:
            await asyncio.wait_for(waiter2, SLACK)
        assert "stayed busy" not in str(failed.value)  # failed by the death, not by its own timer
        # Nothing ready now and no restart for 60 s: new requests fail at once, not hang.
        await until(lambda: pool.ready_count == 0)
        with pytest.raises(NoWorkerReady):
            await asyncio.wait_for(pool.predict(b"4"), 1)
        assert pool.health().status is Health.RESTARTING
        await pool.stop(5)

    _run(main())
