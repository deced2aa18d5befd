"""Config, manifest and index documents: canonical JSON, base config merged, epoch timestamps."""

from __future__ import annotations

import json

import pytest
from mlbuild._errors import BuildError
from mlbuild._oci.image import (
    Descriptor,
    Healthcheck,
    NewLayer,
    RunConfig,
    build_config,
    build_index,
    build_manifest,
    canonical_json,
    rfc3339,
)
from mlbuild._oci.mediatypes import DOCKER, OCI, family_of
from mlbuild._platforms import parse_platform

AMD64 = parse_platform("linux/amd64")
ARM64 = parse_platform("linux/arm64")

BASE = {
    "architecture": "amd64",
    "os": "linux",
    "created": "2024-05-01T10:00:00.123Z",
    "container_config": {"Hostname": "x"},
    "config": {
        "Env": ["PATH=/usr/bin", "LANG=C.UTF-8", "HOME=/root"],
        "Entrypoint": ["/entry.sh"],
        "Cmd": ["python3"],
        "Labels": {"base": "yes", "org.opencontainers.image.title": "base"},
        "ExposedPorts": {"22/tcp": {}},
        "StopSignal": "SIGTERM",
        "Hostname": "abc",
        "AttachStdin": False,
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]},
    "history": [{"created": "2024-05-01T10:00:00Z", "created_by": "base"}],
}

RUN = RunConfig(
    env=(("HOME", "/tmp"), ("MLBUILD_PORT", "8080")),
    cmd=("/opt/mlbuild/server-env/bin/python", "-m", "mlbuild_runtime"),
    user="10001:10001",
    working_dir="/opt/mlbuild/model",
    exposed_ports=("8080/tcp",),
    labels=(("org.opencontainers.image.title", "echo"),),
    healthcheck=Healthcheck(("CMD", "true"), start_period_s=60),
)


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": "é", "c": None}]}) == '{"a":[1,{"c":null,"d":"é"}],"b":1}'.encode()


def test_config_merges_base_and_ours() -> None:
    data = build_config(BASE, RUN, [NewLayer("sha256:" + "b" * 64, "mlbuild: code")], platform=AMD64, epoch=86400)
    assert data == canonical_json(json.loads(data))  # canonical on the wire
    doc = json.loads(data)
    cfg = doc["config"]
    assert cfg["Env"] == ["PATH=/usr/bin", "LANG=C.UTF-8", "HOME=/tmp", "MLBUILD_PORT=8080"]
    assert "Entrypoint" not in cfg  # the base's would swallow our CMD
    assert cfg["Cmd"] == list(RUN.cmd) and cfg["User"] == "10001:10001" and cfg["WorkingDir"] == "/opt/mlbuild/model"
    assert cfg["Labels"] == {"base": "yes", "org.opencontainers.image.title": "echo"}
    assert cfg["ExposedPorts"] == {"22/tcp": {}, "8080/tcp": {}}
    assert cfg["StopSignal"] == "SIGTERM"
    assert "Hostname" not in cfg and "AttachStdin" not in cfg and "container_config" not in doc
    assert cfg["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 10_000_000_000, "Timeout": 5_000_000_000,
                                  "StartPeriod": 60_000_000_000, "Retries": 3}
    assert doc["created"] == "1970-01-02T00:00:00Z"
    assert doc["rootfs"]["diff_ids"] == ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    assert [h["created_by"] for h in doc["history"]] == ["base", "mlbuild: code", "mlbuild: image config"]
    assert all(h["created"] == "1970-01-02T00:00:00Z" for h in doc["history"][1:])
    assert doc["architecture"] == "amd64" and doc["os"] == "linux"


def test_config_for_another_platform_and_missing_history() -> None:
    base = {**BASE, "history": []}
    doc = json.loads(build_config(base, RUN, [], platform=ARM64, epoch=0))
    assert doc["architecture"] == "arm64"
    # One synthetic entry per base layer, so history lines up with the layers.
    assert [h.get("empty_layer", False) for h in doc["history"]] == [False, True]


def test_same_inputs_same_bytes_other_epoch_other_bytes() -> None:
    a = build_config(BASE, RUN, [], platform=AMD64, epoch=5)
    assert a == build_config(dict(reversed(list(BASE.items()))), RUN, [], platform=AMD64, epoch=5)
    assert a != build_config(BASE, RUN, [], platform=AMD64, epoch=6)


def test_manifest_oci_and_docker_families() -> None:
    cfg = Descriptor.of(OCI.config, b"{}")
    layer = Descriptor(OCI.layer_gzip, "sha256:" + "c" * 64, 10)
    data = build_manifest(OCI, cfg, [layer], annotations={"k": "v"})
    doc = json.loads(data)
    assert data == canonical_json(doc)
    assert doc == {
        "schemaVersion": 2,
        "mediaType": OCI.manifest,
        "config": {"mediaType": OCI.config, "digest": cfg.digest, "size": 2},
        "layers": [{"mediaType": OCI.layer_gzip, "digest": "sha256:" + "c" * 64, "size": 10}],
        "annotations": {"k": "v"},
    }
    dcfg = Descriptor.of(DOCKER.config, b"{}")
    ddoc = json.loads(build_manifest(DOCKER, dcfg, [Descriptor(DOCKER.layer_gzip, layer.digest, 10)], annotations={"k": "v"}))
    assert ddoc["mediaType"] == DOCKER.manifest and "annotations" not in ddoc
    with pytest.raises(BuildError, match="does not belong"):
        build_manifest(DOCKER, cfg, [])


def test_family_follows_the_base() -> None:
    assert family_of(DOCKER.manifest) is DOCKER
    assert family_of(OCI.manifest) is OCI
    assert family_of(None) is OCI


def test_index_is_sorted_by_platform_and_needs_platforms() -> None:
    m1 = Descriptor(OCI.manifest, "sha256:" + "1" * 64, 1, platform=ARM64)
    m2 = Descriptor(OCI.manifest, "sha256:" + "2" * 64, 2, platform=AMD64)
    doc = json.loads(build_index(OCI, [m1, m2]))
    assert [m["platform"] for m in doc["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux"},
    ]
    assert build_index(OCI, [m1, m2]) == build_index(OCI, [m2, m1])
    with pytest.raises(BuildError, match="has no platform"):
        build_index(OCI, [Descriptor(OCI.manifest, "sha256:" + "3" * 64, 3)])


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
