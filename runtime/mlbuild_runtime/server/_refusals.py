"""What the HTTP protocol (_http_limits) says and logs when a limit refuses a connection.

The answers are raw HTTP/1.1 bytes built once per server (a refusal must cost nothing to
produce during a flood); the log is one line per limit per second.
"""

from __future__ import annotations

import json
import logging
import time

__all__ = ["LIMIT_NAMES", "RefusalLog", "refusal_answers"]

log = logging.getLogger("mlbuild.http")

# Every limit the protocol enforces, by its setting's name (the {limit} label in /metrics).
LIMIT_NAMES = (
    "max_header_size", "max_header_count", "header_timeout", "body_timeout", "max_connections",
    "send_timeout",
)  # fmt: skip


class RefusalLog:
    """One warning line per limit per ``interval`` seconds; the refusals in between are
    counted and reported on the next line (``"… (and 812 more like it since the last
    line)"``). A flood must not turn into a disk-filling log: the 12-connection header flood
    of tests/integration/runtime/test_hostile_image.py is ~600 refusals a second. The exact
    count of every refusal is in /metrics (mlbuild_http_limit_rejections_total)."""

    def __init__(self, logger: logging.Logger = log, interval: float = 1.0, clock=None) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock or time.monotonic
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, limit: str, message: str, fields: dict) -> None:
        now = self._clock()
        last = self._last.get(limit)
        if last is not None and now - last < self._interval:
            self._suppressed[limit] = self._suppressed.get(limit, 0) + 1
            return
        self._last[limit] = now
        more = self._suppressed.pop(limit, 0)
        if more:
            fields = {**fields, "suppressed": more}
            message = f"{message} (and {more} more like it since the last line)"
        self._log.warning("request refused: %s", message, extra={"fields": fields})


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _response(status: int, message: str, extra_headers: bytes = b"") -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n"
    ).encode()
    return head + extra_headers + b"\r\n" + body


def refusal_answers(limits) -> dict[str, tuple[int, str, bytes]]:
    """refusal key -> (status, message, the whole answer; b"" when none is sent), for the
    :class:`~._http_limits.HttpLimits` ``limits``. A key is a limit name, optionally with a
    ``:variant`` suffix for a second message of the same limit."""
    size, count = limits.max_header_size, limits.max_header_count
    messages = {
        "max_header_size": (431, f"request headers larger than {size} bytes (MLBUILD_MAX_HEADER_SIZE)"),
        # chunk headers, chunk extensions and trailers: bytes the parser buffers that are no body
        "max_header_size:framing": (
            431, f"request chunk framing or trailers larger than {size} bytes (MLBUILD_MAX_HEADER_SIZE)"),
        "max_header_count": (431, f"more than {count} request header fields (MLBUILD_MAX_HEADER_COUNT)"),
        "header_timeout": (
            408, f"request headers not received within {limits.header_timeout:g} seconds (MLBUILD_HEADER_TIMEOUT)"),
        "body_timeout": (
            408, f"request body not received within {limits.body_timeout:g} seconds (MLBUILD_BODY_TIMEOUT)"),
        "max_connections": (
            503, f"too many open connections (limit {limits.max_connections}, MLBUILD_MAX_CONNECTIONS); retry"),
        # No answer: the client is not reading; the connection is cut (the log and metrics say why).
        "send_timeout": (
            0, f"response not read by the client for {limits.send_timeout:g} seconds (MLBUILD_SEND_TIMEOUT); "
               "connection cut"),
    }  # fmt: skip
    out = {}
    for key, (status, message) in messages.items():
        if status == 0:
            out[key] = (status, message, b"")
            continue
        extra = b"retry-after: 1\r\n" if status == 503 else b""
        out[key] = (status, message, _response(status, message, extra))
    return out
