"""Facts about a base image's filesystem, read from its layer tars (no container is started).

The OCI backend needs three: where ``python3`` is (the venvs' ``home`` and ``bin/python``
target), and the base's ``/etc/passwd`` and ``/etc/group`` (the non-root user is appended to
them). Layers are applied in order with OCI whiteouts (``.wh.NAME`` deletes, ``.wh..wh..opq``
empties a directory), and symlinks are resolved inside the image (Debian's ``/bin -> usr/bin``),
in entry names too, as an extractor does (a layer's ``bin/x`` lands in ``/usr/bin/x``).

A base image is someone else's data, so reading it is bounded and nothing in it steers mlbuild:

- Memory: each layer is one forward-only stream whose inflation is bounded whatever the
  compression ratio (``base.open_layer_tar``); only ``_WANTED_FILES`` are read, each at most
  ``SMALL_FILE_MAX`` bytes (a bigger one is an error when it is read, naming layer and size);
  everything else is a path -> (kind, link target) entry, never file contents.
- Reads: the model lives in memory and ``resolve`` clamps ``..`` at ``/`` like the kernel does
  in a container, so no lookup can ever leave the image (nothing on the host is touched).
- Entries, judged per class (each line names the layer as ``sha256:`` + 12 hex and the entry):

  ==========================  ======  ==========================================================
  entry                       rule    why
  ==========================  ======  ==========================================================
  name whose ``..`` climb     error   no tool writes one (GNU tar strips them, engines' diffs
  above / (``../x``,                  never hold them): it is hand-made for naive extractors
  ``/../../x``)                       (tarfile.extractall before 3.12 writes outside the dir),
                                      and engines silently clamp it (Docker 20.10 puts
                                      ``../etc/passwd`` at /etc/passwd): an unseen override
  hard link target climbing   error   same; the engines clamp it too
  above /
  hard link to nothing        error   ``docker load`` fails on it ("link ...: no such file"):
  earlier in the image                the image could never run
  whiteout of ``.``/``..``,   error   malformed: it would delete a parent / the root
  entry replacing /
  symlink climbing above /    warn    harmless inside a container (``..`` stops at /, engines
                                      load it), but a naive ``tar x`` on a host follows it out
  device outside ``/dev``     warn    reachable in the container (only the device cgroup stands
                                      in the way); under /dev the runtime mounts a fresh /dev
                                      over them, and Debian's rootfs ships the usual eight
  setuid/setgid file outside  warn    not the distribution's; a way from uid 10001 to root
  the system directories
  setuid/setgid file in a     note    Debian ships 11 (su, passwd, mount...); one summary line
  system directory                    lists them, so an added one is seen, yet it is not noise
  FIFO                        quiet   grants nothing
  ==========================  ======  ==========================================================

  An error is a ``BuildError`` naming layer and entry, whose hint names the opt-out:
  ``MLBUILD_ALLOW_UNSAFE_BASE=1`` (read only in ``unsafe_base_allowed``) turns each into a
  warning; a climbing name is then read where the engines put it (so mlbuild sees what runs),
  a hard link to nothing or a bad whiteout is left out.
  Warning lines go to the caller's reporter (the backend passes ``BuildOptions.say``); at most
  ``_MAX_LINES`` per class and layer, then one line with the count of the rest.

Scanning a base costs a pass over its layers, so the result (and its warning lines) is cached
by the base's config digest (which names every layer's diff_id) and the opt-out.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import BuildError, ConfigError
from .base import LAYER_READ_ERRORS, BaseImage, open_layer_tar

__all__ = [
    "RootfsFacts", "Rootfs", "scan_rootfs", "rootfs_facts", "unsafe_base_allowed",
    "DEFAULT_PATH", "SMALL_FILE_MAX", "MODEL_BYTES_MAX", "UNSAFE_BASE_ENV",
]

# What Docker (and containerd) put in PATH when the image config sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WANTED_FILES = ("/etc/passwd", "/etc/group")
SMALL_FILE_MAX = 1 << 20  # the most mlbuild reads of one base file (a real /etc/passwd is a few KB)
_FACTS_VERSION = 2  # 2: entries are checked (a v1 cache entry was written without the checks)
UNSAFE_BASE_ENV = "MLBUILD_ALLOW_UNSAFE_BASE"
# Where the distribution itself installs setuid programs (Debian: su, passwd, mount, ssh-keysign).
_SYSTEM_DIRS = ("/bin/", "/sbin/", "/lib/", "/lib64/", "/usr/bin/", "/usr/sbin/", "/usr/lib/", "/usr/lib64/", "/usr/libexec/")
_MAX_LINES = 10  # per class and layer; a hostile layer could hold a million bad entries
# The model's own size: names of every entry read (plus a share for its slot), over all layers.
# A big real base (CUDA + PyTorch, ~500k files) needs ~100 MiB; a bomb of long distinct names
# inflated from a small gzip stops here instead of at the OOM killer.
MODEL_BYTES_MAX = 256 << 20
_UNSAFE_HINT = (
    f"the base image is malformed or hostile: rebuild it (or use another), or set {UNSAFE_BASE_ENV}=1 "
    "to accept them with a warning that says what mlbuild did with each"
)


def unsafe_base_allowed() -> bool:
    """The opt-out for malformed base layers: ``MLBUILD_ALLOW_UNSAFE_BASE=1`` (or true/yes).
    The only place it is read."""
    return os.environ.get(UNSAFE_BASE_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class RootfsFacts:
    python: str  # the python3 found on PATH, e.g. /usr/bin/python3 (venv bin/python points here)
    python_real: str  # after resolving symlinks, e.g. /usr/bin/python3.11
    home: str  # dirname(python): pyvenv.cfg ``home``
    passwd: bytes
    group: bytes


def _show(text: str, limit: int = 200) -> str:
    """A name from a layer, quoted on one line: control characters escaped (a name holding a
    newline must not forge a log line), long names cut."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return "'" + (safe if len(safe) <= limit else safe[:limit] + "…") + "'"


