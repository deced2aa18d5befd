"""HTTP limits of the real server process (`python -m mlbuild_runtime` over the echo model),
spoken to in raw HTTP over sockets: header size and count -> 431, slow headers and bodies ->
408, idle keep-alive -> close, too many connections -> 503 + Retry-After. Every wait has a
deadline; nothing sleeps for a fixed long time."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time

import pytest
from _server_process import (
    MODELS,
    Reader,
    ServerProcess,
    free_port,
    predict_request,
    read_response,
    send_ignoring_reset,
    wait_until,
)
from mlbuild_runtime.server._http_limits import _LINGER_SECONDS

ECHO = MODELS / "echo"

# The module-scoped server's timeouts (seconds), and the slack every wall-clock bound gets on
# top of what the server is configured to take: the machine is shared, a test must not fail
# because the scheduler was slow, only because a limit did not act. A timeout that is the
# behaviour under test is checked both ways: not before EARLIEST (the timer, not something
# else, ended the connection) and not after LATEST.
TIMEOUT = 1.0
SLACK = 5.0
EARLIEST = 0.8 * TIMEOUT
LATEST = TIMEOUT + SLACK


def serve(log_dir, model=ECHO, **env: str) -> ServerProcess:
    """``with serve(tmp_path, MLBUILD_X=...) as srv:`` - a ready server, its log as text lines."""
    return ServerProcess(model, log_dir, env=env, log_format="text")


def assert_timed_out(elapsed: float) -> None:
    assert EARLIEST <= elapsed <= LATEST, f"closed after {elapsed:.2f} s; configured {TIMEOUT:g} s"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    timeouts = {f"MLBUILD_{name}_TIMEOUT": str(TIMEOUT) for name in ("HEADER", "BODY", "KEEPALIVE")}
    with ServerProcess(ECHO, tmp_path_factory.mktemp("limits"), env=timeouts, log_format="text") as srv:
        yield srv


def test_several_requests_on_one_kept_alive_connection(server):
    with server.connect() as s:
        reader = Reader(s)
        for i in range(5):
            s.sendall(predict_request(json.dumps({"i": i}).encode()))
            status, _, body = reader.response()
            assert (status, json.loads(body)) == (200, {"i": i})


def test_two_pipelined_requests_in_one_write_are_both_answered_in_order(server):
    with server.connect() as s:
        reader = Reader(s)
        s.sendall(predict_request(b'{"p": 1}') + predict_request(b'{"p": 2}'))
        assert [json.loads(reader.response()[2]) for _ in range(2)] == [{"p": 1}, {"p": 2}]


def test_a_head_and_a_1mib_body_in_one_write_are_served(server):
    with server.connect() as s:
        big = json.dumps({"x": "a" * (1 << 20)}).encode()
        s.sendall(predict_request(big))
        status, _, body = Reader(s).response()
        assert status == 200 and json.loads(body) == json.loads(big)


def _head_of_size(total: int) -> bytes:
    start = b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Pad: "
    end = b"\r\n\r\n"
    return start + b"a" * (total - len(start) - len(end)) + end


def test_a_head_of_exactly_the_limit_passes_one_byte_more_gets_431(server):
    with server.connect() as s:
        s.sendall(_head_of_size(32 * 1024))
        assert read_response(s)[0] == 200
    with server.connect() as s:
        s.sendall(_head_of_size(32 * 1024 + 1))
        reader = Reader(s)
        status, headers, body = reader.response()
        assert status == 431 and headers["connection"] == "close"
        assert reader.closed()


@pytest.mark.parametrize("size", [100_000, 1_000_000])
def test_a_large_header_gets_431_and_the_connection_is_closed(server, size):
    with server.connect() as s:
        send_ignoring_reset(s, b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        reader = Reader(s)
        status, headers, body = reader.response()
        assert status == 431
        assert headers["connection"] == "close" and headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": "request headers larger than 32768 bytes (MLBUILD_MAX_HEADER_SIZE)"}
        assert reader.closed()


def test_a_never_ending_request_line_gets_431(server):
    with server.connect() as s:
        send_ignoring_reset(s, b"GET /" + b"a" * 200_000)  # no CRLF ever
        reader = Reader(s)
        assert reader.response()[0] == 431
        assert reader.closed()


def test_101_header_fields_get_431_and_100_pass(server):
    def request(count: int) -> bytes:  # `count` fields in all, Host included
        fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(count - 1))
        return b"GET /health/live HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n"

    with server.connect() as s:
        s.sendall(request(100))
        assert read_response(s)[0] == 200
    with server.connect() as s:
        s.sendall(request(101))
        reader = Reader(s)
        status, _, body = reader.response()
        assert status == 431
        assert json.loads(body) == {"error": "more than 100 request header fields (MLBUILD_MAX_HEADER_COUNT)"}
        assert reader.closed()


def test_endless_chunk_trailers_get_431(server):
    # After the head, bytes that give no body (chunk framing, trailers) get the same allowance:
    # httptools would otherwise buffer a never-ending trailer line without bound.
    with server.connect() as s:
        head = b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: "
        send_ignoring_reset(s, head + b"a" * 200_000)
        reader = Reader(s)
        status, _, body = reader.response()
        assert status == 431 and b"MLBUILD_MAX_HEADER_SIZE" in body
        assert reader.closed()


def test_slow_headers_get_408_and_close_within_the_header_timeout(server):
    with server.connect(timeout=LATEST) as s:
        start = time.monotonic()
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # then stall
        reader = Reader(s)
        status, headers, body = reader.response()
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "request headers not received within 1 seconds (MLBUILD_HEADER_TIMEOUT)"}
        assert_timed_out(time.monotonic() - start)
        assert reader.closed()


def test_trickled_headers_still_time_out(server):
    # The header timer counts from the first byte, not between bytes: a header line every
    # 0.3 s never lets the connection live past the timeout.
    with server.connect(timeout=LATEST) as s:
        start = time.monotonic()
        s.sendall(b"POST /predict HTTP/1.1\r\n")
        reader = Reader(s)
        answered = None
        try:
            # Trickle until the 408 arrives (not until the server's lingering close ends with a
            # reset, which comes _LINGER_SECONDS later), or for far longer than the timeout.
            # Between lines, wait for the answer itself (up to 0.3 s), not for a fixed time.
            while time.monotonic() - start < LATEST:
                s.sendall(b"X: 1\r\n")
                if select.select([s], [], [], 0.3)[0] and reader.fill() and b"\r\n\r\n" in reader.buf:
                    answered = time.monotonic() - start
                    break
        except (BrokenPipeError, ConnectionResetError):  # the lingering close ended first
            answered = time.monotonic() - start - _LINGER_SECONDS
        assert answered is not None, "still trickling headers after the header timeout"
        assert reader.response()[0] == 408
        assert answered <= LATEST


def test_a_stalled_body_gets_408_and_close(server):
    with server.connect(timeout=LATEST) as s:
        start = time.monotonic()
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        s.sendall(b'{"a"')  # 4 of the 100 bytes, then stall
        reader = Reader(s)
        status, headers, body = reader.response()
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "request body not received within 1 seconds (MLBUILD_BODY_TIMEOUT)"}
        assert_timed_out(time.monotonic() - start)
        assert reader.closed()


def test_a_body_sent_in_parts_within_the_timeout_gets_200(server):
    with server.connect(timeout=LATEST) as s:
        request = predict_request(b'{"a": 1}')
        s.sendall(request[:-4])
        # The pause between the parts is the client's slowness under test (half the body
        # timeout): the server waits for the rest and answers nothing meanwhile.
        assert select.select([s], [], [], TIMEOUT / 2)[0] == [], "answered before the body was complete"
        s.sendall(request[-4:])
        assert read_response(s)[0] == 200


def test_a_prediction_longer_than_every_timeout_is_not_cut(tmp_path):
    # Once the body is in, only predict_timeout applies: no header, body or idle timer runs
    # while the model works (it sleeps three times as long as each of them).
    timeouts = {f"MLBUILD_{name}_TIMEOUT": "0.5" for name in ("HEADER", "BODY", "KEEPALIVE")}
    with serve(tmp_path, MODELS / "sleeps", **timeouts) as srv, srv.connect(timeout=10) as s:
        reader = Reader(s)
        s.sendall(predict_request(b"1.5"))
        status, _, body = reader.response()
        assert (status, json.loads(body)) == (200, 1.5)
        s.sendall(predict_request(b"0"))  # and the connection is still usable
        assert reader.response()[0] == 200


def test_an_idle_connection_is_closed_after_the_keepalive_timeout(server):
    with server.connect(timeout=LATEST) as s:
        s.sendall(predict_request(b"{}"))
        reader = Reader(s)
        assert reader.response()[0] == 200
        idle_from = time.monotonic()
        assert reader.closed() and reader.buf == b""  # closed without another answer
        assert_timed_out(time.monotonic() - idle_from)


def test_a_connection_that_never_sends_anything_is_closed(server):
    with server.connect(timeout=LATEST) as s:
        start = time.monotonic()
        reader = Reader(s)
        assert reader.closed() and reader.buf == b""
        assert time.monotonic() - start <= LATEST


def _hold_connections(srv: ServerProcess, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        s = srv.connect()
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s)[0] == 200  # accepted and kept alive
        held.append(s)
    return held


def _served(srv: ServerProcess) -> bool:
    with srv.connect() as s:
        s.sendall(predict_request(b'{"ok": true}'))
        try:
            status, _, body = read_response(s)
        except (EOFError, ConnectionResetError):
            return False
        return status == 200 and json.loads(body) == {"ok": True}


def test_past_max_connections_a_connection_gets_503_and_later_ones_work(tmp_path):
    with serve(tmp_path, MLBUILD_MAX_CONNECTIONS="5") as srv:
        held = _hold_connections(srv, 5)
        try:
            with srv.connect() as sixth:
                reader = Reader(sixth)
                status, headers, body = reader.response()  # sent before the client says anything
                assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
                assert json.loads(body)["error"].endswith("(limit 5, MLBUILD_MAX_CONNECTIONS); retry")
                assert reader.closed()
        finally:
            for s in held:
                s.close()
        wait_until(lambda: _served(srv), what="a request served once the held connections closed")
        metrics = srv.metrics()
        assert 'mlbuild_http_limit_rejections_total{limit="max_connections"} 1.0' in metrics
        assert 'mlbuild_http_limit_rejections_total{limit="header_timeout"} 0.0' in metrics
    log = srv.log()
    assert "request refused: too many open connections" in log and "limit=max_connections" in log


def test_without_httptools_the_server_refuses_to_start_rather_than_serve_unlimited():
    # uvicorn would fall back to h11, which has none of these limits.
    script = (
        "import sys; sys.modules['httptools'] = None\n"
        "from mlbuild_runtime.server.cli import main\n"
        f"sys.exit(main(['--model-dir', {str(ECHO)!r}, '--host', '127.0.0.1', '--port', '{free_port()}']))\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the server started without httptools")
    assert proc.returncode == 1
    assert "httptools" in proc.stderr and "server lock" in proc.stderr


def test_refusal_log_is_one_line_per_limit_per_second_with_the_count_between():
    import logging

    from mlbuild_runtime.server._refusals import RefusalLog

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("test.refusals")
    logger.propagate = False
    logger.addHandler(Keep())
    now = [100.0]
    refusals = RefusalLog(logger, interval=1.0, clock=lambda: now[0])
    for _ in range(500):  # a flood within one second: one line
        refusals.refused("max_header_size", "headers too large", {"limit": "max_header_size"})
        now[0] += 0.001
    refusals.refused("header_timeout", "too slow", {"limit": "header_timeout"})  # another limit: its own line
    assert len(records) == 2
    now[0] += 1.0
    refusals.refused("max_header_size", "headers too large", {"limit": "max_header_size"})
    assert len(records) == 3
    assert "499 more like it" in records[-1].getMessage()
    assert records[-1].fields["suppressed"] == 499


def _predict_count(server: ServerProcess, status: int) -> float:
    total = 0.0
    for line in server.metrics().splitlines():
        if line.startswith("mlbuild_requests_total{") and 'route="/predict"' in line and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_body_cut_by_its_timeout_never_reaches_the_worker(server):
    # The client got its 408 from the protocol; the half body must not be sent to the worker
    # and counted as the client's bad JSON (422): it is counted as 499, "client closed request".
    before_422, before_499 = _predict_count(server, 422), _predict_count(server, 499)
    with server.connect(timeout=LATEST) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        s.sendall(b'{"a"')
        assert Reader(s).response()[0] == 408
    wait_until(lambda: _predict_count(server, 499) != before_499, what="the cut request counted")
    assert _predict_count(server, 499) == before_499 + 1
    assert _predict_count(server, 422) == before_422


# -- pipelined requests: the next head in the same read as a complete request -----------------


def test_a_pipelined_partial_head_gets_408_within_the_header_timeout(server):
    # Request 1 complete and the start of request 2's head in one send, then a stall: request
    # 2's header timer runs (not just the idle timer, which would close without an answer).
    with server.connect(timeout=LATEST) as s:
        start = time.monotonic()
        s.sendall(predict_request(b'{"p": 1}') + b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        reader = Reader(s)
        status, _, body = reader.response()
        assert (status, json.loads(body)) == (200, {"p": 1})
        status, headers, body = reader.response()
        assert status == 408 and headers["connection"] == "close"
        assert b"MLBUILD_HEADER_TIMEOUT" in body
        assert time.monotonic() - start <= LATEST
        assert reader.closed()


@pytest.mark.parametrize("complete", [True, False], ids=["whole-head", "head-still-coming"])
def test_a_pipelined_oversized_head_gets_431_after_the_first_answer(server, complete):
    # 40 000 bytes: over the 32 KiB limit but within one read, where it used to go uncounted.
    head = b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 40_000
    if complete:
        head += b"\r\n\r\n"
    with server.connect(timeout=LATEST) as s:
        send_ignoring_reset(s, predict_request(b'{"p": 1}') + head)
        reader = Reader(s)
        status, _, body = reader.response()
        assert (status, json.loads(body)) == (200, {"p": 1})
        status, headers, body = reader.response()  # 431 (by size), not 408 (by the header timer)
        assert status == 431 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "request headers larger than 32768 bytes (MLBUILD_MAX_HEADER_SIZE)"}
        assert reader.closed()


def test_pipelined_heads_within_the_limit_are_all_served(server):
    # Each head ~20 KiB: together over the limit in one read, each one within it.
    pad = b"X-Pad: " + b"p" * 20_000 + b"\r\n"
    one = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + pad
    with server.connect(timeout=LATEST) as s:
        s.sendall(b"".join(one + b"Content-Length: 8\r\n\r\n" + b'{"i": %d}' % i for i in range(3)))
        reader = Reader(s)
        assert [json.loads(reader.response()[2]) for _ in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]


# -- send timeout: a client that never reads its answer ---------------------------------------


def _send_timeout_cuts(srv: ServerProcess) -> float:
    return srv.sample('mlbuild_http_limit_rejections_total{limit="send_timeout"}') or 0.0


def _small_window_socket(srv: ServerProcess, rcvbuf: int = 4096) -> socket.socket:
    s = socket.socket()
    # before connect, so the advertised window stays small: the answer piles up in the server
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", srv.port))
    return s


SEND_TIMEOUT = 1.0
BIG_BODY = json.dumps({"x": "a" * (6 << 20)}).encode()  # echoed: a 6 MiB answer


def test_a_client_that_never_reads_its_answer_is_cut_after_the_send_timeout(tmp_path):
    # Each answer (6 MiB, the echo of the body) sits in the server's write buffer while the
    # client does not read; past MLBUILD_SEND_TIMEOUT without progress the connection is cut,
    # freeing the answer and the connection slot. Every other timeout is far longer here, so
    # only the send timeout can be what closes them.
    env = {"MLBUILD_SEND_TIMEOUT": str(SEND_TIMEOUT), "MLBUILD_KEEPALIVE_TIMEOUT": "600",
           "MLBUILD_HEADER_TIMEOUT": "600", "MLBUILD_BODY_TIMEOUT": "600"}  # fmt: skip
    socks = []
    with serve(tmp_path, **env) as srv:
        try:
            for _ in range(4):
                s = _small_window_socket(srv)
                s.sendall(predict_request(BIG_BODY))
                socks.append(s)
            # The check runs every SEND_TIMEOUT: a stalled write is cut within 2 x SEND_TIMEOUT.
            wait_until(lambda: _send_timeout_cuts(srv) >= 4, timeout=2 * SEND_TIMEOUT + SLACK,
                       what="connections not reading their answers cut")  # fmt: skip
            for s in socks:  # what the kernel already holds may be read; then the connection ends
                got = 0
                s.settimeout(SLACK)
                try:
                    while chunk := s.recv(1 << 20):
                        got += len(chunk)
                except ConnectionResetError:
                    pass
                assert got < len(BIG_BODY)  # cut, not answered in full
            assert _send_timeout_cuts(srv) == 4
        finally:
            for s in socks:
                s.close()
    assert "request refused: response not read by the client for 1 seconds (MLBUILD_SEND_TIMEOUT)" in srv.log()


def test_a_slow_but_steady_reader_gets_its_whole_answer(tmp_path):
    # Progress, not total time, is what the send timeout limits: an answer that takes longer
    # than the timeout to read is not cut while the client keeps reading. The client reads at
    # a pace that spreads the answer over twice the timeout, in small steps.
    reading_time = 2 * SEND_TIMEOUT
    with serve(tmp_path, MLBUILD_SEND_TIMEOUT=str(SEND_TIMEOUT)) as srv:
        with _small_window_socket(srv, 64 << 10) as s:
            s.sendall(predict_request(BIG_BODY))
            reader = Reader(s)
            while b"\r\n\r\n" not in reader.buf:
                reader.fill()
            start = time.monotonic()
            head, _, _ = reader.buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            total = len(head) + 4 + length
            while len(reader.buf) < total:
                data = s.recv(256 << 10)
                assert data, f"cut after {len(reader.buf)} of {total} bytes"
                reader.buf += data
                # no faster than `total` bytes per `reading_time`: pause until this share is due
                due = start + reading_time * len(reader.buf) / total
                time.sleep(max(0.0, due - time.monotonic()))
            assert time.monotonic() - start > SEND_TIMEOUT  # the read really was slower than the timeout
            assert reader.response()[0] == 200 and reader.buf == b""
        assert _send_timeout_cuts(srv) == 0
