"""Why a prediction got no answer from a worker. Each maps to one HTTP status in the app."""

from __future__ import annotations

__all__ = ["NoWorkerReady", "PoolError", "PredictTimeout", "WorkerDied"]


class PoolError(Exception):
    status = 503
    error = "unavailable"


class NoWorkerReady(PoolError):
    """No worker is ready (still loading, failed, restarting) or none became free in time."""

    status = 503
    error = "model not ready"


class WorkerDied(PoolError):
    """The worker handling the request exited (segfault, os._exit, OOM kill) before answering."""

    status = 503
    error = "worker died"


class PredictTimeout(PoolError):
    """The prediction ran past the timeout; the worker was killed and is being replaced."""

    status = 504
    error = "prediction timed out"
