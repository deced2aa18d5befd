"""Facts about a base image's filesystem, read from its layer tars (no container is started).

The OCI backend needs three: where ``python3`` is (the venvs' ``home`` and ``bin/python``
target), and the base's ``/etc/passwd`` and ``/etc/group`` (the non-root user is appended to
them). Layers are applied in order with OCI whiteouts (``.wh.NAME`` deletes, ``.wh..wh..opq``
empties a directory), and symlinks are resolved inside the image (Debian's ``/bin -> usr/bin``),
in entry names too, as an extractor does (a layer's ``bin/x`` lands in ``/usr/bin/x``).

A base image is someone else's data, so reading it is bounded and nothing in it steers mlbuild:

- Memory: each layer is one forward-only stream whose inflation is bounded whatever the
  compression ratio (``base.open_layer_tar``), and no ``TarInfo`` outlives its entry; only
  ``_WANTED_FILES`` are read, each at most ``SMALL_FILE_MAX`` bytes (a bigger one is an error
  when it is read, naming layer and size); everything else is a path -> (kind, link target)
  entry, never file contents. What the model holds is charged, as it is taken, against
  ``MODEL_BYTES_MAX`` (``_charge``): each path string at its real size, each implicit parent
  directory too, and the measured cost of the slots holding them (see ``_ENTRY_BYTES``).
- Time: a lookup follows at most ``MAX_LINKS`` symlinks and takes in at most
  ``WALK_COMPONENTS_MAX`` components and ``PATH_MAX`` bytes of path; the directory an entry
  lands in is cached until a symlink changes, and the components all lookups take in are
  capped per scan (``WALK_STEPS_MAX``), so no layer makes the scan walk for hours.
- Reads: the model lives in memory and ``resolve`` clamps ``..`` at ``/`` like the kernel does
  in a container, so no lookup can ever leave the image (nothing on the host is touched).
- Entries are judged per class, by the rules in ``rootfs_rules`` (errors, with the opt-out
  ``MLBUILD_ALLOW_UNSAFE_BASE=1``, and warnings, each naming the layer and the entry).

Scanning a base costs a pass over its layers, so the result (and its warning lines) is cached
by the base's config digest (which names every layer's diff_id) and the opt-out.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import BuildError, ConfigError
from .base import LAYER_READ_ERRORS, BaseImage, open_layer_tar
from .rootfs_rules import (
    DIR,
    UNSAFE_BASE_ENV,
    Report,
    entry_kind,
    inside,
    placed,
    setid_note,
    show,
    too_long,
    unresolved,
    unsafe_base_allowed,
)
from .rootfs_tree import WALK_STEPS_MAX, Tree, dirname

__all__ = [
    "RootfsFacts", "Rootfs", "scan_rootfs", "rootfs_facts", "unsafe_base_allowed",
    "DEFAULT_PATH", "SMALL_FILE_MAX", "MODEL_BYTES_MAX", "WALK_STEPS_MAX", "UNSAFE_BASE_ENV",
]

# What Docker (and containerd) put in PATH when the image config sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WANTED_FILES = ("/etc/passwd", "/etc/group")
SMALL_FILE_MAX = 1 << 20  # the most mlbuild reads of one base file (a real /etc/passwd is a few KB)
_FACTS_VERSION = 3  # 3: PATH_MAX and unresolvable directories checked; 2: entries checked
# The model's own memory, over all layers, as Python holds it: the charge and tracemalloc agree
# within 1.3x (tests/unit/oci/test_hostile_base.py; Debian bookworm with Python: 3.3 MiB charged,
# 3.2 MiB traced). A big real base (CUDA + PyTorch, ~500k files of ~80-byte names) needs ~130
# MiB; a bomb of long distinct names or deep implicit directories inflated from a small gzip
# stops here instead of at the OOM killer.
MODEL_BYTES_MAX = 256 << 20
# What one new path costs besides its string, measured with tracemalloc (CPython 3.11, 64-bit):
# its slot in ``entries`` (a dict: 24-byte entry + index, at 1/3-2/3 fill, and both tables at a
# resize) and in its directory's ``_children`` set (16-byte slots at <= 60% fill, grown 4x).
_ENTRY_BYTES = 100
_SET_BYTES = 320  # a directory's first child: a set (216 empty) and its ``_children`` slot (+ its key string)
_PENDING_BYTES = 20  # a layer's entry until the layer is applied: two list slots (path, kind)
_EXTRA_BYTES = 200  # ... plus, for the few with a name to keep, data or setid: a tuple and a dict slot
_LINK_BYTES = 64  # a (kind, target) tuple of its own (files and directories share one)


@dataclass(frozen=True)
class RootfsFacts:
    python: str  # the python3 found on PATH, e.g. /usr/bin/python3 (venv bin/python points here)
    python_real: str  # after resolving symlinks, e.g. /usr/bin/python3.11
    home: str  # dirname(python): pyvenv.cfg ``home``
    passwd: bytes
    group: bytes


@dataclass(frozen=True)
class _TooBig:
    layer: str
    size: int


class Rootfs(Tree):
    """Path -> (kind, link target) of the merged base filesystem, plus the few file contents kept.

    kind is "dir", "file", "symlink", "device" or "fifo". ``walk_steps`` counts the path
    components lookups have taken in (the scan's work); ``charged_peak`` is the most memory the
    budget counted at once."""

    def __init__(self) -> None:
        super().__init__()
        self._budget = MODEL_BYTES_MAX
        self.charged_peak = 0
        self.contents: dict[str, bytes | _TooBig] = {}
        self.setid: set[str] = set()  # setuid/setgid regular files, in the merged view
        self.warnings: list[str] = []

    def _charge(self, n: int, layer: str, name: str) -> None:
        self._budget -= n
        self.charged_peak = max(self.charged_peak, MODEL_BYTES_MAX - self._budget)
        if self._budget < 0:
            raise BuildError(
                f"base layer {layer}: more entries than mlbuild reads ({MODEL_BYTES_MAX >> 20} MiB of names, at entry {show(name)})",
                hint="the base image is unusually large or hostile; use a smaller base image",
            )

    def _forget(self, path: str) -> None:  # the tree deleted ``path``
        self.contents.pop(path, None)
        self.setid.discard(path)

    def _set(self, path: str, kind: tuple[str, str], layer: str, name: str, *, charged: bool) -> str:
        """Set one entry; a new path is charged (its string unless ``charged`` already). Returns
        its directory, the string the children index keys it by (an implicit directory is then
        made with that very string: a deep name must not cost two copies of each prefix)."""
        parent = dirname(path)
        old = self.entries.get(path)
        if old is None:
            siblings = self._children.get(parent)
            cost = _ENTRY_BYTES + (0 if charged else sys.getsizeof(path))
            self._charge(cost + (_SET_BYTES + sys.getsizeof(parent) if siblings is None else 0), layer, name)
            if siblings is None:
                siblings = self._children[parent] = set()
            siblings.add(path)
        elif old[0] == "symlink":
            self._drop_dirs()
        if kind[0] == "symlink":
            self._drop_dirs()
        self.entries[path] = kind
        return parent

    # ------------------------------------------------------------------ layers
    def apply_layer(self, tar: tarfile.TarFile, origin: str, *, layer: str = "", report: Report | None = None) -> None:
        """Merge one layer. ``layer`` names it in messages (``sha256:`` + 12 hex); ``origin``
        says where its bytes come from (for read errors). Without ``report`` every error
        class raises."""
        layer = layer or origin
        report = report or Report(allow_unsafe=False)
        self._drop_dirs()
        # Whiteouts apply to lower layers only (OCI image spec), so this layer's own entries
        # are applied after the whole layer has been read. Kept lean, as a layer may hold a
        # million: path, kind, path, kind... (the path string becomes the model's key), and
        # by entry number the rare rest: the name as written when it is not the path without
        # its /, the data of a wanted file, the setuid/setgid bit.
        pending: list[str | tuple[str, str]] = []
        extra: dict[int, tuple[str | None, bytes | _TooBig | None, bool]] = {}
        pending_bytes = 0
        try:
            # tar.next(), not ``for m in tar``: iterating keeps every TarInfo in tar.members
            # (~500 bytes each) until the layer ends; emptying it is safe in stream mode.
            while (m := tar.next()) is not None:
                tar.members = []
                if too_long(m, layer, report):
                    continue
                name = m.name
                path = inside(name)
                if path is None:
                    # Opted out: read it where the engines put it, so mlbuild sees what runs.
                    path = inside(name, clamp=True) or "/"
                    report.error(layer, f"entry {show(name)} leaves the image root", allowed=f"read as {path}, as engines do")
                directory, _, base = path.rpartition("/")
                if base.startswith(".wh."):
                    self._whiteout(directory or "/", base, name, layer, report)
                    continue
                kind = entry_kind(m, path, layer, report)
                data: bytes | _TooBig | None = None
                if kind[0] == "file" and path in _WANTED_FILES:
                    if m.size > SMALL_FILE_MAX:
                        data = _TooBig(layer, m.size)  # the stream skips it; read() reports it
                    else:
                        f = tar.extractfile(m)
                        data = f.read(SMALL_FILE_MAX) if f else b""
                setid = kind[0] == "file" and bool(m.mode & 0o6000)
                as_written = name if name != path[1:] else None
                cost = _PENDING_BYTES
                if data is not None or setid or as_written is not None:
                    extra[len(pending) // 2] = (as_written, data, setid)
                    cost += _EXTRA_BYTES + (sys.getsizeof(as_written) if as_written else 0) + (len(data) if isinstance(data, bytes) else 0)
                # The path string is kept by the model (charged once, here); the rest of the cost
                # is the layer's and is given back once it is applied.
                self._charge(cost + sys.getsizeof(path) + (_LINK_BYTES + sys.getsizeof(kind[1]) if kind[1] else 0), layer, name)
                pending_bytes += cost
                pending += (path, kind)
        except LAYER_READ_ERRORS as exc:
            raise BuildError(f"{origin}: cannot read the layer ({exc})", hint="the base image is corrupt or truncated; fetch or export it again") from exc
        it = iter(pending)
        for i, (path, kind) in enumerate(zip(it, it)):
            as_written, data, setid = extra.get(i, (None, None, False))
            self._add(path, kind, as_written or path[1:], data, setid, layer, report)  # type: ignore[arg-type]
        self._budget += pending_bytes
        report.end_layer(layer)

    def _whiteout(self, directory: str, base: str, name: str, layer: str, report: Report) -> None:
        parent = self._resolve_dir(directory, layer, name)  # bin/.wh.x with /bin -> usr/bin
        if parent is None:
            unresolved(layer, name, directory, report)
        elif base == ".wh..wh..opq":
            self._delete(parent, children_only=True)
        elif base[4:] in ("", ".", ".."):
            report.error(layer, f"entry {show(name)} is a whiteout of {base[4:]!r}, not of a name", allowed="ignored")
        else:
            self._delete(posixpath.join(parent, base[4:]))

    def _add(self, path: str, kind: tuple[str, str], name: str, data: bytes | _TooBig | None, setid: bool,
             layer: str, report: Report) -> None:
        real = self._place(path, layer, name)
        if real is None:
            unresolved(layer, name, dirname(path), report)
            return
        if real == "/" and kind[0] != "dir":
            report.error(layer, f"entry {show(name)} replaces the image root with a {kind[0]}", allowed="left out")
            return
        if kind[0] == "hardlink":
            target = self._place(inside(kind[1], clamp=True) or "/", layer, name)
            existing = self.entries.get(target) if target else None
            if existing is None or existing[0] == "dir":
                what = "a directory" if existing else "nothing earlier in the image"
                report.error(layer, f"hard link {show(name)} -> {show(kind[1])} names {what}", allowed="left out")
                return
            kind, data, setid = existing, self.contents.get(target), target in self.setid  # type: ignore[arg-type]
        old = self.entries.get(real)
        if old is not None and old[0] != kind[0]:
            self._delete(real)  # a file replacing a directory or the reverse
        else:
            self._forget(real)
        parent = self._set(real, kind, layer, name, charged=real is path)
        while parent not in self.entries:  # tars may leave parent directories implicit
            # charged: the string was charged as the children index's key one call ago.
            parent = self._set(parent, DIR, layer, name, charged=True)
        if data is not None:
            self.contents[real] = data
        if setid:
            self._charge(_ENTRY_BYTES, layer, name)
            self.setid.add(real)
        placed(real, kind, name, setid, layer, report)

    # ------------------------------------------------------------------ lookups
    def read(self, path: str) -> bytes | None:
        """A kept file's bytes (``_WANTED_FILES``); None if ``path`` does not exist. A file that
        was too big or was not kept is an error: guessing its content would be wrong."""
        real = self.resolve(path)
        if real is None or self.kind(real) != "file":
            return None
        data = self.contents.get(real)
        if isinstance(data, _TooBig):
            raise BuildError(
                f"base layer {data.layer}: {real} is {data.size} bytes; mlbuild reads base files of at most {SMALL_FILE_MAX} bytes",
                hint="the base image is malformed or hostile; use another base image",
            )
        if data is None:
            raise BuildError(
                f"base image: {path} is {real}, which mlbuild does not read (it reads only {', '.join(_WANTED_FILES)} as regular files)",
                hint=f"use a base image whose {path} is a regular file",
            )
        return data


def scan_rootfs(base: BaseImage, *, allow_unsafe: bool | None = None) -> Rootfs:
    """Merge ``base``'s layers. Malformed entries raise (see ``rootfs_rules``) unless
    ``allow_unsafe`` (default: ``unsafe_base_allowed()``); warning lines land in ``.warnings``."""
    report = Report(unsafe_base_allowed() if allow_unsafe is None else allow_unsafe)
    fs = Rootfs()
    for layer in base.layers:
        with open_layer_tar(layer) as tar:
            fs.apply_layer(tar, layer.origin, layer=layer.short, report=report)
    fs.warnings = report.lines + [line for line in [setid_note(fs.setid)] if line]
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


def rootfs_facts(
    base: BaseImage,
    python_minor: str,
    cache_dir: os.PathLike[str] | None,
    *,
    warn: Callable[[str], None] | None = None,
    allow_unsafe: bool | None = None,
) -> RootfsFacts:
    """Facts of ``base``, from the cache when this base was scanned before. Each warning line
    about the base goes to ``warn``, on every call (a cache hit repeats them)."""
    from pathlib import Path

    allow = unsafe_base_allowed() if allow_unsafe is None else allow_unsafe
    say = warn or (lambda _line: None)
    # The opt-out is in the key: a scan that left entries out must not serve a strict build.
    key = f"{base.identity.replace(':', '-')}-{python_minor}{'-unsafe' if allow else ''}-v{_FACTS_VERSION}.json"
    cache_file = Path(cache_dir) / "rootfs" / key if cache_dir else None
    if cache_file and cache_file.is_file():
        try:
            raw = json.loads(cache_file.read_text())
            facts = RootfsFacts(raw["python"], raw["python_real"], raw["home"], base64.b64decode(raw["passwd"]), base64.b64decode(raw["group"]))
            lines = [str(line) for line in raw["warnings"]]
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt, never trusted
        else:
            for line in lines:
                say(line)
            return facts
    fs = scan_rootfs(base, allow_unsafe=allow)
    for line in fs.warnings:
        say(line)
    facts = _find_python(fs, base, python_minor)
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({
            "python": facts.python, "python_real": facts.python_real, "home": facts.home,
            "passwd": base64.b64encode(facts.passwd).decode(), "group": base64.b64encode(facts.group).decode(),
            "warnings": fs.warnings,
        }))
        os.replace(tmp, cache_file)
    return facts
