"""Writing outputs (OCI layout dir, OCI + docker-archive tar) and the host layer cache."""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from mlbuild._errors import BuildError, PublishError
from mlbuild._oci.cache import BlobStore, layer_key
from mlbuild._oci.image import Descriptor, build_manifest, sha256_digest
from mlbuild._oci.layout import Blob, BuiltImages, DockerEntry, write_archive, write_layout
from mlbuild._oci.mediatypes import OCI
from mlbuild._oci.tarlayer import bytes_entry
from mlbuild._platforms import parse_platform

AMD64 = parse_platform("linux/amd64")


def _blob(data: bytes, origin: str = "test", verify: bool = False) -> Blob:
    return Blob(sha256_digest(data), len(data), lambda: io.BytesIO(data), origin, verify=verify)


def _images(layer: bytes = b"layer-bytes", config: bytes = b'{"c":1}', *, layer_blob: Blob | None = None) -> BuiltImages:
    lb = layer_blob or _blob(layer)
    cfg = Descriptor.of(OCI.config, config)
    manifest = build_manifest(OCI, cfg, [Descriptor(OCI.layer_gzip, lb.digest, lb.size)])
    return BuiltImages(OCI.manifest, manifest, (lb, _blob(config)), (DockerEntry(cfg.digest, (lb.digest,), AMD64),))


def test_new_layout(tmp_path: Path) -> None:
    images = _images()
    out = write_layout(tmp_path / "img", images, "reg/team/echo:1.0")
    assert json.loads((out / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_bytes())
    assert index["manifests"] == [{
        "mediaType": OCI.manifest, "digest": images.digest, "size": len(images.top),
        "annotations": {"org.opencontainers.image.ref.name": "1.0", "io.containerd.image.name": "reg/team/echo:1.0"},
    }]
    names = sorted(p.name for p in (out / "blobs" / "sha256").iterdir())
    assert names == sorted(d.split(":")[1] for d in [images.digest, sha256_digest(b"layer-bytes"), sha256_digest(b'{"c":1}')])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_update_keeps_unchanged_blobs(tmp_path: Path) -> None:
    out = write_layout(tmp_path / "img", _images(), "echo:1")
    layer_file = out / "blobs" / "sha256" / sha256_digest(b"layer-bytes").split(":")[1]
    before = os.stat(layer_file)
    images2 = _images(config=b'{"c":2}')  # code-only change: new config + manifest, same layer
    write_layout(out, images2, "echo:1")
    after = os.stat(layer_file)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert json.loads((out / "index.json").read_bytes())["manifests"][0]["digest"] == images2.digest


def test_refuses_a_directory_that_is_not_a_layout(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "precious.txt").write_text("x")
    with pytest.raises(PublishError, match="exists and is not an OCI layout"):
        write_layout(tmp_path / "img", _images(), "echo:1")
    assert (tmp_path / "img" / "precious.txt").read_text() == "x"


class _Failing(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_io_error_is_publish_error_and_nothing_is_left(tmp_path: Path) -> None:
    bad = Blob(sha256_digest(b"zz"), 2, lambda: _Failing(), "failing")
    for dest in (tmp_path / "img", tmp_path / "img.tar"):
        with pytest.raises(PublishError, match=rf"cannot write the image to {dest}: No space left"):
            (write_archive if dest.suffix == ".tar" else write_layout)(dest, _images(layer_blob=bad), "e:1", **({"epoch": 0, "host_arch": "amd64"} if dest.suffix == ".tar" else {}))
        assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_base_blob_is_caught_while_copying(tmp_path: Path) -> None:
    lying = Blob(sha256_digest(b"expected"), 8, lambda: io.BytesIO(b"tampered"), "base.tar member 0/layer.tar", verify=True)
    with pytest.raises(BuildError, match="base.tar member 0/layer.tar: content does not match"):
        write_layout(tmp_path / "img", _images(layer_blob=lying), "e:1")
    with pytest.raises(BuildError, match="content does not match"):
        write_archive(tmp_path / "img.tar", _images(layer_blob=lying), "e:1", epoch=0, host_arch="amd64")
    assert list(tmp_path.iterdir()) == []


def test_archive_is_oci_layout_plus_docker_manifest(tmp_path: Path) -> None:
    images = _images()
    out = write_archive(tmp_path / "img.tar", images, "echo:1", epoch=7, host_arch="amd64")
    with tarfile.open(out) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        docker = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        blob_names = {n for n in names if n.startswith("blobs/sha256/")}
    assert names[:2] == ["blobs", "blobs/sha256"] and names[-3:] == ["index.json", "manifest.json", "oci-layout"]
    assert all((m.mtime, m.uid, m.gid, m.uname) == (7, 0, 0, "") for m in members)
    cfg = docker[0]["Config"]
    assert docker == [{"Config": cfg, "RepoTags": ["echo:1"], "Layers": [f"blobs/sha256/{sha256_digest(b'layer-bytes').split(':')[1]}"]}]
    assert cfg in blob_names and set(docker[0]["Layers"]) <= blob_names
    assert f"blobs/sha256/{images.digest.split(':')[1]}" in blob_names
    assert index["manifests"][0]["digest"] == images.digest
    # Deterministic: the same image gives the same archive bytes.
    again = write_archive(tmp_path / "again.tar", images, "echo:1", epoch=7, host_arch="amd64")
    assert again.read_bytes() == out.read_bytes()


def test_layer_cache_hits_by_key_and_survives_only_with_its_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    calls = []

    def entries():
        calls.append(1)
        return [bytes_entry("/a", b"1")]

    key = layer_key(kind="model-env", lock="sha256:abc", platform="linux/amd64")
    first = store.layer(key, entries, epoch=0)
    second = store.layer(key, entries, epoch=0)
    assert first == second and len(calls) == 1
    assert first.path == store.path(first.digest) and first.path.stat().st_size == first.size
    first.path.unlink()  # blob gone: the record is not trusted any more
    third = store.layer(key, entries, epoch=0)
    assert third.digest == first.digest and len(calls) == 2
    assert layer_key(kind="model-env", lock="sha256:abd", platform="linux/amd64") != key
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_group_cache_names_its_layers_in_order_and_only_while_all_are_whole(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    a = store.layer(None, lambda: [bytes_entry("/a", b"1")], epoch=0)
    b = store.layer(None, lambda: [bytes_entry("/b", b"2")], epoch=0)
    key = layer_key(kind="model-env", lock="sha256:abc")
    assert store.cached_group(key) is None
    store.remember_group(key, [(b, "numpy 2.4"), (a, "rest")])
    assert store.cached_group(key) == [(b, "numpy 2.4"), (a, "rest")]
    assert store.cached_group(layer_key(kind="model-env", lock="sha256:abd")) is None
    (store.groups / f"{key}.json").write_text("[{\"digest\": 1}]")  # damaged record: a miss, not a crash
    assert store.cached_group(key) is None
    store.remember_group(key, [(b, "numpy 2.4"), (a, "rest")])
    a.path.unlink()  # one of its blobs gone: the whole group is rebuilt
    assert store.cached_group(key) is None
    assert not [p for p in store.groups.iterdir() if p.name.startswith(".")]
