"""One model worker subprocess seen from the server: frames over its stdin/stdout pipes.

A reader task per worker decodes frames and resolves the future of the one request in flight
(a worker handles one request at a time). The pool owns the lifecycle; this class only reports
what happened through three callbacks: ``on_ready`` (READY arrived), ``on_free`` (an answer
arrived, the worker can take the next request) and ``on_lost`` (the worker can no longer serve:
EOF, FATAL, timeout kill, protocol error). ``on_lost`` is called at most once.

Limits on what a worker can make the server spend:

* answers: a RESULT frame longer than ``max_response_size`` (``MLBUILD_MAX_RESPONSE_SIZE``,
  ``--max-response-size``) is refused from its length prefix alone - the request fails with
  ResponseTooLarge (500), the worker is killed and replaced, its bytes are never read. Frames
  over 1 MiB are read straight into one preallocated buffer (no growing stream buffer, no copy).
* control frames: any other kind (HELLO, READY, ERROR, FATAL) is capped at
  max(max_response_size, 4 MiB) (``_CONTROL_FRAME_MIN_CAP``: schemas and tracebacks may exceed
  a tiny answer limit) and refused the same way. A HELLO carries the model's input and output
  schemas: a model whose schemas exceed that cap cannot start, and /health/ready and the log
  say "HELLO frame of N bytes, more than the C-byte cap on control frames ...; raise
  MLBUILD_MAX_RESPONSE_SIZE (--max-response-size) to at least N bytes".
* the model's stdout/stderr: relayed to the log as ``mlbuild.worker`` records under two token
  buckets per worker - ``STDERR_LINES_PER_S`` (100) lines/s with bursts of ``STDERR_BURST``
  (200), and ``STDERR_BYTES_PER_S`` (64 KiB) of text/s with bursts of ``STDERR_BYTES_BURST``
  (1 MiB). Each record holds at most ``STDERR_RECORD_MAX`` (4 KiB) of its line (cut at a
  UTF-8 character boundary) plus "… [N more bytes cut]" (and ``cut_bytes`` in its fields).
  Lines over either budget are counted and dropped, and one warning per second says "dropped
  K lines of worker output (B bytes; ...)" (``dropped_lines``, ``dropped_bytes``). So one
  worker writes at most about 1 MiB + 64 KiB x seconds of model text to the log (plus a record's
  fixed fields, at most 200 + 100 x seconds records). The output is read in 64 KiB blocks and
  never held whole: of a line, only its first 4 KiB is kept while the rest is counted, so a
  1 GB line costs the server 4 KiB, and a flood costs one ``count`` per block.
* processes: everything the model started ends with its worker, even what left the worker's
  process group (worker/proctree.py: tree walk while it lives, environment token after it
  died or when its helpers were re-parented away). Orphans re-parented to the server (PID 1
  of a container without an init) are reaped by the pool.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..worker import proctree, protocol
from ._errors import PredictTimeout, ResponseTooLarge, WorkerDied
from ._output import STDERR_BYTES_PER_S, STDERR_LINES_PER_S, OutputRelay

__all__ = ["Worker", "WorkerState"]

log = logging.getLogger("mlbuild.runtime.worker")
worker_log = logging.getLogger("mlbuild.worker")  # the worker's own stderr, relayed

# The pipe write buffer may hold this much before a request awaits drain(); small requests
# (the common case) never wait.
_STDERR_LINE_LIMIT = 1 << 20
_EXIT_WAIT = 5.0  # after EOF, how long the process may take to exit before it is killed
_BIG_FRAME = 1 << 20  # frames above this are read into one preallocated buffer
_CONTROL_FRAME_MIN_CAP = 4 << 20  # HELLO (schemas) and ERROR (tracebacks) may exceed a tiny cap
_DEFAULT_MAX_RESPONSE = 40 << 20

_DROP_REPORT_EVERY = 1.0  # seconds between "dropped K lines" warnings
_OUTPUT_READ = 1 << 16  # output is read in blocks of at most this, never a line at a time


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
        max_response_size: int = _DEFAULT_MAX_RESPONSE,
    ) -> None:
        self.slot = slot
        self._argv = list(argv)
        # Every process the model starts inherits this tag: found by it after a crash.
        self._token = f"{os.getpid()}-{slot}-{secrets.token_hex(8)}"
        self._env = {**env, proctree.TOKEN_VAR: self._token}
        self._max_response = max_response_size
        self._max_control = max(max_response_size, _CONTROL_FRAME_MIN_CAP)
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
        self._output = OutputRelay(self._relay_line)
        self._drop_report: asyncio.TimerHandle | None = None
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
        # While the worker lives, what the model started and still parents is in its tree;
        # what was re-parented away (a daemon) carries the environment token - as does the
        # worker itself, which is about to die anyway. _reap looks again once it is gone.
        proctree.kill_descendants(proc.pid)
        proctree.kill_tagged(self._token)
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
        RESULT, max_response, max_control = protocol.RESULT, self._max_response, self._max_control
        try:
            while True:
                header = await readexactly(header_size)
                size, kind, request_id = protocol.decode_header(header)
                if size > (max_response if kind == RESULT else max_control):
                    self._refuse(size, kind)
                    break
                if size <= _BIG_FRAME:
                    payload = await readexactly(size) if size else b""
                else:
                    payload = await _read_big(stdout, size)
                self._dispatch(kind, request_id, payload)
                del payload  # a big answer is not kept alive by this frame while idle
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

    def _refuse(self, size: int, kind: int) -> None:
        """A frame past the cap: fail the request in flight, never read the bytes (the caller
        kills the worker, which discards them with its pipe)."""
        if kind == protocol.RESULT:
            limit = self._max_response
            self._protocol_error = f"RESULT frame of {size} bytes, more than max_response_size ({limit} bytes)"
        else:  # at start-up (a HELLO with huge schemas) the user must learn what to raise
            limit = self._max_control
            self._protocol_error = (
                f"{protocol.KIND_NAMES[kind]} frame of {size} bytes, more than the {limit}-byte cap on control "
                f"frames (max(max_response_size, 4 MiB)); raise MLBUILD_MAX_RESPONSE_SIZE (--max-response-size) "
                f"to at least {size} bytes"
            )
        pending, self._pending = self._pending, None
        if pending is not None and not pending[1].done():
            pending[1].set_exception(ResponseTooLarge(limit, size, self.slot))

    async def _reap(self) -> None:
        proc = self.proc
        # Wait for the exit status, not proc.wait(): that also waits for the stderr pipe to
        # close, which a helper that outlived the worker (a daemon) holds open until the
        # token kill below - a crash would take _EXIT_WAIT to be reported.
        deadline, pause = time.monotonic() + _EXIT_WAIT, 0.001
        while proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        if proc.returncode is None:
            # Closed its protocol pipe but keeps running: it can never serve again.
            self.kill()
        # Whatever the model started (a subprocess in load(), a data loader's helpers) would
        # outlive its worker and be re-parented to init, one more per crash: the worker led
        # its own process group, whose id stays valid while any member lives. What left the
        # group (setsid) carries the worker's token in its environment.
        _kill_group(proc.pid)
        proctree.kill_tagged(self._token)
        try:
            await asyncio.wait_for(proc.wait(), _EXIT_WAIT)
        except asyncio.TimeoutError:
            pass  # it has exited; a helper that escaped both nets still holds its stderr
        self.returncode = proc.returncode
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
        """Relay the worker's stderr (the model's prints land there too) to the log, within the
        budgets of OutputRelay: a model printing in a loop, or one huge line, must neither
        flood the log nor keep the event loop busy formatting records."""
        stream, output = self.proc.stderr, self._output
        try:
            while True:
                block = await stream.read(_OUTPUT_READ)
                if not block:
                    output.close()
                    return
                output.feed(block)
                if output.dropped_lines and self._drop_report is None:
                    loop = asyncio.get_running_loop()
                    self._drop_report = loop.call_later(_DROP_REPORT_EVERY, self._report_dropped)
        finally:
            self._report_dropped()

    def _relay_line(self, text: str, cut: int) -> None:
        fields = {"worker": self.slot, "pid": self.pid}
        if cut:
            fields["cut_bytes"] = cut
        worker_log.info(text, extra={"fields": fields})

    def _report_dropped(self) -> None:
        if self._drop_report is not None:
            self._drop_report.cancel()
            self._drop_report = None
        output = self._output
        if output.dropped_lines:
            lines, size = output.dropped_lines, output.dropped_bytes
            output.dropped_lines = output.dropped_bytes = 0
            worker_log.warning(
                f"dropped {lines} lines of worker output ({size} bytes; over {STDERR_LINES_PER_S:g} lines/s "
                f"or {STDERR_BYTES_PER_S} bytes/s)",
                extra={"fields": {"worker": self.slot, "pid": self.pid, "dropped_lines": lines,
                                  "dropped_bytes": size}},
            )  # fmt: skip

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
        lines = (t.decode("utf-8", "replace").strip() for t in reversed(self._output.tail))
        tail = next((t for t in lines if t), None)
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


async def _read_big(stream: asyncio.StreamReader, size: int) -> bytearray:
    """``size`` bytes into one buffer allocated once: readexactly() would grow the stream's
    buffer to the whole frame and then copy it out (two copies of a big answer)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    pos = 0
    try:
        while pos < size:
            chunk = await stream.read(min(size - pos, _BIG_FRAME))
            if not chunk:
                raise protocol.ProtocolError(f"stream ended inside a frame ({pos} of {size} bytes)")
            view[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
    finally:
        view.release()
    return buffer


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty (the usual case)
