"""The one gate for tests that need something outside Python, chosen by marker:

- ``@pytest.mark.docker``    a Docker engine that answers a ping, holding the base image
                             ``mlbuild-test/python:3.11-bookworm`` (scripts/build-base-image.sh);
- ``@pytest.mark.registry``  the ``docker-registry`` program (Debian's package), which the
                             registry fixtures start on 127.0.0.1.

When a requirement is missing the test is skipped with a one-line message saying what is missing
and how .ci/run provides it - except under CI (CI set to anything but ""/0/false/no), where the
same message FAILS the test: CI installs all of these, so a missing one is a broken CI, never a
reason to skip. The markers themselves are declared in pyproject.toml.

Fixtures that need the engine or a registry call the same gate through the ``require`` fixture
(``require("docker")``; ``require.tool(program, how)`` for other programs), so a test that
forgets its marker still meets the same rule.
The gate is tested in tests/test_conftest_gate.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import pytest

BASE_IMAGE = "mlbuild-test/python:3.11-bookworm"


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: object, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class Requirement:
    """One thing a marked test needs: ``probe()`` says what is missing (one line), or None."""

    name: str
    probe: Callable[[], str | None]
    provided_by: str  # how .ci/run provides it, said after what is missing


def _engine_missing() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach the engine is the same verdict: not there
        return f"no Docker engine answers ({one_line(exc)})"
    return None


def _base_image_missing() -> str | None:
    import docker
    import docker.errors

    client = docker.from_env(timeout=30)
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        return f"the base image {BASE_IMAGE} is not in the engine"
    finally:
        client.close()
    return None


def _registry_missing() -> str | None:
    return None if shutil.which("docker-registry") else "docker-registry is not installed"


ENGINE = Requirement("engine", _engine_missing, ".ci/run installs docker.io and starts dockerd")
BASE = Requirement("base image", _base_image_missing, ".ci/run builds it with scripts/build-base-image.sh")
REGISTRY = Requirement("docker-registry", _registry_missing, ".ci/run installs it (apt-get install docker-registry)")

# marker -> what it needs, checked in order (no image check without an engine)
GATES: dict[str, tuple[Requirement, ...]] = {"docker": (ENGINE, BASE), "registry": (REGISTRY,)}


@dataclass(frozen=True)
class Verdict:
    action: Literal["fail", "skip"]
    message: str


def judge(requirements: Iterable[Requirement], *, ci: bool,
          missing: Callable[[Requirement], str | None]) -> Verdict | None:  # fmt: skip
    """None when every requirement is there; else fail (under CI) or skip, naming the first gap."""
    for requirement in requirements:
        reason = missing(requirement)
        if reason is not None:
            if ci:
                return Verdict("fail", f"{reason}: {requirement.provided_by} (CI=1: required, never skipped)")
            return Verdict("skip", f"{reason}: {requirement.provided_by}")
    return None


def requirements_of(markers: Iterable[str]) -> list[Requirement]:
    wanted = set(markers)
    return [requirement for marker, needs in GATES.items() if marker in wanted for requirement in needs]


_probed: dict[str, str | None] = {}


def missing(requirement: Requirement) -> str | None:
    """``requirement.probe()``, asked once per session (an engine does not come and go mid-run)."""
    if requirement.name not in _probed:
        _probed[requirement.name] = requirement.probe()
    return _probed[requirement.name]


def enforce(requirements: Iterable[Requirement]) -> None:
    # `missing` is looked up at call time, so tests/test_conftest_gate.py can replace it.
    found = judge(requirements, ci=in_ci(), missing=missing)
    if found is None:
        return
    if found.action == "fail":
        pytest.fail(found.message, pytrace=False)
    pytest.skip(found.message)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture is set up, so a missing engine is reported once per test, as itself.
    enforce(requirements_of(marker for marker in GATES if item.get_closest_marker(marker) is not None))


class Gate:
    """The gate for fixtures: ``require("docker")`` as the marker would, and
    ``require.tool("skopeo", ".ci/run installs it (apt-get install skopeo)")`` for any other
    program a fixture or test needs - the same skip here, fail under CI."""

    def __call__(self, *markers: str) -> None:
        unknown = set(markers) - set(GATES)
        assert not unknown, f"no gate for {sorted(unknown)}; known: {sorted(GATES)}"
        enforce(requirements_of(markers))

    def tool(self, program: str, provided_by: str) -> None:
        def probe() -> str | None:
            return None if shutil.which(program) else f"{program} is not installed"

        enforce([Requirement(program, probe, provided_by)])


@pytest.fixture(scope="session")
def require() -> Gate:
    return Gate()
