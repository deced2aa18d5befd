"""The server's settings, read once from one precedence chain into a frozen object.

Precedence, highest first (the only place settings are read)::

    command-line flag  >  MLBUILD_<NAME> environment variable  >  default

=================  ===========================  ==========================  =========================
field              flag                         environment variable        default
=================  ===========================  ==========================  =========================
host               --host                       MLBUILD_HOST                0.0.0.0
port               --port                       MLBUILD_PORT, AIP_HTTP_PORT 8080
workers            --workers                    MLBUILD_WORKERS             1
predict_timeout    --predict-timeout (seconds)  MLBUILD_PREDICT_TIMEOUT     60
max_body_size      --max-body-size (bytes)      MLBUILD_MAX_BODY_SIZE       10 MiB (10485760)
max_response_size  --max-response-size (bytes)  MLBUILD_MAX_RESPONSE_SIZE   40 MiB (4 x the body limit)
max_json_depth     --max-json-depth             MLBUILD_MAX_JSON_DEPTH      100 (1-400)
max_header_size    --max-header-size (bytes)    MLBUILD_MAX_HEADER_SIZE     32 KiB (request line + headers)
max_header_count   --max-header-count           MLBUILD_MAX_HEADER_COUNT    100
header_timeout     --header-timeout (seconds)   MLBUILD_HEADER_TIMEOUT      60 (request line + headers)
body_timeout       --body-timeout (seconds)     MLBUILD_BODY_TIMEOUT        60 (whole body)
keepalive_timeout  --keepalive-timeout          MLBUILD_KEEPALIVE_TIMEOUT   75 (idle between requests)
max_connections    --max-connections            MLBUILD_MAX_CONNECTIONS     512 (503 + Retry-After past it)
send_timeout       --send-timeout (seconds)     MLBUILD_SEND_TIMEOUT        60 (a response write making no progress)
log_format         --log-format                 MLBUILD_LOG_FORMAT          auto (json unless a TTY)
log_level          --log-level                  MLBUILD_LOG_LEVEL           info
access_log         --access-log                 MLBUILD_ACCESS_LOG          errors (all | errors | off)
grace_period       --grace-period (seconds)     MLBUILD_GRACE_PERIOD        30
model_dir          --model-dir                  MLBUILD_MODEL_DIR           current directory
python             --python                     MLBUILD_PYTHON              this interpreter
entrypoint         --entrypoint                 MLBUILD_ENTRYPOINT          (worker's default rule)
model_name         --model-name                 MLBUILD_MODEL_NAME          model directory's name
model_version      --model-version              MLBUILD_MODEL_VERSION       (none)
lock_digest        --lock-digest                MLBUILD_LOCK_DIGEST         (none)
predict_route      (Vertex AI) -                AIP_PREDICT_ROUTE           (none: no extra route)
health_route       (Vertex AI) -                AIP_HEALTH_ROUTE            (none: no extra route)
=================  ===========================  ==========================  =========================

``AIP_HTTP_PORT`` (set by Vertex AI) is read only when neither --port nor MLBUILD_PORT is given.
An environment variable set to the empty string counts as unset (``docker run -e X=`` is common).
``max_body_bytes_in_flight`` (``--max-body-bytes-in-flight``, ``MLBUILD_MAX_BODY_BYTES_IN_FLIGHT``,
default 64 MiB, or the body limit if that is larger) caps the request-body bytes all connections
hold together (503 past it); set below ``MLBUILD_MAX_BODY_SIZE`` it is an error (a body of the
largest allowed size could never pass).
``--max-body-size`` also takes a unit: ``512KiB``, ``10MiB``, ``1GiB``, ``5MB`` (decimal), ``64k``.
A bad value raises :class:`SettingsError` whose message names the flag or variable it came from.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..worker import protocol

__all__ = ["Settings", "SettingsError", "build_parser"]

KIB = 1 << 10
MIB = 1 << 20


class SettingsError(Exception):
    """A setting has a bad value. ``str()`` is one line naming where the value came from."""


@dataclass(frozen=True)
class Settings:
    """Everything the server needs, validated. Build it with :meth:`from_sources`."""

    model_dir: Path
    python: str
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    predict_timeout: float = 60.0
    max_body_size: int = 10 * MIB
    # Hostile-input limits; nginx/Envoy/gunicorn defaults are the anchors (docs/settings.md
    # says which one each follows and why).
    max_response_size: int = 40 * MIB
    max_json_depth: int = 100
    max_header_size: int = 32 * KIB
    max_header_count: int = 100
    header_timeout: float = 60.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 512
    # nginx `send_timeout`: a client that stops reading its answer holds the answer (and a
    # connection) in memory; past this many seconds without progress the connection is cut.
    send_timeout: float = 60.0
    # Server-wide budget of request-body bytes held at once (every connection may buffer up to
    # max_body_size otherwise: 512 x 10 MiB is 5 GiB). 64 MiB: six bodies of the default
    # maximum size at once, a small share of a 512 MiB container; past it 503 + Retry-After.
    max_body_bytes_in_flight: int = 64 * MIB
    log_format: str = "auto"  # json | text | auto
    log_level: str = "info"
    # One line per request costs about a third of the server's CPU per trivial request (a
    # record, a JSON encode and a write syscall): by default only answers >= 400 get a line;
    # /metrics carries counts and latency of the rest. "all" logs every request.
    access_log: str = "errors"
    grace_period: float = 30.0
    entrypoint: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    lock_digest: str | None = None
    predict_route: str | None = None
    health_route: str | None = None

    @classmethod
    def from_sources(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Read flags (``argv``, default ``sys.argv[1:]``) over ``environ`` (default os.environ)
        over the defaults. Raises SettingsError on a bad value; argparse exits 2 on an unknown
        flag."""
        environ = os.environ if environ is None else environ
        args = build_parser().parse_args(argv)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for spec in _SPECS:
            raw, source = _lookup(spec, args, environ)
            if raw is None:
                continue
            try:
                values[spec.field] = spec.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{source}={raw!r}: {exc}") from None
            sources[spec.field] = f"{source}={raw!r}"
        _check_body_budget(values, sources)
        values.setdefault("model_dir", Path.cwd().resolve())
        values.setdefault("python", sys.executable)
        values.setdefault("model_name", values["model_dir"].name or None)
        return cls(**values)

    def resolved_log_format(self, stream=None) -> str:
        """``json`` or ``text``: ``auto`` means JSON lines unless ``stream`` (stderr) is a TTY."""
        if self.log_format != "auto":
            return self.log_format
        stream = sys.stderr if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"


