"""One model worker subprocess seen from the server: frames over its stdin/stdout pipes.

A reader task per worker decodes frames and resolves the future of the one request in flight
(a worker handles one request at a time). The pool owns the lifecycle; this class only reports
what happened through three callbacks: ``on_ready`` (READY arrived), ``on_free`` (an answer
arrived, the worker can take the next request) and ``on_lost`` (the worker can no longer serve:
EOF, FATAL, timeout kill, protocol error). ``on_lost`` is called at most once.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..worker import protocol
from ._errors import PredictTimeout, WorkerDied

__all__ = ["Worker", "WorkerState"]

log = logging.getLogger("mlbuild.runtime.worker")
worker_log = logging.getLogger("mlbuild.worker")  # the worker's own stderr, relayed

# The pipe write buffer may hold this much before a request awaits drain(); small requests
# (the common case) never wait.
_STDERR_LINE_LIMIT = 1 << 20
_EXIT_WAIT = 5.0  # after EOF, how long the process may take to exit before it is killed


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned; importing / loading
    READY = "ready"  # takes requests
    FAILED = "failed"  # FATAL received (import/load raised); exits on its own
    LOST = "lost"  # died, killed or stopping: takes nothing more


class Worker:
    def __init__(
        self,
        slot: int,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        on_ready: Callable[[Worker], None],
        on_free: Callable[[Worker], None],
        on_lost: Callable[[Worker], None],
    ) -> None:
        self.slot = slot
        self._argv = list(argv)
        self._env = dict(env)
        self._cwd = cwd
        self._on_ready = on_ready
        self._on_free = on_free
        self._on_lost = on_lost
        self.state = WorkerState.STARTING
        self.reached_ready = False
        self.hello: dict | None = None
        self.fatal: dict | None = None
        self.load_seconds: float | None = None
        self.answered = 0
        self.killed_for_timeout = False
        self.exit_reason: str | None = None
        self.returncode: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._pending: tuple[int, asyncio.Future] | None = None
        self._next_id = 1
        self._lost = False
        self._protocol_error: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=5)
        self._reader: asyncio.Task | None = None
        self._stderr_task: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the process (raises OSError if it cannot be) and start the reader tasks."""
        self.proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            cwd=self._cwd,
            # Own session: a Ctrl-C in a terminal (SIGINT to the foreground group) must not kill
            # workers mid-request; the server stops them itself after draining. Also lets a
            # timeout kill reach any process the model spawned (killpg).
            start_new_session=True,
            limit=_STDERR_LINE_LIMIT,
        )
        log.debug("worker started", extra={"fields": {"worker": self.slot, "pid": self.proc.pid}})
        self._reader = asyncio.create_task(self._read_frames(), name=f"worker-{self.slot}-reader")
        self._stderr_task = asyncio.create_task(self._relay_stderr(), name=f"worker-{self.slot}-stderr")

    async def wait_closed(self) -> None:
        """Return once the process has exited and every pending request has been failed."""
        if self._reader is not None:
            await asyncio.shield(self._reader)
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
            except asyncio.TimeoutError:
                # A grandchild kept the stderr pipe open; stop relaying it.
                self._stderr_task.cancel()

    async def shutdown(self, timeout: float) -> None:
        """Ask the worker to exit (SHUTDOWN, then EOF); kill it if it has not within timeout."""
        self._mark_lost()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            await self.wait_closed()
            return
        try:
            proc.stdin.write(protocol.encode(protocol.SHUTDOWN, 0))
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except asyncio.TimeoutError:
            log.warning(
                "worker did not stop in time, killing it",
                extra={"fields": {"worker": self.slot, "pid": proc.pid, "timeout_s": timeout}},
            )
            self.kill()
        await self.wait_closed()

    def kill(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    # --- requests --------------------------------------------------------------------------

    async def request(self, body: bytes, timeout: float) -> tuple[int, bytes]:
        """Send one REQUEST and wait for its (kind, payload): RESULT or ERROR.

        Raises WorkerDied if the worker exits first, PredictTimeout (after killing the worker)
        if no answer comes within ``timeout`` seconds."""
        if self.state is not WorkerState.READY or self._pending is not None:
            raise WorkerDied(f"worker {self.slot} is not available")
        loop = asyncio.get_running_loop()
        request_id = self._next_id
        self._next_id += 1
        future = loop.create_future()
        self._pending = (request_id, future)
        stdin = self.proc.stdin
        try:
            stdin.write(protocol.encode(protocol.REQUEST, request_id, body))
            # Wait only when the pipe is backed up (big bodies): a drain() per request costs
            # a coroutine round trip on the hot path for nothing.
            if stdin.transport.get_write_buffer_size():
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the reader sees EOF and fails the future with the exit reason
        timer = loop.call_later(timeout, self._on_timeout, request_id, timeout)
        try:
            return await future
        finally:
            timer.cancel()

    def _on_timeout(self, request_id: int, timeout: float) -> None:
        pending = self._pending
        if pending is None or pending[0] != request_id or pending[1].done():
            return
        # The worker is stuck in predict(); the only safe way to get it back is a new process.
        self.killed_for_timeout = True
        pending[1].set_exception(
            PredictTimeout(f"prediction took longer than {timeout:g} s; worker {self.slot} killed")
        )
        log.error(
            "prediction timed out, killing the worker",
            extra={"fields": {"worker": self.slot, "pid": self.pid, "timeout_s": timeout}},
        )
        self._mark_lost()
        self.kill()

    # --- reading ---------------------------------------------------------------------------

    async def _read_frames(self) -> None:
        stdout = self.proc.stdout
        readexactly = stdout.readexactly
        header_size = protocol.HEADER.size
        try:
            while True:
                header = await readexactly(header_size)
                size, kind, request_id = protocol.decode_header(header)
                payload = await readexactly(size) if size else b""
                self._dispatch(kind, request_id, payload)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self._protocol_error = f"stream ended inside a frame ({len(exc.partial)} bytes)"
        except protocol.ProtocolError as exc:
            self._protocol_error = str(exc)
        except Exception as exc:  # a bug here must not leave requests hanging
            log.exception("worker reader failed", extra={"fields": {"worker": self.slot}})
            self._protocol_error = f"reader failed: {exc!r}"
        if self._protocol_error:
            log.error(
                "worker broke the frame protocol, killing it",
                extra={"fields": {"worker": self.slot, "pid": self.pid, "error": self._protocol_error}},
            )
            self.kill()
        self._mark_lost()
        await self._reap()

    async def _reap(self) -> None:
        proc = self.proc
        try:
            await asyncio.wait_for(proc.wait(), _EXIT_WAIT)
        except asyncio.TimeoutError:
            # Closed its protocol pipe but keeps running: it can never serve again.
            self.kill()
            await proc.wait()
        self.returncode = proc.returncode
        # Whatever the model started (a subprocess in load(), a data loader's helpers) would
        # outlive its worker and be re-parented to init, one more per crash: the worker led
        # its own process group, whose id stays valid while any member lives.
        _kill_group(proc.pid)
        self.exit_reason = self._describe_exit()
        pending, self._pending = self._pending, None
        if pending is not None and not pending[1].done():
            pending[1].set_exception(WorkerDied(self.exit_reason))

    def _dispatch(self, kind: int, request_id: int, payload: bytes) -> None:
        if kind == protocol.RESULT or kind == protocol.ERROR:
            pending = self._pending
            if pending is None or pending[0] != request_id:
                log.warning(
                    "answer for an unknown request, ignored",
                    extra={"fields": {"worker": self.slot, "frame_id": request_id}},
                )
                return
            self._pending = None
            self.answered += 1
            if not pending[1].done():  # done: timed out or the caller went away
                pending[1].set_result((kind, payload))
            if self.state is WorkerState.READY:
                self._on_free(self)
        elif kind == protocol.HELLO:
            self.hello = _json(payload)
            version = self.hello.get("protocol")
            if version != protocol.PROTOCOL_VERSION:
                raise protocol.ProtocolError(
                    f"worker speaks protocol {version!r}, server speaks {protocol.PROTOCOL_VERSION}"
                )
            log.info(
                "worker imported the model",
                extra={"fields": {"worker": self.slot, "pid": self.pid, "python": self.hello.get("python"),
                                  "entrypoint": self.hello.get("entrypoint")}},
            )  # fmt: skip
        elif kind == protocol.READY:
            if self.hello is None:
                raise protocol.ProtocolError("READY before HELLO")
            self.load_seconds = _json(payload).get("load_seconds")
            if self.state is WorkerState.STARTING:
                self.state = WorkerState.READY
                self.reached_ready = True
                log.info(
                    "worker ready",
                    extra={"fields": {"worker": self.slot, "pid": self.pid, "load_seconds": self.load_seconds}},
                )
                self._on_ready(self)
        elif kind == protocol.FATAL:
            self.fatal = _json(payload)
            log.error(
                f"model failed to {self.fatal.get('phase', 'load')}",
                extra={"fields": {"worker": self.slot, "pid": self.pid,
                                  "error_type": self.fatal.get("error_type"),
                                  "error": self.fatal.get("message"),
                                  "traceback": self.fatal.get("traceback")}},
            )  # fmt: skip
            self._mark_lost(WorkerState.FAILED)
        else:
            raise protocol.ProtocolError(f"worker sent {protocol.KIND_NAMES[kind]}")

    async def _relay_stderr(self) -> None:
        stream = self.proc.stderr
        fields = {"worker": self.slot, "pid": self.proc.pid}
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the limit: relay it in pieces
                line = await stream.read(_STDERR_LINE_LIMIT)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            self._stderr_tail.append(text)
            worker_log.info(text, extra={"fields": fields})

    # --- state -----------------------------------------------------------------------------

    def _mark_lost(self, state: WorkerState = WorkerState.LOST) -> None:
        if not self._lost:
            self.state = state
            self._lost = True
            self._on_lost(self)

    def failure_reason(self) -> str:
        """Why this worker never became ready (for /health/ready and the log)."""
        if self.fatal:
            phase = self.fatal.get("phase", "load")
            what = "importing the model" if phase == "import" else "load()"
            return f"{what} raised {self.fatal.get('error_type')}: {self.fatal.get('message')}"
        if self._protocol_error:
            return f"worker protocol error: {self._protocol_error}"
        reason = self.exit_reason or "worker exited"
        tail = next((t for t in reversed(self._stderr_tail) if t.strip()), None)
        return f"{reason} before the model was ready" + (f" (last output: {tail.strip()})" if tail else "")

    def _describe_exit(self) -> str:
        code = self.returncode
        if self.killed_for_timeout:
            return f"worker {self.slot} killed after the prediction timeout"
        if code is None:
            return f"worker {self.slot} exited"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return f"worker {self.slot} died from {name}{hint}"
        return f"worker {self.slot} exited with code {code}"


def _json(payload: bytes) -> dict:
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise protocol.ProtocolError(f"control frame is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise protocol.ProtocolError("control frame is not a JSON object")
    return value


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty (the usual case)
