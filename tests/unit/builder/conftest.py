"""Puts tests/ on sys.path so the builder's unit tests import the shared doubles as
``support.*`` (tests/support/, not part of the wheel)."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
