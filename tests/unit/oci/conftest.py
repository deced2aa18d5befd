"""Fixtures for the OCI backend's unit tests (helpers live in ocifixtures.py: a unique module
name, so importing them cannot collide with another directory's conftest)."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[2])  # tests/: the shared doubles import as support.*
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from ocifixtures import docker_archive  # noqa: E402, F401 - re-exported as a fixture
