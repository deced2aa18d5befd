"""The marker gate of tests/conftest.py: under CI a missing engine, base image or registry FAILS
the test with a one-line message; elsewhere the same message skips it; present, the test runs.
Checked as a function (fake availability), through the real probes (an engine address that
answers nothing, a PATH without docker-registry), and through a real pytest run whose gate
reports what the test chooses."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GATE_FILE = Path(__file__).resolve().parent / "conftest.py"


def _load_gate():
    # Its own module object (not the one pytest loaded as a plugin), so nothing here touches
    # the running session's probe cache.
    spec = importlib.util.spec_from_file_location("mlbuild_tests_gate", GATE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


gate = _load_gate()


def _missing_only(*names: str):
    return lambda requirement: f"{requirement.name} is gone" if requirement.name in names else None


@pytest.mark.parametrize(("value", "ci"), [("1", True), ("true", True), ("yes", True), ("", False),
                                           ("0", False), ("false", False), ("No", False)])  # fmt: skip
def test_ci_is_any_value_but_empty_0_false_no(value, ci):
    assert gate.in_ci({"CI": value}) is ci
    assert gate.in_ci({}) is False


@pytest.mark.parametrize(("marker", "requirement"), [("docker", "engine"), ("docker", "base image"),
                                                     ("registry", "docker-registry")])  # fmt: skip
def test_under_ci_a_missing_requirement_fails_with_one_line_naming_it_and_how_ci_installs_it(marker, requirement):
    found = gate.judge(gate.requirements_of([marker]), ci=True, missing=_missing_only(requirement))
    assert found is not None and found.action == "fail"
    assert found.message.startswith(f"{requirement} is gone: .ci/run ")
    assert "\n" not in found.message and "never skipped" in found.message


@pytest.mark.parametrize("marker", ["docker", "registry"])
def test_outside_ci_the_same_message_skips(marker):
    requirements = gate.requirements_of([marker])
    failed = gate.judge(requirements, ci=True, missing=_missing_only(requirements[0].name))
    skipped = gate.judge(requirements, ci=False, missing=_missing_only(requirements[0].name))
    assert skipped is not None and skipped.action == "skip"
    assert failed.message.startswith(skipped.message)


def test_what_each_marker_needs_and_where_ci_gets_it():
    assert [r.name for r in gate.requirements_of(["docker"])] == ["engine", "base image"]
    assert [r.name for r in gate.requirements_of(["registry"])] == ["docker-registry"]
    assert gate.requirements_of(["slow"]) == []
    provided = {r.name: r.provided_by for r in gate.requirements_of(["docker", "registry"])}
    assert "docker.io" in provided["engine"] and "scripts/build-base-image.sh" in provided["base image"]
    assert "apt-get install docker-registry" in provided["docker-registry"]


def test_present_requirements_and_unmarked_tests_run():
    present = _missing_only()
    assert gate.judge(gate.requirements_of(["docker", "registry"]), ci=True, missing=present) is None
    assert gate.judge(gate.requirements_of([]), ci=True, missing=_missing_only("engine")) is None


def test_no_image_is_asked_for_without_an_engine():
    asked = []

    def missing(requirement):
        asked.append(requirement.name)
        return "no engine" if requirement.name == "engine" else None

    found = gate.judge(gate.requirements_of(["docker"]), ci=False, missing=missing)
    assert asked == ["engine"] and found.message.startswith("no engine: ")


def test_the_engine_probe_reports_an_engine_that_does_not_answer(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    reason = gate.ENGINE.probe()
    assert reason is not None and reason.startswith("no Docker engine answers (") and "\n" not in reason


def test_the_registry_probe_reads_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gate.REGISTRY.probe() == "docker-registry is not installed"
    program = tmp_path / "docker-registry"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert gate.REGISTRY.probe() is None


# -- the gate inside a real pytest run ---------------------------------------------------------

INNER_CONFTEST = """
import importlib.util, os

import sys

spec = importlib.util.spec_from_file_location("inner_gate", {gate!r})
gate = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate)
# what this run pretends is missing, instead of asking the machine
gone = set(filter(None, os.environ["GATE_GONE"].split(",")))
gate.missing = lambda requirement: f"{{requirement.name}} is gone" if requirement.name in gone else None
pytest_runtest_setup = gate.pytest_runtest_setup
require = gate.require
"""

INNER_TESTS = """
import pytest

@pytest.mark.docker
def test_engine():
    pass

@pytest.mark.registry
def test_registry():
    pass

def test_plain():
    pass

@pytest.fixture
def engine_fixture(require):
    require("docker")

def test_unmarked_but_using_an_engine_fixture(engine_fixture):
    pass
"""


def _inner_run(tmp_path: Path, ci: str, gone: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST.format(gate=str(GATE_FILE)))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    docker: d\n    registry: r\n")
    env = {**os.environ, "CI": ci, "GATE_GONE": gone}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsE", "-q", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip


def test_a_real_run_under_ci_fails_each_test_whose_requirement_is_missing(tmp_path):
    run = _inner_run(tmp_path, ci="1", gone="engine,docker-registry")
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "1 passed, 3 errors" in out, out
    assert " skipped" not in out.splitlines()[-1]  # the summary line
    summary = {line.split(" - ")[0]: line.split(" - ", 1)[1] for line in out.splitlines() if line.startswith("ERROR ")}
    engine = "Failed: engine is gone: .ci/run installs docker.io and starts dockerd (CI=1: required, never skipped)"
    assert summary == {
        "ERROR test_inner.py::test_engine": engine,
        "ERROR test_inner.py::test_unmarked_but_using_an_engine_fixture": engine,  # through `require`
        "ERROR test_inner.py::test_registry":
            "Failed: docker-registry is gone: .ci/run installs it (apt-get install docker-registry) "
            "(CI=1: required, never skipped)",
    }, out


def test_a_real_run_outside_ci_skips_them_with_the_same_message(tmp_path):
    run = _inner_run(tmp_path, ci="0", gone="base image")
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "2 passed, 2 skipped" in out, out
    skips = [line for line in out.splitlines() if line.startswith("SKIPPED ")]
    assert len(skips) == 2 and all(line.endswith(": base image is gone: .ci/run builds it with "
                                                  "scripts/build-base-image.sh") for line in skips), out  # fmt: skip


def test_a_real_run_with_everything_present_runs_everything(tmp_path):
    run = _inner_run(tmp_path, ci="1", gone="")
    assert run.returncode == 0 and "4 passed" in run.stdout, run.stdout + run.stderr
