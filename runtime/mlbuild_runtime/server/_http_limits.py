"""HTTP/1.1 limits on what a client can make the server hold: header size and count, time to
send headers and body, idle keep-alive, open connections.

uvicorn (0.54, httptools parser) has none of them: httptools buffers a header line until it
ends, so a never-ending header grows without bound, and a connection that stops sending is
kept forever. :class:`LimitedHttpToolsProtocol` subclasses uvicorn's ``HttpToolsProtocol`` and
enforces the limits before bytes reach the parser:

- head size: bytes fed to the parser for the request line + headers are counted and never
  exceed ``max_header_size``; a chunk that crosses the limit is fed only up to it (a
  memoryview, no copy), and if the head is still incomplete the answer is 431. After the
  head, chunk framing and trailers (bytes that yield no body) get the same allowance.
- header count: ``on_header`` counts fields (trailers included); past the limit, 431.
- timers: one ``call_later`` slot, armed only when a request is split across reads. Header
  timer from the first byte of a request, body timer from the end of its head; none while the
  app works on a fully received request. Idle connections (fresh or between requests) use
  uvicorn's keep-alive timer, which this class also arms on a fresh connection.
- connections: past ``max_connections`` open, a new connection gets 503 + Retry-After before
  anything is read or parsed.

Every refusal is raw bytes (``Connection: close``, a JSON body naming the limit and its
setting), then a *lingering close*: FIN after the answer, reading and discarding what the
client still sends for a short while, then close. Closing with unread bytes would make the
kernel send RST, and a client still uploading would often lose the answer.

uvicorn internals relied on (pinned in the server lock): ``HttpToolsProtocol`` attributes
``parser``, ``cycle``, ``flow``, ``connections``, ``headers``, ``expect_100_continue``,
``timeout_keep_alive(_task)``, ``loop``, ``transport`` and the methods ``send_400_response``,
``_should_upgrade``, ``handle_websocket_upgrade``, ``_unsupported_upgrade_warning``,
``_unset_keepalive_if_required``, ``timeout_keep_alive_handler``; ``RequestResponseCycle``
fields ``response_started``, ``response_complete``, ``keep_alive``, ``disconnected``,
``message_event``. ``data_received`` and ``on_header`` are re-implemented (same behaviour plus
the limits) because the limits must act before and inside the parser.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LIMIT_NAMES", "HttpLimits", "HttpLimitsUnavailable", "RefusalLog", "limited_protocol"]

log = logging.getLogger("mlbuild.http")

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as _exc:  # h11 fallback would run without these limits: refuse instead
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None


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


class HttpLimitsUnavailable(RuntimeError):
    """httptools (or uvicorn's httptools protocol) cannot be imported."""


# How long / how much a refused connection is drained before it is dropped.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 << 20

LIMIT_NAMES = (
    "max_header_size", "max_header_count", "header_timeout", "body_timeout", "max_connections",
)  # fmt: skip


@dataclass(frozen=True)
class HttpLimits:
    max_header_size: int = 32 << 10
    max_header_count: int = 100
    header_timeout: float = 60.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 512

    @classmethod
    def from_settings(cls, settings) -> HttpLimits:
        return cls(
            max_header_size=settings.max_header_size,
            max_header_count=settings.max_header_count,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_connections=settings.max_connections,
        )


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


def _refusals(limits: HttpLimits) -> dict[str, tuple[int, str, bytes]]:
    """limit -> (status, message, the whole answer); built once per server."""
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
    }  # fmt: skip
    out = {}
    for key, (status, message) in messages.items():
        extra = b"retry-after: 1\r\n" if status == 503 else b""
        out[key] = (status, message, _response(status, message, extra))
    return out


class _LimitHit(Exception):
    """Raised inside a parser callback to stop httptools; the refusal is already written."""


