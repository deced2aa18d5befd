"""Cheap checks on a raw JSON request body before it is decoded. Standard library only.

Both run on every request, so both use only C-level ``bytes`` operations (translate, replace,
find), never a Python loop per byte; on a 1 MB body each costs a small fraction of
``json.loads`` itself (figures in the report of issue 9 and in tests/unit/runtime/
test_hostile_requests.py).

:func:`deeper_than` - ``json.loads`` recurses once per nested array/object, so a body like
``[[[[...]]]]`` a thousand levels deep raises RecursionError inside the decoder (and the
validator after it recurses the same way). The scan reduces the body to its brackets and
removes innermost ``()`` pairs round by round: each round removes exactly the pairs of the
current innermost level, so a balanced body empties after as many rounds as it is deep, and at
most ``limit`` rounds are ever run. Brackets left unmatched (invalid JSON) count as depth too.
Brackets inside strings are first counted as if they were structure (an over-estimate, right
for almost every real body); only when that says "too deep" are strings removed exactly as a
decoder delimits them - escaped backslashes and escaped quotes first (left to right, as a
decoder pairs them), then every other quote opens or closes a string - and the depth found
again. On invalid JSON the scan may disagree with a decoder *after* the first error, but the
decoder stops there, so the depth it would reach is never more than the one found here.

:func:`may_overflow` - ``float()`` turns ``1e999`` (or 309 digits before the point) into
infinity, which is not JSON. Only bodies with a 3-digit exponent or a run of 200+ digits can
hold such a number; only those pay for the slower decoder that checks every float.
"""

from __future__ import annotations

import itertools

__all__ = ["deeper_than", "may_overflow"]

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Structure for the exact pass: brackets, quotes, backslashes and every character a backslash
# may escape in JSON (so that an escape stays next to its backslash once the rest is gone).
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"\\/bfnrtu')
_NOT_STRUCTURE_NO_ESCAPES = bytes(b for b in range(256) if b not in b'[]{}"')
_PAIRS = bytes.maketrans(b"[{]}", b"(())")  # a decoder fails at a mismatched pair anyway
_STEPS = bytes.maketrans(b"()", b"\x01\xff")  # +1 / -1 as signed bytes
_ROUNDS = 8  # past this many levels, one linear pass beats more rounds over a big body
_CHUNK = 1 << 16  # a hostile body stops at its first chunk

# For may_overflow: digits -> "d", e/E -> "e", "+" deleted, everything else -> " ".
_NUMBER_CLASSES = bytes.maketrans(
    bytes(range(256)),
    bytes((0x64 if 0x30 <= b <= 0x39 else 0x65 if b in b"eE" else 0x20) for b in range(256)),
)
_LONG_DIGITS = b"d" * 200  # with a 2-digit exponent, ~210 integer digits already overflow


def deeper_than(data: bytes, limit: int) -> bool:
    """True if arrays/objects in ``data`` nest more than ``limit`` levels deep."""
    if len(data) <= limit:  # deeper than limit needs more than limit opening brackets
        return False
    brackets = data.translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit or not _deeper(brackets, limit):
        return False
    if b'"' not in data:
        return True
    if b"\\" in data:
        reduced = data.translate(None, _NOT_STRUCTURE)
        # A run of backslashes pairs up from its left end; then a lone backslash escapes the
        # next character, and of those only an escaped quote matters to string boundaries.
        reduced = reduced.replace(b"\\\\", b"").replace(b'\\"', b"")
        reduced = reduced.translate(None, b"\\/bfnrtu")
    else:
        reduced = data.translate(None, _NOT_STRUCTURE_NO_ESCAPES)
    # Quotes now alternate open/close: every even piece lies outside strings.
    return _deeper(b"".join(reduced.split(b'"')[::2]), limit)


def _deeper(brackets: bytes, limit: int) -> bool:
    s = brackets.translate(_PAIRS)
    rounds = min(limit, _ROUNDS)
    for _ in range(rounds):
        shorter = s.replace(b"()", b"")
        if len(shorter) == len(s):  # no pair left: what remains is ")))(((" (unmatched)
            return shorter.count(b"(") > limit
        s = shorter
        if not s:
            return False
    if rounds == limit:  # limit rounds done and pairs are left: one sits deeper than limit
        return True
    # Deeply nested but maybe within the limit: one linear pass over what is left, whose
    # depth plus the rounds already removed bounds the original's (exact when balanced).
    steps = memoryview(s.translate(_STEPS)).cast("b")
    depth = rounds
    for start in range(0, len(steps), _CHUNK):
        chunk = steps[start:start + _CHUNK]
        if max(itertools.accumulate(chunk, initial=depth)) > limit:
            return True
        depth += sum(chunk)
    return False


def may_overflow(data: bytes) -> bool:
    """True if ``data`` may hold a number too large for a float; False means every float
    literal in it is finite."""
    if len(data) < 4:
        return False
    classes = data.translate(_NUMBER_CLASSES, b"+")
    return classes.rfind(b"eddd") >= 0 or classes.rfind(_LONG_DIGITS) >= 0
