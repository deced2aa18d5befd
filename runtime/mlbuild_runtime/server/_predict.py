"""The /predict endpoint (and its aliases): raw body bytes to a worker, its bytes back.

It is a raw ASGI app, so the middleware can call it directly for ``POST /predict`` and skip
the router and FastAPI's request machinery (dependency solving, exit stacks: most of the
per-request cost of the framework). The same logic is registered as a FastAPI route
(Request -> Response) so /openapi.json and /docs describe it; both paths answer identically.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import Response

from ..worker import protocol
from ._errors import PoolError
from ._middleware import REQUEST_ID_KEY

__all__ = ["PredictHandler"]

log = logging.getLogger("mlbuild.runtime")

_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


class PredictHandler:
    def __init__(self, pool, max_body_size: int) -> None:
        self._pool = pool
        self._limit = max_body_size

    async def __call__(self, scope, receive, send) -> None:
        status, body, close = await self.answer(scope, receive)
        headers = [_JSON, (b"content-length", b"%d" % len(body))]
        if close:
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def endpoint(self, request: Request) -> Response:
        status, body, close = await self.answer(request.scope, request.receive)
        return Response(body, status, media_type="application/json", headers={"connection": "close"} if close else None)

    async def answer(self, scope, receive) -> tuple[int, bytes, bool]:
        """(status, JSON body, close the connection?) for one request."""
        request_id = scope.get(REQUEST_ID_KEY, "")
        limit = self._limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return _too_large(limit, request_id)
        body = await _read_body(receive, limit)
        if body is None:
            return _too_large(limit, request_id)
        try:
            kind, payload = await self._pool.predict(body)
        except PoolError as exc:
            log.warning("prediction not served", extra={"fields": {"status": exc.status, "reason": str(exc)}})
            return exc.status, _dumps({"error": exc.error, "reason": str(exc), "request_id": request_id}), False
        except Exception:  # a server bug: answer 500 JSON, keep serving, log the traceback
            log.exception("internal error while predicting")
            return 500, _dumps({"error": "internal error", "request_id": request_id}), False
        if kind == protocol.RESULT:
            return 200, payload, False
        return _worker_error(payload, request_id)


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _content_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser rejects these; never trust it for the limit
    return None


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as more than ``limit`` bytes arrived (the rest is never
    read: a chunked upload is refused while it is still coming)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: one message
        return None if len(body) > limit else body
    chunks = [body]
    total = len(body)
    while True:
        if total > limit:
            return None
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)  # the worker will call it truncated JSON; no one listens
        chunk = message.get("body", b"")
        chunks.append(chunk)
        total += len(chunk)
        if not message.get("more_body", False):
            return None if total > limit else b"".join(chunks)


def _too_large(limit: int, request_id: str) -> tuple[int, bytes, bool]:
    # Connection: close - the unread rest of the body must not be parsed as the next request,
    # and the server should not spend time draining it.
    return 413, _dumps({"error": "request body too large", "max_body_size": limit, "request_id": request_id}), True


def _worker_error(payload: bytes, request_id: str) -> tuple[int, bytes, bool]:
    try:
        error = json.loads(payload)
        status = int(error.get("status", 500))
    except (ValueError, TypeError, AttributeError):
        error, status = {}, 500
    if status == 422:
        detail = error.get("detail", [])
        return 422, _dumps({"error": "invalid input", "detail": detail, "request_id": request_id}), False
    log.error(
        "prediction failed",
        extra={"fields": {"error_type": error.get("error_type"), "error": error.get("message"),
                          "traceback": error.get("traceback")}},
    )  # fmt: skip
    body = {"error": "prediction failed", "error_type": error.get("error_type"), "request_id": request_id}
    return 500, _dumps(body), False
