"""A base image read from local files, as one frozen ``BaseImage`` (what _oci/base.py's
``open_base`` returns for every source): the data model, and the readers of an OCI image layout
and of a ``docker save`` archive.

Nothing is trusted blindly: sizes are checked when a source is opened (a truncated file is
reported with its name and what is missing) and blob digests are checked when a blob is
copied into the output (``layout.copy_blob``).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from .._errors import BuildError, ConfigError
from .._platforms import Platform
from .mediatypes import INDEX_TYPES, MANIFEST_TYPES, OCI, Family, family_of

__all__ = ["BaseImage", "BaseLayer", "Opener", "python_minor", "read_docker_archive", "read_oci_layout"]


Opener = Callable[[], BinaryIO]


@dataclass(frozen=True)
class BaseLayer:
    media_type: str
    digest: str  # of the blob as stored (compressed or not)
    size: int
    diff_id: str  # of the uncompressed tar
    open: Opener = field(compare=False, repr=False)
    origin: str = ""  # where the bytes come from, for error messages
    extra: tuple[tuple[str, Any], ...] = ()  # other descriptor fields to keep verbatim (urls, annotations)

    @property
    def short(self) -> str:
        """``sha256:`` + 12 hex digits: how messages name the layer (as ``docker history`` does)."""
        algo, _, hexd = self.digest.partition(":")
        return f"{algo}:{hexd[:12]}" if hexd else self.digest


@dataclass(frozen=True)
class BaseImage:
    reference: str
    platform: Platform
    config_bytes: bytes
    layers: tuple[BaseLayer, ...]
    # Exact manifest as the source holds it; None for docker-archive tars, which have none.
    manifest_bytes: bytes | None = None
    manifest_media_type: str | None = None
    # A name that means the same on every machine (for the base.name label): the image's tag
    # or registry reference, never a host path (that would break reproducibility).
    name: str = ""

    @cached_property
    def config(self) -> Mapping[str, Any]:
        return MappingProxyType(_parse_json(self.config_bytes, f"{self.reference}: image config"))

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()

    @property
    def manifest_digest(self) -> str | None:
        return None if self.manifest_bytes is None else "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def family(self) -> Family:
        return family_of(self.manifest_media_type) if self.manifest_media_type else OCI

    @cached_property
    def env(self) -> Mapping[str, str]:
        out = {}
        for item in (self.config.get("config") or {}).get("Env") or []:
            k, _, v = item.partition("=")
            out[k] = v
        return MappingProxyType(out)

    @property
    def identity(self) -> str:
        """Stable id of the base's content (the config digest names its layers too)."""
        return self.config_digest


def python_minor(base: BaseImage, wanted: str | None) -> str:
    """The image's Python as ``3.X``: the base's PYTHON_VERSION env, checked against ``wanted``
    (the spec's / lock's python). Either alone is enough; both must agree."""
    raw = base.env.get("PYTHON_VERSION", "").strip()
    have = ".".join(raw.split(".")[:2]) if raw else None
    want = ".".join(wanted.strip().split(".")[:2]) if wanted else None
    if have and want and have != want:
        raise ConfigError(
            f"base image {base.reference} has Python {raw} but the model's lock/spec asks for Python {wanted}",
            hint=f"use a base image with Python {want}, or set python = \"{have}\" and run `mlbuild lock` again",
        )
    result = have or want
    if not result:
        raise ConfigError(
            f"cannot tell which Python base image {base.reference} has: no PYTHON_VERSION in its environment",
            hint="set `python = \"3.X\"` in mlbuild.toml",
        )
    return result


# ---------------------------------------------------------------- helpers


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildError(f"{what} is not valid JSON ({exc})", hint="the base image is corrupt; export it again") from exc


def _corrupt(path: Path | str, what: str) -> BuildError:
    return BuildError(f"{path}: {what}", hint="the base image file is corrupt or truncated; export it again (e.g. `docker save -o FILE IMAGE`)")


