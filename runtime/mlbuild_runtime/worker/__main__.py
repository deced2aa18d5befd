"""Worker entry point: import the model, say HELLO, load, say READY, then answer requests.

Started by the server as ``<model python> -c <launch.BOOTSTRAP> <this dir>``, which loads this
directory as the package ``mlbuild_worker`` and calls main(). Standard library only.

Protocol fds: the pipes the server gave as stdin/stdout are dup'ed aside; fd 1 then points at
fd 2 and fd 0 at /dev/null, so anything the model (or a C library, or a child process) prints
lands in the log instead of corrupting the frame stream.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable

from . import hints as H
from . import protocol as P
from .loader import Entrypoint, import_entrypoint
from .schema import input_schema, output_schema
from .serialize import Unserializable, dumps
from .validate import InvalidInput, compile_hint, compile_input

__all__ = ["main"]


class _Out:
    """Frames to the server: plain os.write on the dup'ed fd, looping over short writes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: int, request_id: int, payload: bytes = b"") -> None:
        frame = P.encode(kind, request_id, payload)
        n = os.write(self.fd, frame)
        if n < len(frame):
            view = memoryview(frame)[n:]
            while view:
                view = view[os.write(self.fd, view):]


class _Async:
    """One event loop for the worker's whole life (created on first use), so an async model
    can keep clients/sessions bound to it across requests."""

    def __init__(self) -> None:
        self.loop = None

    def run(self, awaitable: Any) -> Any:
        if self.loop is None:
            import asyncio  # only async models pay for importing asyncio

            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        return self.loop.run_until_complete(awaitable)


def _take_protocol_fds() -> tuple:
    proto_in, proto_out = os.dup(0), os.dup(1)  # dup'ed fds are non-inheritable
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os.dup2(2, 1)
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(line_buffering=True)  # prints reach the log line by line
        except Exception:
            pass
    return proto_in, proto_out


def _failure(exc: BaseException) -> dict:
    return {
        "error_type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def _fatal(out: _Out, phase: str, exc: BaseException) -> None:
    """Send FATAL and exit 1 at once (os._exit: a half-imported model may hold threads)."""
    payload = dict(phase=phase, **_failure(exc))
    try:
        out.send(P.FATAL, 0, json.dumps(payload).encode())
    except OSError:  # nobody listens: at least leave it in the log
        sys.stderr.write(payload["traceback"])
    _flush_stdio()
    os._exit(1)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def _error_422(request_id: int, detail: list) -> bytes:
    return P.encode(P.ERROR, request_id, json.dumps({"status": 422, "detail": detail}).encode())


def _error_500(request_id: int, exc: BaseException) -> bytes:
    return P.encode(P.ERROR, request_id, json.dumps(dict(status=500, **_failure(exc))).encode())


def make_handler(entry: Entrypoint, predict: Callable[..., Any], run_async: Callable[[Any], Any]
                 ) -> Callable[[int, bytes], bytes]:
    """The per-request function: (request id, body) -> the RESULT or ERROR frame. All the
    introspection happens here, once; the returned closure only parses, converts, calls, dumps."""
    params = entry.params
    wants_body = bool(params)
    single = H.single_input(params)
    if single:
        convert_one = compile_hint(params[0].hint)
    else:
        convert_all = compile_input(params)
    is_async = entry.is_async
    encode, RESULT = P.encode, P.RESULT

    def handle(request_id: int, payload: bytes) -> bytes:
        if wants_body:
            try:
                body = _decode(payload.decode("utf-8"))
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                return _error_422(request_id, [
                    {"loc": ["body"], "msg": f"Invalid JSON: {e}", "type": "json_invalid"}])
        try:
            if single:
                args, kwargs = (convert_one(body),), {}
            elif wants_body:
                args, kwargs = convert_all(body)
            else:
                args, kwargs = (), {}
        except InvalidInput as e:
            return _error_422(request_id, e.detail)
        except Exception as e:  # the model's own validator (pydantic, __post_init__) broke
            return _error_500(request_id, e)
        try:
            result = predict(*args, **kwargs)
            if is_async or hasattr(result, "__await__"):
                result = run_async(result)
        except Exception as e:
            return _error_500(request_id, e)
        try:
            return encode(RESULT, request_id, dumps(result))
        except Unserializable as e:
            return _error_500(request_id, e)

    return handle


def main() -> None:
    proto_in, proto_out = _take_protocol_fds()
    # The server owns shutdown (SHUTDOWN frame, or SIGTERM/SIGKILL); a Ctrl-C in its terminal
    # reaches our process group too and must not kill a request half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = _Out(proto_out)
    model_dir = os.path.abspath(os.environ.get("MODEL_DIR") or os.getcwd())

    try:
        os.chdir(model_dir)
        sys.path.insert(0, model_dir)
        entry = import_entrypoint(os.environ.get("MLBUILD_ENTRYPOINT"))
    except BaseException as e:  # SyntaxError, ImportError, SystemExit in module code...
        _fatal(out, "import", e)

    hello = {
        "protocol": P.PROTOCOL_VERSION,
        "pid": os.getpid(),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "executable": sys.executable,
        "entrypoint": entry.name,
        "kind": "class" if entry.is_class else "function",
        "async": entry.is_async,
        "input_schema": _safe(lambda: input_schema(entry.params)),
        "output_schema": _safe(lambda: output_schema(entry.returns)),
    }
    try:
        out.send(P.HELLO, 0, json.dumps(hello).encode())
    except OSError:
        os._exit(1)

    runner = _Async()
    started = time.perf_counter()
    try:
        predict = entry.load(runner.run)
        handle = make_handler(entry, predict, runner.run)
    except BaseException as e:
        _fatal(out, "load", e)
    load_seconds = time.perf_counter() - started
    gc.collect()
    if hasattr(gc, "freeze"):  # the loaded model is long-lived: keep it out of GC scans
        gc.freeze()
    try:
        out.send(P.READY, 0, json.dumps({"load_seconds": load_seconds}).encode())
    except OSError:
        os._exit(1)

    code = _serve(open(proto_in, "rb", buffering=1 << 16), out, handle)
    _flush_stdio()
    sys.exit(code)


def _serve(reader: Any, out: _Out, handle: Callable[[int, bytes], bytes]) -> int:
    write, fd = os.write, out.fd
    REQUEST, SHUTDOWN = P.REQUEST, P.SHUTDOWN
    while True:
        try:
            frame = P.read_frame(reader)
        except P.ProtocolError as e:
            sys.stderr.write(f"mlbuild worker: protocol error from the server: {e}\n")
            return 1
        if frame is None:  # the server closed our stdin: it is gone or wants us gone
            return 0
        kind, request_id, payload = frame
        if kind == REQUEST:
            response = handle(request_id, payload)
            try:
                n = write(fd, response)
                if n < len(response):
                    view = memoryview(response)[n:]
                    while view:
                        view = view[write(fd, view):]
            except OSError:  # BrokenPipe: the server went away mid-answer
                return 1
        elif kind == SHUTDOWN:
            return 0
        else:
            sys.stderr.write(f"mlbuild worker: ignoring unexpected {P.KIND_NAMES[kind]} frame\n")


def _safe(build: Callable[[], dict]) -> dict:
    try:
        return build()
    except Exception:
        return {}


if __name__ == "__main__":  # python -m mlbuild_runtime.worker (development only)
    main()
