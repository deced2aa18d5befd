"""What a worker can make the server spend (issue 9, "Hardening"): the size of its answers, the
processes it leaves behind, and the lines it prints. Real worker processes (the fixtures in
tests/fixtures/models/), a real WorkerPool, and the real server over HTTP where memory matters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _fakes import FAKE_WORKER_PRELUDE
from _server_process import SLACK, ServerProcess, alive, status_mib, until, wait_until
from mlbuild_runtime.server import Health, Settings, WorkerPool, _worker
from mlbuild_runtime.server._errors import PoolError, PredictTimeout, WorkerDied
from mlbuild_runtime.worker import proctree
from mlbuild_runtime.worker import protocol as P
from mlbuild_runtime.worker.launch import worker_command, worker_env

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"
MiB = 1 << 20


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


FAKE_WORKER = FAKE_WORKER_PRELUDE + r'''
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
    # predict_timeout is far past the deadline below: waiting for the rest of the frame (which
    # never comes) would end in that timeout, not in a refusal within the deadline.
    settings = Settings(model_dir=tmp_path, python=sys.executable, predict_timeout=60, max_response_size=MiB)
    pool = WorkerPool(settings, command=[sys.executable, str(script), str(Path(P.__file__).parent)], env={})

    async def main():
        await pool.start()
        await until(lambda: pool.health().status is Health.READY)
        first_pid = pool._slots[0].worker.pid
        with pytest.raises(PoolError) as caught:
            await asyncio.wait_for(pool.predict(b'"huge"'), SLACK)
        assert caught.value.status == 500
        assert caught.value.error == "prediction failed: response larger than max_response_size (1048576 bytes)"
        await until(lambda: pool.health().status is Health.READY)
        assert pool._slots[0].worker.pid != first_pid
        assert await pool.predict(b"1") == (P.RESULT, b'"small"')
        await pool.stop(5)

    asyncio.run(main())


HUGE_HELLO_WORKER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import protocol as p
wr = os.fdopen(os.dup(1), "wb", buffering=0)
schema = {"type": "object", "properties": {"f%d" % i: {"type": "number"} for i in range(200_000)}}
wr.write(p.encode(p.HELLO, 0, json.dumps({"protocol": 1, "pid": os.getpid(), "python": "3.11.9",
    "entrypoint": "predict:predict", "input_schema": schema, "output_schema": {}}).encode()))
time.sleep(60)
"""


def test_a_hello_over_the_control_frame_cap_fails_start_up_naming_the_limit_and_its_setting(tmp_path):
    """A model whose schema is huge (200,000 named fields: about 6.5 MB of HELLO) cannot start
    with a small response limit: the failure says which limit and what to raise."""
    script = tmp_path / "huge_hello.py"
    script.write_text(HUGE_HELLO_WORKER)
    settings = Settings(model_dir=tmp_path, python=sys.executable, max_response_size=MiB)
    pool = WorkerPool(settings, command=[sys.executable, str(script), str(Path(P.__file__).parent)], env={},
                      backoff=lambda failures: 60.0)  # fmt: skip

    async def main():
        await pool.start()
        try:
            await until(lambda: pool.health().status is Health.FAILED)
            return pool.health().reason
        finally:
            await pool.stop(5)

    reason = asyncio.run(main())
    assert reason.startswith("worker protocol error: HELLO frame of "), reason
    size = int(reason.split("HELLO frame of ")[1].split()[0])
    assert size > 4 * MiB
    assert (f"more than the 4194304-byte cap on control frames (max(max_response_size, 4 MiB)); "
            f"raise MLBUILD_MAX_RESPONSE_SIZE (--max-response-size) to at least {size} bytes") in reason, reason


def _peak_rss_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")


