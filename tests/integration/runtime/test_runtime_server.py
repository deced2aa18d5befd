"""The real server process over real workers and fixture models, over HTTP: every status code
the runtime promises, readiness, recovery, metrics, metadata, OpenAPI, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest
from _server_process import SLACK, alive, wait_until
from mlbuild_runtime.server._pool import backoff_delay
from prometheus_client.parser import text_string_to_metric_families


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def log_records(server) -> list[dict]:
    records = []
    for line in server.log().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # not ours (the log is JSON lines; a stray line would show up here)
    return records


def test_typed_model_200_and_422s(start_server):
    server = start_server("typed_inputs")
    with server.client() as client:
        ok = client.post("/predict", content=b'{"mode": "mean", "values": [1, 2, 3]}')
        assert ok.status_code == 200, ok.text
        assert ok.headers["content-type"] == "application/json"
        assert ok.json() == {"mode": "mean", "value": 2.0, "label": None}

        bad_json = client.post("/predict", content=b'{"mode": ')
        assert bad_json.status_code == 422
        assert bad_json.json()["detail"][0]["type"] == "json_invalid"

        wrong_type = client.post("/predict", json={"mode": "sum", "values": "abc"})
        assert wrong_type.status_code == 422
        assert wrong_type.json()["detail"][0]["loc"][-1] == "values"

        missing = client.post("/predict", json={"values": [1.0]})
        assert missing.status_code == 422
        assert any(d["loc"][-1] == "mode" for d in missing.json()["detail"])

        # SageMaker alias answers exactly like /predict
        alias = client.post("/invocations", json={"mode": "sum", "values": [1, 2]})
        assert alias.status_code == 200 and alias.json()["value"] == 3.0
        assert client.get("/ping").status_code == 200
        assert client.get("/health/live").json() == {"status": "alive"}


def test_metadata_and_openapi_carry_the_model_schema(start_server):
    server = start_server(
        "typed_inputs", "--model-name", "calc", "--model-version", "2.0", "--lock-digest", "sha256:" + "b" * 64
    )
    with server.client() as client:
        meta = client.get("/metadata").json()
        assert (meta["name"], meta["version"], meta["lock_digest"]) == ("calc", "2.0", "sha256:" + "b" * 64)
        assert meta["entrypoint"] == "predict:predict"
        assert meta["python"].count(".") == 2
        assert set(meta["input_schema"]["properties"]) == {"mode", "values", "weights", "options"}
        assert meta["output_schema"]["required"] == ["mode", "value", "label"]

        spec = client.get("/openapi.json").json()
        assert spec["info"]["title"] == "calc"
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/PredictInput"}
        schemas = spec["components"]["schemas"]
        assert schemas["PredictInput"]["properties"]["mode"]["enum"] == ["sum", "mean"]
        assert schemas["PredictOutput"]["required"] == ["mode", "value", "label"]
        assert "swagger" in client.get("/docs").text.lower()


def test_413_by_content_length_and_for_chunked_bodies(start_server):
    server = start_server("echo", "--max-body-size", "1KiB")
    with server.client() as client:
        assert client.post("/predict", json={"a": "x" * 900}).status_code == 200
        too_big = client.post("/predict", json={"a": "x" * 2000}, headers={"X-Request-ID": "big-1"})
        assert too_big.status_code == 413
        assert too_big.json() == {"error": "request body too large", "max_body_size": 1024, "request_id": "big-1"}

    # Content-Length of 100 MB and no body at all: the answer must come without reading it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000\r\n\r\n")  # fmt: skip
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")

    # Chunked: the server counts while reading and answers before the upload ends.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"200\r\n" + b"x" * 512 + b"\r\n")  # 1.5 KiB, never the final 0-chunk
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")

    with server.client() as client:  # and the server is fine afterwards
        assert client.post("/predict", json={"still": "up"}).json() == {"still": "up"}


def test_500_hides_the_traceback_and_names_the_request(start_server):
    server = start_server("predict_raises")
    with server.client() as client:
        response = client.post("/predict", json=-1, headers={"X-Request-ID": "req-500"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "req-500"
        assert response.json() == {"error": "prediction failed", "error_type": "ValueError", "request_id": "req-500"}
        assert "Traceback" not in response.text and "must be" not in response.text
        generated = client.post("/predict", json=-2)
        assert generated.json()["request_id"] == generated.headers["x-request-id"] != ""
        assert client.post("/predict", json=21).json() == 42  # the worker kept serving
    failed = [r for r in log_records(server) if r.get("msg") == "prediction failed"]
    assert failed[0]["request_id"] == "req-500"
    assert "Traceback" in failed[0]["traceback"] and "x must be >= 0, got -1" in failed[0]["error"]


@pytest.mark.parametrize(("model", "cause"), [("segfaults", "SIGSEGV"), ("exits_in_predict", "exited with code 3")])
def test_worker_death_gives_503_then_recovers(start_server, model, cause):
    server = start_server(model)
    trigger = {"crash": True} if model == "segfaults" else {"exit": True}
    with server.client() as client:
        died = client.post("/predict", json=trigger)
        assert died.status_code == 503
        assert died.json()["error"] == "worker died" and cause in died.json()["reason"]
        assert client.get("/health/live").status_code == 200
    server.wait_ready(30)
    with server.client() as client:
        assert client.post("/predict", json={}).json() == {"alive": True}
    assert metric(server, "mlbuild_worker_restarts_total", cause="crash") == 1


def test_timeout_504_and_the_worker_is_replaced(start_server):
    predict_timeout = 1
    server = start_server("sleeps", "--predict-timeout", str(predict_timeout))
    # The model sleeps 30 s: the client's deadline lets the 504 come from the timeout only.
    with server.client(timeout=predict_timeout + SLACK) as client:
        response = client.post("/predict", json=30)
        assert response.status_code == 504
        assert response.json()["error"] == "prediction timed out"
    server.wait_ready(30)
    with server.client() as client:
        assert client.post("/predict", json=0.01).json() == 0.01
    assert metric(server, "mlbuild_worker_restarts_total", cause="timeout") == 1
    assert any(r.get("msg") == "prediction timed out, killing the worker" for r in log_records(server))


def _restarts(server) -> list[dict]:
    return [r for r in log_records(server) if r.get("msg") == "restarting worker" and r.get("cause") == "load_failure"]


def _seconds(ts: str) -> float:
    from datetime import datetime

    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def test_load_failure_never_ready_and_says_why(start_server):
    server = start_server("load_raises", wait="live")
    reason = "load() raised RuntimeError: weights file artifacts/missing.bin not found"
    ready = server.wait_for(lambda r: r.status_code == 503 and r.json()["status"] == "failed", "/health/ready")
    assert ready.json()["reason"] == reason
    # Without a ready worker a request fails at once (a waiting one would wait out the 60 s
    # predict timeout, far past this client's deadline).
    with server.client(timeout=SLACK) as client:
        response = client.post("/predict", json=1)
        assert response.status_code == 503
        assert response.json()["reason"] == reason
    fatal = [r for r in log_records(server) if r.get("msg") == "model failed to load"]
    assert fatal and fatal[0]["error_type"] == "RuntimeError" and "Traceback" in fatal[0]["traceback"]


def test_load_failure_is_retried_with_a_growing_backoff_and_the_reason_kept(start_server):
    server = start_server("load_raises", wait="live")
    reason = "load() raised RuntimeError: weights file artifacts/missing.bin not found"
    wait_until(lambda: len(_restarts(server)) >= 3, what="three load failures")
    later = httpx.get(server.url + "/health/ready")
    assert later.status_code == 503 and later.json()["reason"] == reason  # retried; still failed, reason kept
    restarts = _restarts(server)[:3]
    # Not a hot loop: each retry waited its backoff (0, 0.5, 1 s), as the log's clock shows.
    assert [r["delay_s"] for r in restarts] == [backoff_delay(n) for n in (1, 2, 3)]
    for earlier, next_one in zip(restarts, restarts[1:]):
        waited = _seconds(next_one["ts"]) - _seconds(earlier["ts"])
        assert waited >= earlier["delay_s"] - 0.002, (earlier, next_one)  # the log's clock counts ms
    assert metric(server, "mlbuild_worker_restarts_total", cause="load_failure") >= 3


def test_metrics_count_requests(start_server):
    server = start_server("predict_raises")
    with server.client() as client:
        for value in (1, 2, 3, -1):
            client.post("/predict", json=value)
    assert metric(server, "mlbuild_requests_total", route="/predict", status="200") == 3
    assert metric(server, "mlbuild_requests_total", route="/predict", status="500") == 1
    assert metric(server, "mlbuild_request_duration_seconds_count", route="/predict") == 4
    assert metric(server, "mlbuild_requests_in_flight") == 1  # the scrape itself
    assert metric(server, "mlbuild_workers_ready") == 1


def _timed_posts(url: str, count: int, seconds: float) -> float:
    """``count`` concurrent requests, each making the model sleep ``seconds``: wall time."""
    results = []

    def call():
        results.append(httpx.post(url + "/predict", json=seconds, timeout=30).status_code)

    threads = [threading.Thread(target=call) for _ in range(count)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * count
    return time.monotonic() - started


def test_multiple_workers_serve_in_parallel(start_server):
    server = start_server("sleeps", "--workers", "3")
    assert httpx.get(server.url + "/health/ready").json()["workers"] == {"ready": 3, "total": 3}
    one = _timed_posts(server.url, 1, 1.0)  # the baseline, measured now on this machine
    three = _timed_posts(server.url, 3, 1.0)
    # In turn, three would take about 3 x the baseline; side by side, about 1 x.
    assert three < 2 * one, f"3 requests on 3 workers took {three:.2f} s, one alone {one:.2f} s: not parallel"


def test_model_prints_do_not_corrupt_the_protocol(start_server):
    server = start_server("prints_to_stdout")
    with server.client() as client:
        for _ in range(3):
            assert client.post("/predict", json="abc").json() == "ABC"
    relayed = [r["msg"] for r in log_records(server) if r.get("logger") == "mlbuild.worker"]
    assert "printed in predict: abc" in relayed


def test_vertex_environment(start_server):
    env = {"AIP_PREDICT_ROUTE": "/v1/endpoints/e/deployedModels/m:predict", "AIP_HEALTH_ROUTE": "/v1/health"}
    server = start_server("echo", env=env)
    with server.client() as client:
        assert client.post(env["AIP_PREDICT_ROUTE"], json={"instances": [1]}).json() == {"instances": [1]}
        assert client.get("/v1/health").status_code == 200


def test_sigterm_finishes_in_flight_then_exits_0(start_server):
    server = start_server("sleeps", "--grace-period", "20")
    worker_pids = [r["pid"] for r in log_records(server) if r.get("msg") == "worker ready"]
    result = {}

    def slow():
        result["response"] = httpx.post(server.url + "/predict", json=2.0, timeout=30)

    thread = threading.Thread(target=slow)
    thread.start()
    # SIGTERM once the slow request is in the server (the scrape itself is the other one)
    wait_until(lambda: metric(server, "mlbuild_requests_in_flight") >= 2, what="the request in flight")
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(25)
    thread.join()
    assert code == 0, server.log()
    assert result["response"].status_code == 200 and result["response"].json() == 2.0
    for pid in worker_pids:  # the workers were stopped, not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_processes_a_model_started_die_with_its_worker(start_server):
    server = start_server("spawns_child")
    with server.client() as client:
        first = client.post("/predict", json="pid").json()
        assert alive(first)
        assert client.post("/predict", json="exit").status_code == 503
        server.wait_ready()
        second = client.post("/predict", json="pid").json()
    wait_until(lambda: not alive(first), timeout=5, what="the crashed worker's helper process gone")
    assert second != first and alive(second)
    assert server.stop() == 0
    wait_until(lambda: not alive(second), timeout=5, what="the helper gone after the server's graceful stop")
