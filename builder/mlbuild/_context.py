"""The Docker build context: which file goes where, and the tar the engine receives.

The context is a sorted list of entries (archive path -> source file or bytes), not a copied
directory: the envs weigh hundreds of MB and copying them per build would cost more than the
build. ``iter_tar`` streams it with every header normalized (uid/gid 0, no user names, mtime =
SOURCE_DATE_EPOCH or a fixed epoch, mode 0644/0755), so the bytes depend only on the content;
Docker's COPY cache and the layer digests then do not depend on checkout time or umask.

Layout::

    Dockerfile, .dockerignore
    server-env/...                 install_env output for mlbuild's server lock (+ the .pth)
    model-env/...                  install_env output for the model's lock
    runtime/mlbuild_runtime/...    the runtime package, without __pycache__
    model/artifacts/<relpath>      files under the model dir that are artefacts
    model/code/<relpath>           the model's code
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ._errors import BuildError
from ._imagefacts import IMAGE_PATHS, runtime_pth, source_date_epoch
from ._oci.tarlayer import SKIP_NAMES, is_skipped  # one skip rule for both backends
from ._resources import MODEL_TEMPLATE_NAME, runtime_package_dir

if TYPE_CHECKING:  # pragma: no cover
    from ._files import ModelFiles

__all__ = [
    "BuildContext",
    "ContextEntry",
    "context_for_app",
    "context_for_env",
    "env_layer_tar",
]



@dataclass(frozen=True)
class ContextEntry:
    """One tar member. Exactly one of ``source`` / ``data`` / ``link`` is set (none: a directory)."""

    arcname: str
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None
    executable: bool = False

    @property
    def is_dir(self) -> bool:
        return self.source is None and self.data is None and self.link is None


class BuildContext:
    """An ordered, normalized set of context entries."""

    def __init__(self, entries: Iterable[ContextEntry], *, mtime: int | None = None) -> None:
        by_name: dict[str, ContextEntry] = {}
        for entry in entries:
            by_name[entry.arcname] = entry
        # Parent directories are explicit members so that their mode/mtime are ours too.
        for name in list(by_name):
            parts = name.split("/")
            for i in range(1, len(parts)):
                by_name.setdefault("/".join(parts[:i]), ContextEntry("/".join(parts[:i])))
        self.entries: tuple[ContextEntry, ...] = tuple(by_name[k] for k in sorted(by_name))
        self.mtime = source_date_epoch() if mtime is None else mtime

    def size_bytes(self) -> int:
        total = 0
        for e in self.entries:
            if e.data is not None:
                total += len(e.data)
            elif e.source is not None:
                total += e.source.stat().st_size
        return total

    def _tarinfo(self, entry: ContextEntry) -> tuple[tarfile.TarInfo, IO[bytes] | None]:
        info = tarfile.TarInfo(entry.arcname)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = self.mtime
        if entry.is_dir:
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            return info, None
        if entry.link is not None:
            info.type = tarfile.SYMTYPE
            info.linkname = entry.link
            info.mode = 0o777
            return info, None
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if entry.executable else 0o644
        if entry.data is not None:
            info.size = len(entry.data)
            return info, io.BytesIO(entry.data)
        assert entry.source is not None
        handle = open(entry.source, "rb")  # noqa: SIM115 - closed by iter_tar
        info.size = os.fstat(handle.fileno()).st_size
        return info, handle

    def iter_tar(self) -> Iterator[bytes]:
        """The tar as a stream of chunks, produced while the consumer sends them: the engine
        starts unpacking the context while the rest is still being read from disk."""
        sink = _ChunkSink()
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for entry in self.entries:
                try:
                    info, handle = self._tarinfo(entry)
                    try:
                        tar.addfile(info, handle)
                    finally:
                        if handle is not None:
                            handle.close()
                except OSError as exc:
                    # Named here, where the entry is known: raised as a bare OSError inside a
                    # streamed request body it would look like the engine's connection failing.
                    raise _read_error(entry, exc) from None
                if sink.size >= _CHUNK:
                    yield sink.take()
        # Closing the archive wrote the end-of-archive blocks into the sink.
        if sink.size:
            yield sink.take()


_CHUNK = 1 << 20


class _ChunkSink:
    """A write-only file for tarfile that keeps what was written until it is taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts, self.size = [], 0
        return data


