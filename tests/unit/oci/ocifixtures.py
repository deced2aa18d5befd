"""Tiny synthetic base images (docker-archive tars, OCI layouts) built in Python: no engine."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

PASSWD = b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"


def layer_tar(members: list[tuple[str, bytes | str | None]]) -> bytes:
    """Uncompressed tar; value bytes = file, str = symlink target, None = directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in members:
            info = tarfile.TarInfo(name)
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(value, str):
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            else:
                info.size, info.mode = len(value), 0o755
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def debian_like_layers() -> list[bytes]:
    """Two layers: merged-/usr Debian with python3 -> python3.11, then an update of /etc/group."""
    first = layer_tar([
        ("bin", "usr/bin"),
        ("etc", None),
        ("etc/passwd", PASSWD),
        ("etc/group", b"old\n"),
        ("usr", None),
        ("usr/bin", None),
        ("usr/bin/python3", "python3.11"),
        ("usr/bin/python3.11", b"\x7fELF fake"),
        ("usr/lib", None),
        ("usr/lib/python3.11", None),
        ("usr/lib/python3.11/os.py", b"# os\n"),
        ("tmp", None),
        ("tmp/gone", b"x"),
    ])
    second = layer_tar([("etc/group", GROUP), ("tmp/.wh.gone", b"")])
    return [first, second]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(layers: list[bytes], arch: str = "amd64", env: list[str] | None = None) -> bytes:
    return json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": env if env is not None else ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHON_VERSION=3.11.2"],
                   "Cmd": ["python3"], "Entrypoint": ["/docker-entrypoint.sh"], "Hostname": "abc"},
        "rootfs": {"type": "layers", "diff_ids": [sha(l) for l in layers]},
        "history": [{"created": "2023-01-01T00:00:00Z", "created_by": f"step {i}"} for i in range(len(layers))],
    }, sort_keys=True).encode()


def write_docker_archive(path: Path, layers: list[bytes], *, tag: str = "base:1", config: bytes | None = None) -> Path:
    config = config or image_config(layers)
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [tag], "Layers": [f"{i}/layer.tar" for i in range(len(layers))]}]
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add(cfg_name, config)
        for i, layer in enumerate(layers):
            add(f"{i}/layer.tar", layer)
        add("manifest.json", json.dumps(manifest).encode())
    return path


@pytest.fixture
def docker_archive(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "base.tar", layers: list[bytes] | None = None, **kw) -> Path:
        return write_docker_archive(tmp_path / name, layers or debian_like_layers(), **kw)

    return make


def symlink_chain_layer(hops: int, depth: int, entries: list[str]) -> bytes:
    """Symlinks ``s0 -> s1 -> ... -> d``, each target ``/q/q/.../../..s{i+1}`` with ``depth``
    ``q/`` then as many ``../`` (2 * depth + 1 components, 5 * depth + 4 bytes: depth 818 is
    the longest under PATH_MAX), then the directory ``d`` and ``entries`` (plain files, e.g.
    ``s0/f1``), in that order: a base whose entries make the scan walk a long chain."""
    members: list[tuple[str, bytes | str | None]] = [
        (f"s{i}", "/" + "q/" * depth + "../" * depth + (f"s{i + 1}" if i < hops - 1 else "d")) for i in range(hops)
    ]
    members.append(("d", None))
    members.extend((name, b"") for name in entries)
    return layer_tar(members)


def gzip_layer_of_empty_files(path: Path, names) -> Path:
    """A .tar.gz layer at ``path`` holding an empty file for each of ``names`` (an iterable,
    written as a stream: a million entries never sit in memory here)."""
    import gzip

    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz, tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.addfile(tarfile.TarInfo(name))
    return path
