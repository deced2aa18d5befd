"""One pure-ASGI middleware for every HTTP request: request id, metrics, access log.

Pure ASGI (no BaseHTTPMiddleware): it adds two function calls and a header to the hot path,
nothing else - no extra task, no body copy.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from ._logging import request_id_var
from ._metrics import Metrics

__all__ = ["REQUEST_ID_KEY", "ObserveMiddleware"]

REQUEST_ID_KEY = "mlbuild.request_id"  # where handlers find the id in the ASGI scope
_HEADER = b"x-request-id"
# A client-supplied id is echoed and logged: keep it short and printable (no log injection).
_VALID_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")

access_log = logging.getLogger("mlbuild.access")
_ID_PREFIX = os.urandom(8).hex() + "-"
_id_counter = itertools.count(1)


class ObserveMiddleware:
    def __init__(
        self, app, metrics: Metrics, routes: dict[str, str], fast_post: dict | None = None,
        access_log: str = "errors",
    ) -> None:
        self.app = app
        # lowest status that gets an access line: "all" -> every one, "errors" -> >= 400
        self.log_from_status = {"all": 0, "errors": 400}.get(access_log, 1000)
        self.metrics = metrics
        self.routes = routes  # path -> route label; anything else is "other" (bounded labels)
        # path -> raw ASGI app for POST (the predict endpoints): skips the router entirely
        self.fast_post = fast_post or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw_id = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                raw_id = value
                break
        if raw_id is not None and _VALID_ID.match(raw_id):
            request_id = raw_id.decode("ascii")
            id_bytes = raw_id
        else:
            # A random per-process prefix and a counter: unique across restarts and replicas
            # without a getrandom() syscall per request.
            request_id = f"{_ID_PREFIX}{next(_id_counter):x}"
            id_bytes = request_id.encode("ascii")
        scope[REQUEST_ID_KEY] = request_id
        token = request_id_var.set(request_id)
        status = 500  # if the app raises before starting a response

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER, id_bytes)]
            await send(message)

        path = scope["path"]
        app = self.fast_post.get(path) if scope["method"] == "POST" else None
        metrics = self.metrics
        metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            await (app or self.app)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            metrics.in_flight.dec()
            metrics.observe(self.routes.get(path, "other"), status, elapsed)
            if status >= self.log_from_status and access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    path,
                    status,
                    extra={"fields": {"status": status, "duration_ms": round(elapsed * 1000, 3)}},
                )
            request_id_var.reset(token)
