"""Fixtures for the OCI backend's unit tests (helpers live in ocifixtures.py: a unique module
name, so importing them cannot collide with another directory's conftest)."""

from ocifixtures import docker_archive  # noqa: F401 - re-exported as a fixture