def _tree(root: Path, prefix: str) -> Iterator[ContextEntry]:
    """Every file under ``root`` as entries under ``prefix``; symlinks are kept as links
    (venv bin/ may hold some), caches and bytecode are left out."""
    if not root.is_dir():
        raise BuildError(f"build input {root} is missing or not a directory", hint="run the build again; if it persists, clear ~/.cache/mlbuild")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
        base = Path(dirpath)
        rel_dir = base.relative_to(root)
        for d in dirnames:
            if (base / d).is_symlink():
                yield ContextEntry(_join(prefix, rel_dir / d), link=os.readlink(base / d))
        if not filenames and not dirnames and rel_dir != Path("."):
            yield ContextEntry(_join(prefix, rel_dir))
        for name in sorted(filenames):
            path = base / name
            rel = rel_dir / name
            if is_skipped(rel.as_posix()):
                continue
            if path.is_symlink():
                yield ContextEntry(_join(prefix, rel), link=os.readlink(path))
            else:
                yield _file_entry(_join(prefix, rel), path)


def _join(prefix: str, rel: Path) -> str:
    rel_posix = rel.as_posix()
    return prefix if rel_posix in (".", "") else f"{prefix}/{rel_posix}"


def _file_entry(arcname: str, path: Path) -> ContextEntry:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from None
    if not stat.S_ISREG(mode):
        raise BuildError(f"{path} is not a regular file", hint="remove it or exclude it in mlbuild.toml")
    return ContextEntry(arcname, source=path, executable=bool(mode & 0o111))


def context_for_env(*, dockerfile: str, dockerignore: str, server_env: Path, model_env: Path, python: str) -> BuildContext:
    """The env image's context: the two installed envs (plus the runtime's .pth)."""
    pth_path, pth = runtime_pth("server-env", python)
    entries: list[ContextEntry] = [
        ContextEntry("Dockerfile", data=dockerfile.encode()),
        ContextEntry(".dockerignore", data=dockerignore.encode()),
        *_tree(server_env, "server-env"),
        ContextEntry(pth_path, data=pth),
        *_tree(model_env, "model-env"),
    ]
    return BuildContext(entries)


def env_layer_tar(*, kind: str, env_dir: Path, python: str) -> BuildContext:
    """One env ("server" or "model") as a tar of its paths in the image, for extracting it
    straight into a container: the same files ``COPY <kind>-env/`` would write."""
    root = IMAGE_PATHS[f"{kind}_env_path"].lstrip("/")
    entries = list(_tree(env_dir, root))
    if kind == "server":
        pth_path, pth = runtime_pth(root, python)
        entries.append(ContextEntry(pth_path, data=pth))
    return BuildContext(tuple(entries))


def context_for_app(
    *,
    dockerfile: str,
    dockerignore: str,
    spec_directory: Path,
    files: ModelFiles,
    runtime_dir: Path | None = None,
) -> BuildContext:
    """The upper half: runtime, artefacts, code, Dockerfile. The model's own Dockerfile.j2 is
    build configuration, not code, so it stays out of the image."""
    runtime_dir = runtime_dir or runtime_package_dir()
    directory = Path(spec_directory)
    entries: list[ContextEntry] = [
        ContextEntry("Dockerfile", data=dockerfile.encode()),
        ContextEntry(".dockerignore", data=dockerignore.encode()),
        *_tree(runtime_dir, "runtime/mlbuild_runtime"),
        # COPY model/code/ needs the directory even for a model that is only predict.py.
        ContextEntry("model/code"),
    ]
    for kind, paths in (("artifacts", files.artifacts), ("code", files.code)):
        for rel in paths:
            if Path(rel).as_posix() == MODEL_TEMPLATE_NAME:
                continue
            entries.append(_file_entry(f"model/{kind}/{Path(rel).as_posix()}", directory / rel))
    return BuildContext(entries)


def full_context(env: BuildContext, app: BuildContext, dockerfile: str) -> BuildContext:
    """One context with every layer (single-stage build, no env image)."""
    merged = [e for e in env.entries if e.arcname not in ("Dockerfile",)]
    merged += [e for e in app.entries if e.arcname not in ("Dockerfile", ".dockerignore")]
    merged.append(ContextEntry("Dockerfile", data=dockerfile.encode()))
    return BuildContext(merged, mtime=env.mtime)


def _read_error(entry: ContextEntry, exc: OSError) -> BuildError:
    path = exc.filename or entry.source or entry.arcname
    if "unexpected end of data" in str(exc):  # tarfile: fewer bytes than the header said
        return BuildError(
            f"{path}: changed size while being sent to the Docker engine",
            hint="make sure nothing modifies the model or environment directories during the build",
        )
    return BuildError(
        f"{path}: could not read it into the build context ({exc.strerror or exc})",
        hint="check that the file exists and is readable, and that nothing modifies the model "
        "or environment directories during the build",
    )
