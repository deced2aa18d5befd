"""Writing a built image out: an OCI layout directory, or one tar that is at the same time an
OCI archive (``skopeo copy oci-archive:FILE``) and a docker-archive (``docker load -i FILE``).

Both are written aside and renamed into place; a failure (disk full, permissions) raises
PublishError and leaves the previous output, if any, as it was. Into an existing layout only
missing blobs are written (a code-only rebuild copies a few KB), then ``index.json`` is
replaced in one rename: a reader sees the old image or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .._errors import BuildError, PublishError
from .._platforms import Platform
from .image import canonical_json
from .mediatypes import OCI

__all__ = ["Blob", "DockerEntry", "BuiltImages", "write_layout", "write_archive", "ref_annotations"]

_CHUNK = 1 << 20
_LAYOUT_FILE = canonical_json({"imageLayoutVersion": "1.0.0"})


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    open: Callable[[], BinaryIO]
    origin: str  # for error messages
    path: Path | None = None  # a trusted file with exactly these bytes (may be hard-linked)
    verify: bool = False  # hash while copying: bytes from a base image are checked, ours are not


@dataclass(frozen=True)
class DockerEntry:
    """One image as docker-archive's manifest.json describes it."""

    config: str
    layers: tuple[str, ...]
    platform: Platform


@dataclass(frozen=True)
class BuiltImages:
    """What a build produced: the top document (manifest, or index for several platforms) and
    every blob it reaches (per-platform manifests, configs, layers), each once."""

    top_media_type: str
    top: bytes
    blobs: tuple[Blob, ...]
    docker: tuple[DockerEntry, ...]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.top).hexdigest()


def _bytes_blob(data: bytes, origin: str) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), lambda: io.BytesIO(data), origin)


def ref_annotations(tag: str | None) -> dict[str, str]:
    """``org.opencontainers.image.ref.name`` holds the tag part (``oci:DIR:1.0``), the full name
    goes in containerd's annotation, as docker and BuildKit write them."""
    if not tag:
        return {}
    last = tag.rsplit("/", 1)[-1]
    short = last.rsplit(":", 1)[1] if ":" in last else "latest"
    return {"org.opencontainers.image.ref.name": short, "io.containerd.image.name": tag}


def _index_json(images: BuiltImages, tag: str | None) -> bytes:
    desc: dict[str, object] = {"mediaType": images.top_media_type, "digest": images.digest, "size": len(images.top)}
    ann = ref_annotations(tag)
    if ann:
        desc["annotations"] = ann
    return canonical_json({"schemaVersion": 2, "mediaType": OCI.index, "manifests": [desc]})


def _docker_manifest(images: BuiltImages, tag: str | None, host_arch: str) -> bytes:
    # docker-archive holds one image per tag: the host's platform when built, else the first.
    entries = sorted(images.docker, key=lambda e: (e.platform.arch != host_arch, str(e.platform)))
    chosen = entries[0]
    item = {
        "Config": f"blobs/sha256/{chosen.config.split(':', 1)[1]}",
        "RepoTags": [tag] if tag else [],
        "Layers": [f"blobs/sha256/{d.split(':', 1)[1]}" for d in chosen.layers],
    }
    return canonical_json([item])


def _all_blobs(images: BuiltImages) -> list[Blob]:
    blobs = {b.digest: b for b in images.blobs}
    top = _bytes_blob(images.top, "image manifest")
    blobs.setdefault(top.digest, top)
    return [blobs[d] for d in sorted(blobs)]


def _copy(blob: Blob, out: BinaryIO) -> None:
    h = hashlib.sha256()
    n = 0
    with blob.open() as src:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
            out.write(chunk)
    if n != blob.size or (blob.verify and "sha256:" + h.hexdigest() != blob.digest):
        got = f"{n} bytes, sha256:{h.hexdigest()}"
        raise BuildError(
            f"{blob.origin}: content does not match {blob.digest} ({blob.size} bytes); got {got}",
            hint="the base image is corrupt or was modified; fetch or export it again",
        )


