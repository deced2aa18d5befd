"""A browser may POST cross-site without a CORS preflight when the body is a Blob with an empty
type or an ArrayBuffer (fetch mode no-cors, navigator.sendBeacon): such a request carries NO
Content-Type. The predict doors accept a missing Content-Type only from script clients, which
send no Origin; a request without Content-Type that says it comes from a browser page (an
Origin header, or Sec-Fetch-Site other than same-origin/none) gets 415 and never reaches a
worker. The app runs in-process over a fake pool."""

from __future__ import annotations

import sys

import httpx
import pytest
from _fakes import EchoPool, call
from mlbuild_runtime.server import Settings, create_app


@pytest.fixture
def app(tmp_path):
    pool = EchoPool()
    settings = Settings(model_dir=tmp_path, python=sys.executable, predict_route="/v1/models/m:predict")
    return create_app(settings, pool), pool


def post(app, path: str, headers: dict[str, str]) -> httpx.Response:
    # httpx adds no Content-Type for raw `content=` bytes: exactly the browser's case
    return call(app, "POST", path, content=b'{"a": 1}', headers={"x-request-id": "xs-1", **headers})


PATHS = ["/predict", "/invocations", "/v1/models/m:predict"]

BROWSER_CROSS_SITE = [
    {"origin": "https://evil.example"},
    {"origin": "null"},  # sandboxed iframes, file: pages
    {"origin": "http://127.0.0.1:8080"},  # any Origin, even the server's own
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
    {"sec-fetch-site": "Cross-Site"},
    {"origin": "https://evil.example", "sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"},
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("headers", BROWSER_CROSS_SITE, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_no_content_type_from_a_browser_page_gets_415(app, path, headers):
    app, pool = app
    response = post(app, path, headers)
    assert response.status_code == 415
    assert response.json() == {
        "error": "unsupported media type: a request from a web page (Origin or Sec-Fetch-Site header) "
                 "must send Content-Type: application/json",
        "accepted": ["application/json", "application/*+json"], "request_id": "xs-1"}  # fmt: skip
    assert response.headers["connection"] == "close"
    assert pool.bodies == []  # never reached a worker


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("headers", [{}, {"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"},
                                     {"user-agent": "python-requests/2.32"}],
                         ids=["script", "same-origin", "typed-in", "requests"])  # fmt: skip
def test_no_content_type_from_a_script_or_the_same_origin_is_accepted(app, path, headers):
    app, pool = app
    response = post(app, path, headers)
    assert response.status_code == 200 and response.content == b'{"a": 1}'
    assert pool.bodies == [b'{"a": 1}']


def test_json_content_type_with_an_origin_is_accepted(app):
    # A cross-site request with Content-Type: application/json needs a CORS preflight, which
    # this server never grants: a browser never sends it. Same-origin pages and tools that set
    # an Origin header send JSON and are served.
    app, pool = app
    response = post(app, "/predict", {"origin": "https://ui.example", "content-type": "application/json"})
    assert response.status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_simple_content_type_with_an_origin_keeps_the_plain_415(app, content_type):
    app, pool = app
    response = post(app, "/predict", {"origin": "https://evil.example", "content-type": content_type})
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported media type: send the body as JSON (Content-Type: application/json)"
    assert pool.bodies == []
