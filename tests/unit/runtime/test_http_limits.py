"""HTTP limits of the real server process (`python -m mlbuild_runtime` over the echo model),
spoken to in raw HTTP over sockets: header size and count -> 431, slow headers and bodies ->
408, idle keep-alive -> close, too many connections -> 503 + Retry-After. Every wait has a
deadline; nothing sleeps for a fixed long time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlbuild_runtime.server._http_limits import _LINGER_SECONDS

REPO = Path(__file__).resolve().parents[3]
ECHO = REPO / "tests" / "fixtures" / "models" / "echo"

# The module-scoped server's timeouts (seconds), and the slack every wall-clock bound gets on
# top of what the server is configured to take: the machine is shared, a test must not fail
# because the scheduler was slow, only because a limit did not act.
TIMEOUT = 1.0
SLACK = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path = ECHO, **env: str) -> None:
        self.port = _free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MLBUILD_")}
        environ.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlbuild_runtime", "--model-dir", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--log-format", "text"],
            env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode()[-3000:]
                raise AssertionError(f"server exited {self.proc.returncode}: {err}")
            try:
                with self.connect(timeout=2) as s:
                    s.sendall(b"GET /health/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    if read_response(s)[0] == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("server never became ready")
            time.sleep(0.1)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.settimeout(timeout)
        return s

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


class Reader:
    """Reads HTTP/1.1 responses (content-length bodies) from one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before a response; got {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                raise EOFError("connection closed inside a body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        """True when the server closed the connection (EOF or reset) before the timeout."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    return Reader(sock).response()


def predict_request(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


def send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    # The server answers once the limit is passed and may stop reading what follows.
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.fixture(scope="module")
def server():
    srv = Server(
        MLBUILD_HEADER_TIMEOUT=str(TIMEOUT), MLBUILD_BODY_TIMEOUT=str(TIMEOUT), MLBUILD_KEEPALIVE_TIMEOUT=str(TIMEOUT)
    )
    yield srv
    srv.stop()


def test_normal_requests_keep_alive_pipelined_and_a_1mib_body(server):
    with server.connect() as s:
        reader = Reader(s)
        for i in range(5):  # several requests on one connection
            s.sendall(predict_request(json.dumps({"i": i}).encode()))
            status, _, body = reader.response()
            assert (status, json.loads(body)) == (200, {"i": i})
        # two pipelined requests in one write
        s.sendall(predict_request(b'{"p": 1}') + predict_request(b'{"p": 2}'))
        assert [json.loads(reader.response()[2]) for _ in range(2)] == [{"p": 1}, {"p": 2}]
        big = json.dumps({"x": "a" * (1 << 20)}).encode()  # head + 1 MiB body in one sendall
        s.sendall(predict_request(big))
        status, _, body = reader.response()
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
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        start = time.monotonic()
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # then stall
        reader = Reader(s)
        status, headers, body = reader.response()
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "request headers not received within 1 seconds (MLBUILD_HEADER_TIMEOUT)"}
        assert TIMEOUT * 0.8 <= time.monotonic() - start <= TIMEOUT + SLACK
        assert reader.closed()


def test_trickled_headers_still_time_out(server):
    # The header timer counts from the first byte, not between bytes: a header line every
    # 0.3 s never lets the connection live past the timeout.
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        start = time.monotonic()
        s.sendall(b"POST /predict HTTP/1.1\r\n")
        reader = Reader(s)
        s.setblocking(False)
        answered = None
        try:
            # Trickle until the 408 arrives (not until the server's lingering close ends with a
            # reset, which comes _LINGER_SECONDS later), or for far longer than the timeout.
            while time.monotonic() - start < TIMEOUT + SLACK:
                s.sendall(b"X: 1\r\n")
                time.sleep(0.3)
                try:
                    if reader._fill() and b"\r\n\r\n" in reader.buf:
                        answered = time.monotonic() - start
                        break
                except BlockingIOError:
                    pass
        except (BrokenPipeError, ConnectionResetError):  # the lingering close ended first
            answered = time.monotonic() - start - _LINGER_SECONDS
        s.settimeout(TIMEOUT + SLACK)
        assert answered is not None, "still trickling headers after the header timeout"
        assert reader.response()[0] == 408
        assert answered <= TIMEOUT + SLACK


def test_a_stalled_body_gets_408_and_close(server):
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        start = time.monotonic()
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        s.sendall(b'{"a"')  # 4 of the 100 bytes, then stall
        reader = Reader(s)
        status, headers, body = reader.response()
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "request body not received within 1 seconds (MLBUILD_BODY_TIMEOUT)"}
        assert TIMEOUT * 0.8 <= time.monotonic() - start <= TIMEOUT + SLACK
        assert reader.closed()


def test_a_body_sent_in_parts_within_the_timeout_gets_200(server):
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        request = predict_request(b'{"a": 1}')
        s.sendall(request[:-4])
        time.sleep(0.5)
        s.sendall(request[-4:])
        assert read_response(s)[0] == 200


def test_a_prediction_longer_than_every_timeout_is_not_cut():
    # Once the body is in, only predict_timeout applies: no header, body or idle timer runs
    # while the model works.
    srv = Server(REPO / "tests" / "fixtures" / "models" / "sleeps", MLBUILD_HEADER_TIMEOUT="0.5",
                 MLBUILD_BODY_TIMEOUT="0.5", MLBUILD_KEEPALIVE_TIMEOUT="0.5")  # fmt: skip
    try:
        with srv.connect(timeout=10) as s:
            reader = Reader(s)
            s.sendall(predict_request(b"1.5"))
            status, _, body = reader.response()
            assert (status, json.loads(body)) == (200, 1.5)
            s.sendall(predict_request(b"0"))  # and the connection is still usable
            assert reader.response()[0] == 200
    finally:
        srv.stop()


def test_idle_connections_are_closed_after_the_keepalive_timeout(server):
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        s.sendall(predict_request(b"{}"))
        reader = Reader(s)
        assert reader.response()[0] == 200
        idle_from = time.monotonic()
        assert reader.closed() and reader.buf == b""  # closed without another answer
        assert TIMEOUT * 0.8 <= time.monotonic() - idle_from <= TIMEOUT + SLACK
    with server.connect(timeout=TIMEOUT + SLACK) as s:  # a fresh connection that never sends anything
        start = time.monotonic()
        reader = Reader(s)
        assert reader.closed() and reader.buf == b""
        assert time.monotonic() - start <= TIMEOUT + SLACK


def test_past_max_connections_a_connection_gets_503_and_later_ones_work():
    srv = Server(MLBUILD_MAX_CONNECTIONS="5")
    held: list[socket.socket] = []
    try:
        for _ in range(5):
            s = srv.connect()
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(s)[0] == 200  # accepted and kept alive
            held.append(s)
        with srv.connect() as sixth:
            reader = Reader(sixth)
            status, headers, body = reader.response()  # sent before the client says anything
            assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
            assert json.loads(body)["error"].endswith("(limit 5, MLBUILD_MAX_CONNECTIONS); retry")
            assert reader.closed()
        for s in held:
            s.close()
        held.clear()
        deadline = time.monotonic() + 10
        while True:  # the server sees the closes a moment later
            with srv.connect() as s:
                s.sendall(predict_request(b'{"ok": true}'))
                try:
                    status, _, body = read_response(s)
                except (EOFError, ConnectionResetError):
                    status = None
                if status == 200:
                    assert json.loads(body) == {"ok": True}
                    break
            assert time.monotonic() < deadline, f"still refused: {status}"
            time.sleep(0.1)
        with srv.connect() as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            metrics = read_response(s)[2].decode()
        assert 'mlbuild_http_limit_rejections_total{limit="max_connections"} 1.0' in metrics
        assert 'mlbuild_http_limit_rejections_total{limit="header_timeout"} 0.0' in metrics
    finally:
        for s in held:
            s.close()
        log = srv.stop()
    assert "request refused: too many open connections" in log and "limit=max_connections" in log


def test_without_httptools_the_server_refuses_to_start_rather_than_serve_unlimited():
    # uvicorn would fall back to h11, which has none of these limits.
    script = (
        "import sys; sys.modules['httptools'] = None\n"
        "from mlbuild_runtime.server.cli import main\n"
        f"sys.exit(main(['--model-dir', {str(ECHO)!r}, '--host', '127.0.0.1', '--port', '{_free_port()}']))\n"
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


def _predict_count(server, status: int) -> float:
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        _, _, body = read_response(s)
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("mlbuild_requests_total{") and 'route="/predict"' in line and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_body_cut_by_its_timeout_never_reaches_the_worker(server):
    # The client got its 408 from the protocol; the half body must not be sent to the worker
    # and counted as the client's bad JSON (422): it is counted as 499, "client closed request".
    before_422, before_499 = _predict_count(server, 422), _predict_count(server, 499)
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        s.sendall(b'{"a"')
        assert Reader(s).response()[0] == 408
    deadline = time.monotonic() + 5
    while _predict_count(server, 499) == before_499 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _predict_count(server, 499) == before_499 + 1
    assert _predict_count(server, 422) == before_422


# -- pipelined requests: the next head in the same read as a complete request -----------------


def test_a_pipelined_partial_head_gets_408_within_the_header_timeout(server):
    # Request 1 complete and the start of request 2's head in one send, then a stall: request
    # 2's header timer runs (not just the idle timer, which would close without an answer).
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        start = time.monotonic()
        s.sendall(predict_request(b'{"p": 1}') + b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        reader = Reader(s)
        status, _, body = reader.response()
        assert (status, json.loads(body)) == (200, {"p": 1})
        status, headers, body = reader.response()
        assert status == 408 and headers["connection"] == "close"
        assert b"MLBUILD_HEADER_TIMEOUT" in body
        assert time.monotonic() - start <= TIMEOUT + SLACK
        assert reader.closed()


@pytest.mark.parametrize("complete", [True, False], ids=["whole-head", "head-still-coming"])
def test_a_pipelined_oversized_head_gets_431_after_the_first_answer(server, complete):
    # 40 000 bytes: over the 32 KiB limit but within one read, where it used to go uncounted.
    head = b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 40_000
    if complete:
        head += b"\r\n\r\n"
    with server.connect(timeout=TIMEOUT + SLACK) as s:
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
    with server.connect(timeout=TIMEOUT + SLACK) as s:
        s.sendall(b"".join(one + b"Content-Length: 8\r\n\r\n" + b'{"i": %d}' % i for i in range(3)))
        reader = Reader(s)
        assert [json.loads(reader.response()[2]) for _ in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]


# -- send timeout: a client that never reads its answer ---------------------------------------


def _metric(srv: Server, name: str, label: str) -> float:
    with srv.connect(timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        text = read_response(s)[2].decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{label}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _small_window_socket(srv: Server, rcvbuf: int = 4096) -> socket.socket:
    s = socket.socket()
    # before connect, so the advertised window stays small: the answer piles up in the server
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", srv.port))
    return s


SEND_TIMEOUT = 1.0


def test_a_client_that_never_reads_its_answer_is_cut_after_the_send_timeout():
    # Each answer (6 MiB, the echo of the body) sits in the server's write buffer while the
    # client does not read; past MLBUILD_SEND_TIMEOUT without progress the connection is cut,
    # freeing the answer and the connection slot. Every other timeout is far longer here, so
    # only the send timeout can be what closes them.
    srv = Server(MLBUILD_SEND_TIMEOUT=str(SEND_TIMEOUT), MLBUILD_KEEPALIVE_TIMEOUT="600",
                 MLBUILD_HEADER_TIMEOUT="600", MLBUILD_BODY_TIMEOUT="600")  # fmt: skip
    body = json.dumps({"x": "a" * (6 << 20)}).encode()
    socks = []
    try:
        for _ in range(4):
            s = _small_window_socket(srv)
            s.sendall(predict_request(body))
            socks.append(s)
        # The check runs every SEND_TIMEOUT: a stalled write is cut within 2 x SEND_TIMEOUT.
        deadline = time.monotonic() + 2 * SEND_TIMEOUT + SLACK
        while _metric(srv, "mlbuild_http_limit_rejections_total", 'limit="send_timeout"') < 4:
            assert time.monotonic() < deadline, "connections not reading their answers were not cut"
            time.sleep(0.2)
        for s in socks:  # what the kernel already holds may be read; then the connection ends
            got = 0
            s.settimeout(SLACK)
            try:
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                pass
            assert got < len(body)  # cut, not answered in full
        assert _metric(srv, "mlbuild_http_limit_rejections_total", 'limit="send_timeout"') == 4
    finally:
        for s in socks:
            s.close()
        log = srv.stop()
    assert "request refused: response not read by the client for 1 seconds (MLBUILD_SEND_TIMEOUT)" in log


def test_a_slow_but_steady_reader_gets_its_whole_answer():
    # Progress, not total time, is what the send timeout limits: an answer that takes longer
    # than the timeout to read is not cut while the client keeps reading.
    srv = Server(MLBUILD_SEND_TIMEOUT=str(SEND_TIMEOUT))
    body = json.dumps({"x": "a" * (6 << 20)}).encode()
    try:
        with _small_window_socket(srv, 64 << 10) as s:
            s.sendall(predict_request(body))
            reader = Reader(s)
            start = time.monotonic()
            while b"\r\n\r\n" not in reader.buf:
                reader._fill()
            head, _, _ = reader.buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            total = len(head) + 4 + length
            while len(reader.buf) < total:
                data = s.recv(256 << 10)
                assert data, f"cut after {len(reader.buf)} of {total} bytes"
                reader.buf += data
                time.sleep(0.06)
            assert time.monotonic() - start > SEND_TIMEOUT  # the read really was slower than the timeout
            assert reader.response()[0] == 200 and reader.buf == b""
        assert _metric(srv, "mlbuild_http_limit_rejections_total", 'limit="send_timeout"') == 0
    finally:
        srv.stop()
