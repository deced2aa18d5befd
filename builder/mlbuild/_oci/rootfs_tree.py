"""The base scan's model of a filesystem tree: path -> (kind, link target), a children index,
and symlink resolution inside the image, bounded (the rules: ``rootfs_rules``).

A lookup follows at most ``MAX_LINKS`` symlinks (the kernel's ELOOP limit) and takes in at
most ``WALK_COMPONENTS_MAX`` components and ``PATH_MAX`` bytes of path. Each lookup used to
re-walk an entry's directory whole, so a layer of long chained links (targets of thousands of
``q/../`` components) and 100k entries under them cost hours; now where a directory resolves
is cached until a symlink changes, and the components all lookups take in are capped per scan.
"""

from __future__ import annotations

from .._errors import BuildError
from .rootfs_rules import DIR, MAX_LINKS, PATH_MAX, WALK_COMPONENTS_MAX, nbytes, show

__all__ = ["Tree", "dirname", "WALK_STEPS_MAX"]

# Components all lookups of one scan may take in. Every entry's directory is cached, so a real
# base takes in under one per entry (Debian bookworm with Python, 6,292 entries: 4,902), and even
# with no cache hit ~10 (5M for a 500k-file CUDA base). A hostile layer makes each lookup cost up
# to WALK_COMPONENTS_MAX (distinct directories under a long chain); this cap stops it after ~8 s.
WALK_STEPS_MAX = 1 << 25
_DIRS_CACHE_MAX = 1 << 20  # bytes the directory cache holds before it starts afresh (outside the model's budget)


def dirname(path: str) -> str:
    return path.rpartition("/")[0] or "/"


class Tree:
    """Path -> (kind, link target) and how paths resolve; kind is "dir", "file", "symlink",
    "device" or "fifo". ``walk_steps`` counts the components lookups took in (the scan's work)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, str]] = {"/": DIR}
        self._children: dict[str, set[str]] = {}  # directory -> the paths directly in it
        self.walk_steps = 0
        # Directory as an entry names it -> where it resolves (None: it does not). Only symlinks
        # steer a lookup that takes missing components as written, so only a symlink entry
        # set or removed makes it stale; then it is dropped whole.
        self._dirs: dict[str, str | None] = {}
        self._dirs_bytes = 0

    def _walk(self, path: str, *, strict: bool) -> str | None:
        """``path`` with every symlink in it followed, inside the image (kernel rules: a relative
        target from the link's directory, an absolute one from the image root, ``..`` stops at
        /). strict: None when a component is missing; otherwise missing components are taken
        as written (an extractor creates them). None past ``MAX_LINKS`` links (a loop),
        ``WALK_COMPONENTS_MAX`` components taken in or a path over ``PATH_MAX`` bytes."""
        parts = [p for p in reversed(path.split("/")) if p]
        taken = len(parts)
        current = ""  # the root; no trailing slash, so a step is one concatenation
        hops = 0
        try:
            if taken > WALK_COMPONENTS_MAX:
                return None
            while parts:
                part = parts.pop()
                if part == ".":
                    continue
                if part == "..":
                    current = current.rpartition("/")[0]
                    continue
                candidate = current + "/" + part
                entry = self.entries.get(candidate)
                if entry is not None and entry[0] == "symlink":
                    hops += 1
                    target = [p for p in reversed(entry[1].split("/")) if p]
                    taken += len(target)
                    if hops > MAX_LINKS or taken > WALK_COMPONENTS_MAX:
                        return None
                    if entry[1].startswith("/"):
                        current = ""
                    parts += target
                    continue
                if entry is None and strict:
                    return None
                if nbytes(candidate) > PATH_MAX + 1:  # + its leading /: the name in a tar would be PATH_MAX
                    return None
                current = candidate
            return current or "/"
        finally:
            self.walk_steps += taken

    def _resolve_dir(self, directory: str, layer: str, name: str) -> str | None:
        """Where an entry's directory (as the entry names it) resolves, cached; None if it does
        not resolve. Charges the scan's walking cap, naming ``name``."""
        try:
            return self._dirs[directory]
        except KeyError:
            pass
        real = self._walk(directory, strict=False)
        if self.walk_steps > WALK_STEPS_MAX:
            raise BuildError(
                f"base layer {layer}: more symlink walking than mlbuild does ({WALK_STEPS_MAX} path components, at entry {show(name)})",
                hint="the base image is unusually large or hostile; use a smaller base image",
            )
        if self._dirs_bytes > _DIRS_CACHE_MAX:
            self._drop_dirs()
        self._dirs[directory] = real
        self._dirs_bytes += len(directory) + len(real or "") + 200  # + two string headers and a dict slot
        return real

    def _drop_dirs(self) -> None:
        self._dirs.clear()
        self._dirs_bytes = 0

    def _place(self, path: str, layer: str, name: str) -> str | None:
        """Where an entry named ``path`` lands: its directory resolved, its own name kept (the
        very string when nothing moves it, so the model and the layer's list share it)."""
        if path == "/":
            return path
        directory, _, base = path.rpartition("/")
        directory = directory or "/"
        real = self._resolve_dir(directory, layer, name)
        if real is None:
            return None
        if real == directory:
            return path
        return (real if real != "/" else "") + "/" + base

    def _forget(self, path: str) -> None:
        """Hook: ``path`` was deleted."""

    def _delete(self, path: str, *, children_only: bool = False) -> None:
        """Remove ``path`` (or only what is under it) by walking the children index: a layer of
        many whiteouts costs the size of what they delete, never one scan of the tree each.
        Nothing is refunded: the budget bounds what a scan ever held."""
        if path not in self.entries:
            return
        stack = list(self._children.pop(path, ()))
        if not children_only and path != "/":
            stack.append(path)
            self._children.get(dirname(path), set()).discard(path)
        while stack:
            p = stack.pop()
            stack.extend(self._children.pop(p, ()))
            if self.entries.pop(p)[0] == "symlink":
                self._drop_dirs()
            self._forget(p)

    def resolve(self, path: str) -> str | None:
        """The final path after following symlinks (inside the image); None if it does not exist."""
        return self._walk(path, strict=True)

    def kind(self, path: str) -> str | None:
        entry = self.entries.get(path)
        return entry[0] if entry else None
