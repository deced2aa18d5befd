"""The OCI backend end to end: a model built without the engine, checked by skopeo, loaded into
Docker, started and asked for a prediction; a code-only rebuild; a multi-arch (amd64 + arm64)
build whose arm64 image carries aarch64 machine code.

The base is ``docker save mlbuild-test/python:3.11-bookworm`` read as a docker-archive. For
arm64 the test makes its own base: the amd64 rootfs with an arm64 config, in an OCI layout
whose index has both platforms. That cannot *run* an arm64 binary, and need not: it is enough
to prove the backend picks arm64 wheels and labels the image arm64 (no registry and no
multi-arch base are needed).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlbuild._build import build_directory as build_image
from mlbuild._oci.base import open_base
from mlbuild._oci.image import Descriptor, build_index, build_manifest, canonical_json
from mlbuild._oci.layout import Blob, BuiltImages, DockerEntry, write_layout
from mlbuild._oci.mediatypes import OCI
from mlbuild._platforms import parse_platform

REPO = Path(__file__).resolve().parents[3]
ECHO = REPO / "tests" / "fixtures" / "models" / "echo"
OCI_SMALL = REPO / "tests" / "fixtures" / "models" / "oci_small"
ELF_MACHINE = {62: "x86_64", 183: "aarch64"}

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One mlbuild cache for this module: the first build is cold, later ones reuse it."""
    path = tmp_path_factory.mktemp("mlbuild-cache")
    old = os.environ.get("MLBUILD_CACHE_DIR")
    os.environ["MLBUILD_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLBUILD_CACHE_DIR", None)
    else:
        os.environ["MLBUILD_CACHE_DIR"] = old


def _skopeo_digest(ref: str) -> str:
    out = subprocess.run(["skopeo", "inspect", ref], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["Digest"]


def _wait_ready(port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"/health/ready never answered 200 (last: {last})")


def _manifest_layers(layout: Path, digest: str) -> list[str]:
    doc = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    return [layer["digest"] for layer in doc["layers"]]


def test_build_layout_and_archive_then_run(saved_base, cache_dir, copy_model, docker_client, image_tags, tmp_path) -> None:
    model = copy_model(ECHO)
    base = f"docker-archive:{saved_base}"
    tag = "mlbuild-test/oci-echo:1"
    image_tags.append(tag)
    layout = build_image(model, tag=tag, base_image=base, backend="oci", output=tmp_path / "layout")
    archive = build_image(model, tag=tag, base_image=base, backend="oci", output=tmp_path / "echo.tar")
    assert layout.digest == archive.digest and layout.image_id == layout.digest
    assert layout.backend == "oci" and layout.lock_digest.startswith("sha256:")

    # Other tools accept both outputs and see the same manifest.
    assert _skopeo_digest(f"oci:{tmp_path / 'layout'}") == layout.digest
    assert _skopeo_digest(f"oci-archive:{tmp_path / 'echo.tar'}") == layout.digest

    # docker load takes the very same tar; the image runs and serves.
    subprocess.run(["docker", "load", "-i", str(tmp_path / "echo.tar")], check=True, capture_output=True, timeout=600)
    inspected = docker_client.images.get(tag)
    config_digest = json.loads(
        (tmp_path / "layout" / "blobs" / "sha256" / layout.digest.split(":")[1]).read_bytes()
    )["config"]["digest"]
    assert inspected.id == config_digest  # the engine's image id is our config's digest
    assert inspected.attrs["Config"]["User"] == "10001:10001"
    # The base sets no PATH (docker import): the engine's default is written in, as docker build does.
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in inspected.attrs["Config"]["Env"]
    assert inspected.attrs["Config"]["Labels"]["org.opencontainers.image.base.name"] == "mlbuild-test/python:3.11-bookworm"
    container = docker_client.containers.run(tag, detach=True, ports={"8080/tcp": ("127.0.0.1", None)})
    try:
        container.reload()
        port = int(container.ports["8080/tcp"][0]["HostPort"])
        _wait_ready(port)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=b'{"hello": [1, 2]}', headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read()) == {"hello": [1, 2]}
        # The model env is a real venv on the base's python: its own prefix, not the server's.
        code, out = container.exec_run(["/opt/mlbuild/model-env/bin/python", "-c", "import sys, os; print(sys.prefix, os.getuid())"])
        assert code == 0 and out.decode().split() == ["/opt/mlbuild/model-env", "10001"]
    finally:
        container.remove(force=True)


