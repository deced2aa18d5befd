"""The /predict endpoint (and its aliases): raw body bytes to a worker, its bytes back.

It is a raw ASGI app, so the middleware can call it directly for ``POST /predict`` and skip
the router and FastAPI's request machinery (dependency solving, exit stacks: most of the
per-request cost of the framework). The same logic is registered as a FastAPI route
(Request -> Response) so /openapi.json and /docs describe it; both paths answer identically.

Content type: a body is accepted with ``Content-Type: application/json`` or any
``application/*+json`` (parameters such as ``charset=utf-8`` allowed); anything else gets 415
naming the accepted types. That refuses the three types a browser may send cross-site without a
CORS preflight (``application/x-www-form-urlencoded``, ``multipart/form-data``, ``text/plain``),
so a web page cannot make a visitor's browser run predictions on a server it can reach. (curl's
``-d``/``--data-binary`` send ``application/x-www-form-urlencoded`` and get 415 too: add
``-H 'Content-Type: application/json'``.)

No Content-Type at all is accepted from scripts (Python ``requests`` with ``data=bytes``,
``httpx`` with ``content=``), but not from a browser page: a cross-site ``fetch`` in no-cors mode
or ``navigator.sendBeacon`` with a Blob of empty type or an ArrayBuffer sends no Content-Type
and no preflight. Such a request carries an ``Origin`` header, or ``Sec-Fetch-Site`` other
than ``same-origin``/``none``; without a Content-Type either one gets 415. Both headers are
seen in the one pass over the headers that finds Content-Length and Content-Type.

Memory: each body's bytes are taken from the server-wide :class:`~._budget.BodyBudget` before
the body is read (the whole Content-Length, or chunk by chunk without one) and given back when
the request is done; past the budget the answer is 503 with ``Retry-After: 1``.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import Response

from ..worker import protocol
from ._budget import BodyBudget
from ._errors import PoolError
from ._middleware import REQUEST_ID_KEY

__all__ = ["DEFAULT_BODY_BUDGET", "PredictHandler"]

log = logging.getLogger("mlbuild.runtime")

_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_RETRY = (b"retry-after", b"1")

# What answer() says about the connection (third item): keep it, close it, or close it and ask
# the client to retry (503 over the body budget).
KEEP, CLOSE, RETRY = 0, 1, 2
_EXTRA_HEADERS = {KEEP: (), CLOSE: (_CLOSE,), RETRY: (_CLOSE, _RETRY)}

DEFAULT_BODY_BUDGET = 64 << 20  # Settings.max_body_bytes_in_flight's default


class PredictHandler:
    """``budget``: the server-wide body budget (default: one of DEFAULT_BODY_BUDGET bytes, or
    ``max_body_size`` if larger, for this handler alone). create_app passes the server's, sized by
    MLBUILD_MAX_BODY_BYTES_IN_FLIGHT."""

    def __init__(self, pool, max_body_size: int, budget: BodyBudget | None = None) -> None:
        self._pool = pool
        self._limit = max_body_size
        self.budget = budget if budget is not None else BodyBudget(max(DEFAULT_BODY_BUDGET, max_body_size))

    async def __call__(self, scope, receive, send) -> None:
        status, body, connection = await self.answer(scope, receive)
        headers = [_JSON, (b"content-length", b"%d" % len(body))]
        if connection:
            headers.extend(_EXTRA_HEADERS[connection])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def endpoint(self, request: Request) -> Response:
        status, body, connection = await self.answer(request.scope, request.receive)
        if type(body) is not bytes:  # a big answer arrives as a bytearray (_worker._read_big)
            body = bytes(body)
        headers = {k.decode(): v.decode() for k, v in _EXTRA_HEADERS[connection]} if connection else None
        return Response(body, status, media_type="application/json", headers=headers)

    async def answer(self, scope, receive) -> tuple[int, bytes, int]:
        """(status, JSON body, KEEP | CLOSE | RETRY) for one request."""
        request_id = scope.get(REQUEST_ID_KEY, "")
        limit = self._limit
        declared, content_type, from_page = _framing_headers(scope)
        if declared is not None and declared > limit:
            return _too_large(limit, request_id)
        if content_type is None:
            if from_page:
                return _unsupported_type(request_id, _FROM_PAGE)
        elif content_type != b"application/json" and not _is_json(content_type):
            return _unsupported_type(request_id, _NOT_JSON)
        budget = self.budget
        if declared is not None:
            # The whole declared body at once, before any of it is read (the parser never
            # delivers more than Content-Length); given back whatever happens next.
            if not budget.take(declared):
                return _over_budget(request_id)
            try:
                return await self._read_and_predict(receive, limit, request_id, None)
            finally:
                budget.give_back(declared)
        held = _Held(budget)  # no Content-Length (chunked): counted as it arrives
        try:
            return await self._read_and_predict(receive, limit, request_id, held)
        finally:
            budget.give_back(held.size)

    async def _read_and_predict(self, receive, limit: int, request_id: str, held) -> tuple[int, bytes, int]:
        body = await _read_body(receive, limit, held)
        if body is None:
            return _too_large(limit, request_id)
        if body is _OVER_BUDGET:
            return _over_budget(request_id)
        if body is _DISCONNECTED:
            # The client left (or the body timeout ended the connection with a 408) before the
            # body was complete: no worker time for a truncated body, and nobody to answer.
            # 499 is what nginx logs for it; the status only reaches the metrics and the log.
            return 499, b"", CLOSE
        try:
            kind, payload = await self._pool.predict(body)
        except PoolError as exc:
            log.warning("prediction not served", extra={"fields": {"status": exc.status, "reason": str(exc)}})
            return exc.status, _dumps({"error": exc.error, "reason": str(exc), "request_id": request_id}), KEEP
        except Exception:  # a server bug: answer 500 JSON, keep serving, log the traceback
            log.exception("internal error while predicting")
            return 500, _dumps({"error": "internal error", "request_id": request_id}), KEEP
        if kind == protocol.RESULT:
            return 200, payload, KEEP
        return _worker_error(payload, request_id)


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _framing_headers(scope) -> tuple[int | None, bytes | None, bool]:
    """(Content-Length, Content-Type, sent by a browser page?) of the request, one pass over
    the headers. A page is known by ``Origin`` (any value, ``null`` included) or by
    ``Sec-Fetch-Site`` other than ``same-origin`` / ``none`` (``none``: typed in, a bookmark)."""
    declared = content_type = None
    from_page = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                pass  # the HTTP parser rejects these; never trust it for the limit
        elif name == b"content-type":
            content_type = value
        elif name == b"origin":
            from_page = True
        elif name == b"sec-fetch-site" and value.lower() not in _OWN_SITE:
            from_page = True
    return declared, content_type, from_page


_OWN_SITE = (b"same-origin", b"none")


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


ACCEPTED_TYPES = ["application/json", "application/*+json"]


_NOT_JSON = "unsupported media type: send the body as JSON (Content-Type: application/json)"
_FROM_PAGE = ("unsupported media type: a request from a web page (Origin or Sec-Fetch-Site header) "
              "must send Content-Type: application/json")  # fmt: skip


def _unsupported_type(request_id: str, why: str) -> tuple[int, bytes, int]:
    # Connection: close - the body was not read (as for 413).
    body = {"error": why, "accepted": ACCEPTED_TYPES, "request_id": request_id}
    return 415, _dumps(body), CLOSE


def _over_budget(request_id: str) -> tuple[int, bytes, int]:
    # Connection: close - the body is not read (as for 413); Retry-After: the budget frees up
    # as the requests holding it finish.
    body = {"error": "server busy: request bodies being received fill the memory budget "
                     "(MLBUILD_MAX_BODY_BYTES_IN_FLIGHT); retry", "request_id": request_id}  # fmt: skip
    return 503, _dumps(body), RETRY


class _Held:
    """Bytes taken from the budget for a body of unknown length, chunk by chunk."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def take(self, size: int) -> bool:
        if not self.budget.take(size):
            return False
        self.size += size
        return True


