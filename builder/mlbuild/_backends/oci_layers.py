"""The oci backend's layers above the base and how they are cached (build policy, on top of the
_oci library's tar writer and blob store).

Each env is split (``oci_venv.split_env``) into one layer per distribution of >= 16 MiB
installed, ordered by name, then one layer with the rest; every such layer is cached under a key
made of the distribution, its version, the RECORD hashes of its files, platform, Python, epoch
and gzip level, so two models that pin the same numpy share that blob. Which layers an env split
into is cached by what determines it (lock digest, platform, Python, epoch, level): a code-only
rebuild finds them without walking the env and writes only the small layers above them (runtime,
artefacts, code), which are cached by a stat fingerprint of their files. Layers that must be
written are compressed in parallel (zlib releases the GIL), largest first.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import BuildError
from .._imagefacts import MODEL_DIR_PATH, RUNTIME_PATH
from .._oci.cache import BlobStore, layer_key
from .._oci.tarlayer import Entry, LayerBlob, dir_entry, file_entry, is_skipped, tree_entries
from .._resources import MODEL_TEMPLATE_NAME
from .._version import __version__
from .oci_venv import MAX_DIST_LAYERS, EnvPart, is_venv_own, split_env

if TYPE_CHECKING:  # pragma: no cover
    from .._plan import BuildPlan

__all__ = ["EnvInput", "Layer", "env_layers", "fingerprint", "upper_layers"]

Layer = tuple[LayerBlob, str]  # the blob and its history line (created_by)

# Files an env's RECORD gives no hash for (RECORD itself) and no larger than this are hashed by
# content, so a per-distribution layer's key is the same in every env that installed it.
_HASH_UNRECORDED_MAX = 1 << 20


def _stat_key(st: os.stat_result) -> bytes:
    """A file's identity without reading it. Size and mtime alone miss a file rewritten in place
    with both kept (cp -p, rsync -t, archives with fixed timestamps: new weights of the same
    shape); st_ctime_ns cannot be set by utime and moves on every write or rename, and st_dev with
    st_ino names the file itself."""
    return f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_dev}\0{st.st_ino}\0".encode()


def _content_fingerprint(part: EnvPart) -> str:
    """Identity of an env part's files by content, never by host stat: RECORD's sha256 (and the
    size on disk, so a truncated file is noticed), else the bytes themselves. The env cache is
    written once by install_env and never edited, so RECORD's hashes stand for the files."""
    h = hashlib.sha256()
    for e in sorted(part.entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.kind}\0{e.executable}\0{e.target}\0".encode("utf-8", "surrogateescape"))
        if isinstance(e.source, bytes):
            h.update(hashlib.sha256(e.source).digest())
        elif e.source is not None:
            st = os.stat(e.source)
            recorded = part.record_hashes.get(e.path)
            if recorded:
                h.update(f"{recorded}\0{st.st_size}\0".encode())
            elif st.st_size <= _HASH_UNRECORDED_MAX:
                h.update(hashlib.sha256(Path(e.source).read_bytes()).digest())
            else:
                h.update(_stat_key(st))
    return h.hexdigest()


