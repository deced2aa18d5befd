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
from typing import Any, Callable, Tuple

from . import hints as H
from . import proctree
from . import protocol as P
from .jsonscan import deeper_than, may_overflow
from .loader import Entrypoint, import_entrypoint
from .schema import input_schema, output_schema
from .serialize import dumps
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


# An exception's text can be as large as the model likes (a repr of a huge array): the log
# needs the start of the message and the end of the traceback, not megabytes of either.
_MESSAGE_MAX = 8 << 10
_TRACEBACK_MAX = 64 << 10


def _failure(exc: BaseException) -> dict:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the worker down with it
        message = "<unprintable %s>" % type(exc).__name__
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(message) > _MESSAGE_MAX:
        message = message[:_MESSAGE_MAX] + "... (%d characters)" % len(message)
    if len(tb) > _TRACEBACK_MAX:
        tb = "... (%d characters)\n" % len(tb) + tb[-_TRACEBACK_MAX:]
    return {"error_type": type(exc).__name__, "message": message, "traceback": tb}


_TOKEN = ""  # this worker's MLBUILD_WORKER_TOKEN (set in main)


def _fatal(out: _Out, phase: str, exc: BaseException) -> None:
    """Send FATAL and exit 1 at once (os._exit: a half-imported model may hold threads)."""
    payload = dict(phase=phase, **_failure(exc))
    try:
        out.send(P.FATAL, 0, json.dumps(payload).encode())
    except OSError:  # nobody listens: at least leave it in the log
        sys.stderr.write(payload["traceback"])
    _flush_stdio()
    proctree.end_all(_TOKEN)  # what load() started dies with the worker
    os._exit(1)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0:  # inf - inf is nan
        raise ValueError(f"the number {text[:40]} is too large for a float (it overflows to infinity)")
    return value


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
# Slower (a Python call per float): only for bodies that may hold an overflowing number.
_decode_finite = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode

_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_JSON_DEPTH = 100
DEFAULT_MAX_RESPONSE_SIZE = 40 << 20


_MAX_ERRORS = 100  # a 10 MB body of wrong values must not become a 100 MB error answer


def _error_422(detail: list) -> tuple:
    if len(detail) > _MAX_ERRORS:
        more = len(detail) - _MAX_ERRORS
        detail = detail[:_MAX_ERRORS] + [
            {"loc": ["body"], "msg": "%d more errors not shown" % more, "type": "too_many_errors"}]
    return P.ERROR, json.dumps({"status": 422, "detail": detail}).encode()


def _invalid_json(msg: str, kind: str = "json_invalid") -> tuple:
    return _error_422([{"loc": ["body"], "msg": msg, "type": kind}])


def _error_500(exc: BaseException) -> tuple:
    return P.ERROR, json.dumps(dict(status=500, **_failure(exc))).encode()


# Sent when even building an error answer failed (MemoryError...): no allocation-heavy work.
_LAST_RESORT = json.dumps({"status": 500, "error_type": "WorkerError",
                           "message": "the worker could not build an answer", "traceback": ""}).encode()


