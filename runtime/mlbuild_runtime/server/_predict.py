"""The /predict endpoint (and its aliases): raw body bytes to a worker, its bytes back.

It is a raw ASGI app, so the middleware can call it directly for ``POST /predict`` and skip
the router and FastAPI's request machinery (dependency solving, exit stacks: most of the
per-request cost of the framework). The same logic is registered as a FastAPI route
(Request -> Response) so /openapi.json and /docs describe it; both paths answer identically.

Content type: a body is accepted with ``Content-Type: application/json`` or any
``application/*+json`` (parameters such as ``charset=utf-8`` allowed), or with no Content-Type at
all (curl --data-binary, scripts); anything else gets 415 naming the accepted types. That refuses
the three types a browser may send cross-site without a CORS preflight
(``application/x-www-form-urlencoded``, ``multipart/form-data``, ``text/plain``), so a web page
cannot make a visitor's browser run predictions on a server it can reach.
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
        if type(body) is not bytes:  # a big answer arrives as a bytearray (_worker._read_big)
            body = bytes(body)
        return Response(body, status, media_type="application/json", headers={"connection": "close"} if close else None)

    async def answer(self, scope, receive) -> tuple[int, bytes, bool]:
        """(status, JSON body, close the connection?) for one request."""
        request_id = scope.get(REQUEST_ID_KEY, "")
        limit = self._limit
        declared, content_type = _framing_headers(scope)
        if declared is not None and declared > limit:
            return _too_large(limit, request_id)
        if content_type is not None and content_type != b"application/json" and not _is_json(content_type):
            return _unsupported_type(request_id)
        body = await _read_body(receive, limit)
        if body is None:
            return _too_large(limit, request_id)
        if body is _DISCONNECTED:
            # The client left (or the body timeout ended the connection with a 408) before the
            # body was complete: no worker time for a truncated body, and nobody to answer.
            # 499 is what nginx logs for it; the status only reaches the metrics and the log.
            return 499, b"", True
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


def _framing_headers(scope) -> tuple[int | None, bytes | None]:
    """(Content-Length, Content-Type) of the request, one pass over the headers."""
    declared = content_type = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                pass  # the HTTP parser rejects these; never trust it for the limit
        elif name == b"content-type":
            content_type = value
    return declared, content_type


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


ACCEPTED_TYPES = ["application/json", "application/*+json"]


def _unsupported_type(request_id: str) -> tuple[int, bytes, bool]:
    # Connection: close - the body was not read (as for 413).
    body = {"error": "unsupported media type: send the body as JSON (Content-Type: application/json)",
            "accepted": ACCEPTED_TYPES, "request_id": request_id}  # fmt: skip
    return 415, _dumps(body), True


_DISCONNECTED = object()  # the client left before the end of the body


async def _read_body(receive, limit: int) -> bytes | object | None:
    """The whole body, None as soon as more than ``limit`` bytes arrived (the rest is never
    read: a chunked upload is refused while it is still coming), or ``_DISCONNECTED`` when the
    client went away before the end of the body."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return _DISCONNECTED
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
            return _DISCONNECTED
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
    # "error" is set only by the worker itself, for its own limits, and is safe to show.
    public = error.get("error")
    message = f"prediction failed: {public}" if isinstance(public, str) else "prediction failed"
    body = {"error": message, "error_type": error.get("error_type"), "request_id": request_id}
    return 500, _dumps(body), False