def test_real_server_answers_500_for_a_huge_answer_and_its_memory_stays_bounded(tmp_path):
    with ServerProcess("returns_huge_string", tmp_path) as srv, srv.client(timeout=60) as client:
        assert client.post("/predict", json=10).json() == "x" * 10
        baseline = _peak_rss_mib(srv.proc.pid)
        huge = client.post("/predict", json=100 * MiB, headers={"x-request-id": "huge-1"})
        assert huge.status_code == 500
        assert huge.json() == {
            "error": "prediction failed: response larger than max_response_size (41943040 bytes)",
            "error_type": "ResponseTooLarge", "request_id": "huge-1"}  # fmt: skip
        assert _peak_rss_mib(srv.proc.pid) - baseline < 20, "the server buffered the huge answer"
        # A big answer under the limit arrives whole, read into one buffer: the server's peak
        # grows by about one copy of it (it was two: a growing stream buffer, then a copy).
        big = client.post("/predict", json=30 * MiB)
        assert big.status_code == 200 and len(big.content) == 30 * MiB + 2
        assert _peak_rss_mib(srv.proc.pid) - baseline < 1.5 * 30


# -- processes the model starts --------------------------------------------------------------------

def _wait_dead(pids, timeout: float = 5.0) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` for all of them to end."""
    try:
        wait_until(lambda: not any(alive(p) for p in pids), timeout=timeout)
    except AssertionError:
        pass
    return [p for p in pids if alive(p)]


@pytest.fixture
def helpers():
    """Pids of helper processes seen in a test; any still alive at the end is killed (so a
    failing test leaks no `sleep 1000`)."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _check_escaped(pids: list[int], worker_pid: int) -> None:
    for pid in pids:
        assert alive(pid)
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


def test_pool_ends_setsid_helpers_after_a_crash_and_on_stop(helpers, monkeypatch):
    monkeypatch.setattr(_worker, "_EXIT_WAIT", 6 * SLACK)

    async def main():
        pool = _pool("spawns_setsid_child")
        await pool.start()
        try:
            await until(lambda: pool.health().status is Health.READY)
            first = json.loads((await pool.predict(b'"pids"'))[1])
            helpers.extend(first)
            _check_escaped(first, pool._slots[0].worker.pid)
            # os._exit: the worker cleans nothing up itself. The death must not be held up by
            # the daemon keeping the worker's stderr open (that took _EXIT_WAIT): with
            # _EXIT_WAIT made long, the deadline tells the two apart by far.
            with pytest.raises(WorkerDied):
                await asyncio.wait_for(pool.predict(b'"exit"'), SLACK)
            assert _wait_dead(first) == [], "a helper outlived its crashed worker"
            await until(lambda: pool.health().status is Health.READY)
            second = json.loads((await pool.predict(b'"pids"'))[1])
            helpers.extend(second)
            assert set(second).isdisjoint(first) and all(alive(p) for p in second)
        finally:
            await pool.stop(5)
        assert _wait_dead(second) == [], "a helper outlived the pool's stop"

    asyncio.run(main())


def test_timeout_kill_ends_setsid_helpers(helpers):
    async def main():
        pool = _pool("spawns_setsid_child", predict_timeout=1)
        await pool.start()
        try:
            await until(lambda: pool.health().status is Health.READY)
            pids = json.loads((await pool.predict(b'"pids"'))[1])
            helpers.extend(pids)
            with pytest.raises(PredictTimeout):
                await pool.predict(b'"hang"')
            assert _wait_dead(pids) == [], "a helper outlived its timed-out worker"
        finally:
            await pool.stop(5)

    asyncio.run(main())


def _zombie_children(*parents: int) -> list[int]:
    """Zombies whose parent is one of ``parents``: exited, never reaped."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) in parents:
            found.append(int(name))
    return found


def test_orphans_a_model_leaves_are_not_left_as_zombies_and_its_own_child_keeps_its_status():
    async def main():
        pool = _pool("leaves_orphans")
        await pool.start()
        try:
            await until(lambda: pool.health().status is Health.READY)
            answer = json.loads((await pool.predict(b"20"))[1])
            worker = pool._slots[0].worker
            worker_pid = worker.pid
            assert answer == {"pid": worker_pid, "child_status": 7}
            await until(lambda: set(proctree.tagged(worker._token)) <= {worker_pid})  # every sleep exited
            # then whoever reaps them has a while to do it
            await until(lambda: not _zombie_children(worker_pid, os.getpid()), timeout=SLACK,
                        what="orphans reaped (not piled up as zombies)")  # fmt: skip
            # Nobody reaped the model's own child behind its back: its status is still 7.
            assert json.loads((await pool.predict(b"0"))[1]) == answer
        finally:
            await pool.stop(5)

    asyncio.run(main())


def test_the_server_reaps_orphans_when_it_is_their_reaper(tmp_path):
    """As PID 1 of a container without an init, the server inherits every orphan: it must reap
    those (here it is made a child subreaper, which the kernel treats alike) and leave its
    workers' exit statuses to asyncio."""
    script = tmp_path / "reaper_server.py"
    script.write_text(REAPER_SERVER)
    result = subprocess.run([sys.executable, str(script), str(FIXTURES / "leaves_orphans")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["answer"]["child_status"] == 7
    assert report["zombies"] == [], "orphans piled up as zombies under the server"
    # The workers' own statuses are asyncio's: none was stolen (that would read "code 255").
    assert report["crash"] == "worker 0 died from SIGKILL (out of memory?)"


def test_reaping_orphans_spares_the_children_it_is_told_to():
    earlier = set(_zombie_children(os.getpid()))  # other tests' children are not ours to reap
    mine = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(5)"])
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(6)"])
    wait_until(lambda: set(_zombie_children(os.getpid())) >= {mine.pid, other.pid}, what="both children exited")
    reaped = proctree.reap_orphans(keep=earlier | {mine.pid})
    assert other.pid in reaped and mine.pid not in reaped
    assert mine.wait(5) == 5  # its status is still there for its owner
    assert other.pid not in _zombie_children(os.getpid())


REAPER_SERVER = r"""
import asyncio, json, os, sys, time
from pathlib import Path
from mlbuild_runtime.server import Health, Settings, WorkerPool
from mlbuild_runtime.server._errors import WorkerDied
from mlbuild_runtime.worker import proctree

assert proctree.become_subreaper()

def zombies(*parents):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = open("/proc/%s/stat" % name, "rb").read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == b"Z" and int(fields[1]) in parents:
                found.append(int(name))
    return found

async def main():
    pool = WorkerPool(Settings(model_dir=Path(sys.argv[1]), python=sys.executable))
    await pool.start()
    try:
        while pool.health().status is not Health.READY:
            await asyncio.sleep(0.01)
        # The orphans' shells are the worker's children; orphaned, each sleep comes to us.
        answer = json.loads((await pool.predict(b"20"))[1])
        worker = pool._slots[0].worker
        parents = (os.getpid(), worker.pid)
        deadline = time.monotonic() + 20
        while set(proctree.tagged(worker._token)) - {worker.pid}:  # until every sleep exited
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 10
        while zombies(*parents) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = zombies(*parents)
        worker.kill()  # SIGKILL; the pool reports how it died
        await worker.wait_closed()
        crash = worker.exit_reason
    finally:
        await pool.stop(5)
    print(json.dumps({"answer": answer, "zombies": left, "crash": crash}))

asyncio.run(main())
"""


# -- model output --------------------------------------------------------------------------------

class _Records(logging.Handler):
    """What the relay logged, without keeping every message whole (a broken limit must fail the
    test, not exhaust its memory)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, int, str, str, dict]] = []  # level, length, head, tail, fields

    def emit(self, record):
        message = record.getMessage()
        fields = dict(getattr(record, "fields", {}))
        self.records.append((record.levelno, len(message), message[:100], message[-100:], fields))

    def relayed(self):
        return [r for r in self.records if r[0] == logging.INFO]

    def reports(self):
        return [r for r in self.records if r[2].startswith("dropped ")]


@pytest.fixture
def worker_records():
    handler = _Records()
    worker_log = logging.getLogger("mlbuild.worker")
    worker_log.addHandler(handler)
    old_level = worker_log.level
    worker_log.setLevel(logging.INFO)
    yield handler
    worker_log.removeHandler(handler)
    worker_log.setLevel(old_level)


async def _ticker(stop: asyncio.Event, lags: list[float]) -> None:
    """How late the event loop runs a 10 ms timer, as long as ``stop`` is not set."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - before - 0.01)


async def _baseline(pool: WorkerPool, ping: bytes = b"1") -> tuple[float, float]:
    """Worst predict latency and loop lag of an idle pool, measured on this machine now: the
    flood tests bound their figures relative to it (a shared 2-core box is slow, not stalled)."""
    stop, lags = asyncio.Event(), []
    tick = asyncio.create_task(_ticker(stop, lags))
    worst = 0.0
    for _ in range(20):
        t0 = time.monotonic()
        assert (await pool.predict(ping))[0] == P.RESULT
        worst = max(worst, time.monotonic() - t0)
        await asyncio.sleep(0.02)
    stop.set()
    await tick
    return worst, max(lags)


async def _flood_while_pinging(pool: WorkerPool, body: bytes, ping: bytes = b"1"
                               ) -> tuple[tuple[int, bytes], float, float, float]:
    """Run one flooding request while the pool's other worker answers small ones: (the flood's
    answer, its seconds, the worst small-request latency, the worst loop lag)."""
    stop, lags = asyncio.Event(), []
    tick = asyncio.create_task(_ticker(stop, lags))
    started = time.monotonic()
    flood = asyncio.create_task(pool.predict(body))
    worst = 0.0
    while not flood.done():
        t0 = time.monotonic()
        assert (await pool.predict(ping))[0] == P.RESULT
        worst = max(worst, time.monotonic() - t0)
        await asyncio.sleep(0.02)
    answer = await flood
    elapsed = time.monotonic() - started
    stop.set()
    await tick
    return answer, elapsed, worst, max(lags, default=0.0)


def _assert_responsive(baseline: tuple[float, float], worst: float, lag: float) -> None:
    """The point: the loop never stalls for seconds. Ten times this machine's idle figures, with
    generous floors for a loaded shared box."""
    idle_latency, idle_lag = baseline
    assert worst <= max(10 * idle_latency, 2.0), f"a small predict took {worst:.2f} s (idle: {idle_latency:.3f} s)"
    assert lag <= max(10 * idle_lag, 1.0), f"the event loop stalled for {lag:.2f} s (idle: {idle_lag:.3f} s)"


def _flood(records: _Records, model: str, lines: int, ping: bytes) -> float:
    """A pool of two over ``model``: one worker prints ``lines`` lines while the other answers
    ``ping`` requests; the pool stays responsive (against its idle baseline). The flood's
    seconds; what the relay logged during the flood is in ``records``."""

    async def main() -> float:
        pool = _pool(model, workers=2)
        await pool.start()
        try:
            await until(lambda: pool.health().status is Health.READY)
            baseline = await _baseline(pool, ping=ping)
            records.records.clear()  # what the baseline's requests printed
            answer, elapsed, worst, lag = await _flood_while_pinging(pool, str(lines).encode(), ping=ping)
            assert answer == (P.RESULT, str(lines).encode())
        finally:
            await pool.stop(5)
        _assert_responsive(baseline, worst, lag)
        return elapsed

    return asyncio.run(main())


def test_model_output_is_rate_limited_with_a_count_of_what_was_dropped(worker_records):
    from mlbuild_runtime.server._output import STDERR_BURST, STDERR_LINES_PER_S

    lines = 100_000
    elapsed = _flood(worker_records, "prints_flood", lines, ping=b"1")
    # Only the flooding worker's records: the other one printed two lines per small request.
    flooder = next(r[4]["worker"] for r in worker_records.relayed() if r[2].startswith("flood line ") and r[2] != "flood line 0")
    relayed = [r for r in worker_records.relayed() if r[4]["worker"] == flooder]
    reports = [r for r in worker_records.reports() if r[4]["worker"] == flooder]
    dropped = sum(r[4]["dropped_lines"] for r in reports)
    budget = STDERR_BURST + STDERR_LINES_PER_S * (elapsed + 1.5) + 10
    assert len(relayed) < budget, (len(relayed), budget)
    assert reports and all(r[0] == logging.WARNING for r in reports)
    assert reports[0][2].startswith(f"dropped {reports[0][4]['dropped_lines']} lines of worker output")
    assert len(relayed) + dropped == lines + 1  # every line ("flood done" too) relayed or counted


def test_long_lines_are_cut_and_the_log_stays_within_its_byte_budget(worker_records):
    from mlbuild_runtime.server._output import (
        STDERR_BURST,
        STDERR_BYTES_BURST,
        STDERR_BYTES_PER_S,
        STDERR_LINES_PER_S,
        STDERR_RECORD_MAX,
    )

    lines, size = 400, 1_000_000  # 400 MB through the pipe, as prints_long_lines writes them

    elapsed = _flood(worker_records, "prints_long_lines", lines, ping=b"0")
    long = [r for r in worker_records.relayed() if r[2].startswith("aaaa")]
    assert long, "no long line was relayed at all"
    flooder = long[0][4]["worker"]  # the other worker printed only "long lines done" lines
    relayed = [r for r in worker_records.relayed() if r[4]["worker"] == flooder]
    reports = [r for r in worker_records.reports() if r[4]["worker"] == flooder]
    # The log's size: every relayed byte was paid from the byte budget (the notes aside).
    seconds = elapsed + 1.5
    logged = sum(r[1] for r in relayed)
    byte_budget = STDERR_BYTES_BURST + STDERR_BYTES_PER_S * seconds + 64 * len(relayed)
    assert logged <= byte_budget, (logged, byte_budget)
    assert len(relayed) <= STDERR_BURST + STDERR_LINES_PER_S * seconds
    assert logged < 4 << 20  # was 400 MB
    # Each long line relayed is cut to a few KiB and says by how much.
    for _, length, _head, tail, fields in long:
        kept = size - fields["cut_bytes"]
        assert 0 < kept <= STDERR_RECORD_MAX
        assert tail.endswith(f"a … [{size - kept} more bytes cut]"), tail
        assert length == kept + len(f" … [{size - kept} more bytes cut]")
    assert [r[2] for r in relayed if not r[2].startswith("aaaa")] in ([], ["long lines done"])
    # Every line was relayed (cut) or counted as dropped, and the drop reports say so.
    dropped = sum(r[4]["dropped_lines"] for r in reports)
    assert reports and dropped > 0
    assert len(relayed) + dropped == lines + 1
    assert sum(r[4]["dropped_bytes"] for r in reports) >= (dropped - 1) * size


def test_output_relay_cuts_at_a_character_boundary_and_counts_every_line_it_drops():
    """The relay's bookkeeping, fed by hand with a frozen clock (no refill)."""
    from mlbuild_runtime.server._output import STDERR_BURST, STDERR_RECORD_MAX, OutputRelay

    emitted: list[tuple[str, int]] = []
    relay = OutputRelay(lambda text, cut: emitted.append((text, cut)), clock=lambda: 0.0)
    euro = "€".encode()  # 3 bytes: the cap falls inside one of them
    long_line = b"x" + euro * (STDERR_RECORD_MAX // 3 + 10)
    # a long line split over three blocks, each smaller than the cap
    third = len(long_line) // 3
    for block in (long_line[:third], long_line[third:2 * third], long_line[2 * third:] + b"\n"):
        relay.feed(block)
    text, cut = emitted[0]
    kept = len(text.split(" … [")[0].encode())
    assert kept <= STDERR_RECORD_MAX and kept + cut == len(long_line)
    assert text == "x" + "€" * ((kept - 1) // 3) + f" … [{cut} more bytes cut]"
    # the rest of the line burst, then everything past it counted in bulk, in odd-sized blocks
    data = b"".join(b"line %d\n" % i for i in range(STDERR_BURST + 1000)) + b"no newline at the end"
    for start in range(0, len(data), 777):
        relay.feed(data[start:start + 777])
    relay.close()
    assert len(emitted) == STDERR_BURST and emitted[-1] == (f"line {STDERR_BURST - 2}", 0)
    assert relay.dropped_lines == 1000 + 2  # the last line too, newline or not
    dropped = data.split(b"\n")[STDERR_BURST - 1:]
    assert relay.dropped_bytes == sum(len(line) for line in dropped)
    assert relay.tail[-1] == b"no newline at the end"
