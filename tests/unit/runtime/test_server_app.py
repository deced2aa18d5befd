"""create_app over a fake pool (no processes): status mapping, body limit, request ids,
health, metadata, OpenAPI and metrics, through httpx's in-process ASGI transport."""

from __future__ import annotations

import collections
import json
import logging
import sys

import pytest
from _fakes import call
from mlbuild_runtime.server import Health, HealthReport, Settings, create_app
from mlbuild_runtime.server._errors import NoWorkerReady, PredictTimeout, WorkerDied
from mlbuild_runtime.worker import protocol

HELLO = {
    "protocol": 1,
    "pid": 1,
    "python": "3.10.14",
    "entrypoint": "predict:Model",
    "input_schema": {
        "type": "object",
        "properties": {"point": {"$ref": "#/$defs/Point"}},
        "required": ["point"],
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}}},
    },
    "output_schema": {"type": "number"},
}


class FakePool:
    """Answers from ``script``: body -> (kind, payload) or an exception to raise."""

    def __init__(self, hello=HELLO, status=Health.READY, reason=None):
        self.size = 1
        self.hello = hello
        self.restarts = collections.Counter({"crash": 2})
        self.status, self.reason = status, reason
        self.bodies: list[bytes] = []

    async def start(self):
        pass

    async def stop(self, timeout):
        pass

    def health(self):
        ready = 1 if self.status is Health.READY else 0
        return HealthReport(self.status, self.reason, ready, 1)

    async def predict(self, body):
        self.bodies.append(body)
        answers = {
            b"422": (protocol.ERROR, json.dumps({"status": 422, "detail": [{"loc": ["x"], "msg": "field required", "type": "missing"}]}).encode()),
            b"500": (protocol.ERROR, json.dumps({"status": 500, "error_type": "ZeroDivisionError", "message": "secret", "traceback": "Traceback (most recent call last): secret"}).encode()),
        }  # fmt: skip
        errors = {b"died": WorkerDied("worker 0 died from SIGSEGV"), b"slow": PredictTimeout("took too long"),
                  b"none": NoWorkerReady("loading")}  # fmt: skip
        if body in errors:
            raise errors[body]
        return answers.get(body, (protocol.RESULT, body))


def _settings(tmp_path, **kw):
    return Settings(model_dir=tmp_path, python=sys.executable, model_name="m", model_version="1.2",
                    lock_digest="sha256:" + "a" * 64, **kw)  # fmt: skip


@pytest.fixture
def app(tmp_path):
    return create_app(_settings(tmp_path, max_body_size=100), FakePool())


def test_predict_passes_bytes_through_untouched(app):
    body = b'{"a":  1, "b": [1,2]}'  # odd spacing: proves the server does not re-serialize
    response = call(app, "POST", "/predict", content=body)
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["content-type"] == "application/json"
    first = response.headers["x-request-id"]
    second = call(app, "POST", "/predict", content=body).headers["x-request-id"]
    # generated ids: a per-process random prefix and a counter - unique, printable, short
    assert first != second and first.split("-")[0] == second.split("-")[0]
    assert len(first.split("-")[0]) == 16
    assert app.state.pool.bodies == [body, body]