def _inside(name: str, *, clamp: bool = False) -> str | None:
    """``name`` as an absolute path in the image, lexically; a leading ``/`` or ``./`` means the
    root. A ``..`` above the root gives None, or with ``clamp`` stays at the root, which is what
    Docker (20.10, overlay2: ``../evil`` lands at ``/evil``) and containerd do with it."""
    parts: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts and not clamp:
                return None
            if parts:
                parts.pop()
        else:
            parts.append(p)
    return "/" + "/".join(parts)


class _Report:
    """Applies the rules: raises errors (unless opted out) and collects warning lines."""

    def __init__(self, allow_unsafe: bool) -> None:
        self.allow_unsafe = allow_unsafe
        self.lines: list[str] = []
        self._counts: dict[tuple[str, str], int] = {}

    def error(self, layer: str, text: str, *, allowed: str) -> None:
        """Raise, or with the opt-out warn and return; ``allowed`` says what happens then."""
        if not self.allow_unsafe:
            raise BuildError(f"base layer {layer}: {text}", hint=_UNSAFE_HINT)
        self.warn(layer, "unsafe entries", f"{text} ({allowed}: {UNSAFE_BASE_ENV}=1)")

    def warn(self, layer: str, what: str, text: str) -> None:
        n = self._counts[(layer, what)] = self._counts.get((layer, what), 0) + 1
        if n <= _MAX_LINES:
            self.lines.append(f"warning: base layer {layer}: {text}")

    def end_layer(self, layer: str) -> None:
        for (where, what), n in self._counts.items():
            if where == layer and n > _MAX_LINES:
                self.lines.append(f"warning: base layer {layer}: {n - _MAX_LINES} more entries like the above ({what})")


@dataclass(frozen=True)
class _TooBig:
    layer: str
    size: int


