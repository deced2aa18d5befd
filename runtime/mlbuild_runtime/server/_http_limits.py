"""HTTP/1.1 limits on what a client can make the server hold: header size and count, time to
send headers and body, idle keep-alive, open connections, time to take an answer.

uvicorn (0.54, httptools parser) has none of them: httptools buffers a header line until it
ends, so a never-ending header grows without bound, and a connection that stops sending is
kept forever. :class:`LimitedHttpToolsProtocol` subclasses uvicorn's ``HttpToolsProtocol`` and
enforces the limits before bytes reach the parser:

- head size: bytes fed to the parser for the request line + headers are counted and never
  exceed ``max_header_size``; a chunk that crosses the limit is fed only up to it (a
  memoryview, no copy), and if the head is still incomplete the answer is 431. After the
  head, chunk framing and trailers (bytes that yield no body) get the same allowance. A head
  that begins in the read that ended the previous request (pipelining) is counted too (see
  ``_count_late_head``), and its header timer runs.
- header count: ``on_header`` counts fields (trailers included); past the limit, 431.
- timers: one ``call_later`` slot, armed only when a request is split across reads. Header
  timer from the first byte of a request, body timer from the end of its head; none while the
  app works on a fully received request. Idle connections (fresh or between requests) use
  uvicorn's keep-alive timer, which this class also arms on a fresh connection.
- connections: past ``max_connections`` open, a new connection gets 503 + Retry-After before
  anything is read or parsed.
- send timeout: while answer bytes wait in the transport's write buffer (the transport paused
  writing, or a response ended with bytes left), a watchdog checks every ``send_timeout``
  seconds that some left; if none did, the connection is aborted (``close()`` would wait for
  the buffer forever), the request's cycle marked disconnected.

Every refusal is raw bytes (``Connection: close``, a JSON body naming the limit and its
setting), then a *lingering close*: FIN after the answer, reading and discarding what the
client still sends for a short while, then close. Closing with unread bytes would make the
kernel send RST, and a client still uploading would often lose the answer. A refusal of a
request queued behind one still being answered is written right after that answer. The
answers and the rate-limited log live in _refusals.py.

uvicorn internals relied on (pinned in the server lock): ``HttpToolsProtocol`` attributes
``parser``, ``cycle``, ``flow``, ``connections``, ``headers``, ``expect_100_continue``,
``timeout_keep_alive(_task)``, ``loop``, ``transport`` and the methods ``send_400_response``,
``_should_upgrade``, ``handle_websocket_upgrade``, ``_unsupported_upgrade_warning``,
``_unset_keepalive_if_required``, ``timeout_keep_alive_handler``, ``pause_writing``,
``resume_writing``, ``url``, ``pipeline``, ``server_state.total_requests``;
``FlowControl.write_paused``; ``RequestResponseCycle`` fields ``response_started``,
``response_complete``, ``keep_alive``, ``disconnected``, ``message_event``.
``data_received`` and ``on_header`` are re-implemented (same behaviour plus the limits) because
the limits must act before and inside the parser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from ._refusals import LIMIT_NAMES, RefusalLog, refusal_answers

__all__ = ["LIMIT_NAMES", "HttpLimits", "HttpLimitsUnavailable", "limited_protocol"]

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as _exc:  # h11 fallback would run without these limits: refuse instead
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None


class HttpLimitsUnavailable(RuntimeError):
    """httptools (or uvicorn's httptools protocol) cannot be imported."""


# How long / how much a refused connection is drained before it is dropped.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 << 20

# Fewest bytes a header line can take besides its name and value (":" and a bare LF, which
# httptools accepts): the floor used to size a head parsed whole inside one read.
_MIN_LINE_OVERHEAD = 2


@dataclass(frozen=True)
class HttpLimits:
    """The protocol's share of the Settings (their defaults and docs live there, once)."""

    max_header_size: int
    max_header_count: int
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    send_timeout: float

    @classmethod
    def from_settings(cls, settings) -> HttpLimits:
        # Same field names as the Settings: nothing to keep in step by hand.
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def _first_head_end(data: bytes, start: int) -> int:
    """Where the first head at or after ``start`` ends, at the earliest: after its first empty
    line, or after a line break at ``start`` (the rest of an empty line begun in the previous
    read). Too early errs toward counting more of the read as the next head."""
    ends = []
    crlf, lf = data.find(b"\r\n\r\n", start), data.find(b"\n\n", start)
    if crlf >= 0:
        ends.append(crlf + 4)
    if lf >= 0:
        ends.append(lf + 2)
    if data.startswith(b"\n", start):
        ends.append(start + 1)
    elif data.startswith(b"\r\n", start):
        ends.append(start + 2)
    return min(ends, default=start)


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
        "_send_timeout": limits.send_timeout,
        "_refusals": refusal_answers(limits),
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
    _send_timeout: float
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
        self._deferred = None  # a refusal to write once the answer being written is complete
        # Per feed (parser.feed_data call), to count a head that begins after a message ended
        # in the same read (a pipelining client; see _count_late_head).
        self._ended_in_feed = False  # a message ended in this feed
        self._late_head = False  # a head began after that
        self._feed_heads_at = 0  # _heads_done when the feed began
        self._feed_pre_body = 0  # body bytes given before the feed's first head ended
        self._feed_body = 0  # body bytes given since (all of them if no head ended)
        # Send watchdog: armed while answer bytes wait in the transport's write buffer.
        self._send_timer = None
        self._send_left = 0  # write buffer size at the last check
        self._send_resumed = False  # the transport drained below its low-water mark since

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
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
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
        if self._late_head and not self._count_late_head(data):
            return
        if self._limit_timer is None and not self._closing:
            if self._in_body:
                self._limit_timer = self.loop.call_later(self.limits.body_timeout, self._timer_fired)
            elif self._head_bytes:
                self._limit_timer = self.loop.call_later(self.limits.header_timeout, self._timer_fired)

    def _count_late_head(self, data) -> bool:
        """A message ended inside this read, and the next one's head began in it and is still
        open (a pipelining client): the head bytes counted before feeding were the earlier
        message's. httptools gives no offsets, so the new head's bytes are what remains after
        the earlier message: the read, less where the first head completed in it ends (its
        first empty line), less the body bytes after that. Exact for one message ending per
        read; with more, or with chunk framing, it counts too much - never too little.
        False: refused."""
        self._late_head = False
        if self._heads_done == self._feed_heads_at:
            start = 0  # no head ended in this read: it began inside the ending message's body
        else:
            start = _first_head_end(bytes(data), self._feed_pre_body)
        # at least 1: a head has begun, so its header timer must run
        self._head_bytes = max(1, len(data) - start - self._feed_body)
        if self._head_bytes > self._max_head:
            self._refuse("max_header_size")
            return False
        return True

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
        if self._late_head and not self._count_late_head(view[:allowed]):
            return
        if len(view) > allowed:
            self.data_received(view[allowed:])  # body, or the next request's head

    def _feed(self, data) -> bool:
        """uvicorn's data_received without its keep-alive handling; False: stop feeding."""
        self._ended_in_feed = False
        self._feed_heads_at = self._heads_done
        self._feed_body = 0
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

    def on_message_begin(self) -> None:
        # The head counted before feeding belonged to the message that ended in this read;
        # this one's bytes go uncounted unless counted here (see _count_late_head).
        if self._ended_in_feed:
            self._late_head = True
        super().on_message_begin()

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
        if self._late_head:
            # A whole head inside the read that ended the previous message: size it from what
            # the parser gave (a floor: whitespace around values is not seen).
            self._late_head = False
            size = len(self.url) + sum(len(n) + len(v) + _MIN_LINE_OVERHEAD for n, v in self.headers)
            if size > self._max_head:
                self._refuse("max_header_size")
                raise _LimitHit
        if self._heads_done == self._feed_heads_at:  # the first head to end in this feed
            self._feed_pre_body = self._feed_body
            self._feed_body = 0
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
        self._feed_body += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._header_count = 0
        self._ended_in_feed = True
        if self._limit_timer is not None:  # the body timer: the app's time is not limited here
            self._limit_timer.cancel()
            self._limit_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        transport = self.transport
        if self._send_timer is None and transport.get_write_buffer_size():
            self._watch_send()  # the kernel has not taken the whole answer yet
        deferred = self._deferred
        if deferred is not None:
            # A later request on this connection was refused while this answer was being
            # produced; its refusal comes next, in order, and ends the connection.
            self._deferred = None
            self.server_state.total_requests += 1
            if not transport.is_closing():
                self._answer_and_close(deferred)
            return
        super().on_response_complete()
        # uvicorn arms its idle timer after each response; if the client is already part-way
        # through its next request, that request's header/body timer applies instead.
        if (self._head_bytes or self._in_body) and not self._closing and not transport.is_closing():
            self._unset_keepalive_if_required()
            if self._limit_timer is None:
                timeout = self.limits.body_timeout if self._in_body else self.limits.header_timeout
                self._limit_timer = self.loop.call_later(timeout, self._timer_fired)

    # --- bytes out: the send timeout -------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._watch_send()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._send_resumed = True

    def send_400_response(self, msg: str) -> None:
        super().send_400_response(msg)
        if self._send_timer is None and self.transport.get_write_buffer_size():
            self._watch_send()

    def _watch_send(self) -> None:
        self._send_left = self.transport.get_write_buffer_size()
        self._send_resumed = False
        self._send_timer = self.loop.call_later(self._send_timeout, self._send_check)

    def _send_check(self) -> None:
        """Every send_timeout while answer bytes wait: cut the connection if none left since
        the last check (as nginx's send_timeout, which counts between two writes, not for the
        whole answer: a slow reader that keeps reading is never cut). A stalled write is cut
        between one and two send_timeouts after its last progress."""
        self._send_timer = None
        transport = self.transport
        left = transport.get_write_buffer_size()
        if not left and not self.flow.write_paused:
            return  # all handed to the kernel: nothing held any more
        if left < self._send_left or self._send_resumed:
            self._watch_send()
            return
        status, message, _ = self._refusals["send_timeout"]
        self._log_refusal("send_timeout", status, message, self.client)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's send() and receive() now see the client gone
            cycle.message_event.set()
        self._closing = True
        if self._limit_timer is not None:
            self._limit_timer.cancel()
            self._limit_timer = None
        transport.abort()  # drops the buffered answer; close() would wait for it forever

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

    def _log_refusal(self, limit: str, status: int, message: str, peer) -> None:
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        fields = {"limit": limit, "status": status, "client": client} if status else {"limit": limit, "client": client}
        self._refusal_log.refused(limit, message, fields)
        self._on_refusal(limit)

    def _refuse(self, key: str, peer=None) -> None:
        status, message, response = self._refusals[key]
        self._log_refusal(key.partition(":")[0], status, message, peer if peer is not None else self.client)
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
            # would land inside that response. Stop reading; the refusal follows that answer
            # (on_response_complete) - unless requests are queued behind it, whose answers
            # the client would expect first: then the connection just closes after it.
            self._closing = True
            if self._limit_timer is not None:
                self._limit_timer.cancel()
                self._limit_timer = None
            if self.pipeline:
                cycle.keep_alive = False
            else:
                self._deferred = response
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
