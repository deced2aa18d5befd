"""Base images for the OCI backend, from wherever they live, as one frozen ``BaseImage``.

Sources (``open_base(source, platform)``):

- ``oci:DIR`` / ``oci:DIR:TAG`` / a directory holding ``oci-layout``: an OCI image layout
- ``docker-archive:FILE`` / ``docker-archive:FILE:REPO:TAG`` / a ``.tar`` file: ``docker save`` output
- ``docker:REF``: an image in the local Docker engine, exported once with ``docker save`` and
  cached by image id (for machines with no registry; the export itself is the only engine call)
- anything else: a registry reference, pulled by ``registry.RegistryClient.pull_image``

Contract with the registry client (``_oci/registry.py``): ``pull_image(ref, platform)`` returns
a ``BaseImage`` with the *exact* manifest and config bytes it got (so digests are preserved),
one ``BaseLayer`` per manifest layer whose ``open()`` gives a fresh readable stream of the
blob's bytes (compressed as stored), and ``diff_id`` taken from the config's rootfs.

Nothing is trusted blindly: sizes are checked when a source is opened (a truncated file is
reported with its name and what is missing) and blob digests are checked when a blob is
copied into the output (``layout.copy_blob``).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from .._errors import BuildError, ConfigError
from .._platforms import Platform
from .._runner import CommandFailed, Runner
from .mediatypes import INDEX_TYPES, MANIFEST_TYPES, OCI, Family, family_of

__all__ = ["BaseLayer", "BaseImage", "open_base", "open_layer_tar", "LAYER_READ_ERRORS", "read_oci_layout", "read_docker_archive", "python_minor"]

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


def _split_ref(text: str, is_container: Callable[[Path], bool]) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR:TAG``; a path that itself contains ':' wins over a tag split."""
    if is_container(Path(text)):
        return Path(text), None
    head, sep, tag = text.rpartition(":")
    if sep and head and "/" not in tag:
        return Path(head), tag
    return Path(text), None


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


# ---------------------------------------------------------------- reading a layer

# tarfile's own "r|gz" / "r|*" inflates each compressed read in one call with no output limit:
# a 10 KB read of a gzip bomb becomes ~10 MB, of a bzip2 bomb far more. The stdlib file readers
# below inflate with max_length, so every read returns at most what was asked; tarfile then
# reads this plain stream in _TAR_BUFSIZE blocks, skipping file data it is never asked for.
_TAR_BUFSIZE = 256 << 10
# What reading a layer stream can raise (zlib and lzma errors are not OSErrors).
LAYER_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
)


# tarfile reads a pax or GNU long-name header whole into memory, so a bomb can hide there too.
# Real ones hold a path (PATH_MAX is 4096) and a few xattrs.
EXTENDED_HEADER_MAX = 64 << 10


class _BoundedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > EXTENDED_HEADER_MAX:
            # A ReadError passes through TarFile.next (a HeaderError would end the archive silently).
            raise tarfile.ReadError(f"an extended header of {self.size} bytes, more than the {EXTENDED_HEADER_MAX} mlbuild reads")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


