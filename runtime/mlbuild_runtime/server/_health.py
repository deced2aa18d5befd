"""The pool's health, as /health/ready reports it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Health", "HealthReport"]


class Health(str, enum.Enum):
    """Readiness of the whole server (every worker), worst state wins.

    STARTING    workers are importing / loading the model for the first time
    READY       every worker has loaded the model and takes requests
    RESTARTING  a worker that was ready died (crash, timeout kill) and is being replaced
    FAILED      a worker could not import or load the model; retried with backoff, reason kept
    STOPPING    SIGTERM received: finishing in-flight requests, then exiting
    """

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass(frozen=True)
class HealthReport:
    status: Health
    reason: str | None  # why it is not READY (e.g. the load error type and message)
    ready_workers: int
    total_workers: int
