"""Saved objects and native-format models, built into real images and asked over real HTTP.

Needs the Docker engine and the local base image (scripts/build-base-image.sh); wheels come
from the package index on the host, as every build does.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
BASE = "mlbuild-test/python:3.11-bookworm"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def built_images():
    """Tags built by a test; removed afterwards so repeated runs do not pile up images."""
    tags: list[str] = []
    yield tags
    import docker

    client = docker.from_env()
    for tag in tags:
        try:
            client.images.remove(tag, force=True)
        except docker.errors.APIError:
            pass


def _predict_over_http(tag: str, body) -> object:
    from mlbuild._run import run_image, stop_container

    running = run_image(tag, timeout=180)
    try:
        response = httpx.post(f"{running.url}/predict", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()
    finally:
        stop_container(running.container_id)


def _pinned_version(requirements: Path, name: str) -> str:
    for line in requirements.read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in {requirements}")


def test_notebook_pipeline_served_from_the_image_matches_in_process(tmp_path, built_images):
    from mlbuild._build import build_directory as build_image

    # Run the example as a user would: its classes and function live in that script's __main__.
    expected_file = tmp_path / "expected.json"
    subprocess.run(
        [sys.executable, str(EXAMPLES / "notebook-pipeline" / "train_and_save.py"),
         "--out", str(tmp_path / "model"), "--no-lock", "--expected", str(expected_file)],
        check=True,
    )
    expected = json.loads(expected_file.read_text())
    assert len(expected["rows"]) == 100
    tag = "mlbuild-it/save-notebook:test"
    built_images.append(tag)
    build_image(tmp_path / "model", tag=tag, base_image=BASE)
    assert _predict_over_http(tag, expected["rows"]) == expected["predictions"]


def test_native_format_example_served_from_the_image_matches_in_process(built_images):
    from mlbuild._build import build_directory as build_image

    model_dir = EXAMPLES / "native-format" / "model"
    spec = importlib.util.spec_from_file_location("native_predict", model_dir / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    local = module.Model()
    local.load()
    rows = np.random.default_rng(3).normal(size=(100, 6)).round(4).tolist()
    expected = local.predict(rows)

    tag = "mlbuild-it/save-native:test"
    built_images.append(tag)
    build_image(model_dir, tag=tag, base_image=BASE)
    served = _predict_over_http(tag, rows)
    pinned = _pinned_version(model_dir / "requirements.txt", "xgboost-cpu")
    if importlib.metadata.version("xgboost-cpu") == pinned:
        assert served == expected  # the same wheel on both sides: bit-for-bit the same floats
    else:  # a host with another xgboost release may round the last float32 bit differently
        assert served == pytest.approx(expected, rel=1e-6, abs=1e-7)


class Polynomial:
    """A tiny numpy-only object, saved and built in one call."""

    def __init__(self) -> None:
        self.coefficients = np.array([1.0, -2.0, 0.5])

    def predict(self, x: list[float]) -> list[float]:
        return np.polyval(self.coefficients, np.asarray(x)).tolist()


def test_build_image_given_a_live_object_saves_and_builds(tmp_path, built_images):
    import mlbuild

    tag = "mlbuild-it/save-object:test"
    built_images.append(tag)
    result = mlbuild.build_image(Polynomial(), tag=tag, base_image=BASE, backend="docker", quiet=True)
    assert result.tag == tag
    xs = [0.0, 1.5, -2.0, 10.0]
    assert _predict_over_http(tag, xs) == Polynomial().predict(xs)