class _Prefixed:
    """``head`` (already read to sniff the format), then the rest of ``f``."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head = head
        self._f = f

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._f.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._f.read(n)

    def readable(self) -> bool:
        return True


@contextlib.contextmanager
def open_layer_tar(layer: BaseLayer) -> Iterator[tarfile.TarFile]:
    """The layer's tar as a forward-only stream (compression sniffed from its bytes, since a
    docker-archive's media type says nothing), with memory bounded whatever the compression
    ratio. Read errors are ``BuildError``s naming where the layer came from."""
    hint = "the base image is corrupt or truncated; fetch or export it again"
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(layer.open())
        head = raw.read(6)
        src: Any = _Prefixed(head, raw)
        kind = next((k for magic, k in _MAGIC if head.startswith(magic)), "tar")
        if kind == "zstd":
            raise BuildError(f"{layer.origin}: a zstd-compressed layer, which mlbuild cannot read",
                             hint="use a base image whose layers are gzip-compressed or plain tar")
        if kind == "gzip":
            src = stack.enter_context(gzip.GzipFile(fileobj=src, mode="rb"))
        elif kind == "bzip2":
            src = stack.enter_context(bz2.BZ2File(src, mode="rb"))
        elif kind == "xz":
            src = stack.enter_context(lzma.LZMAFile(src, mode="rb"))
        try:
            tar = stack.enter_context(tarfile.open(fileobj=src, mode="r|", bufsize=_TAR_BUFSIZE, tarinfo=_BoundedTarInfo))
        except LAYER_READ_ERRORS as exc:
            raise BuildError(f"{layer.origin}: not a readable layer tar ({exc})", hint=hint) from exc
        yield tar


# ---------------------------------------------------------------- local engine


def _from_engine(ref: str, platform: Platform | None, runner: Runner, cache_dir: Path) -> BaseImage:
    try:
        image_id = runner.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref]).stdout.strip()
    except CommandFailed as exc:
        raise ConfigError(
            f"base image {ref!r} is not in the local Docker engine ({exc.result.stderr.strip().splitlines()[-1:] or ''})",
            hint="pull or build it first, or give it as oci:DIR / docker-archive:FILE",
        ) from None
    archive = cache_dir / "docker-save" / (image_id.replace(":", "-") + ".tar")
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
        try:
            runner.run(["docker", "save", "-o", str(tmp), ref])
            os.replace(tmp, archive)
        except CommandFailed as exc:
            tmp.unlink(missing_ok=True)
            raise BuildError(f"`docker save {ref}` failed", hint="check that the Docker engine is running", details=exc.result.stderr) from None
    return read_docker_archive(archive, ref if ":" in ref else None, platform)


# ---------------------------------------------------------------- dispatch


def open_base(
    source: str,
    platform: Platform | None,
    *,
    runner: Runner | None = None,
    cache_dir: Path | None = None,
    registry_client: Any = None,
) -> BaseImage:
    """Open ``source`` (see the module docstring) for ``platform``."""
    if source.startswith("oci:"):
        directory, tag = _split_ref(source[4:], lambda p: (p / "oci-layout").is_file())
        return read_oci_layout(directory, tag, platform)
    if source.startswith("docker-archive:"):
        rest = source[len("docker-archive:"):]
        if Path(rest).is_file():
            return read_docker_archive(Path(rest), None, platform)
        file_part, sep, ref = rest.partition(":")  # FILE:REPO:TAG (a file name with ':' is not supported)
        return read_docker_archive(Path(file_part), ref or None, platform)
    if source.startswith("docker:"):
        from .._runner import SubprocessRunner

        cache = cache_dir or _default_cache_dir()
        return _from_engine(source[len("docker:"):], platform, runner or SubprocessRunner(), cache)
    as_path = Path(source)
    if as_path.is_dir() and (as_path / "oci-layout").is_file():
        return read_oci_layout(as_path, None, platform)
    if as_path.is_file():
        return read_docker_archive(as_path, None, platform)
    return _from_registry(source, platform, cache_dir or _default_cache_dir(), registry_client)


def _from_registry(source: str, platform: Platform | None, cache_dir: Path, client: Any) -> BaseImage:
    """Pull ``source``'s manifest and config now; layers are downloaded into the cache's blob
    store on first open (verified by the client while streaming, renamed into place)."""
    from .reference import parse_reference
    from .registry import RegistryClient

    ref = parse_reference(source)
    client = client or RegistryClient(ref.registry)
    got = client.get_platform_manifest(ref.repository, ref.ref, platform or "linux/amd64")
    manifest = _parse_json(got.data, f"{ref}: manifest")
    cdesc = manifest.get("config") or {}
    config_bytes = client.get_blob(ref.repository, cdesc["digest"], size=cdesc.get("size"))
    config = _parse_json(config_bytes, f"{ref}: config")
    layer_descs = list(manifest.get("layers") or [])
    diff_ids = _diff_ids(config, len(layer_descs), str(ref))
    blobs = cache_dir / "blobs" / "sha256"
    layers = []
    for ld, diff_id in zip(layer_descs, diff_ids, strict=True):
        extra = tuple(sorted((k, v) for k, v in ld.items() if k not in ("mediaType", "digest", "size")))
        layers.append(BaseLayer(ld["mediaType"], ld["digest"], ld["size"], diff_id,
                                _registry_opener(client, ref.repository, ld["digest"], ld["size"], blobs),
                                f"{ref.name}@{ld['digest']}", extra))
    base = BaseImage(str(ref), _platform_of(config), config_bytes, tuple(layers), got.data, got.media_type, source)
    _check_platform(base.platform, platform, str(ref))
    return base


def _registry_opener(client: Any, repository: str, digest: str, size: int, blobs: Path) -> Opener:
    def opener() -> BinaryIO:
        path = blobs / digest.split(":", 1)[1]
        if not (path.is_file() and path.stat().st_size == size):
            blobs.mkdir(parents=True, exist_ok=True)
            client.download_blob(repository, digest, path, size=size)
        return open(path, "rb")

    return opener


def _default_cache_dir() -> Path:
    root = os.environ.get("MLBUILD_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlbuild")
    return Path(root) / "oci"
