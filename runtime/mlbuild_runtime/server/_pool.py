"""N model workers behind one queue: hand each request to an idle worker, restart the dead.

One supervisor task per worker slot runs the slot's life: spawn -> (HELLO, READY) -> serve ->
exit -> back off -> spawn again, until the pool stops. Requests take an idle READY worker (most
recently used first, its caches are warm); when every ready worker is busy they wait in FIFO
order; when no worker is ready at all they fail at once with NoWorkerReady (503) instead of
hanging, and waiters are failed the moment the last ready worker is lost.

Backoff: a slot's ``failures`` counts exits in a row that never answered a request (load
failures, crash-on-request, timeouts). The first restart is immediate, then 0.5 s, 1 s, 2 s ...
up to 30 s. A worker that answered at least one request resets it, so one crash after hours of
service restarts at once, and a model whose load() always raises is retried ever more slowly
while /health/ready keeps saying why.

Orphans: when the server inherits orphaned processes (it is PID 1 of a container without an
init, or a child subreaper), what a model's helpers leave behind (``cmd &`` in a shell, a
daemon's double fork) is re-parented to it, and nobody else would reap it: every
``REAP_EVERY`` seconds the pool reaps its zombie children except its workers, whose statuses
asyncio waits for (the workers are the server's only children of its own).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..worker import proctree
from ._errors import NoWorkerReady
from ._health import Health, HealthReport
from ._settings import Settings
from ._worker import Worker, WorkerState

__all__ = ["Pool", "WorkerPool", "backoff_delay"]

log = logging.getLogger("mlbuild.runtime.pool")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
REAP_EVERY = 1.0  # seconds between reaping orphans (only when the server inherits them)


def backoff_delay(failures: int, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX) -> float:
    """Seconds to wait before the next start after ``failures`` bad exits in a row."""
    if failures <= 1:
        return 0.0
    return min(first * 2 ** (failures - 2), cap)


class Pool(Protocol):
    """What the app needs from a pool (a fake one in unit tests)."""

    size: int
    hello: dict | None
    restarts: collections.Counter

    async def start(self) -> None: ...
    async def stop(self, timeout: float) -> None: ...
    async def predict(self, body: bytes) -> tuple[int, bytes]: ...
    def health(self) -> HealthReport: ...


@dataclass
class _Slot:
    index: int
    worker: Worker | None = None
    failures: int = 0
    failure: str | None = None  # why the last start never became ready (kept until READY)
    last_exit: str | None = None  # why the last ready worker went away
    ever_ready: bool = False
    task: asyncio.Task | None = field(default=None, repr=False)


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        backoff: Callable[[int], float] = backoff_delay,
    ) -> None:
        """``command``/``env`` default to the real worker launch (worker.launch); tests pass a
        fake worker's."""
        if command is None or env is None:
            from ..worker.launch import worker_command, worker_env

            command = worker_command(settings.python) if command is None else command
            env = worker_env(os.environ, str(settings.model_dir), settings.entrypoint) if env is None else env
        self._command = list(command)
        # The request-path limits the worker enforces itself (worker/protocol.py, "Limits").
        self._env = {**env, "MLBUILD_MAX_JSON_DEPTH": str(settings.max_json_depth),
                     "MLBUILD_MAX_RESPONSE_SIZE": str(settings.max_response_size)}
        self._max_response = settings.max_response_size
        self._cwd = settings.model_dir
        self._timeout = settings.predict_timeout
        self._backoff = backoff
        self.size = settings.workers
        self._slots = [_Slot(i) for i in range(settings.workers)]
        self._idle: collections.deque[Worker] = collections.deque()
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._ready = 0
        self._stopping = False
        self.hello: dict | None = None
        self.restarts: collections.Counter[str] = collections.Counter()
        self._spawning = 0  # workers being started: their pids are not known yet
        self._reaper: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisors and return at once: the server answers /health/live (and 503
        on /health/ready) while the model loads."""
        for slot in self._slots:
            slot.task = asyncio.create_task(self._supervise(slot), name=f"worker-{slot.index}-supervisor")
        if proctree.inherits_orphans():
            self._reaper = asyncio.create_task(self._reap_orphans(), name="orphan-reaper")

    async def stop(self, timeout: float) -> None:
        """Stop restarting, fail queued requests, SHUTDOWN every worker (kill after timeout)."""
        self._stopping = True
        self._fail_waiters(NoWorkerReady("server is shutting down"))
        workers = [s.worker for s in self._slots if s.worker is not None]
        await asyncio.gather(*(w.shutdown(timeout) for w in workers), return_exceptions=True)
        tasks = [s.task for s in self._slots if s.task is not None]
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A supervisor cancelled while spawning may have left a worker behind.
        for slot in self._slots:
            if slot.worker is not None and slot.worker not in workers:
                slot.worker.kill()

    async def _supervise(self, slot: _Slot) -> None:
        while not self._stopping:
            worker = Worker(
                slot.index,
                self._command,
                env=self._env,
                cwd=self._cwd,
                on_ready=self._worker_ready,
                on_free=self._release,
                on_lost=self._worker_lost,
                max_response_size=self._max_response,
            )
            slot.worker = worker
            try:
                self._spawning += 1
                try:
                    await worker.start()
                finally:
                    self._spawning -= 1
            except OSError as exc:
                kind = "load_failure"
                slot.failure = f"could not start the worker ({self._command[0]}): {exc}"
                slot.failures += 1
                log.error("worker could not start", extra={"fields": {"worker": slot.index, "error": str(exc)}})
            else:
                await worker.wait_closed()
                if self._stopping:
                    return
                if worker.reached_ready:
                    kind = "timeout" if worker.killed_for_timeout else "crash"
                    slot.last_exit = worker.exit_reason
                    slot.failures = 1 if worker.answered else slot.failures + 1
                else:
                    kind = "load_failure"
                    slot.failure = worker.failure_reason()
                    slot.failures += 1
            if self._stopping:
                return
            delay = self._backoff(slot.failures)
            self.restarts[kind] += 1
            log.warning(
                "restarting worker",
                extra={"fields": {"worker": slot.index, "cause": kind, "reason": slot.failure
                                  if kind == "load_failure" else slot.last_exit, "delay_s": delay}},
            )  # fmt: skip
            if delay:
                await asyncio.sleep(delay)

    async def _reap_orphans(self) -> None:
        """Reap the orphans the server inherited, never a worker (see the module docstring)."""
        while True:
            await asyncio.sleep(REAP_EVERY)
            if self._spawning:  # a worker forked but not yet known could be mistaken for one
                continue
            workers = {s.worker.pid for s in self._slots if s.worker is not None and s.worker.pid is not None}
            reaped = proctree.reap_orphans(workers)
            if reaped:
                log.debug("reaped orphaned processes", extra={"fields": {"pids": reaped}})

    # --- worker callbacks ------------------------------------------------------------------

    def _worker_ready(self, worker: Worker) -> None:
        slot = self._slots[worker.slot]
        slot.failure = None
        slot.last_exit = None
        slot.ever_ready = True
        if self.hello is None:
            self.hello = worker.hello
        self._ready += 1
        self._release(worker)

    def _worker_lost(self, worker: Worker) -> None:
        if worker.reached_ready:
            self._ready -= 1
        try:
            self._idle.remove(worker)
        except ValueError:
            pass
        if self._ready == 0:
            report = self.health()
            self._fail_waiters(NoWorkerReady(report.reason or "no worker is ready"))

    def _release(self, worker: Worker) -> None:
        """The worker is free: give it to the oldest live waiter, else park it as idle."""
        if worker.state is not WorkerState.READY or self._stopping:
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _fail_waiters(self, exc: Exception) -> None:
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)

    # --- requests --------------------------------------------------------------------------

    async def predict(self, body: bytes) -> tuple[int, bytes]:
        """(RESULT or ERROR, payload) for one request body. Raises a PoolError."""
        worker = self._idle.pop() if self._idle else await self._wait_for_worker()
        return await worker.request(body, self._timeout)

    async def _wait_for_worker(self) -> Worker:
        if self._stopping:
            raise NoWorkerReady("server is shutting down")
        if self._ready == 0:
            raise NoWorkerReady(self.health().reason or "no worker is ready")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)

        def expire() -> None:
            if not waiter.done():
                waiter.set_exception(
                    NoWorkerReady(f"every worker stayed busy for {self._timeout:g} s")
                )

        timer = loop.call_later(self._timeout, expire)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Cancelled after a worker was handed over but before we resumed: give it back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())
            raise
        finally:
            timer.cancel()

    # --- health ----------------------------------------------------------------------------

    @property
    def ready_count(self) -> int:
        return self._ready

    def health(self) -> HealthReport:
        total = len(self._slots)
        if self._stopping:
            return HealthReport(Health.STOPPING, "server is shutting down", self._ready, total)
        if self._ready == total:
            return HealthReport(Health.READY, None, self._ready, total)
        failed = [s.failure for s in self._slots if s.failure and not _is_ready(s)]
        if failed:
            return HealthReport(Health.FAILED, failed[0], self._ready, total)
        restarting = [s for s in self._slots if s.ever_ready and not _is_ready(s)]
        if restarting:
            reason = f"{restarting[0].last_exit or f'worker {restarting[0].index} was lost'}; restarting it"
            return HealthReport(Health.RESTARTING, reason, self._ready, total)
        return HealthReport(
            Health.STARTING, f"loading the model ({self._ready} of {total} workers ready)", self._ready, total
        )


def _is_ready(slot: _Slot) -> bool:
    return slot.worker is not None and slot.worker.state is WorkerState.READY