@contextmanager
def _publish_errors(dest: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise PublishError(
            f"cannot write the image to {dest}: {exc.strerror or exc}",
            hint="check free disk space and permissions of the output location; nothing was left half-written",
        ) from exc


def _place_blob(blob: Blob, blobs_dir: Path) -> None:
    final = blobs_dir / blob.digest.split(":", 1)[1]
    if final.is_file() and final.stat().st_size == blob.size:
        return  # content-addressed: same name, same bytes
    if blob.path is not None and not blob.verify:
        try:
            final.unlink(missing_ok=True)
            os.link(blob.path, final)  # same filesystem: no copy at all
            return
        except OSError:
            pass
    tmp = blobs_dir / f".{final.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            _copy(blob, out)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_layout(dest: Path, images: BuiltImages, tag: str | None) -> Path:
    """Write (or update) the OCI layout at ``dest``; its index.json then names only this image."""
    dest = Path(dest)
    with _publish_errors(dest):
        fresh = not dest.exists()
        if not fresh and not (dest / "oci-layout").is_file():
            if not dest.is_dir() or any(dest.iterdir()):
                raise PublishError(
                    f"{dest} exists and is not an OCI layout; refusing to write into it",
                    hint="give a new directory, an existing OCI layout, or a path ending in .tar",
                )
            fresh = True
            dest.rmdir()
        work = dest.with_name(f".{dest.name}.{os.getpid()}.tmp") if fresh else dest
        try:
            blobs_dir = work / "blobs" / "sha256"
            blobs_dir.mkdir(parents=True, exist_ok=True)
            for blob in _all_blobs(images):
                _place_blob(blob, blobs_dir)
            _write_file(work / "oci-layout", _LAYOUT_FILE)
            _write_file(work / "index.json", _index_json(images, tag))  # last: it publishes the image
            if fresh:
                os.rename(work, dest)
        except BaseException:
            if fresh:
                shutil.rmtree(work, ignore_errors=True)
            raise
    return dest


def _write_file(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _info(name: str, epoch: int, size: int = 0, is_dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size = size
    return info


class _BlobReader:
    """Gives tarfile a blob's bytes while checking them (same rules as ``_copy``)."""

    def __init__(self, blob: Blob) -> None:
        self.blob, self.src, self.h, self.n = blob, blob.open(), hashlib.sha256(), 0
        self.failed = False

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.src.read(size)
        except OSError:
            self.failed = True  # an I/O error, not short content: reported as such
            raise
        self.h.update(data)
        self.n += len(data)
        return data

    def finish(self) -> None:
        self.src.close()
        b = self.blob
        if self.n != b.size or (b.verify and "sha256:" + self.h.hexdigest() != b.digest):
            raise BuildError(
                f"{b.origin}: content does not match {b.digest} ({b.size} bytes)",
                hint="the base image is corrupt or was modified; fetch or export it again",
            )


def write_archive(dest: Path, images: BuiltImages, tag: str | None, *, epoch: int, host_arch: str) -> Path:
    """One uncompressed tar: OCI layout (oci-layout, index.json, blobs/) + docker's manifest.json."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    small = {
        "index.json": _index_json(images, tag),
        "manifest.json": _docker_manifest(images, tag, host_arch),
        "oci-layout": _LAYOUT_FILE,
    }
    with _publish_errors(dest):
        try:
            with open(tmp, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_info("blobs", epoch, is_dir=True))
                tar.addfile(_info("blobs/sha256", epoch, is_dir=True))
                for blob in _all_blobs(images):
                    reader = _BlobReader(blob)
                    try:
                        tar.addfile(_info(f"blobs/sha256/{blob.digest.split(':', 1)[1]}", epoch, blob.size), reader)  # type: ignore[arg-type]
                    except OSError:
                        if not reader.failed:
                            reader.finish()  # a short source blob is the base's fault: say so
                        reader.src.close()
                        raise
                    reader.finish()
                for name in sorted(small):
                    tar.addfile(_info(name, epoch, len(small[name])), io.BytesIO(small[name]))
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest
