"""The README's main flow, as a user runs it: `mlbuild image examples/iris-sklearn`, then
`mlbuild run` and a POST /predict with a known iris row, then `mlbuild predict IMAGE`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = "mlbuild-test/python:3.11-bookworm"
pytestmark = pytest.mark.docker


def readme_main_command() -> list[str]:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^(mlbuild image examples/iris-sklearn)$", text, re.MULTILINE)
    assert match, "README.md must show the main command on a line of its own"
    return match.group(1).split()


def mlbuild(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlbuild._cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_readme_main_command_builds_runs_and_predicts_setosa():
    import docker

    _, *args = readme_main_command()
    built = mlbuild(*args, "--base", BASE, "--json")  # no public registry here: our Debian base
    assert built.returncode == 0, built.stderr[-3000:]
    result = json.loads(built.stdout)
    assert result["tag"] == "iris-sklearn:1.0.0"
    assert result["size_bytes"] < 450 * 1024 * 1024

    ran = mlbuild("run", result["tag"], timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    url = ran.stdout.strip()
    container = re.search(r"docker rm -f ([0-9a-f]{12})", ran.stderr).group(1)
    try:
        assert httpx.get(f"{url}/health/ready").status_code == 200
        (answer,) = httpx.post(f"{url}/predict", json=[5.1, 3.5, 1.4, 0.2]).json()
        assert answer["label"] == "setosa"
        (virginica,) = httpx.post(f"{url}/predict", json=[6.7, 3.0, 5.2, 2.3]).json()
        assert virginica["label"] == "virginica"
    finally:
        docker.from_env().containers.get(container).remove(force=True)

    once = mlbuild("predict", result["tag"], "--input", "[5.1, 3.5, 1.4, 0.2]", timeout=300)
    assert once.returncode == 0, once.stderr[-3000:]
    assert json.loads(once.stdout)[0]["label"] == "setosa"
