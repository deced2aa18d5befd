"""A multi-arch build on the real multi-arch base, as users get it from public registries: an
index over linux/amd64 + linux/arm64 in a registry on 127.0.0.1 (arm64 rootfs made here with
debootstrap --foreign, no arm64 code run). Built for both platforms on this amd64 host, pushed,
read back: both platforms listed, each image's extension modules for its own machine, and the
amd64 one pulled by digest and served by the engine."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
OCI_SMALL = REPO / "tests" / "fixtures" / "models" / "oci_small"
ELF_MACHINE = {62: "x86_64", 183: "aarch64"}
pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow]


def _so_machines(layer_bytes: bytes) -> set[str]:
    """ELF e_machine of every .so file in a (gzip) layer blob."""
    data = gzip.decompress(layer_bytes) if layer_bytes[:2] == b"\x1f\x8b" else layer_bytes
    machines = set()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile() and ".so" in member.name.rsplit("/", 1)[-1]:
                head = tar.extractfile(member).read(20)
                if head[:4] == b"\x7fELF":
                    machines.add(ELF_MACHINE.get(int.from_bytes(head[18:20], "little"), "other"))
    return machines


def test_multiarch_build_on_a_registry_base_pushes_an_index_of_native_images(
    multiarch_base, registry, tmp_path, docker_client
):
    model = tmp_path / "oci_small"
    shutil.copytree(OCI_SMALL, model)
    target = f"{registry.host}/mlbuild/oci-small:multi"
    env = {**os.environ, "MLBUILD_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "mlbuild._cli", "image", str(model), "--backend", "oci",
         "--platform", "linux/amd64,linux/arm64", "--base", multiarch_base, "--push", target, "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["base_digest"].startswith("sha256:")  # the amd64 base's manifest digest

    with registry.client() as client:
        index = client.get_manifest("mlbuild/oci-small", "multi")
        assert index.is_index
        assert index.digest == result["digest"]
        listed = {
            f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
            for m in json.loads(index.data)["manifests"]
        }
        assert set(listed) == {"linux/amd64", "linux/arm64"}
        for platform, machine in (("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")):
            manifest = json.loads(client.get_manifest("mlbuild/oci-small", listed[platform]).data)
            config = json.loads(client.get_blob("mlbuild/oci-small", manifest["config"]["digest"]))
            assert f"{config['os']}/{config['architecture']}" == platform
            # each image names the base manifest it was built on, its own platform's
            base_digest = config["config"]["Labels"]["org.opencontainers.image.base.digest"]
            assert (base_digest == result["base_digest"]) == (platform == "linux/amd64")
            found: set[str] = set()
            for layer in manifest["layers"]:
                found |= _so_machines(client.get_blob("mlbuild/oci-small", layer["digest"]))
            assert found == {machine}, (platform, found)

    # The engine pulls the index by digest, takes the amd64 image and serves it.
    pulled = f"{registry.host}/mlbuild/oci-small@{result['digest']}"
    docker_client.images.pull(pulled)
    container = docker_client.containers.run(pulled, detach=True, ports={"8080/tcp": ("127.0.0.1", None)})
    try:
        container.reload()
        port = container.ports["8080/tcp"][0]["HostPort"]
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, container.logs()[-3000:]
            time.sleep(0.25)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json="<b>", timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        container.remove(force=True)
        docker_client.images.remove(pulled, force=True)
