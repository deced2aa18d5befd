"""Log setup: JSON lines (one object per line) or plain text, on stderr.

Every record may carry ``extra={"fields": {...}}``; those keys are merged into the JSON object
(or appended as key=value in text). The request id of the request being served is added from a
context variable set by the middleware, so any log line written while serving carries it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "request_id_var"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mlbuild_request_id", default=None
)


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        fields = record.__dict__.get("fields")
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record.created), record.levelname, record.name, record.getMessage()]
        request_id = request_id_var.get()
        if request_id is not None:
            parts.append(f"request_id={request_id}")
        fields = record.__dict__.get("fields") or {}
        tail = None
        for key, value in fields.items():
            if isinstance(value, str) and "\n" in value:
                tail = value  # a traceback: print it below the line, not inline
                continue
            parts.append(f"{key}={value}")
        line = " ".join(str(p) for p in parts)
        if tail:
            line += "\n" + tail.rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(log_format: str, level: str = "info", stream=None) -> None:
    """Route every logger (ours, uvicorn's) to one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
