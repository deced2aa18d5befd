"""Shared Docker fixtures for integration tests.

- ``docker_client``  session: a client of the engine that tests/conftest.py's gate found
                     (``require("docker")``: no engine skips locally and FAILS under CI).
- ``base_image``     session: the local base image ``mlbuild-test/python:3.11-bookworm``, which
                     the same gate requires (scripts/build-base-image.sh builds it; .ci/run does).
- ``image_tags``     function: tags a test builds; removed afterwards.
- ``run_in_image``   run a one-off command in an image and return its stdout.
- ``plain_registry`` session: a real registry (Debian's docker-registry) on 127.0.0.1, as
                     "127.0.0.1:PORT"; the engine pushes to loopback registries over plain HTTP
                     (``require("registry")``: the gate of tests/conftest.py)
- ``serve_image``    start an image with testcontainers, wait for /health/ready, yield its URL
- ``copy_model``     copy a model directory to tmp (builds write mlbuild.lock into the model dir,
                     which must not touch the repository's fixtures).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# testcontainers starts a "Ryuk" reaper container pulled from a public registry; none is
# reachable here, and our fixtures remove their containers themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "mlbuild-test/python:3.11-bookworm"


@pytest.fixture(scope="session")
def docker_client(require):
    import docker

    require("docker")  # engine reachable (and the base image present), or skip/fail
    client = docker.from_env(timeout=600)
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client, require) -> str:
    require("docker")  # the gate checks the image with the engine
    return BASE_IMAGE


@pytest.fixture
def image_tags(docker_client) -> Iterator[list[str]]:
    tags: list[str] = []
    yield tags
    _remove_images(docker_client, tags)


def _remove_images(client, tags: list[str]) -> None:
    import docker.errors

    for tag in tags:
        try:
            client.images.remove(tag, force=True)
        except docker.errors.APIError:
            pass


@pytest.fixture(scope="session")
def run_in_image(docker_client) -> Callable[..., str]:
    def run(image: str, *command: str, entrypoint: str | None = None, user: str | None = None) -> str:
        container = docker_client.containers.create(
            image, list(command), entrypoint=entrypoint, user=user, network_mode="none"
        )
        try:
            container.start()
            code = container.wait(timeout=120)["StatusCode"]
            # The engine may hand out the log a moment after the exit of a very short process.
            for _ in range(20):
                out = container.logs(stdout=True, stderr=False)
                if out:
                    break
                time.sleep(0.1)
            if code != 0:
                err = container.logs(stdout=False, stderr=True).decode(errors="replace")
                raise AssertionError(f"{command} in {image} exited {code}: {err}")
            return out.decode()
        finally:
            container.remove(force=True)

    return run


@pytest.fixture(scope="session")
def read_file_in_image(docker_client) -> Callable[[str, str], bytes]:
    """The bytes of one file of an image, read without running anything in it."""

    def read(image: str, path: str) -> bytes:
        container = docker_client.containers.create(image)
        try:
            stream, _ = container.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                assert member is not None and member.isfile(), f"{path} is not a file in {image}"
                return tar.extractfile(member).read()
        finally:
            container.remove(force=True)

    return read


@pytest.fixture(scope="session")
def copy_model(tmp_path_factory) -> Callable[[Path], Path]:
    def copy(source: Path) -> Path:
        dest = tmp_path_factory.mktemp(source.name) / source.name
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return dest

    return copy


@pytest.fixture(scope="session")
def serve_image(docker_client):
    """``with serve_image(tag) as url:`` - the image started by testcontainers with its port
    published, ready (GET /health/ready == 200) before the block runs, removed afterwards."""
    import contextlib

    import httpx
    from testcontainers.core.container import DockerContainer

    @contextlib.contextmanager
    def serve(tag: str, timeout: float = 180) -> Iterator[str]:
        container = DockerContainer(tag).with_exposed_ports(8080)
        with container:
            url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8080)}"
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    logs = b"".join(container.get_logs()).decode(errors="replace")[-3000:]
                    pytest.fail(f"{tag} never became ready at {url}:\n{logs}", pytrace=False)
                time.sleep(0.25)
            yield url

    return serve


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory, require) -> Iterator[str]:
    import socket

    require("registry")
    directory = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = REPO_ROOT / "scripts" / "registry-fixture.sh"
    subprocess.run([str(script), "start", str(directory), str(port)], check=True, capture_output=True, timeout=60)
    yield f"127.0.0.1:{port}"
    subprocess.run([str(script), "stop", str(directory)], check=False, capture_output=True, timeout=60)