class _Slice:
    """A read-only window [offset, offset+size) of a file, opened fresh for each reader."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._f = open(path, "rb")
        self._f.seek(offset)
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Slice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _platform_of(config: Mapping[str, Any]) -> Platform:
    return Platform(config.get("os") or "linux", config.get("architecture") or "amd64", config.get("variant") or None)


def _check_platform(base_platform: Platform, wanted: Platform | None, ref: str) -> None:
    if wanted is not None and (base_platform.os, base_platform.arch) != (wanted.os, wanted.arch):
        raise BuildError(
            f"base image {ref} is {base_platform}, not {wanted}",
            hint=f"use a base image (or an index) that has {wanted}, or build for --platform {base_platform}",
        )


def _diff_ids(config: Mapping[str, Any], n_layers: int, where: str) -> list[str]:
    ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(ids) != n_layers:
        raise _corrupt(where, f"config lists {len(ids)} layer diff_ids but the image has {n_layers} layers")
    return ids


# ---------------------------------------------------------------- OCI layout


def read_oci_layout(directory: Path, tag: str | None, platform: Platform | None) -> BaseImage:
    directory = Path(directory)
    ref = f"oci:{directory}" + (f":{tag}" if tag else "")
    layout_file = directory / "oci-layout"
    if not layout_file.is_file():
        raise ConfigError(f"{directory}: not an OCI image layout (no oci-layout file)", hint="give a directory written by `skopeo copy ... oci:DIR` or `mlbuild image DIR --backend oci --output LAYOUT`")
    index = _parse_json(_read_small(directory / "index.json"), f"{directory / 'index.json'}")
    entries = list(index.get("manifests") or [])
    if tag is not None:
        entries = [m for m in entries if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
        if not entries:
            raise ConfigError(f"{directory}: no image tagged {tag!r} in index.json", hint="list the tags with `skopeo inspect oci:DIR`")
    if not entries:
        raise _corrupt(directory / "index.json", "lists no manifests")
    if len(entries) > 1 and all(m.get("mediaType") in MANIFEST_TYPES for m in entries):
        entries = _select_platform(entries, platform, directory / "index.json")
    desc = entries[0]
    chosen_annotations = dict(desc.get("annotations") or {})

    def blob(desc: Mapping[str, Any]) -> Path:
        algo, _, hexd = str(desc.get("digest", "")).partition(":")
        path = directory / "blobs" / algo / hexd
        if not hexd or not path.is_file():
            raise _corrupt(directory, f"blob {desc.get('digest')} is missing")
        size = path.stat().st_size
        if "size" in desc and size != desc["size"]:
            raise _corrupt(path, f"is {size} bytes, its descriptor says {desc['size']} (truncated?)")
        return path

    def read_blob(desc: Mapping[str, Any]) -> bytes:
        data = blob(desc).read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc.get("digest"):
            raise _corrupt(blob(desc), "content does not match its digest")
        return data

    media = desc.get("mediaType")
    data = read_blob(desc)
    if media in INDEX_TYPES or (media is None and b'"manifests"' in data):
        sub = _parse_json(data, f"{ref}: index")
        desc = _select_platform(list(sub.get("manifests") or []), platform, blob(desc))[0]
        data = read_blob(desc)
    manifest = _parse_json(data, f"{ref}: manifest")
    media = desc.get("mediaType") or manifest.get("mediaType") or OCI.manifest
    config_bytes = read_blob(manifest.get("config") or {})
    config = _parse_json(config_bytes, f"{ref}: config")
    layer_descs = list(manifest.get("layers") or [])
    diff_ids = _diff_ids(config, len(layer_descs), str(directory))
    layers = []
    for ld, diff_id in zip(layer_descs, diff_ids, strict=True):
        path = blob(ld)
        extra = tuple(sorted((k, v) for k, v in ld.items() if k not in ("mediaType", "digest", "size")))
        layers.append(BaseLayer(ld["mediaType"], ld["digest"], ld["size"], diff_id, _file_opener(path), str(path), extra))
    ann = chosen_annotations
    name = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name") or "oci-layout"
    base = BaseImage(ref, _platform_of(config), config_bytes, tuple(layers), data, media, name)
    _check_platform(base.platform, platform, ref)
    return base


def _file_opener(path: Path) -> Opener:
    return lambda: open(path, "rb")


def _read_small(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _corrupt(path, "is missing") from None


def _select_platform(entries: list[Mapping[str, Any]], platform: Platform | None, where: Path) -> list[Mapping[str, Any]]:
    if platform is None:
        return entries
    found = [
        m for m in entries
        if (m.get("platform") or {}).get("architecture") == platform.oci_arch
        and (m.get("platform") or {}).get("os", "linux") == platform.os
    ]
    if not found:
        have = sorted(f"{(m.get('platform') or {}).get('os')}/{(m.get('platform') or {}).get('architecture')}" for m in entries)
        raise BuildError(f"{where}: no image for {platform} (has: {', '.join(have) or 'none'})", hint="use a base image that has this platform")
    return found


# ---------------------------------------------------------------- docker-archive


def read_docker_archive(path: Path, ref: str | None, platform: Platform | None) -> BaseImage:
    """``docker save`` output (legacy ``<id>/layer.tar`` or OCI-style ``blobs/sha256/...`` members)."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with tarfile.open(path, "r:") as tar:
            members = {m.name.lstrip("./") if m.name != "." else ".": m for m in tar.getmembers()}
    except FileNotFoundError:
        raise ConfigError(f"{path}: base image archive not found", hint="export it with `docker save -o FILE IMAGE`") from None
    except (tarfile.TarError, EOFError) as exc:
        raise _corrupt(path, f"not a readable tar archive ({exc})") from exc

    def member(name: str) -> tarfile.TarInfo:
        m = members.get(name.lstrip("./"))
        if m is None or not m.isfile():
            raise _corrupt(path, f"member {name} is missing")
        if m.offset_data + m.size > file_size:
            raise _corrupt(path, f"member {name} is cut short: archive ends {m.offset_data + m.size - file_size} bytes early (truncated?)")
        return m

    def read(name: str) -> bytes:
        m = member(name)
        with _Slice(path, m.offset_data, m.size) as f:
            return f.read()

    manifest = _parse_json(read("manifest.json"), f"{path}: manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise _corrupt(path, "manifest.json lists no images")
    chosen = manifest
    if ref:
        chosen = [m for m in manifest if ref in (m.get("RepoTags") or [])]
        if not chosen:
            tags = sorted(t for m in manifest for t in (m.get("RepoTags") or []))
            raise ConfigError(f"{path}: no image {ref!r} in the archive (has: {', '.join(tags) or 'untagged images'})", hint="name one of the listed tags")
    if len(chosen) > 1:
        tags = sorted(t for m in chosen for t in (m.get("RepoTags") or []))
        raise ConfigError(f"{path}: holds {len(chosen)} images; say which one", hint=f"use docker-archive:{path}:REPO:TAG with one of: {', '.join(tags)}")
    entry = chosen[0]
    config_name = entry.get("Config") or ""
    config_bytes = read(config_name)
    expected = Path(config_name).name.removesuffix(".json")
    if len(expected) == 64 and hashlib.sha256(config_bytes).hexdigest() != expected:
        raise _corrupt(path, f"config {config_name} does not match its digest")
    config = _parse_json(config_bytes, f"{path}: {config_name}")
    names = list(entry.get("Layers") or [])
    diff_ids = _diff_ids(config, len(names), str(path))
    layers = []
    for name, diff_id in zip(names, diff_ids, strict=True):
        m = member(name)
        with _Slice(path, m.offset_data, min(m.size, 2)) as f:
            magic = f.read(2)
        opener = _slice_opener(path, m.offset_data, m.size)
        origin = f"{path} member {name}"
        if magic == b"\x1f\x8b":  # newer engines may store compressed layers: digest the blob itself
            digest = _hash_stream(opener)
            layers.append(BaseLayer(OCI.layer_gzip, digest, m.size, diff_id, opener, origin))
        else:
            # Uncompressed: the blob *is* the diff; its digest is checked when it is copied out.
            layers.append(BaseLayer(OCI.layer_tar, diff_id, m.size, diff_id, opener, origin))
    tags = entry.get("RepoTags") or []
    label = f"docker-archive:{path}" + (f":{ref or tags[0]}" if (ref or tags) else "")
    base = BaseImage(label, _platform_of(config), config_bytes, tuple(layers), name=ref or (tags[0] if tags else "docker-archive"))
    _check_platform(base.platform, platform, label)
    return base


def _slice_opener(path: Path, offset: int, size: int) -> Opener:
    return lambda: _Slice(path, offset, size)  # type: ignore[return-value]


def _hash_stream(opener: Opener) -> str:
    h = hashlib.sha256()
    with opener() as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