def test_code_only_rebuild_writes_only_the_top(saved_base, cache_dir, copy_model, tmp_path) -> None:
    model = copy_model(ECHO)
    base = f"docker-archive:{saved_base}"
    out = tmp_path / "layout"
    first = build_image(model, tag="echo:1", base_image=base, backend="oci", output=out)
    blobs_before = {p.name: p.stat().st_mtime_ns for p in (out / "blobs" / "sha256").iterdir()}
    with open(model / "predict.py", "a") as f:
        f.write("\n# a code-only change\n")
    started = time.monotonic()
    second = build_image(model, tag="echo:1", base_image=base, backend="oci", output=out)
    whole = time.monotonic() - started
    assert second.digest != first.digest
    before, after = _manifest_layers(out, first.digest), _manifest_layers(out, second.digest)
    assert before[:-1] == after[:-1] and before[-1] != after[-1]  # only the code layer changed
    for name, mtime in blobs_before.items():  # nothing that existed was rewritten
        assert (out / "blobs" / "sha256" / name).stat().st_mtime_ns == mtime
    # Target: <= 0.5 s on a quiet machine; the bound here leaves room for a busy CI runner.
    print(f"code-only rebuild: build_image {whole:.3f} s, backend {second.seconds:.3f} s; {dict(second.timings)}")
    assert whole < 2.0


def test_load_into_engine(saved_base, cache_dir, copy_model, docker_client, image_tags) -> None:
    model = copy_model(ECHO)
    tag = "mlbuild-test/oci-echo-load:1"
    image_tags.append(tag)
    # docker:REF reads the base from the local engine (one `docker save`, cached by image id).
    result = build_image(model, tag=tag, base_image="docker:mlbuild-test/python:3.11-bookworm", backend="oci", load=True)
    assert tag.split("/")[-1] in (result.loaded or "")
    assert docker_client.images.get(tag).attrs["Architecture"] == "amd64"


def _two_arch_base(saved_base: Path, dest: Path) -> Path:
    """An OCI layout whose index has the real amd64 base and an 'arm64' twin (same rootfs,
    config architecture arm64)."""
    amd = open_base(str(saved_base), parse_platform("linux/amd64"))
    blobs = [Blob(l.digest, l.size, l.open, l.origin, verify=True) for l in amd.layers]
    layers = [Descriptor(l.media_type, l.digest, l.size) for l in amd.layers]
    manifests, docker = [], []
    for arch in ("amd64", "arm64"):
        config = canonical_json({**json.loads(amd.config_bytes), "architecture": arch})
        cdesc = Descriptor.of(OCI.config, config)
        manifest = build_manifest(OCI, cdesc, layers)
        plat = parse_platform(f"linux/{arch}")
        blobs.append(Blob(cdesc.digest, cdesc.size, (lambda c=config: io.BytesIO(c)), f"{arch} config"))
        mdesc = Descriptor.of(OCI.manifest, manifest, platform=plat)
        blobs.append(Blob(mdesc.digest, mdesc.size, (lambda m=manifest: io.BytesIO(m)), f"{arch} manifest"))
        manifests.append(mdesc)
        docker.append(DockerEntry(cdesc.digest, tuple(l.digest for l in layers), plat))
    index = build_index(OCI, manifests)
    return write_layout(dest, BuiltImages(OCI.index, index, tuple(blobs), tuple(docker)), "base:3.11")


