"""Hostile request bodies and content types (issue 9, "Hardening"): nesting depth, overflowing
numbers, a BOM, junk bytes, SystemExit/KeyboardInterrupt from predict() - each answered with a
4xx/500 by a worker that keeps serving - and JSON-only content types on every predict door.

Worker tests talk frames to the real worker process (worker_command) over pipes; content-type
tests use the app in-process over a fake pool, and one test runs the real server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
from _fakes import EchoPool, call
from _server_process import ServerProcess
from mlbuild_runtime.server import Settings, create_app
from mlbuild_runtime.worker import protocol as P
from mlbuild_runtime.worker.jsonscan import deeper_than, may_overflow
from mlbuild_runtime.worker.launch import worker_command, worker_env

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"


# -- the scans, as functions -----------------------------------------------------------------------

def _nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("body, deep", [
    (_nested_arrays(100), False),
    (_nested_arrays(101), True),
    (_nested_objects(100), False),
    (_nested_objects(101), True),
    (b"[" + b",".join([b'[{"a": [1, {"b": []}]}, 2]'] * 1000) + b"]", False),  # many brackets, shallow
    (b"[" * 5000, True),  # unbalanced
    (b'["' + b"[" * 500 + b'"]', False),  # brackets inside a string are not structure
    (b'["\\"' + b"[" * 500 + b'"]', False),  # an escaped quote does not end the string
    (b'["\\\\"' + b"," + b"[" * 500, True),  # an escaped backslash does not escape the quote
    (b'["\\\\\\"' + b"[" * 500 + b'"]', False),  # \\ then \" : still inside the string
    (b'["\\n"' + b"," + b"[" * 500, True),  # \n is not \" even once the letters are gone
    (b'{"k[": ' * 150 + b"1" + b"}" * 150, True),
    ((b"[" * 100 + b"]" * 100) * 100, False),  # deep but within the limit, many times over
    (b'[' * 60 + b'"' + b'[' * 60 + b'"' + b']' * 60, False),
], ids=lambda v: repr(v)[:30] if isinstance(v, bytes) else str(v))
def test_depth_scan(body, deep):
    assert deeper_than(body, 100) is deep
    if not deep:  # a decoder really stays within the limit (it may still find other errors)
        try:
            json.loads(body)
        except json.JSONDecodeError:
            pass


def test_depth_scan_is_exact_at_every_limit():
    for limit in (1, 2, 7, 8, 9, 50, 400):
        for depth in (limit - 1, limit, limit + 1):
            opening = b"".join(b"[" if i % 2 == 0 else b'{"x":' for i in range(depth))
            closing = b"".join(b"]" if i % 2 == 0 else b"}" for i in reversed(range(depth)))
            body = b"[1, " + opening + b"2" + closing + b"]"  # depth + 1 levels
            json.loads(body)
            assert deeper_than(body, limit) is (depth + 1 > limit), (limit, depth)


def test_overflow_gate():
    for body in (b"1e999", b"[-1E+400]", b'{"a": 1' + b"0" * 400 + b'.0}', b"[1.5e308]"):
        assert may_overflow(body)
    for body in (b"[1e-05, 1e30, 3.14]", b'{"a": "text with e"}', b"12"):
        assert not may_overflow(body)


# -- the real worker process ---------------------------------------------------------------------

class Worker:
    def __init__(self, model: str, **env: str) -> None:
        self.log = tempfile.TemporaryFile()
        full_env = {**worker_env(os.environ, str(FIXTURES / model)), **env}
        self.proc = subprocess.Popen(worker_command(sys.executable), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=full_env)  # fmt: skip
        self.watchdog = threading.Timer(60, self.proc.kill)
        self.watchdog.start()
        for expected in ("HELLO", "READY"):
            kind, _, payload = self.read()
            assert kind == expected, (kind, payload, self.stderr())

    def read(self):
        frame = P.read_frame(self.proc.stdout)
        assert frame is not None, f"the worker died; its log:\n{self.stderr()}"
        kind, request_id, payload = frame
        return P.KIND_NAMES[kind], request_id, payload

    def request(self, body: bytes, request_id: int = 7):
        self.proc.stdin.write(P.encode(P.REQUEST, request_id, body))
        self.proc.stdin.flush()
        kind, rid, payload = self.read()
        assert rid == request_id
        return kind, json.loads(payload)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def close(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def worker():
    started: list[Worker] = []

    def start(model: str = "echo", **env: str) -> Worker:
        started.append(Worker(model, **env))
        return started[-1]

    yield start
    for w in started:
        w.close()


def _assert_serves_on(w: Worker) -> None:
    assert w.request(b'{"still": "alive"}', request_id=99) == ("RESULT", {"still": "alive"})


@pytest.mark.parametrize("body", [_nested_arrays(1000), _nested_objects(600), _nested_arrays(100_000),
                                  _nested_objects(50_000), b"[" * 100_000])
def test_deep_nesting_is_422_naming_the_limit_and_the_worker_lives(worker, body):
    w = worker()
    kind, error = w.request(body)
    assert kind == "ERROR" and error["status"] == 422
    assert error["detail"] == [{"loc": ["body"], "type": "json_too_deep",
                                "msg": "nesting deeper than 100 levels (MLBUILD_MAX_JSON_DEPTH)"}]  # fmt: skip
    _assert_serves_on(w)


def test_depth_limit_comes_from_the_environment(worker):
    w = worker(MLBUILD_MAX_JSON_DEPTH="5")
    assert w.request(b'{"a": [[[[1]]]]}') == ("RESULT", {"a": [[[[1]]]]})  # 5 levels
    kind, error = w.request(b'{"a": [[[[[1]]]]]}')  # 6
    assert kind == "ERROR" and "deeper than 5 levels" in error["detail"][0]["msg"]


@pytest.mark.parametrize("body", [b'{"a": 1e999}', b'{"a": -1E+400}', b'{"a": 1' + b"0" * 400 + b".5}",
                                  b'{"a": NaN}', b'{"a": -Infinity}'])  # fmt: skip
def test_numbers_that_are_not_finite_are_422(worker, body):
    w = worker()
    kind, error = w.request(body)
    assert kind == "ERROR" and error["status"] == 422, error
    assert error["detail"][0]["type"] == "json_invalid"
    assert error["detail"][0]["msg"].startswith("Invalid JSON:")
    assert w.request(b'{"a": 1e300, "b": 1e-999}') == ("RESULT", {"a": 1e300, "b": 0.0})


def test_bom_is_422_saying_so(worker):
    w = worker()
    kind, error = w.request(b'\xef\xbb\xbf{"a": 1}')
    assert kind == "ERROR" and error["status"] == 422
    assert error["detail"][0]["msg"] == "body starts with a byte order mark (BOM); send JSON without it"
    _assert_serves_on(w)


@pytest.mark.parametrize("body, error_type", [
    (b"\xff\xfe", "json_invalid"),  # not UTF-8
    (b'{"a": "\xc3"}', "json_invalid"),  # a cut UTF-8 sequence
    (b"", "json_invalid"),
    (b"{", "json_invalid"),
    (b'{"a": 1}}', "json_invalid"),
    (b"1" * 5000, "json_invalid"),  # past sys.get_int_max_str_digits() (Python >= 3.11)
    (b'"\\ud800"', "dict_type"),  # valid JSON (a lone surrogate), but echo takes an object
    (b"\x00", "json_invalid"),
    (b'{"a": "\\u00"}', "json_invalid"),
    (b"[" * 50 + b"]" * 49, "json_invalid"),  # unbalanced, within the depth limit
], ids=lambda v: repr(v)[:30])
def test_junk_bodies_are_422_of_their_type_and_never_end_the_worker(worker, body, error_type):
    w = worker()
    kind, answer = w.request(body)
    assert kind == "ERROR" and answer["status"] == 422, answer
    assert [d["type"] for d in answer["detail"]] == [error_type], answer
    _assert_serves_on(w)


def test_a_deep_body_within_the_limit_is_answered(worker):
    w = worker()
    body = b'{"a": ' + b"[" * 98 + b"1" + b"]" * 98 + b"}"  # 99 levels
    assert w.request(body) == ("RESULT", json.loads(body))


def test_a_body_full_of_wrong_values_gets_a_bounded_error_list(worker):
    w = worker("typed_inputs")
    body = json.dumps({"mode": "sum", "values": ["not a number"] * 200_000}).encode()
    kind, error = w.request(body)
    assert kind == "ERROR" and error["status"] == 422
    assert len(error["detail"]) == 101
    assert error["detail"][-1] == {"loc": ["body"], "msg": "199900 more errors not shown", "type": "too_many_errors"}
    assert w.request(b'{"mode": "sum", "values": [1, 2]}')[0] == "RESULT"


@pytest.mark.parametrize("value, error_type", [("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt"),
                                               ("generator_exit", "GeneratorExit")])  # fmt: skip
def test_predict_raising_systemexit_or_keyboardinterrupt_is_500_and_the_worker_serves_on(worker, value, error_type):
    w = worker("raises_systemexit")
    kind, error = w.request(json.dumps(value).encode())
    assert kind == "ERROR" and error["status"] == 500 and error["error_type"] == error_type
    assert w.request(b'"fine"') == ("RESULT", "fine")


# -- content types, in-process over a fake pool --------------------------------------------------

@pytest.fixture
def echo_app(tmp_path):
    pool = EchoPool()
    settings = Settings(model_dir=tmp_path, python=sys.executable, predict_route="/v1/models/m:predict")
    return create_app(settings, pool), pool


PATHS = ["/predict", "/invocations", "/v1/models/m:predict"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "text/plain", "text/plain;charset=UTF-8", "application/xml",
                                          "application/jsonx", "text/json", ""])  # fmt: skip
def test_non_json_content_types_get_415(echo_app, path, content_type):
    app, pool = echo_app
    response = call(app, "POST", path, content=b'{"a": 1}',
                     headers={"content-type": content_type, "x-request-id": "ct-1"})  # fmt: skip
    assert response.status_code == 415
    assert response.json() == {
        "error": "unsupported media type: send the body as JSON (Content-Type: application/json)",
        "accepted": ["application/json", "application/*+json"], "request_id": "ct-1"}  # fmt: skip
    assert response.headers["connection"] == "close"
    assert pool.bodies == []  # never reached a worker


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8", "application/vnd.api+json",
                                          "application/merge-patch+json ; q=1", None])  # fmt: skip
def test_json_content_types_and_none_are_accepted(echo_app, path, content_type):
    app, pool = echo_app
    headers = {} if content_type is None else {"content-type": content_type}
    response = call(app, "POST", path, content=b'{"a": 1}', headers=headers)
    assert response.status_code == 200 and response.content == b'{"a": 1}'


def test_openapi_documents_415(echo_app):
    app, _ = echo_app
    responses = call(app, "GET", "/openapi.json").json()["paths"]["/predict"]["post"]["responses"]
    assert "415" in responses


# -- the real server over HTTP ---------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    with ServerProcess(FIXTURES / "echo", tmp_path) as srv:
        yield srv.url, srv.log_path


def test_real_server_answers_hostile_bodies_without_losing_its_worker(server):
    url, log_path = server
    with httpx.Client(base_url=url, timeout=30) as client:
        deep = client.post("/predict", content=_nested_arrays(1000), headers={"content-type": "application/json"})
        assert deep.status_code == 422, deep.text
        assert deep.json()["detail"][0]["msg"] == "nesting deeper than 100 levels (MLBUILD_MAX_JSON_DEPTH)"
        assert client.post("/predict", content=b'{"a": 1e999}').status_code == 422
        assert client.post("/predict", content=b'\xef\xbb\xbf{}').status_code == 422
        form = client.post("/predict", data={"a": "1"})  # what a cross-site HTML form sends
        assert form.status_code == 415
        assert client.post("/invocations", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
        assert client.post("/predict", json={"ok": True}).json() == {"ok": True}
        metrics = client.get("/metrics").text
    assert "restarting worker" not in log_path.read_text()
    restarts = [line for line in metrics.splitlines() if line.startswith("mlbuild_worker_restarts_total{")]
    assert restarts and all(line.endswith(" 0.0") for line in restarts), restarts
