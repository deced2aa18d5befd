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

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .._cache import oci_cache
from .._errors import BuildError, ConfigError
from .._platforms import Platform
from .._runner import CommandFailed, Runner
from .base_image import (
    BaseImage,
    BaseLayer,
    Opener,
    _check_platform,
    _diff_ids,
    _parse_json,
    _platform_of,
    python_minor,
    read_docker_archive,
    read_oci_layout,
)
from .layertar import LAYER_READ_ERRORS, open_layer_tar

__all__ = ["BaseLayer", "BaseImage", "open_base", "open_layer_tar", "LAYER_READ_ERRORS", "read_oci_layout", "read_docker_archive", "python_minor"]


def _split_ref(text: str, is_container: Callable[[Path], bool]) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR:TAG``; a path that itself contains ':' wins over a tag split."""
    if is_container(Path(text)):
        return Path(text), None
    head, sep, tag = text.rpartition(":")
    if sep and head and "/" not in tag:
        return Path(head), tag
    return Path(text), None


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

        cache = cache_dir or oci_cache()
        return _from_engine(source[len("docker:"):], platform, runner or SubprocessRunner(), cache)
    as_path = Path(source)
    if as_path.is_dir() and (as_path / "oci-layout").is_file():
        return read_oci_layout(as_path, None, platform)
    if as_path.is_file():
        return read_docker_archive(as_path, None, platform)
    return _from_registry(source, platform, cache_dir or oci_cache(), registry_client)


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