_DISCONNECTED = object()  # the client left before the end of the body
_OVER_BUDGET = object()  # the server-wide body budget ran out while a chunked body arrived


async def _read_body(receive, limit: int, held: _Held | None = None) -> bytes | object | None:
    """The whole body, None as soon as more than ``limit`` bytes arrived (the rest is never
    read: a chunked upload is refused while it is still coming), ``_DISCONNECTED`` when the
    client went away before the end of the body, ``_OVER_BUDGET`` when ``held`` (a body
    without Content-Length) could not take the bytes that arrived from the budget."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return _DISCONNECTED
    body = message.get("body", b"")
    if held is not None and not held.take(len(body)):
        return _OVER_BUDGET
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
        if held is not None and not held.take(len(chunk)):
            return _OVER_BUDGET
        chunks.append(chunk)
        total += len(chunk)
        if not message.get("more_body", False):
            return None if total > limit else b"".join(chunks)


def _too_large(limit: int, request_id: str) -> tuple[int, bytes, int]:
    # Connection: close - the unread rest of the body must not be parsed as the next request,
    # and the server should not spend time draining it.
    return 413, _dumps({"error": "request body too large", "max_body_size": limit, "request_id": request_id}), CLOSE


def _worker_error(payload: bytes, request_id: str) -> tuple[int, bytes, int]:
    try:
        error = json.loads(payload)
        status = int(error.get("status", 500))
    except (ValueError, TypeError, AttributeError):
        error, status = {}, 500
    if status == 422:
        detail = error.get("detail", [])
        return 422, _dumps({"error": "invalid input", "detail": detail, "request_id": request_id}), KEEP
    log.error(
        "prediction failed",
        extra={"fields": {"error_type": error.get("error_type"), "error": error.get("message"),
                          "traceback": error.get("traceback")}},
    )  # fmt: skip
    # "error" is set only by the worker itself, for its own limits, and is safe to show.
    public = error.get("error")
    message = f"prediction failed: {public}" if isinstance(public, str) else "prediction failed"
    body = {"error": message, "error_type": error.get("error_type"), "request_id": request_id}
    return 500, _dumps(body), KEEP
