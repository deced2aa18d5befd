"""`--backend auto`: the Docker engine when one answers; otherwise the oci backend writing an
archive into the current directory, with a line saying which backend was used and why."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ECHO = REPO / "tests" / "fixtures" / "models" / "echo"
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def mlbuild(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlbuild._cli", *args], cwd=cwd, env={**os.environ, **env},
        capture_output=True, text=True, timeout=600,
    )


def test_no_engine_falls_back_to_an_oci_archive_and_says_why(saved_base, tmp_path):
    model = tmp_path / "echo"
    shutil.copytree(ECHO, model)
    work = tmp_path / "cwd"
    work.mkdir()
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "MLBUILD_CACHE_DIR": str(tmp_path / "cache")}
    out = mlbuild("image", str(model), "--base", f"docker-archive:{saved_base}", cwd=work, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"backend: oci (no Docker engine answers at unix://{tmp_path}/no-engine.sock" in out.stderr
    archive = work / "echo-0.1.0.tar"
    assert archive.is_file()
    inspected = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True, text=True, check=True)
    assert json.loads(inspected.stdout)["Labels"]["io.mlbuild.lock-digest"].startswith("sha256:")


def test_an_answering_engine_is_used_by_default(base_image, tmp_path, docker_client):
    model = tmp_path / "echo"
    shutil.copytree(ECHO, model)
    out = mlbuild("image", str(model), "--base", base_image, "-t", "mlbuild-test/auto-echo:1", "--json", cwd=tmp_path, env={})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["backend"] == "docker"
    assert docker_client.images.get("mlbuild-test/auto-echo:1").id == result["image_id"]
    docker_client.images.remove("mlbuild-test/auto-echo:1", force=True)


def test_explicit_docker_backend_without_engine_is_exit_6(tmp_path):
    model = tmp_path / "echo"
    shutil.copytree(ECHO, model)
    out = mlbuild("image", str(model), "--backend", "docker", cwd=tmp_path,
                  env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert out.returncode == 6
    assert out.stderr.startswith(f"error: no Docker engine answers at unix://{tmp_path}/none.sock")
    assert "Traceback" not in out.stderr
