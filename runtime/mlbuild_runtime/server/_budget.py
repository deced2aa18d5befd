"""A server-wide budget of request-body bytes held in memory at once.

Every connection may hold a body of up to ``max_body_size`` while it arrives and while its
worker answers; 512 connections x 10 MiB would be 5 GiB. The /predict handler takes a
request's bytes from this budget before reading its body (the whole Content-Length at once, or
chunk by chunk as a chunked body arrives) and gives them back when the request is done - after
the worker's answer, because the body stays referenced in the server until then. Past the
budget the request gets 503 + Retry-After instead of more memory.

The event loop is single-threaded: no lock. Plain ints: the hot path is two comparisons and
two additions per request.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BodyBudget"]


class BodyBudget:
    """``capacity`` bytes, handed out by :meth:`take` and returned by :meth:`give_back`.
    ``on_refused()`` is called once per refusal (a metrics counter)."""

    __slots__ = ("capacity", "in_flight", "on_refused")

    def __init__(self, capacity: int, on_refused: Callable[[], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("a body budget needs at least 1 byte")
        self.capacity = capacity
        self.in_flight = 0  # bytes taken and not yet given back
        self.on_refused = on_refused

    def take(self, size: int) -> bool:
        """Take ``size`` bytes; False (and nothing taken) when fewer are left."""
        in_flight = self.in_flight + size
        if in_flight > self.capacity:
            if self.on_refused is not None:
                self.on_refused()
            return False
        self.in_flight = in_flight
        return True

    def give_back(self, size: int) -> None:
        in_flight = self.in_flight - size
        if in_flight < 0:  # a bug in the caller: never let the budget grow past its capacity
            raise RuntimeError(f"gave back {size} bytes, only {self.in_flight} were taken")
        self.in_flight = in_flight
