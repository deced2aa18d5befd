"""Every example in examples/, built with mlbuild as a user would, started with testcontainers,
ready on /health/ready, asked over HTTP: the answer is the one the example's README promises.
(tests/integration/builder/test_save_image.py also compares notebook-pipeline and
native-format with in-process predictions on 100 rows.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _iris(out) -> bool:
    return [row["label"] for row in out] == ["setosa", "virginica"]


def _text(out) -> bool:
    return [row["label"] for row in out] == ["positive", "negative"]


def _churn(out) -> bool:
    return len(out) == 2 and all(0 <= row["churn_probability"] <= 1 and row["risk"] in {"low", "medium", "high"} for row in out)


def _native(out) -> bool:
    return len(out) == 2 and all(isinstance(p, float) and 0 <= p <= 1 for p in out)


# example directory -> (input, check of the output)
CASES = {
    "iris-sklearn": ([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], _iris),
    "text-classifier": (["great product, love it", "terrible and broken"], _text),
    "notebook-pipeline/model": ([[0.1, -1.2, 0.3, 2.0, 0.0, 0.5, -0.7, 1.1], [3.0, 2.0, -1.0, 0.0, 1.0, 2.0, 0.5, -2.0]], _churn),
    "native-format/model": ([[0.5, 1.0, -0.2, 1.3, 0, 0], [-1.0, 0.0, 2.0, -0.5, 1.0, 1.0]], _native),
}


@pytest.mark.parametrize("example", sorted(CASES))
def test_example_builds_serves_and_answers(example, base_image, copy_model, serve_image, image_tags):
    from mlbuild._build import build_directory as build_image

    model = copy_model(EXAMPLES / example)
    tag = f"mlbuild-test/example-{example.split('/')[0]}:it"
    image_tags.append(tag)
    result = build_image(model, tag=tag, base_image=base_image)
    assert result.size_bytes < 450 * 10**6
    body, check = CASES[example]
    with serve_image(tag) as url:
        assert httpx.get(url + "/metadata", timeout=10).json()["lock_digest"] == result.lock_digest
        response = httpx.post(url + "/predict", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert check(response.json()), response.json()
        bad = httpx.post(url + "/predict", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
        assert bad.status_code == 422
