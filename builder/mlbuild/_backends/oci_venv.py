"""An installed env as image layers: its venv scaffolding (without running ``python -m venv``
anywhere) and its split into one layer per very large distribution plus one shared layer.

``install_env`` lays out ``lib/python3.X/site-packages`` and ``bin/`` scripts for the image
path; what makes that directory a venv is exactly what ``python3 -m venv`` (3.11, symlinks)
adds: ``pyvenv.cfg`` whose ``home`` is the directory of the base's python, ``bin/python3`` (the
base executable's name) -> that python, ``bin/python`` and ``bin/python3.X`` -> ``python3``,
``lib64`` -> ``lib`` and an empty ``include/python3.X``. Only the ``activate`` scripts are left
out: nothing in an image sources them.
The interpreter finds ``pyvenv.cfg`` next to ``bin/`` at start-up and takes the venv's
site-packages; the base's own site-packages stay off the path.

``split_env`` groups an env's entries by the distribution whose ``RECORD`` lists them: each
distribution of at least ``DIST_LAYER_MIN_BYTES`` installed gets a layer of its own (so two
models that pin the same numpy share that blob, and a lock change that leaves scipy alone
re-pushes only what changed), the rest share one layer. The split reads only the installed tree,
never the clock or the machine, so the same env splits the same way everywhere.
"""

from __future__ import annotations

import csv
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

from .._oci.rootfs import RootfsFacts
from .._oci.tarlayer import Entry, bytes_entry, dir_entry, symlink_entry

__all__ = ["venv_entries", "VENV_OWN_PATHS", "DIST_LAYER_MIN_BYTES", "MAX_DIST_LAYERS", "EnvPart", "split_env"]

# A distribution with at least this many installed bytes gets its own layer. At gzip level 1 such
# a layer takes >= ~0.2 s to compress here and saves that (and its push/pull) whenever another
# image or lock reuses it; below it, what one more layer costs (a registry round trip per push and
# pull, one more overlay directory at run time, a manifest entry) is worth more than the sharing.
# The iris env (scikit-learn) splits into scipy 109 MiB, numpy 55 MiB, scikit-learn 30 MiB and
# ~3 MiB shared; the server env (largest: uvloop 13 MiB) stays one layer.
DIST_LAYER_MIN_BYTES = 16 * 1024 * 1024
# At most this many per-distribution layers per env (the largest; ties by name): overlay
# filesystems cap an image at ~125 layers, and the base and the other layers need room too.
MAX_DIST_LAYERS = 24

# Paths (relative to the env root) that venv_entries writes; a host tree must not also hold them.
VENV_OWN_PATHS = ("pyvenv.cfg", "lib64", "bin/python", "bin/python3", "include")


def venv_entries(env_path: str, facts: RootfsFacts, *, python_minor: str, python_version: str | None) -> list[Entry]:
    env_path = env_path.rstrip("/")
    cfg = (
        f"home = {facts.home}\n"
        "include-system-site-packages = false\n"
        f"version = {python_version or python_minor}\n"
        f"executable = {facts.python_real}\n"
        # The docker backend runs exactly this command; the same line keeps the two equal.
        f"command = {facts.python} -m venv --without-pip {env_path}\n"
    )
    # As venv does it: bin/<name of the base's executable> -> that executable, the other names
    # -> bin/<that name> (relative). On Debian that is python3 -> /usr/bin/python3.
    exe = posixpath.basename(facts.python)
    entries = [
        bytes_entry(f"{env_path}/pyvenv.cfg", cfg.encode()),
        symlink_entry(f"{env_path}/bin/{exe}", facts.python),
        symlink_entry(f"{env_path}/lib64", "lib"),
        dir_entry(f"{env_path}/include/python{python_minor}"),
    ]
    for name in ("python", "python3", f"python{python_minor}"):
        if name != exe:
            entries.append(symlink_entry(f"{env_path}/bin/{name}", exe))
    return entries


def is_venv_own(rel_path: str, python_minor: str) -> bool:
    """True for a path (relative to the env root) that venv_entries owns."""
    return rel_path in VENV_OWN_PATHS or rel_path == f"bin/python{python_minor}" or rel_path.startswith("include/")


@dataclass(frozen=True)
class EnvPart:
    """One layer's share of an env: a distribution's files, or (``dist`` None) everything else."""

    dist: str | None  # canonical distribution name
    version: str | None
    entries: tuple[Entry, ...]
    size: int  # bytes of file contents: for scheduling the largest compression first
    # image path -> "sha256=...,<size>" from RECORD: a content identity without reading the file.
    record_hashes: Mapping[str, str] = field(default_factory=dict)