def _check_body_budget(values: dict[str, Any], sources: dict[str, str]) -> None:
    """The body budget must admit one body of the largest allowed size. Unset, it follows a
    body limit raised past 64 MiB; set explicitly below the body limit, it is an error."""
    body = values.get("max_body_size", Settings.max_body_size)
    if "max_body_bytes_in_flight" not in values:
        if body > Settings.max_body_bytes_in_flight:
            values["max_body_bytes_in_flight"] = body
        return
    if values["max_body_bytes_in_flight"] < body:
        limit = sources.get("max_body_size", f"the default MLBUILD_MAX_BODY_SIZE={body}")
        raise SettingsError(
            f"{sources['max_body_bytes_in_flight']}: must be at least the body limit ({limit}, "
            f"{body} bytes), or a body of the largest allowed size could never be received"
        )


# --- parsers: each raises ValueError with a message that reads well after "FLAG='value': " ---


def _positive_int(limit: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if not 1 <= value <= limit:
            raise ValueError(f"must be between 1 and {limit}")
        return value

    return parse


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip().removesuffix("s"))
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError("must be greater than 0" if not allow_zero else "must not be negative")
        return value

    return parse


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
    "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
}  # fmt: skip
_SIZE_RE = re.compile(r"[ \t]*([0-9]+)[ \t]*([a-zA-Z]*)[ \t]*")


def _depth(raw: str) -> int:
    # The worker's decoder and validator recurse per level; 400 keeps them well inside
    # Python's default recursion limit (1000) whatever the model's own frames use.
    return _positive_int(_MAX_JSON_DEPTH)(raw)


_MAX_JSON_DEPTH = 400


