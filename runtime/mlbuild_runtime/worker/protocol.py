"""Wire format between the server (server env) and a worker (model env). Standard library only.

A frame is::

    u32 big-endian N | u8 kind | u64 big-endian request id | N-9 payload bytes

The worker reads frames on the file descriptor that was its stdin and writes frames on the
one that was its stdout; at start it moves fds 0/1 aside (dup) and points fd 1 at stderr, so
a model that prints cannot corrupt the stream. Its stderr is the log.

Message kinds (W = worker, S = server):

=========  ====  ====================================================================
kind       dir   payload
=========  ====  ====================================================================
HELLO      W→S   JSON: {"protocol": 1, "pid", "python", "entrypoint", "input_schema",
                 "output_schema"} - sent after importing the entrypoint, before load();
                 also "executable", "kind" ("class"|"function"), "async" (bool).
                 "python" is the version ("3.11.7"); "entrypoint" is "module:attr".
                 The schemas are self-contained JSON Schema documents ({} = any JSON);
                 named types are inlined, only recursive ones stay as "#/$defs/Name"
                 refs with "$defs" at the schema's root
READY      W→S   JSON: {"load_seconds": float} - load() returned; worker takes requests
FATAL      W→S   JSON: {"phase": "import"|"load", "error_type", "message", "traceback"}
                 - the worker exits right after sending it
REQUEST    S→W   the raw JSON request body, as the client sent it (the server does not
                 parse it: the worker does, once)
RESULT     W→S   JSON bytes of the output
ERROR      W→S   JSON: {"status": 422, "detail": [{"loc": [...], "msg", "type"}]} or
                 {"status": 500, "error_type", "message", "traceback"}; the server logs
                 message/traceback and never sends them to the client. A 500 the worker
                 raises itself (not the model) may add "error": a short text that is safe
                 to show the client (e.g. "response larger than max_response_size (N
                 bytes)"); the server puts it in the client's "error" field
SHUTDOWN   S→W   empty: finish and exit 0
=========  ====  ====================================================================

The request id of HELLO/READY/FATAL/SHUTDOWN is 0; RESULT/ERROR echo the REQUEST's id.

Limits. The server passes its request-path limits in the worker's environment (read once at
start; unset or invalid means the default):

* ``MLBUILD_MAX_JSON_DEPTH`` (default 100): a body whose arrays/objects nest deeper gets
  ERROR 422 (type ``json_too_deep``), found by a linear scan before anything is decoded.
* ``MLBUILD_MAX_RESPONSE_SIZE`` (default 40 MiB): a RESULT payload larger than this is never
  sent; the worker sends ERROR 500 with ``"error": "response larger than max_response_size
  (N bytes)"`` instead. The server refuses (without reading it) any RESULT frame longer than
  this, and any other frame longer than max(this, 4 MiB): it fails the request with 500 and
  replaces the worker, as for any protocol violation.
* ``MLBUILD_WORKER_TOKEN``: a random tag that every process the model starts inherits, so the
  worker (before it exits) and the server (after it died) can end them all (proctree.py); a
  worker started without one makes its own.

Every exception the body or the model raises (SystemExit and KeyboardInterrupt included)
becomes an ERROR; only a crash of the interpreter itself ends the worker.
"""

from __future__ import annotations

import struct

PROTOCOL_VERSION = 1

HELLO = 1
READY = 2
FATAL = 3
REQUEST = 4
RESULT = 5
ERROR = 6
SHUTDOWN = 7

KIND_NAMES = {
    HELLO: "HELLO",
    READY: "READY",
    FATAL: "FATAL",
    REQUEST: "REQUEST",
    RESULT: "RESULT",
    ERROR: "ERROR",
    SHUTDOWN: "SHUTDOWN",
}

HEADER = struct.Struct(">IBQ")  # length (of kind+id+payload), kind, request id
PREFIX_SIZE = 4  # the u32 length
KIND_ID_SIZE = HEADER.size - PREFIX_SIZE  # 9

# A frame larger than this is a protocol error, not a big request: the server caps bodies
# well below it, and a runaway length prefix must not make either side allocate gigabytes.
MAX_FRAME = 1 << 30


class ProtocolError(Exception):
    """The byte stream is not a valid frame sequence (truncated, oversized, unknown kind)."""


def encode(kind: int, request_id: int, payload: bytes = b"") -> bytes:
    """One frame as bytes."""
    return HEADER.pack(KIND_ID_SIZE + len(payload), kind, request_id) + payload


def decode_header(header: bytes) -> tuple[int, int, int]:
    """(payload_length, kind, request_id) from the first HEADER.size bytes of a frame."""
    length, kind, request_id = HEADER.unpack(header)
    if length < KIND_ID_SIZE or length > MAX_FRAME:
        raise ProtocolError(f"bad frame length {length}")
    if kind not in KIND_NAMES:
        raise ProtocolError(f"unknown frame kind {kind}")
    return length - KIND_ID_SIZE, kind, request_id


def read_frame(stream) -> tuple[int, int, bytes] | None:
    """Read one frame from a blocking binary stream: (kind, request_id, payload), or None at a
    clean end of stream (EOF before any byte of a frame)."""
    header = _read_exactly(stream, HEADER.size, allow_eof=True)
    if header is None:
        return None
    size, kind, request_id = decode_header(header)
    payload = _read_exactly(stream, size, allow_eof=False) if size else b""
    return kind, request_id, payload


def _read_exactly(stream, n: int, *, allow_eof: bool) -> bytes | None:
    chunks = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            if allow_eof and remaining == n:
                return None
            raise ProtocolError(f"stream ended inside a frame ({n - remaining} of {n} bytes)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
