"""What the base scan (``rootfs.py``) accepts from a base image's layer entries, and how it says so.

A base image is someone else's data, so nothing in it steers mlbuild. Entries are judged per
class; each line names the layer as ``sha256:`` + 12 hex and the entry:

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
name or link target over    error   Linux refuses it (ENAMETOOLONG: ``docker load`` fails with
``PATH_MAX`` (4095 bytes)           "file name too long"; 4095 loads), so no real image holds
                                    one; and long targets are what made symlink walks costly
entry under a directory     error   ``docker load`` fails on it (ELOOP for a loop); mlbuild
that does not resolve               follows at most ``MAX_LINKS`` links (the kernel's 40), and
                                    processes at most ``WALK_COMPONENTS_MAX`` components and
                                    ``PATH_MAX`` bytes of path per lookup (its own bounds, far
                                    above any real chain: Debian's longest is 3 links)
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
every other erroneous entry is left out (the engines refuse the image anyway).
Warning lines go to the caller's reporter (the backend passes ``BuildPlan.say``); at most
``_MAX_LINES`` per class and layer, then one line with the count of the rest.
"""

from __future__ import annotations

import os
import tarfile

from .._errors import BuildError

__all__ = [
    "UNSAFE_BASE_ENV", "PATH_MAX", "MAX_LINKS", "WALK_COMPONENTS_MAX", "SYSTEM_DIRS",
    "DIR", "FILE", "FIFO", "unsafe_base_allowed", "show", "inside", "nbytes", "Report", "too_long", "entry_kind",
    "unresolved", "placed", "setid_note",
]

UNSAFE_BASE_ENV = "MLBUILD_ALLOW_UNSAFE_BASE"
PATH_MAX = 4095  # bytes; Linux's PATH_MAX (4096) counts the terminating NUL
MAX_LINKS = 40  # symlinks one lookup follows, as the kernel (then ELOOP)
# Components one lookup processes, counting those its links add. A link target holds at most
# ~2,048 (PATH_MAX), so 40 of them could add ~80,000 per lookup, and a lookup per entry made a
# 1 MB layer cost hours; real chains (/bin -> usr/bin, alternatives) need a few dozen.
WALK_COMPONENTS_MAX = 4096
# Where the distribution itself installs setuid programs (Debian: su, passwd, mount, ssh-keysign).
SYSTEM_DIRS = ("/bin/", "/sbin/", "/lib/", "/lib64/", "/usr/bin/", "/usr/sbin/", "/usr/lib/", "/usr/lib64/", "/usr/libexec/")
_MAX_LINES = 10  # per class and layer; a hostile layer could hold a million bad entries
_UNSAFE_HINT = (
    f"the base image is malformed or hostile: rebuild it (or use another), or set {UNSAFE_BASE_ENV}=1 "
    "to accept them with a warning that says what mlbuild did with each"
)
# What the kinds of entries are, shared: the model holds one tuple per entry, not one per kind.
DIR, FILE, FIFO = ("dir", ""), ("file", ""), ("fifo", "")


def unsafe_base_allowed() -> bool:
    """The opt-out for malformed base layers: ``MLBUILD_ALLOW_UNSAFE_BASE=1`` (or true/yes).
    The only place it is read."""
    return os.environ.get(UNSAFE_BASE_ENV, "").strip().lower() in ("1", "true", "yes")


def show(text: str, limit: int = 200) -> str:
    """A name from a layer, quoted on one line: control characters escaped (a name holding a
    newline must not forge a log line), long names cut."""
    text = text[: limit + 1]  # a 4 KB name is never escaped whole to print 200 characters
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return "'" + (safe if len(safe) <= limit else safe[:limit] + "…") + "'"


def nbytes(text: str) -> int:
    """Length in bytes as the kernel sees the name (tarfile decodes with surrogateescape)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def inside(name: str, *, clamp: bool = False) -> str | None:
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


class Report:
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


def too_long(m: tarfile.TarInfo, layer: str, report: Report) -> bool:
    """True when the entry's name or link target is over PATH_MAX (then it is left out)."""
    for what, value in (("name", m.name), ("target", m.linkname)):
        if nbytes(value) > PATH_MAX:
            link = f"{'symlink' if m.issym() else 'hard link'} {show(m.name)} -> {show(m.linkname)}"
            entry = link if what == "target" else f"entry {show(m.name)}"
            report.error(layer, f"{entry} has a {what} of {nbytes(value)} bytes; Linux takes at most {PATH_MAX} (PATH_MAX)",
                         allowed="left out")
            return True
    return False


def entry_kind(m: tarfile.TarInfo, path: str, layer: str, report: Report) -> tuple[str, str]:
    """The model's (kind, link target) for a layer entry that is not a whiteout, after the
    per-entry rules."""
    if m.issym():
        # Absolute targets start at the image root; relative ones at the link's directory.
        where = m.linkname if m.linkname.startswith("/") else path.rpartition("/")[0] + "/" + m.linkname
        if inside(where) is None:
            report.warn(layer, "symlinks climbing above /", f"symlink {show(m.name)} -> {show(m.linkname)} climbs above the image root")
        return ("symlink", m.linkname)
    if m.isdir():
        return DIR
    if m.islnk():
        if inside(m.linkname) is None:
            report.error(layer, f"hard link {show(m.name)} -> {show(m.linkname)} leaves the image root",
                         allowed="its target read inside the root, as engines do")
        return ("hardlink", m.linkname)
    if m.ischr() or m.isblk():
        return ("device", f"{'char' if m.ischr() else 'block'} device {m.devmajor},{m.devminor}")
    if m.isfifo():
        return FIFO
    return FILE


def unresolved(layer: str, name: str, directory: str, report: Report) -> None:
    """An entry whose directory does not resolve (then it is left out)."""
    report.error(layer, f"entry {show(name)}: its directory {show(directory)} does not resolve (a symlink loop, or more than "
                        f"{MAX_LINKS} links, {WALK_COMPONENTS_MAX} path components or {PATH_MAX} bytes)", allowed="left out")


def placed(real: str, kind: tuple[str, str], name: str, setid: bool, layer: str, report: Report) -> None:
    """The warnings about an entry, once it is known where it lands (``real``)."""
    if kind[0] == "device" and not real.startswith("/dev/"):
        report.warn(layer, "devices", f"entry {show(name)} is a {kind[1]} outside /dev")
    if setid and not real.startswith(SYSTEM_DIRS):
        report.warn(layer, "setuid/setgid files", f"entry {show(name)} is setuid/setgid outside the system directories")


def setid_note(setid: set[str]) -> str | None:
    """One line listing the setuid/setgid files left in system directories (Debian has ~11)."""
    system = sorted(p for p in setid if p.startswith(SYSTEM_DIRS))
    if not system:
        return None
    names = ", ".join(system[:12]) + (", …" if len(system) > 12 else "")
    return (f"note: the base image has {len(system)} setuid/setgid files in system directories ({names}); "
            "run the image with no-new-privileges (Kubernetes: allowPrivilegeEscalation: false) so they cannot raise privileges")
