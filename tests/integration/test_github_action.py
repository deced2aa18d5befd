"""The GitHub Action's build step (scripts/github-action.sh, called by action.yml), run here
against the local Docker engine and a real registry on 127.0.0.1."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BASE = "mlbuild-test/python:3.11-bookworm"
pytestmark = pytest.mark.docker


def test_action_yml_runs_the_script_with_every_input():
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    inputs = set(action["inputs"])
    assert {"model-dir", "tag", "push", "registry", "username", "password"} <= inputs
    assert {"image-id", "digest"} <= set(action["outputs"])
    build = next(step for step in action["runs"]["steps"] if step.get("id") == "build")
    assert "scripts/github-action.sh" in build["run"]
    for name in inputs:
        assert "INPUT_" + name.upper().replace("-", "_") in build["env"], name


def run_action(tmp_path: Path, **inputs: str) -> dict[str, str]:
    model = tmp_path / "model"
    shutil.copytree(REPO / "tests" / "fixtures" / "models" / "echo", model)
    outputs = tmp_path / "github_output"
    outputs.write_text("")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(outputs),
        "INPUT_MODEL_DIR": str(model),
        "INPUT_BASE": BASE,
        **{f"INPUT_{k.upper()}": v for k, v in inputs.items()},
    }
    proc = subprocess.run(["bash", REPO / "scripts" / "github-action.sh"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(line.split("=", 1) for line in outputs.read_text().splitlines())


def test_action_builds_and_reports_the_image_id(tmp_path):
    import docker

    out = run_action(tmp_path, TAG="mlbuild-action-test/echo:1", PUSH="false")
    image = docker.from_env().images.get("mlbuild-action-test/echo:1")
    assert out["image-id"] == image.id
    assert out["digest"] == ""
    assert out["tag"] == "mlbuild-action-test/echo:1"


@pytest.mark.registry
def test_action_pushes_and_reports_the_registry_digest(tmp_path, plain_registry):
    registry = plain_registry
    import httpx

    tag = f"{registry}/action/echo:1"
    out = run_action(tmp_path, TAG=tag, PUSH="true")
    assert out["digest"].startswith("sha256:")
    # The registry serves the manifest under exactly that digest.
    r = httpx.head(
        f"http://{registry}/v2/action/echo/manifests/{out['digest']}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == out["digest"]