class Rootfs:
    """Path -> (kind, link target) of the merged base filesystem, plus the few file contents kept.

    kind is "dir", "file", "symlink", "device" or "fifo"."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, str]] = {"/": ("dir", "")}
        self._children: dict[str, set[str]] = {}  # directory -> the paths directly in it
        self._budget = MODEL_BYTES_MAX
        self.contents: dict[str, bytes | _TooBig] = {}
        self.setid: set[str] = set()  # setuid/setgid regular files, in the merged view
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ paths
    def _walk(self, path: str, *, strict: bool) -> str | None:
        """``path`` with every symlink in it followed, inside the image (kernel rules: a relative
        target from the link's directory, an absolute one from the image root, ``..`` stops at
        /). strict: None when a component is missing; otherwise missing components are taken
        as written (an extractor creates them). None on a symlink loop."""
        parts = [p for p in reversed(path.split("/")) if p]
        current = "/"
        hops = 0
        while parts:
            part = parts.pop()
            if part == ".":
                continue
            if part == "..":
                current = posixpath.dirname(current)
                continue
            candidate = current.rstrip("/") + "/" + part
            entry = self.entries.get(candidate)
            if entry is not None and entry[0] == "symlink":
                hops += 1
                if hops > 40:
                    return None
                if entry[1].startswith("/"):
                    current = "/"
                parts.extend(p for p in reversed(entry[1].split("/")) if p)
                continue
            if entry is None and strict:
                return None
            current = candidate
        return current

    def _place(self, path: str) -> str:
        """Where an entry named ``path`` lands: its directory resolved, its own name kept."""
        parent, name = posixpath.split(path)
        real_parent = self._walk(parent, strict=False) or parent
        return posixpath.join(real_parent, name) if name else real_parent

    def _forget(self, path: str) -> None:
        self.contents.pop(path, None)
        self.setid.discard(path)

    def _set(self, path: str, kind: tuple[str, str]) -> None:
        if path not in self.entries:
            self._children.setdefault(posixpath.dirname(path), set()).add(path)
        self.entries[path] = kind

    def _delete(self, path: str, *, children_only: bool = False) -> None:
        """Remove ``path`` (or only what is under it) by walking the children index: a layer of
        many whiteouts costs the size of what they delete, never one scan of the tree each."""
        if path not in self.entries:
            return
        stack = list(self._children.pop(path, ()))
        if not children_only and path != "/":
            stack.append(path)
            self._children.get(posixpath.dirname(path), set()).discard(path)
        while stack:
            p = stack.pop()
            stack.extend(self._children.pop(p, ()))
            del self.entries[p]
            self._forget(p)

    # ------------------------------------------------------------------ layers
    def apply_layer(self, tar: tarfile.TarFile, origin: str, *, layer: str = "", report: _Report | None = None) -> None:
        """Merge one layer. ``layer`` names it in messages (``sha256:`` + 12 hex); ``origin``
        says where its bytes come from (for read errors). Without ``report`` every error
        class raises."""
        layer = layer or origin
        report = report or _Report(allow_unsafe=False)
        # Whiteouts apply to lower layers only (OCI image spec), so this layer's own entries
        # are applied after the whole layer has been read.
        added: list[tuple[str, str, tuple[str, str], bytes | _TooBig | None, bool]] = []
        try:
            for m in tar:
                shown = _show(m.name)
                self._budget -= len(m.name) + len(m.linkname) + 200
                if self._budget < 0:
                    raise BuildError(
                        f"base layer {layer}: more entries than mlbuild reads ({MODEL_BYTES_MAX >> 20} MiB of names, at entry {shown})",
                        hint="the base image is unusually large or hostile; use a smaller base image",
                    )
                path = _inside(m.name)
                if path is None:
                    # Opted out: read it where the engines put it, so mlbuild sees what runs.
                    path = _inside(m.name, clamp=True) or "/"
                    report.error(layer, f"entry {shown} leaves the image root", allowed=f"read as {path}, as engines do")
                name = posixpath.basename(path)
                if name.startswith(".wh."):
                    directory = posixpath.dirname(path)
                    parent = self._walk(directory, strict=False) or directory  # bin/.wh.x with /bin -> usr/bin
                    if name == ".wh..wh..opq":
                        self._delete(parent, children_only=True)
                    elif name[4:] in ("", ".", ".."):
                        report.error(layer, f"entry {shown} is a whiteout of {name[4:]!r}, not of a name", allowed="ignored")
                    else:
                        self._delete(posixpath.join(parent, name[4:]))
                    continue
                data: bytes | _TooBig | None = None
                if m.issym():
                    kind = ("symlink", m.linkname)
                    # Absolute targets start at the image root; relative ones at the link's directory.
                    where = m.linkname if m.linkname.startswith("/") else posixpath.dirname(path) + "/" + m.linkname
                    if _inside(where) is None:
                        report.warn(layer, "symlinks climbing above /", f"symlink {shown} -> {_show(m.linkname)} climbs above the image root")
                elif m.isdir():
                    kind = ("dir", "")
                elif m.islnk():
                    if _inside(m.linkname) is None:
                        report.error(layer, f"hard link {shown} -> {_show(m.linkname)} leaves the image root",
                                     allowed="its target read inside the root, as engines do")
                    kind = ("hardlink", m.linkname)
                elif m.ischr() or m.isblk():
                    kind = ("device", f"{'char' if m.ischr() else 'block'} device {m.devmajor},{m.devminor}")
                elif m.isfifo():
                    kind = ("fifo", "")
                else:
                    kind = ("file", "")
                    if path in _WANTED_FILES:
                        if m.size > SMALL_FILE_MAX:
                            data = _TooBig(layer, m.size)  # the stream skips it; read() reports it
                        else:
                            f = tar.extractfile(m)
                            data = f.read(SMALL_FILE_MAX) if f else b""
                setid = kind[0] == "file" and bool(m.mode & 0o6000)
                added.append((path, shown, kind, data, setid))
        except LAYER_READ_ERRORS as exc:
            raise BuildError(f"{origin}: cannot read the layer ({exc})", hint="the base image is corrupt or truncated; fetch or export it again") from exc
        for path, shown, kind, data, setid in added:
            self._add(path, shown, kind, data, setid, layer, report)
        report.end_layer(layer)

    def _add(self, path: str, shown: str, kind: tuple[str, str], data: bytes | _TooBig | None, setid: bool,
             layer: str, report: _Report) -> None:
        real = self._place(path)
        if real == "/" and kind[0] != "dir":
            report.error(layer, f"entry {shown} replaces the image root with a {kind[0]}", allowed="left out")
            return
        if kind[0] == "hardlink":
            target = self._place(_inside(kind[1], clamp=True) or "/")
            existing = self.entries.get(target)
            if existing is None or existing[0] == "dir":
                what = "a directory" if existing else "nothing earlier in the image"
                report.error(layer, f"hard link {shown} -> {_show(kind[1])} names {what}", allowed="left out")
                return
            kind, data, setid = existing, self.contents.get(target), target in self.setid
        old = self.entries.get(real)
        if old is not None and old[0] != kind[0]:
            self._delete(real)  # a file replacing a directory or the reverse
        else:
            self._forget(real)
        self._set(real, kind)
        parent = posixpath.dirname(real)
        while parent not in self.entries:  # tars may leave parent directories implicit
            self._set(parent, ("dir", ""))
            parent = posixpath.dirname(parent)
        if data is not None:
            self.contents[real] = data
        if kind[0] == "device" and not real.startswith("/dev/"):
            report.warn(layer, "devices", f"entry {shown} is a {kind[1]} outside /dev")
        if setid:
            self.setid.add(real)
            if not real.startswith(_SYSTEM_DIRS):
                report.warn(layer, "setuid/setgid files", f"entry {shown} is setuid/setgid outside the system directories")

    def setid_summary(self) -> str | None:
        """One line listing the setuid/setgid files left in system directories (Debian has ~11)."""
        system = sorted(p for p in self.setid if p.startswith(_SYSTEM_DIRS))
        if not system:
            return None
        names = ", ".join(system[:12]) + (", …" if len(system) > 12 else "")
        return (f"note: the base image has {len(system)} setuid/setgid files in system directories ({names}); "
                "run the image with no-new-privileges (Kubernetes: allowPrivilegeEscalation: false) so they cannot raise privileges")

    # ------------------------------------------------------------------ lookups
    def resolve(self, path: str) -> str | None:
        """The final path after following symlinks (inside the image); None if it does not exist."""
        return self._walk(path, strict=True)

    def kind(self, path: str) -> str | None:
        entry = self.entries.get(path)
        return entry[0] if entry else None

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
    """Merge ``base``'s layers. Malformed entries raise (see the module docstring) unless
    ``allow_unsafe`` (default: ``unsafe_base_allowed()``); warning lines land in ``.warnings``."""
    report = _Report(unsafe_base_allowed() if allow_unsafe is None else allow_unsafe)
    fs = Rootfs()
    for layer in base.layers:
        with open_layer_tar(layer) as tar:
            fs.apply_layer(tar, layer.origin, layer=layer.short, report=report)
    fs.warnings = report.lines + [line for line in [fs.setid_summary()] if line]
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
