"""The image names exactly what it was built on: a base that came from a registry has its
manifest digest in the org.opencontainers.image.base.digest label and in the result."""

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.mark.registry
def test_base_digest_from_a_registry_base_is_in_labels_and_result(
    docker_client, base_image, plain_registry, copy_model, image_tags
):
    from pathlib import Path

    from mlbuild._build import build_directory as build_image

    remote = f"{plain_registry}/library/python:3.11-bookworm"
    docker_client.images.get(base_image).tag(remote)
    pushed = docker_client.images.push(remote, stream=True, decode=True)
    digest = next(line["aux"]["Digest"] for line in pushed if "aux" in line)
    docker_client.images.remove(remote)
    docker_client.images.pull(remote)  # now the engine knows it by its manifest digest
    image_tags.extend([remote, "mlbuild-test/base-digest:it"])

    model = copy_model(Path(__file__).resolve().parents[2] / "fixtures" / "models" / "echo")
    result = build_image(model, tag="mlbuild-test/base-digest:it", base_image=remote)
    assert result.base_digest == digest
    assert result.to_json()["base_digest"] == digest
    labels = docker_client.images.get(result.tag).labels
    assert labels["org.opencontainers.image.base.digest"] == digest
    assert labels["org.opencontainers.image.base.name"] == remote


def test_a_locally_built_base_has_no_base_digest(docker_client, base_image, copy_model, image_tags):
    from pathlib import Path

    from mlbuild._build import build_directory as build_image

    model = copy_model(Path(__file__).resolve().parents[2] / "fixtures" / "models" / "echo")
    image_tags.append("mlbuild-test/base-digest-local:it")
    result = build_image(model, tag="mlbuild-test/base-digest-local:it", base_image=base_image)
    assert result.base_digest is None
    assert "org.opencontainers.image.base.digest" not in docker_client.images.get(result.tag).labels
