"""A worker's stdout/stderr on its way to the log: cut into lines, each relayed or counted as
dropped under two token buckets per worker (lines/s and bytes/s; see server/_worker.py's
docstring for the figures and why). Memory stays bounded whatever a model writes.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

__all__ = [
    "OutputRelay", "STDERR_LINES_PER_S", "STDERR_BURST", "STDERR_BYTES_PER_S", "STDERR_BYTES_BURST",
    "STDERR_RECORD_MAX",
]

# Model output relayed to the log, per worker: two token buckets (lines and bytes of text).
STDERR_LINES_PER_S = 100.0
STDERR_BURST = 200
STDERR_BYTES_PER_S = 64 << 10
STDERR_BYTES_BURST = 1 << 20
STDERR_RECORD_MAX = 4 << 10  # bytes of one line kept in its record; the rest is cut


class OutputRelay:
    """A worker's output, fed in blocks, cut into lines, each relayed (through ``emit(text,
    cut_bytes)``) or counted as dropped, by two token buckets (see the module's docstring).

    Memory is bounded whatever the model writes: of the line being read only its first
    STDERR_RECORD_MAX + 1 bytes are kept (the extra byte finds a character boundary), the rest is
    counted. Out of budget, the complete lines left in a block are counted in one go."""

    def __init__(self, emit: Callable[[str, int], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._clock = clock
        self._lines, self._bytes, self._last = float(STDERR_BURST), float(STDERR_BYTES_BURST), clock()
        self._head = bytearray()  # the start of the line being read
        self._length = 0  # that line's length so far
        self.dropped_lines = 0  # since the last report (the worker resets them)
        self.dropped_bytes = 0
        self.tail: collections.deque[bytes] = collections.deque(maxlen=5)  # last lines, cut

    def feed(self, block: bytes) -> None:
        now = self._clock()
        elapsed, self._last = now - self._last, now
        self._lines = min(STDERR_BURST, self._lines + elapsed * STDERR_LINES_PER_S)
        self._bytes = min(STDERR_BYTES_BURST, self._bytes + elapsed * STDERR_BYTES_PER_S)
        start, size = 0, len(block)
        while start < size:
            end = block.find(b"\n", start)
            if end < 0:
                self._extend(block, start, size)
                return
            if self._lines < 1 or self._bytes < 1:
                self._drop_rest(block, start)
                return
            self._extend(block, start, end)
            self._end_line()
            start = end + 1

    def close(self) -> None:
        """End of output: a last line without its newline is a line too."""
        if self._length:
            self._end_line()

    def _extend(self, block: bytes, start: int, end: int) -> None:
        room = STDERR_RECORD_MAX + 1 - len(self._head)
        if room > 0:
            self._head += block[start:min(end, start + room)]
        self._length += end - start

    def _end_line(self) -> None:
        head, length = self._head, self._length
        if length > STDERR_RECORD_MAX:
            keep = STDERR_RECORD_MAX
            while keep and head[keep] & 0xC0 == 0x80:  # never cut a UTF-8 character in two
                keep -= 1
            kept = bytes(head[:keep])
        else:
            kept = bytes(head)
        self._head = bytearray()
        self._length = 0
        self.tail.append(kept)
        if self._lines >= 1 and self._bytes >= len(kept):
            self._lines -= 1
            self._bytes -= len(kept)
            cut = length - len(kept)
            text = kept.decode("utf-8", "replace")
            self._emit(f"{text} … [{cut} more bytes cut]" if cut else text, cut)
        else:
            self.dropped_lines += 1
            self.dropped_bytes += length

    def _drop_rest(self, block: bytes, start: int) -> None:
        """Out of budget: count every line that ends in ``block`` from ``start`` (the first one
        completes the line being read), keep what follows the last newline as the next line."""
        last = block.rfind(b"\n")
        lines = block.count(b"\n", start, last + 1)
        self.dropped_lines += lines
        self.dropped_bytes += self._length + (last - start) - (lines - 1)
        before = block.rfind(b"\n", start, last)
        line = block[before + 1:last] if before >= 0 else bytes(self._head) + block[start:last]
        self.tail.append(line[:STDERR_RECORD_MAX])
        self._head = bytearray()
        self._length = 0
        self._extend(block, last + 1, len(block))