def fingerprint(entries: Sequence[Entry]) -> str:
    """Cheap identity of a layer's inputs: paths, kinds, modes and file stats (_stat_key).
    A touched-but-equal file costs one rebuild of a small layer, never a wrong one."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.kind}\0{e.executable}\0{e.target}\0".encode("utf-8", "surrogateescape"))
        if isinstance(e.source, bytes):
            h.update(hashlib.sha256(e.source).digest())
        elif e.source is not None:
            h.update(_stat_key(os.stat(e.source)))
    return h.hexdigest()


@dataclass(frozen=True)
class EnvInput:
    """One installed env on the host and what it becomes in the image."""

    kind: str  # "server-env" | "model-env"
    host: Path
    image_path: str
    lock_digest: str
    added: tuple[Entry, ...]  # venv scaffolding (and the server's .pth), always in the shared layer


def _layer(store: BlobStore, key: str | None, entries: Callable[[], list[Entry]], epoch: int, level: int) -> LayerBlob:
    return store.layer(key, entries, epoch=epoch, level=level)


def upper_layers(plan: BuildPlan, runtime_dir: Path, store: BlobStore, level: int) -> tuple[Layer, ...]:
    """Runtime, artefacts (if any) and code: the same for every platform."""
    runtime = tree_entries(runtime_dir, f"{RUNTIME_PATH}/mlbuild_runtime", skip=is_skipped)
    directory = Path(plan.spec.directory)
    artifacts = [
        file_entry(f"{MODEL_DIR_PATH}/{p.as_posix()}", directory / p)
        for p in plan.files.artifacts if p.as_posix() != MODEL_TEMPLATE_NAME
    ]
    code = [dir_entry(MODEL_DIR_PATH)] + [
        file_entry(f"{MODEL_DIR_PATH}/{p.as_posix()}", directory / p)
        for p in plan.files.code if p.as_posix() != MODEL_TEMPLATE_NAME
    ]
    wanted = [("runtime", runtime, f"COPY runtime/ {RUNTIME_PATH}/")]
    if artifacts:
        wanted.append(("artifacts", artifacts, f"COPY model/artifacts/ {MODEL_DIR_PATH}/"))
    wanted.append(("code", code, f"COPY model/code/ {MODEL_DIR_PATH}/"))
    out = []
    for kind, entries, created_by in wanted:
        key = layer_key(kind=kind, fp=fingerprint(entries), epoch=plan.epoch, level=level)
        out.append((_layer(store, key, lambda e=entries: e, plan.epoch, level), f"mlbuild {__version__}: {created_by}"))
    return tuple(out)


def env_layers(
    envs: Sequence[EnvInput], store: BlobStore, *, minor: str, epoch: int, level: int, dist_layer_min_bytes: int,
    common: dict[str, Any],
) -> list[Layer]:
    """Every env's layers, in image order: from the group cache, else split and written."""
    split_params = f"{dist_layer_min_bytes}/{MAX_DIST_LAYERS}"
    found: dict[int, list[Layer]] = {}
    pending: list[tuple[int, str, list[tuple[str, EnvPart, str]]]] = []  # env index, group key, parts
    for i, env in enumerate(envs):
        group = layer_key(kind=env.kind, lock=env.lock_digest, added=fingerprint(env.added), split=split_params, **common)
        hit = store.cached_group(group)
        if hit is not None:
            found[i] = hit
            continue
        if not env.host.is_dir():
            raise BuildError(f"installed environment {env.host} is missing", hint="build again; if it persists, clear ~/.cache/mlbuild")
        skip = lambda rel: is_skipped(rel) or is_venv_own(rel, minor)  # noqa: E731
        tree = tree_entries(env.host, env.image_path, skip=skip)
        parts = split_env([*tree, *env.added], env.host, env.image_path, python_minor=minor,
                          min_bytes=dist_layer_min_bytes, max_layers=MAX_DIST_LAYERS)
        keyed = []
        for part in parts:
            key = layer_key(kind=env.kind, dist=part.dist or "", version=part.version or "",
                            fp=_content_fingerprint(part), **common)
            what = f"COPY {env.kind}/ {env.image_path}/" + (f" ({part.dist} {part.version})" if part.dist else "")
            keyed.append((key, part, f"mlbuild {__version__}: {what}"))
        pending.append((i, group, keyed))

    # Cache hits cost nothing; the rest compress in parallel (zlib and sha256 release the
    # GIL), largest first so the longest job never starts last. Order never changes bytes.
    jobs = [(key, part) for _, _, keyed in pending for key, part, _ in keyed if store.cached_layer(key) is None]
    jobs.sort(key=lambda j: (-j[1].size, j[0]))
    if jobs:
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            # Each blob is remembered under its key as it is written; the loop below finds it.
            futures = [pool.submit(_layer, store, key, (lambda p=part: p.entries), epoch, level) for key, part in jobs]
            for f in futures:
                f.result()
    for i, group, keyed in pending:
        layers = [(_layer(store, key, (lambda p=part: p.entries), epoch, level), created) for key, part, created in keyed]
        store.remember_group(group, layers)
        found[i] = layers
    return [layer for i in range(len(envs)) for layer in found[i]]
