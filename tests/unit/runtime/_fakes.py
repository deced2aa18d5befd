"""Fakes shared by the runtime's unit tests: a pool that echoes (for the app run in-process),
a request through httpx's ASGI transport, and the start of every fake worker script (the frame
protocol over the pipes, as the real worker speaks it)."""

from __future__ import annotations

import asyncio
import collections

import httpx
from mlbuild_runtime.server import Health, HealthReport
from mlbuild_runtime.worker import protocol as P


class EchoPool:
    """A ready pool of one that answers every body with itself and keeps what it was sent."""

    size = 1
    hello = None

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.restarts: collections.Counter[str] = collections.Counter()

    async def start(self) -> None:
        pass

    async def stop(self, timeout: float) -> None:
        pass

    def health(self) -> HealthReport:
        return HealthReport(Health.READY, None, 1, 1)

    async def predict(self, body: bytes) -> tuple[int, bytes]:
        self.bodies.append(body)
        return P.RESULT, body


def call(app, method: str, path: str, **kw) -> httpx.Response:
    """One request to ``app`` in-process (no server, no socket)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


# The first lines of a fake worker script, run as `python SCRIPT PROTOCOL_DIR`: the real frame
# protocol module, binary pipes, and `send(kind, request_id, obj)`.
FAKE_WORKER_PRELUDE = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import protocol as p
rd = os.fdopen(os.dup(0), "rb", buffering=0)
wr = os.fdopen(os.dup(1), "wb", buffering=0)
def send(kind, rid, obj):
    wr.write(p.encode(kind, rid, obj if isinstance(obj, bytes) else json.dumps(obj).encode()))
'''