def _extension_machines(layout: Path, manifest_digest: str) -> set[str]:
    """ELF e_machine of every .so in the model env's layers (one or several: the env is split by
    distribution) of one platform's image, found by their history line."""
    blob = lambda d: layout / "blobs" / "sha256" / d.split(":")[1]  # noqa: E731
    manifest = json.loads(blob(manifest_digest).read_bytes())
    history = json.loads(blob(manifest["config"]["digest"]).read_bytes())["history"]
    made = [h.get("created_by", "") for h in history if not h.get("empty_layer")]
    assert len(made) == len(manifest["layers"])
    env_layers = [l["digest"] for l, how in zip(manifest["layers"], made) if "COPY model-env/" in how]
    assert env_layers
    machines = set()
    for digest in env_layers:
        with tarfile.open(blob(digest), "r:gz") as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".so"):
                    head = tar.extractfile(m).read(20)  # type: ignore[union-attr]
                    assert head[:4] == b"\x7fELF", m.name
                    machines.add(ELF_MACHINE.get(int.from_bytes(head[18:20], "little"), str(head[18:20])))
    return machines


def test_multi_arch_index_with_arm64_wheels(saved_base, cache_dir, copy_model, tmp_path) -> None:
    from mlbuild._lock import read_lock

    base_layout = _two_arch_base(saved_base, tmp_path / "base")
    model = copy_model(OCI_SMALL)
    out = tmp_path / "multi"
    # What `mlbuild image --backend oci --platform linux/amd64,linux/arm64` calls; no lock yet.
    result = build_image(model, tag="small:1", base_image=f"oci:{base_layout}", backend="oci",
                         platform="linux/arm64,linux/amd64", output=out)
    assert read_lock(model / "mlbuild.lock").platforms == ("linux/amd64", "linux/arm64")
    assert result.platforms == ("linux/amd64", "linux/arm64")
    index = json.loads((out / "blobs" / "sha256" / result.digest.split(":")[1]).read_bytes())
    assert index["mediaType"] == OCI.index
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert set(by_arch) == {"amd64", "arm64"}
    for arch, digest in by_arch.items():
        manifest = json.loads((out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
        config = json.loads((out / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
        assert config["architecture"] == arch
    assert _extension_machines(out, by_arch["arm64"]) == {"aarch64"}
    assert _extension_machines(out, by_arch["amd64"]) == {"x86_64"}
    # skopeo reads the index and picks a platform from it.
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{out}"], capture_output=True, text=True, check=True)
    assert json.loads(raw.stdout)["mediaType"] == OCI.index
    arm = subprocess.run(["skopeo", "--override-arch", "arm64", "inspect", f"oci:{out}"], capture_output=True, text=True, check=True)
    assert json.loads(arm.stdout)["Architecture"] == "arm64"


@pytest.mark.registry
def test_base_from_registry_and_push(saved_base, cache_dir, copy_model, registry, docker_client, image_tags) -> None:
    """A base served with Docker media types (skopeo pushes docker-archive as schema 2): the new
    image keeps that family, is pushed byte for byte, and the engine pulls it."""
    base_ref = f"{registry.host}/base/python:3.11"
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"docker-archive:{saved_base}", f"docker://{base_ref}"],
                   check=True, capture_output=True, timeout=600)
    target = f"{registry.host}/models/echo:1"
    image_tags.append(target)
    result = build_image(copy_model(ECHO), tag="echo:1", base_image=base_ref, backend="oci", push=target)
    assert result.pushed == f"{target}@{result.digest}"
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{target}"],
                         capture_output=True, check=True, timeout=120).stdout
    assert "sha256:" + __import__("hashlib").sha256(raw).hexdigest() == result.digest  # exact bytes
    manifest = json.loads(raw)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    docker_client.images.pull(target)  # the engine accepts it (loopback registries need no TLS)
    assert docker_client.images.get(target).attrs["Config"]["User"] == "10001:10001"