def limited_protocol(
    limits: HttpLimits, on_refusal: Callable[[str], None] | None = None
) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with ``limits`` bound.
    ``on_refusal(limit)`` is called once per refusal (e.g. a metrics counter); ``limit`` is
    one of :data:`LIMIT_NAMES`. Raises HttpLimitsUnavailable when httptools is missing."""
    if _IMPORT_ERROR is not None:
        raise HttpLimitsUnavailable(
            f"the HTTP limits need httptools, which the server env lacks ({_IMPORT_ERROR}); "
            "install the server env from mlbuild's server lock (it pins httptools)"
        )
    attrs = {
        "limits": limits,
        "_max_head": limits.max_header_size,
        "_max_count": limits.max_header_count,
        "_max_connections": limits.max_connections,
        "_refusals": _refusals(limits),
        "_on_refusal": staticmethod(on_refusal or (lambda limit: None)),
        "_refusal_log": RefusalLog(),
    }
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), attrs)


_Base = HttpToolsProtocol if HttpToolsProtocol is not None else object


class LimitedHttpToolsProtocol(_Base):  # type: ignore[misc,valid-type]
    """Use :func:`limited_protocol` to get a class with the limits bound."""

    limits: HttpLimits
    _max_head: int
    _max_count: int
    _max_connections: int
    _refusals: dict[str, tuple[int, str, bytes]]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_body = False  # head complete, message not yet
        self._head_bytes = 0  # bytes of the current head fed to the parser
        self._gap = 0  # body phase: bytes received since the parser last yielded body
        self._header_count = 0  # fields in the current message (trailers included)
        self._heads_done = 0  # on_headers_complete calls, to see if a feed finished a head
        self._limit_timer = None  # header or body timer, then the linger timer
        self._closing = False  # refused: discard input until the close
        self._drained = 0

    # --- connection ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            # Refused before anything is parsed; never added to the server's connections.
            self.transport = transport
            self._refuse("max_connections", transport.get_extra_info("peername"))
            return
        super().connection_made(transport)
        # uvicorn arms its idle timer only after a response: a fresh connection that sends
        # nothing would stay open forever.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        if self._limit_timer is not None:
            self._limit_timer.cancel()
            self._limit_timer = None
        super().connection_lost(exc)

    # --- bytes in --------------------------------------------------------------------------

    def data_received(self, data) -> None:
        if self._closing:
            self._drained += len(data)
            if self._drained > _LINGER_BYTES:
                self.transport.abort()
            return
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        if self._in_body:
            self._gap = gap = self._gap + len(data)
            if not self._feed(data):
                return
            # on_body resets _gap: still equal means this read gave no body at all
            if self._gap == gap and gap > self._max_head and self._in_body:
                self._refuse("max_header_size:framing")
                return
        else:
            head = self._head_bytes + len(data)
            if head > self._max_head:
                self._feed_to_limit(data)
                return
            self._head_bytes = head
            if not self._feed(data):
                return
        if self._limit_timer is None and not self._closing:
            if self._in_body:
                self._limit_timer = self.loop.call_later(self.limits.body_timeout, self._timer_fired)
            elif self._head_bytes:
                self._limit_timer = self.loop.call_later(self.limits.header_timeout, self._timer_fired)

    def _feed_to_limit(self, data) -> None:
        """Feed no more than the head allowance; 431 unless the head ends within it."""
        allowed = self._max_head - self._head_bytes
        view = memoryview(data)
        heads = self._heads_done
        self._head_bytes = self._max_head
        if not self._feed(view[:allowed]):
            return
        if self._heads_done == heads:
            self._refuse("max_header_size")
            return
        if len(view) > allowed:
            self.data_received(view[allowed:])  # body, or the next request's head

    def _feed(self, data) -> bool:
        """uvicorn's data_received without its keep-alive handling; False: stop feeding."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._closing:  # a limit tripped inside a callback, the answer is written
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self._closing

    # --- parser callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count = count = self._header_count + 1
        if count > self._max_count:
            self._refuse("max_header_count")
            raise _LimitHit
        # as uvicorn's on_header
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._heads_done += 1
        self._in_body = True
        self._head_bytes = 0
        self._gap = 0
        if self._limit_timer is not None:
            self._limit_timer.cancel()
            self._limit_timer = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._gap = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._header_count = 0
        if self._limit_timer is not None:  # the body timer: the app's time is not limited here
            self._limit_timer.cancel()
            self._limit_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn arms its idle timer after each response; if the client is already part-way
        # through its next request, that request's header/body timer applies instead.
        if (self._head_bytes or self._in_body) and not self._closing and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            if self._limit_timer is None:
                timeout = self.limits.body_timeout if self._in_body else self.limits.header_timeout
                self._limit_timer = self.loop.call_later(timeout, self._timer_fired)

    # --- timers and refusals ---------------------------------------------------------------

    def _timer_fired(self) -> None:
        self._limit_timer = None
        if self._closing or self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The server stopped reading (a pipelined request waits, or the app has not taken
            # the body yet): the delay is ours, not the client's.
            timeout = self.limits.body_timeout if self._in_body else self.limits.header_timeout
            self._limit_timer = self.loop.call_later(timeout, self._timer_fired)
            return
        if self._in_body:
            self._refuse("body_timeout")
        elif self._head_bytes:
            self._refuse("header_timeout")

    def _refuse(self, key: str, peer=None) -> None:
        status, message, response = self._refusals[key]
        limit = key.partition(":")[0]
        peer = peer if peer is not None else self.client
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        fields = {"limit": limit, "status": status, "client": client}
        self._refusal_log.refused(limit, message, fields)
        self._on_refusal(limit)
        cycle = self.cycle
        if self._in_body and cycle is not None:
            # The request still being received is the current cycle; its app may be waiting
            # for the body.
            if cycle.response_started or self.pipeline:
                # Answered already (e.g. 413), or queued behind a pipelined request whose
                # response is being written: no second or interleaved answer, just close.
                self._closing = True
                self.transport.close()
                return
            cycle.disconnected = True  # the app's receive() now says http.disconnect
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # An earlier request on this connection is still being answered: an answer now
            # would land inside that response. Close once it is sent.
            cycle.keep_alive = False
            self._closing = True
            if self._limit_timer is not None:
                self._limit_timer.cancel()
                self._limit_timer = None
            return
        self._answer_and_close(response)

    def _answer_and_close(self, response: bytes) -> None:
        self._closing = True
        if self._limit_timer is not None:
            self._limit_timer.cancel()
            self._limit_timer = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(response)
        if self.flow is not None:
            self.flow.resume_reading()  # keep draining what the client still sends
        try:
            transport.write_eof()  # FIN after the answer; eof_received then closes
        except (NotImplementedError, RuntimeError, AttributeError):  # e.g. TLS
            transport.close()
            return
        self._limit_timer = self.loop.call_later(_LINGER_SECONDS, transport.abort)
