"""Base image readers: docker-archive tars and OCI layouts, good and damaged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlbuild._errors import BuildError, ConfigError, MlbuildError
from mlbuild._oci.base import open_base, python_minor
from mlbuild._oci.image import sha256_digest
from mlbuild._oci.layout import Blob, BuiltImages, DockerEntry, write_layout
from mlbuild._oci.mediatypes import OCI
from mlbuild._platforms import parse_platform
from ocifixtures import debian_like_layers, image_config, sha, write_docker_archive

AMD64 = parse_platform("linux/amd64")
ARM64 = parse_platform("linux/arm64")


def test_reads_docker_archive(docker_archive) -> None:
    path = docker_archive()
    base = open_base(f"docker-archive:{path}", AMD64)
    layers = debian_like_layers()
    assert base.platform == AMD64
    assert [l.digest for l in base.layers] == [sha(l) for l in layers]
    assert [l.diff_id for l in base.layers] == [sha(l) for l in layers]
    assert all(l.media_type == OCI.layer_tar for l in base.layers)
    with base.layers[1].open() as f:
        assert f.read() == layers[1]
    assert base.env["PYTHON_VERSION"] == "3.11.2"
    assert base.family.name == "oci" and base.manifest_bytes is None
    # A bare path works too, and so does naming the tag.
    assert open_base(str(path), AMD64).config_bytes == base.config_bytes
    assert open_base(f"docker-archive:{path}:base:1", AMD64).config_bytes == base.config_bytes


def test_wrong_tag_and_wrong_platform(docker_archive) -> None:
    path = docker_archive()
    with pytest.raises(ConfigError, match=r"no image 'other:2' in the archive \(has: base:1\)"):
        open_base(f"docker-archive:{path}:other:2", AMD64)
    with pytest.raises(BuildError, match="is linux/amd64, not linux/arm64"):
        open_base(str(path), ARM64)


def test_truncated_archive_names_file_and_member(docker_archive, tmp_path: Path) -> None:
    path = docker_archive()
    data = path.read_bytes()
    # Cut inside the last member's data: headers still parse, the member is short.
    layers = debian_like_layers()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: data.index(layers[1][:100]) + 600])
    with pytest.raises(MlbuildError) as info:
        open_base(str(cut), AMD64)
    msg = str(info.value)
    assert str(cut) in msg and ("truncated" in msg or "missing" in msg or "not a readable tar" in msg), msg
    assert info.value.hint


def test_garbage_is_not_a_tar(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(BuildError, match=rf"{bad}: not a readable tar archive"):
        open_base(str(bad), AMD64)


def test_missing_manifest_and_bad_json(tmp_path: Path) -> None:
    import io
    import tarfile

    def archive(name: str, members: dict[str, bytes]) -> Path:
        p = tmp_path / name
        with tarfile.open(p, "w") as tar:
            for n, d in members.items():
                info = tarfile.TarInfo(n)
                info.size = len(d)
                tar.addfile(info, io.BytesIO(d))
        return p

    with pytest.raises(BuildError, match="member manifest.json is missing"):
        open_base(str(archive("a.tar", {"x": b"1"})), AMD64)
    with pytest.raises(BuildError, match="manifest.json is not valid JSON"):
        open_base(str(archive("b.tar", {"manifest.json": b"{nope"})), AMD64)


def test_config_that_does_not_match_its_name(docker_archive, tmp_path: Path) -> None:
    layers = debian_like_layers()
    path = write_docker_archive(tmp_path / "x.tar", layers)
    data = bytearray(path.read_bytes())
    i = data.index(b'"architecture"')
    data[i + 1 : i + 2] = b"A"  # flip one byte of the config
    path.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="does not match its digest"):
        open_base(str(path), AMD64)


def test_diff_id_count_mismatch(tmp_path: Path) -> None:
    layers = debian_like_layers()
    config = image_config(layers[:1])
    path = write_docker_archive(tmp_path / "x.tar", layers, config=config)
    with pytest.raises(BuildError, match="1 layer diff_ids but the image has 2 layers"):
        open_base(str(path), AMD64)


def _layout_from_archive(archive: Path, dest: Path, tag: str = "1") -> Path:
    base = open_base(str(archive), AMD64)
    from mlbuild._oci.image import Descriptor, build_manifest

    cfg = Descriptor.of(OCI.config, base.config_bytes)
    layers = [Descriptor(l.media_type, l.digest, l.size) for l in base.layers]
    manifest = build_manifest(OCI, cfg, layers)
    blobs = [Blob(l.digest, l.size, l.open, l.origin, verify=True) for l in base.layers]
    blobs.append(Blob(cfg.digest, cfg.size, lambda: __import__("io").BytesIO(base.config_bytes), "cfg"))
    images = BuiltImages(OCI.manifest, manifest, tuple(blobs), (DockerEntry(cfg.digest, tuple(l.digest for l in layers), AMD64),))
    return write_layout(dest, images, f"base:{tag}")


def test_reads_oci_layout_and_checks_blobs(docker_archive, tmp_path: Path) -> None:
    layout = _layout_from_archive(docker_archive(), tmp_path / "layout")
    base = open_base(f"oci:{layout}", AMD64)
    assert base.manifest_bytes is not None and base.family.name == "oci"
    assert sha256_digest(base.manifest_bytes) == json.loads((layout / "index.json").read_bytes())["manifests"][0]["digest"]
    assert open_base(f"oci:{layout}:1", AMD64).config_bytes == base.config_bytes
    assert open_base(str(layout), AMD64).config_bytes == base.config_bytes
    with pytest.raises(ConfigError, match="no image tagged 'nope'"):
        open_base(f"oci:{layout}:nope", AMD64)
    # Truncate a layer blob: reported with its path and the sizes.
    victim = layout / "blobs" / "sha256" / base.layers[0].digest.split(":")[1]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(BuildError, match=rf"{victim}: is 100 bytes, its descriptor says"):
        open_base(f"oci:{layout}", AMD64)


def test_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an OCI image layout"):
        open_base(f"oci:{tmp_path}", AMD64)


def test_python_version_rules(docker_archive, tmp_path: Path) -> None:
    base = open_base(str(docker_archive()), AMD64)
    assert python_minor(base, "3.11") == "3.11"
    assert python_minor(base, None) == "3.11"
    with pytest.raises(ConfigError, match=r"has Python 3\.11\.2 but the model's lock/spec asks for Python 3\.12"):
        python_minor(base, "3.12")
    layers = debian_like_layers()
    bare = open_base(str(write_docker_archive(tmp_path / "bare.tar", layers, config=image_config(layers, env=[]))), AMD64)
    assert python_minor(bare, "3.11") == "3.11"
    with pytest.raises(ConfigError, match="cannot tell which Python"):
        python_minor(bare, None)


def test_registry_reference_goes_to_the_client(tmp_path: Path) -> None:
    layers = debian_like_layers()
    config = image_config(layers)
    from mlbuild._oci.image import Descriptor, build_manifest
    from mlbuild._oci.registry import FetchedManifest

    manifest = build_manifest(OCI, Descriptor.of(OCI.config, config), [Descriptor(OCI.layer_tar, sha(l), len(l)) for l in layers])

    class FakeClient:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def get_platform_manifest(self, repo, ref, platform):
            self.calls.append(("manifest", repo, ref, str(platform)))
            return FetchedManifest(manifest, OCI.manifest, sha256_digest(manifest))

        def get_blob(self, repo, digest, size=None):
            assert digest == sha256_digest(config)
            return config

        def download_blob(self, repo, digest, dest, size=None):
            self.calls.append(("blob", digest))
            data = {sha(l): l for l in layers}[digest]
            Path(dest).write_bytes(data)
            return len(data)

    client = FakeClient()
    base = open_base("127.0.0.1:5000/team/py:3.11", AMD64, cache_dir=tmp_path, registry_client=client)
    assert client.calls == [("manifest", "team/py", "3.11", "linux/amd64")]
    assert base.manifest_bytes == manifest
    with base.layers[0].open() as f:
        assert f.read() == layers[0]
    with base.layers[0].open() as f:  # second open: from the cache, no new download
        f.read()
    assert [c for c in client.calls if c[0] == "blob"] == [("blob", sha(layers[0]))]
