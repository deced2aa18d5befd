"""RegistryClient against a real docker-registry on 127.0.0.1 (and tiny broken servers)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlbuild._errors import FetchError, PublishError
from mlbuild._oci.auth import Credentials, DockerConfig
from mlbuild._oci.reference import parse_reference
from mlbuild._oci.registry import OCI_MANIFEST, RegistryClient

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are named here
    from conftest import LocalRegistry, LocalServer

pytestmark = pytest.mark.registry

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip layer blob and its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes)


@dataclass(frozen=True)
class TinyImage:
    layer: bytes
    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def make_image(text: str) -> TinyImage:
    layer, diff_id = make_layer({"hello.txt": text.encode()})
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"]},
         "rootfs": {"type": "layers", "diff_ids": [diff_id]}},
        sort_keys=True, separators=(",", ":"),
    ).encode()
    # Deliberately not canonical JSON (indent, key order): the digest must be of these bytes.
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
         "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
         "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}]},
        indent=3,
    ).encode()
    return TinyImage(layer, config, manifest)


def push_image(client: RegistryClient, repo: str, tag: str, image: TinyImage, tmp_path: Path) -> str:
    layer_file = tmp_path / f"{repo.replace('/', '_')}-layer.tar.gz"
    layer_file.write_bytes(image.layer)  # layers go from a file (streamed), the config from bytes
    client.push_blob(repo, sha256(image.layer), layer_file, len(image.layer))
    client.push_blob(repo, sha256(image.config), image.config, len(image.config))
    return client.push_manifest(repo, tag, image.manifest, OCI_MANIFEST)


def test_push_then_pull_by_tag_and_digest_gives_the_same_bytes(registry: LocalRegistry, tmp_path: Path) -> None:
    image = make_image("round trip")
    with registry.client() as client:
        assert not client.blob_exists("it/roundtrip", sha256(image.layer))
        digest = push_image(client, "it/roundtrip", "v1", image, tmp_path)
        assert digest == image.digest
        assert client.blob_exists("it/roundtrip", sha256(image.layer))

        by_tag = client.get_manifest("it/roundtrip", "v1")
        by_digest = client.get_manifest("it/roundtrip", digest)
        assert by_tag.data == by_digest.data == image.manifest
        assert by_tag.digest == by_digest.digest == digest
        assert by_tag.media_type == OCI_MANIFEST and not by_tag.is_index

        head = client.head_manifest("it/roundtrip", "v1")
        assert head is not None and head.digest == digest and head.size == len(image.manifest)
        assert client.head_manifest("it/roundtrip", "no-such-tag") is None

        assert client.get_blob("it/roundtrip", sha256(image.config), size=len(image.config)) == image.config
        out = tmp_path / "pulled-layer"
        assert client.download_blob("it/roundtrip", sha256(image.layer), out) == len(image.layer)
        assert out.read_bytes() == image.layer


def test_second_push_skips_existing_blobs_and_mount_links_across_repos(registry: LocalRegistry, tmp_path: Path) -> None:
    image = make_image("mount me")
    with registry.client() as client:
        push_image(client, "it/mount-src", "v1", image, tmp_path)
        layer_digest = sha256(image.layer)
        assert client.push_blob("it/mount-src", layer_digest, image.layer, len(image.layer)) == "exists"
        # Cross-repository mount: no upload, the registry links the blob into the new repo.
        assert client.push_blob("it/mount-dst", layer_digest, image.layer, len(image.layer),
                                mount_from="it/mount-src") == "mounted"
        assert client.push_blob("it/mount-dst", sha256(image.config), image.config, len(image.config),
                                mount_from="it/mount-src") == "mounted"
        client.push_manifest("it/mount-dst", "v1", image.manifest, OCI_MANIFEST)
        assert client.get_manifest("it/mount-dst", image.digest).data == image.manifest
        assert client.get_blob("it/mount-dst", layer_digest) == image.layer


def test_mount_from_a_repo_without_the_blob_falls_back_to_upload(registry: LocalRegistry) -> None:
    layer, _ = make_layer({"only-here.txt": b"fallback"})
    with registry.client() as client:
        assert client.push_blob("it/fallback", sha256(layer), layer, len(layer),
                                mount_from="it/never-pushed") == "uploaded"
        assert client.get_blob("it/fallback", sha256(layer)) == layer


def test_skopeo_inspects_the_pushed_image(registry: LocalRegistry, tmp_path: Path, require_tool) -> None:
    require_tool("skopeo", "Debian package skopeo")
    image = make_image("skopeo")
    with registry.client() as client:
        digest = push_image(client, "it/skopeo", "v1", image, tmp_path)
    proc = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{registry.host}/it/skopeo@{digest}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["Digest"] == digest
    assert info["Architecture"] == "amd64"
    assert info["Layers"] == [sha256(image.layer)]
    assert "A=1" in info["Env"]


def test_missing_tag_and_repository_are_fetch_errors_naming_them(registry: LocalRegistry, tmp_path: Path) -> None:
    with registry.client() as client:
        push_image(client, "it/present", "v1", make_image("present"), tmp_path)
        with pytest.raises(FetchError) as missing_tag:
            client.get_manifest("it/present", "v2")
        with pytest.raises(FetchError) as missing_repo:
            client.get_manifest("it/absent", "latest")
        with pytest.raises(FetchError) as missing_blob:
            client.get_blob("it/present", sha256(b"never pushed"))
    assert str(missing_tag.value).startswith(f"manifest not found: {registry.host}/it/present:v2")
    assert "MANIFEST_UNKNOWN" in str(missing_tag.value)
    assert f"{registry.host}/it/absent" in str(missing_repo.value)
    assert "not found" in str(missing_repo.value)
    assert str(missing_blob.value).startswith(f"blob not found: {registry.host}/it/present@sha256:")


def test_blob_altered_in_the_registry_storage_is_a_digest_mismatch(registry: LocalRegistry, tmp_path: Path) -> None:
    layer, _ = make_layer({"tamper.txt": b"original content"})
    digest = sha256(layer)
    with registry.client() as client:
        client.push_blob("it/tamper", digest, layer, len(layer))
        stored = registry.directory / "data/docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
        assert stored.read_bytes() == layer
        stored.write_bytes(layer[:-1] + bytes([layer[-1] ^ 0xFF]))  # same size, different bytes
        with pytest.raises(FetchError) as err:
            client.get_blob("it/tamper", digest)
        with pytest.raises(FetchError):
            client.download_blob("it/tamper", digest, tmp_path / "out")
    assert str(err.value).startswith(f"digest mismatch for blob {registry.host}/it/tamper@{digest}")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_auth_registry_accepts_good_credentials(auth_registry: LocalRegistry, tmp_path: Path) -> None:
    image = make_image("authenticated")
    with auth_registry.client() as client:
        digest = push_image(client, "it/private", "v1", image, tmp_path)
        assert client.get_manifest("it/private", "v1").digest == digest


def test_auth_registry_reads_credentials_from_a_docker_config(auth_registry: LocalRegistry, tmp_path: Path) -> None:
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    image = make_image("from docker config")
    with RegistryClient(auth_registry.host, credential_source=DockerConfig(config_dir)) as client:
        digest = push_image(client, "it/from-config", "v1", image, tmp_path)
    assert digest == image.digest


def test_auth_registry_rejects_bad_credentials_with_a_publish_error(auth_registry: LocalRegistry) -> None:
    layer, _ = make_layer({"x": b"x"})
    bad = Credentials(auth_registry.username or "", "wrong-password", "a test")
    with RegistryClient(auth_registry.host, credentials=bad) as client:
        with pytest.raises(PublishError) as err:
            client.push_blob("it/private", sha256(layer), layer, len(layer))
    first_line = str(err.value).splitlines()[0]
    assert first_line.startswith(f"registry {auth_registry.host} rejected the credentials of user 'mlbuild'")
    assert "(from a test)" in first_line
    assert "docker login" in (err.value.hint or "")


def test_auth_registry_without_credentials_says_where_it_looked(auth_registry: LocalRegistry, tmp_path: Path) -> None:
    with RegistryClient(auth_registry.host, credential_source=DockerConfig(tmp_path)) as client:
        with pytest.raises(PublishError) as err:
            client.push_manifest("it/private", "v9", b"{}", OCI_MANIFEST)
    assert str(err.value).startswith(f"registry {auth_registry.host} needs credentials to push it/private")
    assert str(tmp_path / "config.json") in str(err.value)


def test_registry_500_is_an_error_with_status_and_registry_message(failing_server: LocalServer) -> None:
    with RegistryClient(failing_server.host) as client:
        with pytest.raises(FetchError) as pull:
            client.get_manifest("team/model", "1.0")
        with pytest.raises(PublishError) as push:
            client.push_blob("team/model", sha256(b"x"), b"x", 1)
    assert str(pull.value).startswith(f"registry {failing_server.host} failed with 500 Internal Server Error "
                                      f"while pulling manifest {failing_server.host}/team/model:1.0")
    assert "UNKNOWN: storage backend exploded" in str(pull.value)
    assert "500" in str(push.value) and "pushing blob" in str(push.value)
    assert failing_server.requests[0] == "GET /v2/team/model/manifests/1.0"


def test_registry_that_never_answers_times_out_naming_host_and_duration(slow_server: LocalServer) -> None:
    started = time.monotonic()
    with RegistryClient(slow_server.host, timeout=0.5) as client:
        with pytest.raises(FetchError) as err:
            client.get_manifest("team/model", "1.0")
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert message.startswith(f"registry {slow_server.host} did not answer within 0.")
    assert "timeout 0.5 s" in message


def test_nothing_listening_is_a_connection_error(unused_port: int) -> None:
    host = f"127.0.0.1:{unused_port}"
    with RegistryClient(host, timeout=5) as client:
        with pytest.raises(FetchError) as err:
            client.get_manifest("a/b", "c")
    assert str(err.value).startswith(f"cannot connect to registry {host} (http://{host})")


@pytest.mark.docker
@pytest.mark.slow
def test_multiarch_base_lists_both_platforms(multiarch_base: str, registry: LocalRegistry) -> None:
    ref = parse_reference(multiarch_base)
    with registry.client() as client:
        index = client.get_manifest(ref.repository, ref.ref)
        assert index.is_index
        platforms = sorted(
            "/".join(filter(None, (m["platform"]["os"], m["platform"]["architecture"])))
            for m in json.loads(index.data)["manifests"]
        )
        assert platforms == ["linux/amd64", "linux/arm64"]
        for plat in ("linux/amd64", "linux/arm64"):
            manifest = client.get_platform_manifest(ref.repository, ref.ref, plat)
            config_desc = json.loads(manifest.data)["config"]
            config = json.loads(client.get_blob(ref.repository, config_desc["digest"], size=config_desc["size"]))
            assert f"{config['os']}/{config['architecture']}" == plat
            assert "PYTHON_VERSION=3.11.2" in config["config"]["Env"]
    if shutil.which("skopeo"):
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{multiarch_base}"],
                             capture_output=True, text=True, timeout=60)
        assert raw.returncode == 0, raw.stderr
        assert json.loads(raw.stdout)["mediaType"] == "application/vnd.oci.image.index.v1+json"
