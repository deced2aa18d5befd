"""The real worker process, started with worker_command(sys.executable) against the fixtures in
tests/fixtures/models/, spoken to through pipes with protocol.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from mlbuild_runtime.worker import protocol as P
from mlbuild_runtime.worker.launch import worker_command, worker_env

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"


class Worker:
    """One worker process; every read is bounded by a watchdog that kills a hung worker."""

    def __init__(self, model_dir: Path, *, entrypoint: str | None = None,
                 command: list[str] | None = None, cwd: str | None = None,
                 timeout: float = 60) -> None:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            command or worker_command(sys.executable),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env=worker_env(os.environ, str(model_dir), entrypoint),
            cwd=cwd or "/",  # the worker must chdir to MODEL_DIR by itself
        )
        self.watchdog = threading.Timer(timeout, self.proc.kill)
        self.watchdog.start()

    def read(self):
        frame = P.read_frame(self.proc.stdout)
        if frame is None:
            return None
        kind, request_id, payload = frame
        return P.KIND_NAMES[kind], request_id, payload

    def read_json(self):
        frame = self.read()
        assert frame is not None, f"worker closed its stdout; log:\n{self.stderr()}"
        kind, request_id, payload = frame
        return kind, request_id, json.loads(payload)

    def start(self) -> dict:
        kind, _, hello = self.read_json()
        assert kind == "HELLO", (kind, hello)
        kind, _, ready = self.read_json()
        assert kind == "READY", (kind, ready)
        return hello

    def send(self, kind: int, request_id: int = 0, payload: bytes = b"") -> None:
        self.proc.stdin.write(P.encode(kind, request_id, payload))
        self.proc.stdin.flush()

    def request(self, body, request_id: int = 1):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send(P.REQUEST, request_id, raw)
        kind, rid, payload = self.read_json()
        assert rid == request_id
        return kind, payload

    def wait(self) -> int:
        code = self.proc.wait()
        self.watchdog.cancel()
        return code

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.log.close()


@pytest.fixture
def spawn():
    workers: list[Worker] = []

    def start(model_dir, **kwargs) -> Worker:
        w = Worker(Path(model_dir), **kwargs)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.close()


def model(tmp_path: Path, source: str, **files: str) -> Path:
    """A throwaway model directory for behaviours that need no shared fixture."""
    (tmp_path / "predict.py").write_text(textwrap.dedent(source))
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


# -- the happy path --------------------------------------------------------------------------------

def test_echo_hello_ready_result_shutdown(spawn):
    w = spawn(FIXTURES / "echo")
    kind, rid, hello = w.read_json()
    assert (kind, rid) == ("HELLO", 0)
    assert set(hello) == {"protocol", "pid", "python", "executable", "entrypoint", "kind",
                          "async", "input_schema", "output_schema"}
    assert hello["protocol"] == P.PROTOCOL_VERSION
    assert hello["pid"] == w.proc.pid
    assert hello["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert hello["entrypoint"] == "predict:predict" and hello["kind"] == "function"
    assert hello["async"] is False
    assert hello["input_schema"] == {"type": "object"}
    assert hello["output_schema"] == {"type": "object"}
    kind, rid, ready = w.read_json()
    assert (kind, rid) == ("READY", 0)
    assert isinstance(ready["load_seconds"], float) and 0 <= ready["load_seconds"] < 10

    assert w.request({"a": [1, 2.5, None], "b": "é"}, request_id=42) == (
        "RESULT", {"a": [1, 2.5, None], "b": "é"})
    w.send(P.SHUTDOWN)
    assert w.read() is None
    assert w.wait() == 0


def test_pipelined_requests_answer_in_order_with_their_ids(spawn):
    w = spawn(FIXTURES / "echo")
    w.start()
    ids = list(range(1, 201))
    w.proc.stdin.write(b"".join(P.encode(P.REQUEST, i, json.dumps({"i": i}).encode()) for i in ids))
    w.proc.stdin.flush()
    got = [w.read_json() for _ in ids]
    assert [(k, rid, body["i"]) for k, rid, body in got] == [("RESULT", i, i) for i in ids]


def test_eof_on_stdin_exits_zero(spawn):
    w = spawn(FIXTURES / "echo")
    w.start()
    w.proc.stdin.close()
    assert w.read() is None
    assert w.wait() == 0


def test_big_request_and_response(spawn):
    w = spawn(FIXTURES / "echo")
    w.start()
    body = {"values": list(range(200_000)), "text": "x" * 1_000_000}
    assert w.request(body) == ("RESULT", body)


def test_class_with_load_reads_artefact_relative_to_model_dir(spawn):
    w = spawn(FIXTURES / "class_load", cwd=tempfile.gettempdir())
    hello = w.start()
    assert hello["entrypoint"] == "predict:Model" and hello["kind"] == "class"
    assert hello["input_schema"] == {"type": "string"}
    assert w.request("Ada") == ("RESULT", "Hello, Ada!")


def test_multi_file_model_imports_sibling_module_and_subpackage(spawn):
    w = spawn(FIXTURES / "multi_file")
    w.start()
    assert w.request("Good food, GREAT service.") == (
        "RESULT", {"words": ["good", "food", "great", "service"], "score": 2})


def test_async_predict_runs_on_one_loop_for_the_worker_life(spawn):
    w = spawn(FIXTURES / "async_predict")
    assert w.start()["async"] is True
    k1, r1 = w.request({"n": 1}, 1)
    k2, r2 = w.request({"n": 2}, 2)
    assert (k1, k2) == ("RESULT", "RESULT")
    assert r1["echo"] == {"n": 1} and r2["echo"] == {"n": 2}
    assert r1["loop_id"] == r2["loop_id"]


def test_numpy_pandas_output_is_strict_json(spawn):
    w = spawn(FIXTURES / "numpy_pandas_output")
    w.start()
    kind, out = w.request([1, 2.5])
    assert kind == "RESULT"
    assert out == {
        "array": [1.0, 2.5], "sum": 3.5, "count": 2,
        "frame": [{"value": 1.0, "double": 2.0}, {"value": 2.5, "double": 5.0}],
        "series": [3.0, 7.5], "missing": None,
    }


def test_typed_inputs_schema_validation_and_result(spawn):
    w = spawn(FIXTURES / "typed_inputs")
    hello = w.start()
    schema = hello["input_schema"]
    assert schema["title"] == "Request" and schema["required"] == ["mode", "values"]
    assert schema["properties"]["mode"] == {"enum": ["sum", "mean"], "type": "string"}
    assert hello["output_schema"]["required"] == ["mode", "value", "label"]
    kind, out = w.request({"mode": "mean", "values": [1, 2, 4], "options": {"round_to": 2}})
    assert (kind, out) == ("RESULT", {"mode": "mean", "value": 2.33, "label": None})
    kind, err = w.request({"mode": "max", "values": [1, True], "options": {"nope": 1}, "x": 0})
    assert kind == "ERROR" and err["status"] == 422
    assert sorted((tuple(e["loc"]), e["type"]) for e in err["detail"]) == [
        (("body", "mode"), "literal_error"),
        (("body", "options", "nope"), "extra_forbidden"),
        (("body", "values", 1), "float_type"),
        (("body", "x"), "extra_forbidden"),
    ]


def test_pydantic_input_and_output(spawn):
    pytest.importorskip("pydantic")
    w = spawn(FIXTURES / "pydantic_input")
    hello = w.start()
    assert hello["input_schema"]["title"] == "Order"
    assert hello["output_schema"]["title"] == "Quote"
    kind, out = w.request({"customer": "c", "items": [{"name": "a", "price": 2}, {"name": "b", "price": 0.5}]})
    assert (kind, out) == ("RESULT", {"customer": "c", "total": 2.5, "n_items": 2})
    kind, err = w.request({"customer": "c", "items": [{"name": "a", "price": -1}]})
    assert kind == "ERROR" and err["status"] == 422
    assert [e["loc"] for e in err["detail"]] == [["body", "items", 0, "price"]]


# -- bad requests, failing predicts ----------------------------------------------------------------

@pytest.mark.parametrize("raw, fragment", [
    (b"{not json", "Invalid JSON"),
    (b"", "Invalid JSON"),
    (b'{"a": NaN}', "NaN is not valid JSON"),
    (b'"\xff"', "Invalid JSON"),
])
def test_invalid_json_is_422_and_worker_keeps_serving(spawn, raw, fragment):
    w = spawn(FIXTURES / "echo")
    w.start()
    kind, err = w.request(raw)
    assert kind == "ERROR" and err["status"] == 422
    (entry,) = err["detail"]
    assert entry["loc"] == ["body"] and entry["type"] == "json_invalid"
    assert fragment in entry["msg"]
    assert w.request({"still": "alive"}, 2) == ("RESULT", {"still": "alive"})


def test_predict_raises_gives_500_with_traceback_and_worker_survives(spawn):
    w = spawn(FIXTURES / "predict_raises")
    w.start()
    kind, err = w.request(-1)
    assert kind == "ERROR"
    assert err["status"] == 500 and err["error_type"] == "ValueError"
    assert err["message"] == "x must be >= 0, got -1"
    assert "predict_raises/predict.py" in err["traceback"] and "ValueError" in err["traceback"]
    assert w.request(4, 2) == ("RESULT", 8)


def test_unserializable_output_is_500_naming_the_type(spawn, tmp_path):
    w = spawn(model(tmp_path, """
        class Opaque:
            pass

        def predict(x):
            return {"ok": 1, "thing": Opaque()}
    """))
    w.start()
    kind, err = w.request({})
    assert kind == "ERROR" and err["status"] == 500
    assert "Opaque" in err["message"] and "result['thing']" in err["message"]


def test_exit_in_predict_closes_stream_with_exit_code(spawn):
    w = spawn(FIXTURES / "exits_in_predict")
    w.start()
    assert w.request({"exit": False}) == ("RESULT", {"alive": True})
    w.send(P.REQUEST, 2, b'{"exit": true}')
    assert w.read() is None
    assert w.wait() == 3


def test_segfault_in_predict_closes_stream(spawn):
    w = spawn(FIXTURES / "segfaults")
    w.start()
    w.send(P.REQUEST, 1, b'{"crash": true}')
    assert w.read() is None
    assert w.wait() == -signal.SIGSEGV


def test_sleeps_fixture_sleeps(spawn):
    w = spawn(FIXTURES / "sleeps")
    w.start()
    assert w.request(0.05) == ("RESULT", 0.05)
    assert w.request(0) == ("RESULT", 0.0)  # an int is a valid float


def test_prints_do_not_corrupt_the_protocol_and_reach_the_log(spawn):
    w = spawn(FIXTURES / "prints_to_stdout")
    w.start()
    assert w.request("hi") == ("RESULT", "HI")
    assert w.request("again", 2) == ("RESULT", "AGAIN")
    w.send(P.SHUTDOWN)
    assert w.wait() == 0
    log = w.stderr()
    for line in ("printed at import", "printed in load", "printed in predict: hi",
                 "written to sys.stdout", "written to fd 1", "printed by a child process"):
        assert line in log


def test_model_cannot_read_the_protocol_stream_from_stdin(spawn, tmp_path):
    w = spawn(model(tmp_path, """
        import sys

        def predict(x):
            return sys.stdin.read()
    """))
    w.start()
    assert w.request({}) == ("RESULT", "")  # fd 0 is /dev/null, not the request pipe
    assert w.request({}, 2) == ("RESULT", "")


# -- startup failures ------------------------------------------------------------------------------

def test_load_raises_sends_hello_then_fatal_load_and_exits_1(spawn):
    w = spawn(FIXTURES / "load_raises")
    kind, _, _ = w.read_json()
    assert kind == "HELLO"
    kind, rid, fatal = w.read_json()
    assert (kind, rid) == ("FATAL", 0)
    assert fatal["phase"] == "load" and fatal["error_type"] == "RuntimeError"
    assert fatal["message"] == "weights file artifacts/missing.bin not found"
    assert "load_raises/predict.py" in fatal["traceback"]
    assert w.read() is None
    assert w.wait() == 1


@pytest.mark.parametrize("source, error_type, fragment", [
    ("import not_a_real_module_xyz\n", "ModuleNotFoundError", "not_a_real_module_xyz"),
    ("def predict(x)\n    return x\n", "SyntaxError", "expected ':'"),
    ("raise SystemExit(5)\n", "SystemExit", "5"),
    ("def infer(x):\n    return x\n", "EntrypointNotFound", "neither a class Model nor a function predict"),
])
def test_import_failures_send_fatal_import_and_exit_1(spawn, tmp_path, source, error_type, fragment):
    w = spawn(model(tmp_path, source))
    kind, rid, fatal = w.read_json()
    assert (kind, rid) == ("FATAL", 0)
    assert fatal["phase"] == "import" and fatal["error_type"] == error_type
    assert fragment in fatal["message"] + fatal["traceback"]
    assert w.read() is None
    assert w.wait() == 1


def test_missing_predict_py_is_fatal_import(spawn, tmp_path):
    w = spawn(tmp_path)
    kind, _, fatal = w.read_json()
    assert kind == "FATAL" and fatal["phase"] == "import"
    assert fatal["error_type"] == "ModuleNotFoundError" and "predict" in fatal["message"]
    assert w.wait() == 1


# -- entrypoint rule -------------------------------------------------------------------------------

def test_entrypoint_override_module_and_attr(spawn, tmp_path):
    model(tmp_path, "raise RuntimeError('predict.py must not be imported')\n", **{"serve.py": """
        def handler(text: str, times: int = 2) -> str:
            return text * times
    """})
    w = spawn(tmp_path, entrypoint="serve:handler")
    hello = w.start()
    assert hello["entrypoint"] == "serve:handler"
    assert hello["input_schema"]["required"] == ["text"]
    assert w.request({"text": "ab", "times": 3}) == ("RESULT", "ababab")
    kind, err = w.request({"times": 3}, 2)
    assert kind == "ERROR" and err["detail"][0]["loc"] == ["body", "text"]


def test_default_prefers_class_model_over_function_predict(spawn, tmp_path):
    w = spawn(model(tmp_path, """
        def predict(x):
            return "function"

        class Model:
            def predict(self, x):
                return "class"
    """))
    assert w.start()["entrypoint"] == "predict:Model"
    assert w.request(1) == ("RESULT", "class")


def test_static_and_async_load_methods(spawn, tmp_path):
    w = spawn(model(tmp_path, """
        import asyncio

        class Model:
            async def load(self):
                await asyncio.sleep(0)
                self.k = 10

            async def predict(self, x: int) -> int:
                return x * self.k
    """))
    hello = w.start()
    assert hello["async"] is True and hello["input_schema"] == {"type": "integer"}
    assert w.request(3) == ("RESULT", 30)


def test_worker_path_has_model_dir_first_and_no_cwd_entry(spawn, tmp_path):
    w = spawn(model(tmp_path, """
        import os, sys

        def predict(x):
            return {"path0": sys.path[0], "empty": "" in sys.path, "cwd": os.getcwd(),
                    "argv": sys.argv, "worker_pkg": "mlbuild_worker" in sys.modules}
    """))
    w.start()
    kind, out = w.request({})
    assert out["path0"] == str(tmp_path) and out["cwd"] == str(tmp_path)
    assert out["empty"] is False and out["argv"] == ["-c"] and out["worker_pkg"] is True