def make_handler(entry: Entrypoint, predict: Callable[..., Any], run_async: Callable[[Any], Any],
                 *, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
                 max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
                 ) -> Callable[[int, bytes], Tuple[int, bytes]]:
    """The per-request function: (request id, body) -> (RESULT or ERROR, payload). All the
    introspection happens here, once; the returned closure only checks, parses, converts,
    calls, dumps. It never raises: whatever the body or the model throws becomes an ERROR
    (422 for the client's mistakes, 500 for the model's), so no input can end the worker."""
    params = entry.params
    wants_body = bool(params)
    single = H.single_input(params)
    if single:
        convert_one = compile_hint(params[0].hint)
    else:
        convert_all = compile_input(params)
    is_async = entry.is_async
    RESULT = P.RESULT
    too_deep = "nesting deeper than %d levels (MLBUILD_MAX_JSON_DEPTH)" % max_json_depth
    too_large = "response larger than max_response_size (%d bytes)" % max_response_size

    def parse(payload: bytes) -> Any:
        """The decoded body, or an ERROR answer (a tuple)."""
        if payload[:3] == _BOM:
            return _invalid_json("body starts with a byte order mark (BOM); send JSON without it")
        if deeper_than(payload, max_json_depth):
            return _invalid_json(too_deep, "json_too_deep")
        try:
            text = payload.decode("utf-8")
            return (_decode_finite if may_overflow(payload) else _decode)(text)
        except RecursionError:  # a limit set above what this interpreter's stack allows
            return _invalid_json(too_deep, "json_too_deep")
        except (ValueError, TypeError, OverflowError) as e:
            # JSONDecodeError and UnicodeDecodeError are ValueErrors; so are ints longer than
            # sys.get_int_max_str_digits() and the NaN/infinity rejections above.
            return _invalid_json(f"Invalid JSON: {e}")

    def answer(payload: bytes) -> Tuple[int, bytes]:
        if wants_body:
            body = parse(payload)
            if type(body) is tuple:  # JSON has no tuples: this is an ERROR answer
                return body
        try:
            if single:
                args, kwargs = (convert_one(body),), {}
            elif wants_body:
                args, kwargs = convert_all(body)
            else:
                args, kwargs = (), {}
        except InvalidInput as e:
            return _error_422(e.detail)
        except RecursionError:
            return _invalid_json(too_deep, "json_too_deep")
        except Exception as e:  # the model's own validator (pydantic, __post_init__) broke
            return _error_500(e)
        try:
            result = predict(*args, **kwargs)
            if is_async or hasattr(result, "__await__"):
                result = run_async(result)
        except BaseException as e:  # SystemExit, KeyboardInterrupt too: a 500, keep serving
            return _error_500(e)
        try:
            data = dumps(result)
        except Exception as e:  # Unserializable, or a model type's converter broke
            return _error_500(e)
        if len(data) > max_response_size:
            # The answer never crosses the pipe: the server would refuse it anyway.
            error = {"status": 500, "error": too_large, "error_type": "ResponseTooLarge",
                     "message": "predict returned %d bytes of JSON, more than max_response_size "
                                "(%d bytes, MLBUILD_MAX_RESPONSE_SIZE)" % (len(data), max_response_size),
                     "traceback": ""}
            return P.ERROR, json.dumps(error).encode()
        return RESULT, data

    def handle(request_id: int, payload: bytes) -> Tuple[int, bytes]:
        try:
            return answer(payload)
        except BaseException as e:  # MemoryError while parsing or building an answer...
            try:
                return _error_500(e)
            except BaseException:
                return P.ERROR, _LAST_RESORT

    return handle


def _limit(name: str, default: int) -> int:
    """A positive int from the environment the server set (see protocol.py), else default."""
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def main() -> None:
    proto_in, proto_out = _take_protocol_fds()
    # The server owns shutdown (SHUTDOWN frame, or SIGTERM/SIGKILL); a Ctrl-C in its terminal
    # reaches our process group too and must not kill a request half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Everything the model starts carries this token, so what escapes our tree (setsid'd
    # daemons re-parented to init) still ends with the worker. Not a subreaper: it could not
    # tell adopted orphans from the model's own children to reap them (proctree.py).
    global _TOKEN
    _TOKEN = proctree.ensure_token()
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
        handle = make_handler(
            entry, predict, runner.run,
            max_json_depth=_limit("MLBUILD_MAX_JSON_DEPTH", DEFAULT_MAX_JSON_DEPTH),
            max_response_size=_limit("MLBUILD_MAX_RESPONSE_SIZE", DEFAULT_MAX_RESPONSE_SIZE),
        )
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
    proctree.end_all(_TOKEN)
    sys.exit(code)


def _serve(reader: Any, out: _Out, handle: Callable[[int, bytes], Tuple[int, bytes]]) -> int:
    fd = out.fd
    REQUEST, SHUTDOWN, pack, header_size = P.REQUEST, P.SHUTDOWN, P.HEADER.pack, P.KIND_ID_SIZE
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
            del frame
            answer_kind, data = handle(request_id, payload)
            del payload
            header = pack(header_size + len(data), answer_kind, request_id)
            try:
                if len(data) < _JOIN_BELOW:  # one write; joining small buffers is free
                    _write_all(fd, header + data)
                else:  # a big answer is written as is, never copied into a frame
                    _write_all(fd, header)
                    _write_all(fd, data)
            except OSError:  # BrokenPipe: the server went away mid-answer
                return 1
        elif kind == SHUTDOWN:
            return 0
        else:
            sys.stderr.write(f"mlbuild worker: ignoring unexpected {P.KIND_NAMES[kind]} frame\n")


_JOIN_BELOW = 1 << 16


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n < len(data):
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view):]


def _safe(build: Callable[[], dict]) -> dict:
    try:
        return build()
    except Exception:
        return {}


if __name__ == "__main__":  # python -m mlbuild_runtime.worker (development only)
    main()
