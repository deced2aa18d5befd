"""Facts about a base image's filesystem, read from its layer tars (no container is started).

The OCI backend needs three: where ``python3`` is (the venvs' ``home`` and ``bin/python``
target), and the base's ``/etc/passwd`` and ``/etc/group`` (the non-root user is appended to
them). Layers are applied in order with OCI whiteouts (``.wh.NAME`` deletes, ``.wh..wh..opq``
empties a directory), and symlinks are resolved inside the image (Debian's ``/bin -> usr/bin``).

Scanning a base costs a pass over its layers, so the result is cached by the base's config
digest (which names every layer's diff_id).
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .._errors import BuildError, ConfigError
from .base import BaseImage

__all__ = ["RootfsFacts", "Rootfs", "scan_rootfs", "rootfs_facts", "DEFAULT_PATH"]

# What Docker (and containerd) put in PATH when the image config sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WANTED_FILES = ("/etc/passwd", "/etc/group")
_FACTS_VERSION = 1


@dataclass(frozen=True)
class RootfsFacts:
    python: str  # the python3 found on PATH, e.g. /usr/bin/python3 (venv bin/python points here)
    python_real: str  # after resolving symlinks, e.g. /usr/bin/python3.11
    home: str  # dirname(python): pyvenv.cfg ``home``
    passwd: bytes
    group: bytes


class Rootfs:
    """Path -> (type, link target) of the merged base filesystem, plus the few file contents kept."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, str]] = {"/": ("dir", "")}
        self.contents: dict[str, bytes] = {}

    def _delete(self, path: str, *, children_only: bool = False) -> None:
        prefix = path.rstrip("/") + "/"
        for p in [p for p in self.entries if p.startswith(prefix) or (p == path and not children_only)]:
            del self.entries[p]
            self.contents.pop(p, None)

    def apply_layer(self, tar: tarfile.TarFile, origin: str) -> None:
        added: list[tuple[str, tuple[str, str], bytes | None]] = []
        try:
            for m in tar:
                path = posixpath.normpath("/" + m.name.removeprefix("./").lstrip("/"))  # keep a name's own dots
                name = posixpath.basename(path)
                parent = posixpath.dirname(path)
                if name == ".wh..wh..opq":
                    self._delete(parent, children_only=True)
                    continue
                if name.startswith(".wh."):
                    self._delete(posixpath.join(parent, name[4:]))
                    continue
                if m.issym():
                    kind = ("symlink", m.linkname)
                elif m.isdir():
                    kind = ("dir", "")
                elif m.islnk():
                    kind = ("hardlink", posixpath.normpath("/" + m.linkname.removeprefix("./").lstrip("/")))
                else:
                    kind = ("file", "")
                data = None
                if path in _WANTED_FILES and m.isfile():
                    f = tar.extractfile(m)
                    data = f.read() if f else b""
                added.append((path, kind, data))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BuildError(f"{origin}: cannot read the layer ({exc})", hint="the base image is corrupt or truncated; fetch or export it again") from exc
        for path, kind, data in added:
            if self.entries.get(path, ("",))[0] not in ("", kind[0]):
                self._delete(path)  # a file replacing a directory or the reverse
            if kind[0] == "hardlink":
                target_data = self.contents.get(kind[1])
                kind = ("file", "")
                if target_data is not None and path in _WANTED_FILES:
                    data = target_data
            self.entries[path] = kind
            parent = posixpath.dirname(path)
            while parent not in self.entries:  # tars may leave parent directories implicit
                self.entries[parent] = ("dir", "")
                parent = posixpath.dirname(parent)
            if data is not None:
                self.contents[path] = data

    def resolve(self, path: str) -> str | None:
        """The final path after following symlinks (inside the image); None if it does not exist."""
        parts = [p for p in path.split("/") if p]
        current = "/"
        hops = 0
        while parts:
            part = parts.pop(0)
            candidate = posixpath.normpath(posixpath.join(current, part))
            entry = self.entries.get(candidate)
            if entry is None:
                return None
            if entry[0] == "symlink":
                hops += 1
                if hops > 40:
                    return None
                target = entry[1]
                # Relative targets resolve from the link's directory (``current``), absolute from /.
                parts = [p for p in target.split("/") if p] + parts
                if target.startswith("/"):
                    current = "/"
                continue
            current = candidate
        return current

    def kind(self, path: str) -> str | None:
        entry = self.entries.get(path)
        return entry[0] if entry else None

    def read(self, path: str) -> bytes | None:
        real = self.resolve(path)
        return self.contents.get(real) if real else None


def scan_rootfs(base: BaseImage) -> Rootfs:
    fs = Rootfs()
    for layer in base.layers:
        with layer.open() as f:
            try:
                tar = tarfile.open(fileobj=f, mode="r|*")
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise BuildError(f"{layer.origin}: not a readable layer tar ({exc})", hint="the base image is corrupt or truncated; fetch or export it again") from exc
            with tar:
                fs.apply_layer(tar, layer.origin)
    return fs


def _find_python(fs: Rootfs, base: BaseImage, python_minor: str) -> RootfsFacts:
    search = base.env.get("PATH") or DEFAULT_PATH
    for d in [d for d in search.split(":") if d.startswith("/")]:
        candidate = posixpath.join(d, "python3")
        real = fs.resolve(candidate)
        if real and fs.kind(real) == "file":
            prefix = posixpath.dirname(posixpath.dirname(real))
            landmark = f"{prefix}/lib/python{python_minor}/os.py"
            if not (fs.resolve(landmark) and fs.kind(fs.resolve(landmark) or "") == "file"):
                raise ConfigError(
                    f"base image {base.reference}: {candidate} is not Python {python_minor} (no {landmark})",
                    hint=f"use a base image with Python {python_minor}, or lock the model for the base's Python",
                )
            return RootfsFacts(candidate, real, d, fs.read("/etc/passwd") or b"", fs.read("/etc/group") or b"")
    raise ConfigError(
        f"base image {base.reference}: no python3 on its PATH ({search})",
        hint="the OCI backend needs a base image with Python installed (e.g. python:3.11-slim)",
    )


def rootfs_facts(base: BaseImage, python_minor: str, cache_dir: Path | None) -> RootfsFacts:
    """Facts of ``base``, from the cache when this base was scanned before."""
    key = f"{base.identity.replace(':', '-')}-{python_minor}-v{_FACTS_VERSION}.json"
    cache_file = cache_dir / "rootfs" / key if cache_dir else None
    if cache_file and cache_file.is_file():
        try:
            raw = json.loads(cache_file.read_text())
            return RootfsFacts(raw["python"], raw["python_real"], raw["home"], base64.b64decode(raw["passwd"]), base64.b64decode(raw["group"]))
        except (ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt, never trusted
    facts = _find_python(scan_rootfs(base), base, python_minor)
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({
            "python": facts.python, "python_real": facts.python_real, "home": facts.home,
            "passwd": base64.b64encode(facts.passwd).decode(), "group": base64.b64encode(facts.group).decode(),
        }))
        os.replace(tmp, cache_file)
    return facts
