"""The examples, built as a user would (on the local base image), started and asked over HTTP.

Both examples share one lock, hence one cached env image: the second build takes about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from mlbuild._lock import read_lock

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
MAX_IMAGE_BYTES = 450 * 10**6  # the size target on the Debian base

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _build(name, docker_client, base_image, copy_model):
    from mlbuild._build import build_directory as build_image

    model = copy_model(EXAMPLES / name)
    lines: list[str] = []
    result = build_image(model, tag=f"mlbuild-test/{name}:it", base_image=base_image, progress=lines.append)
    return model, result, lines


@pytest.fixture(scope="module")
def iris(docker_client, base_image, copy_model):
    model, result, lines = _build("iris-sklearn", docker_client, base_image, copy_model)
    yield model, result, lines
    docker_client.images.remove(result.tag, force=True)


@pytest.fixture(scope="module")
def text_classifier(docker_client, base_image, copy_model):
    model, result, lines = _build("text-classifier", docker_client, base_image, copy_model)
    yield model, result, lines
    docker_client.images.remove(result.tag, force=True)


@pytest.fixture(scope="module")
def iris_server(iris):
    from mlbuild._run import run_image, stop_container

    running = run_image(iris[1].tag, timeout=180)
    yield running
    stop_container(running.container_id)


def test_iris_predicts_setosa(iris_server):
    response = httpx.post(iris_server.url + "/predict", json=[5.1, 3.5, 1.4, 0.2], timeout=60)
    assert response.status_code == 200, response.text
    [answer] = response.json()
    assert answer["label"] == "setosa"
    assert answer["probabilities"]["setosa"] > 0.9
    rows = httpx.post(iris_server.url + "/predict", json=[[6.3, 3.3, 6.0, 2.5], [6.0, 2.7, 5.1, 1.6]], timeout=60)
    assert [a["label"] for a in rows.json()] == ["virginica", "uncertain"]  # the business threshold


def test_iris_metadata_names_the_lock(iris, iris_server):
    model, result, _ = iris
    metadata = httpx.get(iris_server.url + "/metadata", timeout=10).json()
    assert metadata["lock_digest"] == result.lock_digest == read_lock(model / "mlbuild.lock").digest
    assert metadata["name"] == "iris-sklearn" and metadata["version"] == "1.0.0"


def test_model_env_is_exactly_the_lock(iris, run_in_image):
    model, result, _ = iris
    script = (
        "import importlib.metadata as m, json, re; "
        "print(json.dumps(sorted([re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(), d.version] for d in m.distributions())))"
    )
    installed = json.loads(run_in_image(result.tag, "-c", script, entrypoint="/opt/mlbuild/model-env/bin/python"))
    locked = sorted([p.name, p.version] for p in read_lock(model / "mlbuild.lock").packages)
    assert installed == locked


def test_iris_image_is_lean_and_non_root(iris, run_in_image):
    _, result, lines = iris
    assert result.size_bytes <= MAX_IMAGE_BYTES, f"{result.size_bytes / 1e6:.0f} MB"
    assert run_in_image(result.tag, "-u", entrypoint="id").strip() == "10001"
    shipped = run_in_image(result.tag, "/opt/mlbuild/model", entrypoint="ls").split()
    assert sorted(shipped) == ["artifacts", "labels.py", "mlbuild.lock", "mlbuild.toml", "predict.py", "requirements.txt"]
    assert any("left out train.py" in line for line in lines)  # the build said so


def test_text_classifier_serves_and_shares_the_env_image(iris, text_classifier):
    from mlbuild._run import predict_in_image

    assert text_classifier[1].env_image == iris[1].env_image  # same lock, same env image
    answers = predict_in_image(text_classifier[1].tag, ["great product, love it", "terrible and broken"])
    assert [a["label"] for a in answers] == ["positive", "negative"]
    assert answers[0]["text"] == "great product, love it"
