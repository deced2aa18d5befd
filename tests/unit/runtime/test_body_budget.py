"""The server-wide budget of request-body bytes (MLBUILD_MAX_BODY_BYTES_IN_FLIGHT): the budget
object itself, and the real server (`python -m mlbuild_runtime` over the echo model) under
concurrent uploads that together pass it - the excess gets 503 + Retry-After before its body is
read, the server's memory stays bounded, and the budget is whole again afterwards (the
mlbuild_body_bytes_in_flight gauge returns to 0)."""

from __future__ import annotations

import json
import select
import socket

import pytest
from _server_process import MODELS, Reader, ServerProcess, read_response, status_mib, wait_until
from mlbuild_runtime.server._budget import BodyBudget

MIB = 1 << 20
_REFUSALS = 'mlbuild_http_limit_rejections_total{limit="max_body_bytes_in_flight"}'


# -- the budget object ------------------------------------------------------------------------


def test_take_and_give_back():
    refused = []
    budget = BodyBudget(100, on_refused=lambda: refused.append(1))
    assert budget.take(60) and budget.take(40)
    assert budget.in_flight == 100
    assert not budget.take(1) and budget.in_flight == 100  # refused: nothing taken
    assert refused == [1]
    budget.give_back(40)
    assert budget.take(0) and budget.take(40) and budget.in_flight == 100
    budget.give_back(100)
    assert budget.in_flight == 0 and refused == [1]


def test_giving_back_more_than_was_taken_is_a_bug_not_more_room():
    budget = BodyBudget(10)
    budget.take(5)
    with pytest.raises(RuntimeError, match="gave back 6 bytes, only 5 were taken"):
        budget.give_back(6)
    assert budget.in_flight == 5


def test_a_budget_needs_room():
    with pytest.raises(ValueError):
        BodyBudget(0)


# -- the real server --------------------------------------------------------------------------


def serve(log_dir, **env: str) -> ServerProcess:
    return ServerProcess(MODELS / "echo", log_dir, env=env, log_format="text")


def _in_flight(srv: ServerProcess) -> float | None:
    return srv.sample("mlbuild_body_bytes_in_flight")


def _wait_in_flight(srv: ServerProcess, expected: int) -> None:
    wait_until(lambda: _in_flight(srv) == expected, what=f"mlbuild_body_bytes_in_flight == {expected}")


def _rss_mib(pid: int) -> float:
    return status_mib(pid, "VmRSS")


def _json_body(size: int) -> bytes:
    start, end = b'{"x": "', b'"}'
    return start + b"a" * (size - len(start) - len(end)) + end


def _head(length: int) -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % length)  # fmt: skip


def _answered(socks: list[socket.socket]) -> list[socket.socket]:
    """The sockets with an answer waiting to be read (none is waited for)."""
    return select.select(socks, [], [], 0)[0]


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_uploads_past_the_budget_get_503_and_memory_stays_bounded(tmp_path):
    # 25 connections each start a body of 10 MiB - 1 (the default body limit) with a 32 MiB
    # budget: 3 fit; the other 22 get 503 at once, before their bodies are read. Without the
    # budget the server took ~250 MiB for this within a second.
    body_size = 10 * MIB - 1
    budget = 32 * MIB
    socks: list[socket.socket] = []
    with serve(tmp_path, MLBUILD_MAX_BODY_BYTES_IN_FLIGHT=str(budget), MLBUILD_BODY_TIMEOUT="120") as srv:
        try:
            rss_before = _rss_mib(srv.proc.pid)
            body = _json_body(body_size)
            for _ in range(25):
                s = srv.connect()
                s.sendall(_head(body_size))
                socks.append(s)
            _wait_in_flight(srv, 3 * body_size)
            # Each 503 is written before its refusal is counted: once the count is 22, every
            # refused socket has its answer on the way; the 22 answers arrive, the 3 others
            # (accepted) get theirs only once their bodies are complete, below.
            wait_until(lambda: srv.sample(_REFUSALS) == 22, what="22 refusals counted")
            wait_until(lambda: len(_answered(socks)) >= 22, what="22 answers arrived")
            answered = _answered(socks)
            refused = [(s, Reader(s).response()) for s in answered]
            accepted = [s for s in socks if s not in answered]
            assert len(refused) == 22 and len(accepted) == 3
            for _, (status, headers, answer) in refused:
                assert status == 503
                assert headers["retry-after"] == "1" and headers["connection"] == "close"
                assert "MLBUILD_MAX_BODY_BYTES_IN_FLIGHT" in json.loads(answer)["error"]
            for s in socks:  # every body but its last byte: the server holds what it accepted
                _send(s, body[:-1])
            rss_held = _rss_mib(srv.proc.pid)
            # 3 bodies of 10 MiB held (plus a copy while the last read is joined), nowhere near 25
            assert rss_held - rss_before < 3 * budget / MIB, (rss_before, rss_held)
            for s in accepted:
                s.sendall(body[-1:])
            for s in accepted:
                status, _, answer = Reader(s).response()
                assert status == 200 and len(answer) >= body_size - 2
            _wait_in_flight(srv, 0)  # every byte taken was given back
            with srv.connect() as s:  # and a normal request is served
                s.sendall(_head(8) + b'{"a": 1}')
                assert read_response(s)[0] == 200
            assert srv.sample(_REFUSALS) == 22
        finally:
            for s in socks:
                s.close()


def test_a_chunked_body_is_counted_as_it_arrives_and_refused_when_the_budget_runs_out(tmp_path):
    env = {"MLBUILD_MAX_BODY_SIZE": "1MiB", "MLBUILD_MAX_BODY_BYTES_IN_FLIGHT": "1MiB", "MLBUILD_BODY_TIMEOUT": "120"}
    with serve(tmp_path, **env) as srv:
        body = _json_body(MIB)
        with srv.connect() as holder, srv.connect() as chunked:
            holder.sendall(_head(MIB) + body[: MIB // 2])  # takes the whole budget
            _wait_in_flight(srv, MIB)
            chunked.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n7\r\n{\"a\": 1\r\n")  # fmt: skip
            status, headers, answer = Reader(chunked).response()
            assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
            holder.sendall(body[MIB // 2 :])
            assert Reader(holder).response()[0] == 200
        _wait_in_flight(srv, 0)
        with srv.connect() as s:  # the budget is whole again: a chunked body is served
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n7\r\n{\"a\": 1\r\n1\r\n}\r\n0\r\n\r\n")  # fmt: skip
            status, _, answer = read_response(s)
            assert (status, json.loads(answer)) == (200, {"a": 1})


def test_a_client_that_leaves_mid_body_gives_its_share_back(tmp_path):
    env = {"MLBUILD_MAX_BODY_SIZE": "1MiB", "MLBUILD_MAX_BODY_BYTES_IN_FLIGHT": "2MiB", "MLBUILD_BODY_TIMEOUT": "120"}
    with serve(tmp_path, **env) as srv:
        with srv.connect() as s:
            s.sendall(_head(MIB) + b'{"x": "aaaa')
            _wait_in_flight(srv, MIB)
        _wait_in_flight(srv, 0)  # closed mid-body: released
        with srv.connect() as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n4\r\n[1, \r\n")  # fmt: skip
            wait_until(lambda: _in_flight(srv) != 0, what="the chunk counted as it arrives")
        _wait_in_flight(srv, 0)