def _byte_size(raw: str) -> int:
    match = _SIZE_RE.fullmatch(raw)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError("must be a byte count such as 10485760, 512KiB or 10MiB")
    value = int(match.group(1)) * _SIZE_UNITS[unit]
    if value < 1:
        raise ValueError("must be at least 1 byte")
    # The wire protocol refuses frames over MAX_FRAME (1 GiB, counting the frame's 9-byte kind
    # and id): a body limit above what fits in one frame could never be honoured.
    if value > _MAX_BODY:
        raise ValueError(f"must be at most {_MAX_BODY} bytes (1GiB less the frame header)")
    return value


_MAX_BODY = protocol.MAX_FRAME - protocol.KIND_ID_SIZE


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _host(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a host name or IP address")
    return value


def _directory(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.exists():
        raise ValueError("no such directory")
    if not path.is_dir():
        raise ValueError("is not a directory")
    return path.resolve()


def _executable(raw: str) -> str:
    # A bare name is looked up on PATH; a path must exist and be executable. The worker is
    # started with this interpreter, so a typo here would otherwise show up as a load failure.
    if os.sep not in raw:
        found = shutil.which(raw)
        if found is None:
            raise ValueError("not found on PATH")
        return found
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError("no such file")
    if not os.access(path, os.X_OK):
        raise ValueError("is not executable")
    return str(path.absolute())  # not resolve(): a venv's python symlink must stay the venv's


# fullmatch and ASCII classes: `$` matches before a trailing newline and \w admits any letter.
_ENTRYPOINT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?")


def _entrypoint(raw: str) -> str:
    value = raw.strip()
    if not _ENTRYPOINT_RE.fullmatch(value):
        raise ValueError("must look like module:attr (for example predict:Model)")
    return value


def _text(raw: str) -> str:
    value = raw.strip()
    # Every str.splitlines separator and other control characters: the value lands in
    # /metadata and in log lines, where a line break would forge a record.
    if not value or any(ch.isspace() and ch != " " or not ch.isprintable() for ch in value):
        raise ValueError("must be a non-empty single line of printable characters")
    return value


_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def _digest(raw: str) -> str:
    value = raw.strip()
    if not _DIGEST_RE.fullmatch(value):
        raise ValueError("must be sha256: followed by 64 lowercase hex digits")
    return value


def _route(raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError("must be a URL path starting with /")
    return value


@dataclass(frozen=True)
class _Spec:
    field: str
    flag: str | None  # None: environment only (Vertex AI variables)
    env: tuple[str, ...]  # tried in order
    parse: Callable[[str], Any]
    help: str


_SPECS: tuple[_Spec, ...] = (
    _Spec("model_dir", "--model-dir", ("MLBUILD_MODEL_DIR",), _directory,
          "model directory (default: current directory)"),
    _Spec("python", "--python", ("MLBUILD_PYTHON",), _executable,
          "python interpreter of the model env, runs the workers (default: this one)"),
    _Spec("entrypoint", "--entrypoint", ("MLBUILD_ENTRYPOINT",), _entrypoint,
          "module:attr of the model (default: predict:Model or predict:predict)"),
    _Spec("host", "--host", ("MLBUILD_HOST",), _host, "address to bind (default 0.0.0.0)"),
    _Spec("port", "--port", ("MLBUILD_PORT", "AIP_HTTP_PORT"), _positive_int(65535),
          "port to bind (default 8080)"),
    _Spec("workers", "--workers", ("MLBUILD_WORKERS",), _positive_int(256),
          "number of model worker processes (default 1)"),
    _Spec("predict_timeout", "--predict-timeout", ("MLBUILD_PREDICT_TIMEOUT",),
          _seconds(allow_zero=False), "seconds before a prediction gets 504 (default 60)"),
    _Spec("max_body_size", "--max-body-size", ("MLBUILD_MAX_BODY_SIZE",), _byte_size,
          "largest request body, e.g. 10MiB (default 10MiB)"),
    _Spec("max_response_size", "--max-response-size", ("MLBUILD_MAX_RESPONSE_SIZE",), _byte_size,
          "largest answer a worker may send; past it the request gets 500 (default 40MiB)"),
    _Spec("max_json_depth", "--max-json-depth", ("MLBUILD_MAX_JSON_DEPTH",), _depth,
          "deepest nesting of arrays/objects in a request; deeper gets 422 (default 100)"),
    _Spec("max_header_size", "--max-header-size", ("MLBUILD_MAX_HEADER_SIZE",), _byte_size,
          "largest request line + headers; past it 431 (default 32KiB)"),
    _Spec("max_header_count", "--max-header-count", ("MLBUILD_MAX_HEADER_COUNT",), _positive_int(10000),
          "most header fields in one request; past it 431 (default 100)"),
    _Spec("header_timeout", "--header-timeout", ("MLBUILD_HEADER_TIMEOUT",), _seconds(allow_zero=False),
          "seconds to receive the request line and headers; past it 408 and close (default 60)"),
    _Spec("body_timeout", "--body-timeout", ("MLBUILD_BODY_TIMEOUT",), _seconds(allow_zero=False),
          "seconds to receive the whole body once headers are in; past it 408 and close (default 60)"),
    _Spec("keepalive_timeout", "--keepalive-timeout", ("MLBUILD_KEEPALIVE_TIMEOUT",),
          _seconds(allow_zero=False), "seconds an idle keep-alive connection stays open (default 75)"),
    _Spec("max_connections", "--max-connections", ("MLBUILD_MAX_CONNECTIONS",), _positive_int(1_000_000),
          "most open connections; past it 503 with Retry-After and close (default 512)"),
    _Spec("send_timeout", "--send-timeout", ("MLBUILD_SEND_TIMEOUT",), _seconds(allow_zero=False),
          "seconds a response write may make no progress (client not reading) before the "
          "connection is cut (default 60)"),
    _Spec("max_body_bytes_in_flight", "--max-body-bytes-in-flight", ("MLBUILD_MAX_BODY_BYTES_IN_FLIGHT",),
          _byte_size, "request-body bytes all connections together may hold; past it 503 with "
                      "Retry-After (default 64MiB or --max-body-size if larger)"),
    _Spec("log_format", "--log-format", ("MLBUILD_LOG_FORMAT",), _choice("json", "text", "auto"),
          "json, text or auto: json unless stderr is a terminal (default auto)"),
    _Spec("log_level", "--log-level", ("MLBUILD_LOG_LEVEL",),
          _choice("debug", "info", "warning", "error"), "debug, info, warning, error (default info)"),
    _Spec("access_log", "--access-log", ("MLBUILD_ACCESS_LOG",), _choice("all", "errors", "off"),
          "access log lines: all, errors (status >= 400) or off (default errors)"),
    _Spec("grace_period", "--grace-period", ("MLBUILD_GRACE_PERIOD",), _seconds(allow_zero=True),
          "seconds to finish in-flight requests after SIGTERM (default 30)"),
    _Spec("model_name", "--model-name", ("MLBUILD_MODEL_NAME",), _text,
          "model name for /metadata (default: model directory name)"),
    _Spec("model_version", "--model-version", ("MLBUILD_MODEL_VERSION",), _text,
          "model version for /metadata"),
    _Spec("lock_digest", "--lock-digest", ("MLBUILD_LOCK_DIGEST",), _digest,
          "sha256 digest of mlbuild.lock, for /metadata"),
    _Spec("predict_route", None, ("AIP_PREDICT_ROUTE",), _route, ""),
    _Spec("health_route", None, ("AIP_HEALTH_ROUTE",), _route, ""),
)  # fmt: skip

assert {s.field for s in _SPECS} == {f.name for f in fields(Settings)}


def _dest(spec: _Spec) -> str:
    return spec.field


def _lookup(spec: _Spec, args: argparse.Namespace, environ: Mapping[str, str]):
    """(raw value, where it came from) by precedence, or (None, None) for the default."""
    if spec.flag is not None:
        raw = getattr(args, _dest(spec))
        if raw is not None:
            return raw, spec.flag
    for name in spec.env:
        raw = environ.get(name)
        if raw:  # empty counts as unset
            return raw, name
    return None, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlbuild_runtime",
        description="mlbuild model server: HTTP front (this env) over model worker processes "
        "(the model env). Precedence: flag > MLBUILD_* environment variable > default.",
    )
    for spec in _SPECS:
        if spec.flag is None:
            continue
        # type=str and default=None: parsing happens in one place (the spec), and None tells
        # "flag not given" apart from any real value.
        parser.add_argument(
            spec.flag,
            dest=_dest(spec),
            default=None,
            metavar=spec.field.upper(),
            help=f"{spec.help} [env {', '.join(spec.env)}]",
        )
    return parser
