"""Why a prediction got no answer from a worker. Each maps to one HTTP status in the app."""

from __future__ import annotations

__all__ = ["NoWorkerReady", "PoolError", "PredictTimeout", "ResponseTooLarge", "WorkerDied"]


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


class ResponseTooLarge(PoolError):
    """The worker started sending an answer longer than max_response_size. The frame was not
    read (a protocol violation: a worker checks the size itself before sending); the worker was
    killed and is being replaced."""

    status = 500

    def __init__(self, limit: int, size: int, slot: int) -> None:
        super().__init__(
            f"worker {slot} sent a {size}-byte answer, more than max_response_size ({limit} bytes); "
            "worker replaced"
        )
        # The client's "error" field: what happened and which limit, nothing of the model's.
        self.error = f"prediction failed: response larger than max_response_size ({limit} bytes)"