def _dist_records(site: Path, site_rel: str) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str | None, str]]]:
    """(dist-info name -> (canonical name, version)), (env-relative path -> (dist-info name or
    None when two RECORDs claim it, RECORD hash,size))."""
    dists: dict[str, tuple[str, str]] = {}
    owner: dict[str, tuple[str | None, str]] = {}
    infos = sorted(p for p in site.glob("*.dist-info") if p.is_dir()) if site.is_dir() else []
    for info in infos:
        # {name}-{version}.dist-info: the version never holds "-" (the wheel spec escapes it).
        name, _, version = info.name[: -len(".dist-info")].rpartition("-")
        record = info / "RECORD"
        if not name or not record.is_file():
            continue  # no RECORD: its files stay in the shared layer
        dists[info.name] = (canonicalize_name(name), version)
        with open(record, newline="", encoding="utf-8", errors="surrogateescape") as f:
            for row in csv.reader(f):
                if not row or not row[0]:
                    continue
                rel = posixpath.normpath(f"{site_rel}/{row[0]}")
                if rel.startswith("../") or rel.startswith("/"):
                    continue  # outside the env: not in any layer of it
                ident = ",".join(row[1:3]) if len(row) >= 3 and row[1] else ""
                if rel in owner and owner[rel][0] != info.name:
                    owner[rel] = (None, "")  # claimed twice: belongs to neither
                else:
                    owner[rel] = (info.name, ident)
    return dists, owner


def split_env(
    entries: Iterable[Entry],
    host_root: Path,
    image_root: str,
    *,
    python_minor: str,
    min_bytes: int = DIST_LAYER_MIN_BYTES,
    max_layers: int = MAX_DIST_LAYERS,
) -> list[EnvPart]:
    """``entries`` (an env's tree below ``image_root`` plus what mlbuild adds) as layers: one per
    distribution of >= ``min_bytes`` installed bytes, ordered by name, then the shared one.

    A file goes with the distribution whose RECORD lists it; a directory goes with a distribution
    only when every file below it does (else it is in the shared layer, and each layer gets the
    parent directories it needs when it is written). Files no RECORD lists, or that two list, go
    in the shared layer.
    """
    entries = list(entries)
    root = image_root.rstrip("/")
    site_rel = f"lib/python{python_minor}/site-packages"
    dists, owner = _dist_records(Path(host_root) / site_rel, site_rel)

    def rel_of(e: Entry) -> str:
        return e.path[len(root) + 1:] if e.path.startswith(root + "/") else ""

    def size_of(e: Entry) -> int:
        if e.kind != "file":
            return 0
        return len(e.source) if isinstance(e.source, bytes) else os.lstat(e.source).st_size  # type: ignore[arg-type]

    sizes = {e.path: size_of(e) for e in entries}
    installed: dict[str, int] = {}
    for e in entries:
        info = owner.get(rel_of(e), (None, ""))[0]
        if info is not None and e.kind != "dir":
            installed[info] = installed.get(info, 0) + sizes[e.path]
    big = sorted((n for n, b in installed.items() if b >= min_bytes), key=lambda n: (-installed[n], dists[n][0]))
    own = set(big[:max_layers])

    def layer_of(e: Entry) -> str | None:
        info = owner.get(rel_of(e), (None, ""))[0]
        return info if info in own and e.kind != "dir" else None

    # A directory's layer: the one layer every file below it is in, if there is exactly one.
    below: dict[str, set[str | None]] = {}
    for e in entries:
        if e.kind == "dir":
            continue
        where = layer_of(e)
        parent = posixpath.dirname(e.path)
        while parent.startswith(root + "/"):
            below.setdefault(parent, set()).add(where)
            parent = posixpath.dirname(parent)
    groups: dict[str | None, list[Entry]] = {None: []}
    for info in own:
        groups[info] = []
    for e in entries:
        if e.kind == "dir":
            where = below.get(e.path, {None})
            groups[next(iter(where)) if len(where) == 1 else None].append(e)
        else:
            groups[layer_of(e)].append(e)

    def part(info: str | None) -> EnvPart:
        members = groups[info]
        hashes = {e.path: owner[rel_of(e)][1] for e in members if owner.get(rel_of(e), (None, ""))[1]}
        name, version = dists[info] if info is not None else (None, None)
        return EnvPart(name, version, tuple(members), sum(sizes[e.path] for e in members), hashes)

    ordered = sorted(own, key=lambda n: (dists[n][0], n))
    return [*(part(n) for n in ordered), part(None)]