def test_request_id_is_echoed(app):
    response = call(app, "POST", "/predict", content=b"1", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    bad = call(app, "POST", "/predict", content=b"1", headers={"X-Request-ID": "a b\tc"})
    assert bad.headers["x-request-id"] != "a b\tc"


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_worker_errors_map_to_statuses(app, path):
    invalid = call(app, "POST", path, content=b"422")
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["x"]
    failed = call(app, "POST", path, content=b"500", headers={"X-Request-ID": "r1"})
    assert failed.status_code == 500
    assert failed.json() == {"error": "prediction failed", "error_type": "ZeroDivisionError", "request_id": "r1"}
    assert "secret" not in failed.text
    assert call(app, "POST", path, content=b"died").status_code == 503
    assert call(app, "POST", path, content=b"none").status_code == 503
    timed_out = call(app, "POST", path, content=b"slow")
    assert timed_out.status_code == 504
    assert timed_out.json()["error"] == "prediction timed out"


def test_body_limit_by_content_length_and_by_counting(app):
    assert call(app, "POST", "/predict", content=b"x" * 100).status_code == 200
    too_big = call(app, "POST", "/predict", content=b"x" * 101)
    assert too_big.status_code == 413
    assert too_big.json()["max_body_size"] == 100
    assert too_big.headers["connection"] == "close"

    sent = []

    async def chunks():  # no Content-Length: the server must count
        for _ in range(1000):
            sent.append(1)
            yield b"y" * 30

    assert call(app, "POST", "/predict", content=chunks()).status_code == 413
    assert app.state.pool.bodies == [b"x" * 100]  # nothing too big reached the pool


def test_chunked_body_under_the_limit_is_joined(app):
    async def chunks():
        for part in (b'{"a":', b" 1", b"}"):
            yield part

    response = call(app, "POST", "/predict", content=chunks())
    assert response.status_code == 200 and response.content == b'{"a": 1}'


def test_readiness_follows_the_pool(tmp_path):
    pool = FakePool(status=Health.FAILED, reason="load() raised ValueError: no weights")
    app = create_app(_settings(tmp_path), pool)
    assert call(app, "GET", "/health/live").status_code == 200
    for path in ("/health/ready", "/ping"):
        response = call(app, "GET", path)
        assert response.status_code == 503
        assert response.json()["status"] == "failed"
        assert response.json()["reason"] == "load() raised ValueError: no weights"
    pool.status, pool.reason = Health.READY, None
    assert call(app, "GET", "/health/ready").json()["status"] == "ready"
    assert call(app, "GET", "/ping").status_code == 200


def test_vertex_routes(tmp_path):
    settings = _settings(tmp_path, predict_route="/v1/models/m:predict", health_route="/v1/models/m")
    app = create_app(settings, FakePool())
    assert call(app, "POST", "/v1/models/m:predict", content=b"[1]").content == b"[1]"
    assert call(app, "GET", "/v1/models/m").status_code == 200


def test_metadata(app):
    data = call(app, "GET", "/metadata").json()
    assert data["name"] == "m" and data["version"] == "1.2"
    assert data["python"] == "3.10.14"
    assert data["entrypoint"] == "predict:Model"
    assert data["lock_digest"] == "sha256:" + "a" * 64
    assert data["input_schema"] == HELLO["input_schema"]
    assert data["output_schema"] == {"type": "number"}


def test_openapi_carries_the_model_schema_with_refs_resolvable(app):
    spec = call(app, "GET", "/openapi.json").json()
    op = spec["paths"]["/predict"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictInput"}
    schemas = spec["components"]["schemas"]
    assert schemas["PredictInput"]["properties"]["point"] == {"$ref": "#/components/schemas/Point"}
    assert schemas["Point"]["properties"]["x"] == {"type": "number"}
    assert schemas["PredictOutput"] == {"type": "number"}
    assert "/invocations" not in spec["paths"]
    assert call(app, "GET", "/docs").status_code == 200


def test_openapi_before_hello_is_not_cached(tmp_path):
    pool = FakePool(hello=None)
    app = create_app(_settings(tmp_path), pool)
    assert "PredictInput" not in json.dumps(call(app, "GET", "/openapi.json").json())
    pool.hello = HELLO
    assert "PredictInput" in call(app, "GET", "/openapi.json").json()["components"]["schemas"]


def test_metrics_count_requests_by_route_and_status(app):
    for body in (b"1", b"2", b"500"):
        call(app, "POST", "/predict", content=body)
    text = call(app, "GET", "/metrics").text
    assert 'mlbuild_requests_total{route="/predict",status="200"} 2.0' in text
    assert 'mlbuild_requests_total{route="/predict",status="500"} 1.0' in text
    assert 'mlbuild_request_duration_seconds_count{route="/predict"} 3.0' in text
    assert "mlbuild_requests_in_flight 1.0" in text  # the /metrics request itself
    assert 'mlbuild_worker_restarts_total{cause="crash"} 2.0' in text
    assert "mlbuild_workers_ready 1.0" in text


def test_router_route_answers_like_the_fast_path(app, tmp_path):
    # The middleware sends POST /predict straight to the raw handler; the FastAPI route (used
    # for OpenAPI, and by anything that reaches the router) must answer the same.
    routed_app = create_app(_settings(tmp_path, max_body_size=100), FakePool())
    (observe,) = [m for m in routed_app.user_middleware if m.cls.__name__ == "ObserveMiddleware"]
    observe.kwargs["fast_post"] = {}  # before the first call builds the middleware stack
    for body, status in ((b"[1]", 200), (b"422", 422), (b"500", 500), (b"died", 503), (b"x" * 101, 413)):
        fast = call(app, "POST", "/predict", content=body)
        routed = call(routed_app, "POST", "/predict", content=body, headers={"X-Request-ID": "r"})
        assert fast.status_code == routed.status_code == status
        assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
        if status != 200:
            assert fast.json()["error"] == routed.json()["error"]
            assert routed.json()["request_id"] == "r"


@pytest.mark.parametrize(
    ("access_log", "logged_statuses"),
    [("errors", [422]), ("all", [200, 422, 200]), ("off", [])],
)
def test_access_log_policy(tmp_path, caplog, access_log, logged_statuses):
    """Default "errors": a line per answer >= 400 only; "all": every request; "off": none."""
    app = create_app(_settings(tmp_path, access_log=access_log), FakePool())
    with caplog.at_level(logging.INFO, logger="mlbuild.access"):
        assert call(app, "POST", "/predict", content=b"1").status_code == 200
        assert call(app, "POST", "/predict", content=b"422").status_code == 422
        assert call(app, "GET", "/health/live").status_code == 200
    access = [r for r in caplog.records if r.name == "mlbuild.access"]
    assert [r.fields["status"] for r in access] == logged_statuses
