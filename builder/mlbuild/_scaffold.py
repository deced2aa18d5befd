"""`mlbuild init DIR`: a model directory that builds and serves as it is."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ._errors import ConfigError
from ._values import sanitize_name

_PREDICT = '''"""Entrypoint: mlbuild calls Model().load() once per worker, then predict() per request."""

from pathlib import Path


class Model:
    def load(self) -> None:
        # Load weights/encoders here, by path relative to this directory (the working
        # directory at run time), e.g. joblib.load("artifacts/model.joblib").
        self.greeting = (Path(__file__).parent / "artifacts" / "greeting.txt").read_text().strip()

    def predict(self, name: str) -> str:
        return f"{self.greeting}, {name}!"
'''

_TOML = '''# mlbuild configuration; every key is optional. See `mlbuild --help` and README.md.
name = "{name}"
version = "0.1.0"
# entrypoint = "predict:Model"
# python = "3.11"
# base_image = "python:3.11-slim"
# system_packages = []
# port = 8080

# [env]
# MY_SETTING = "value"
'''


def scaffold(directory: Path, *, name: str | None = None) -> list[Path]:
    """Create predict.py, requirements.txt, mlbuild.toml and artifacts/ in DIRECTORY.

    Refuses to overwrite any existing file (names it). Nothing is left half-written: the files
    are written into a staging directory first, then the whole directory is renamed into place
    (new DIRECTORY) or each file is linked in without replacing anything (existing DIRECTORY);
    a failure removes what was staged or already moved in."""
    directory = Path(directory)
    contents = {
        Path("predict.py"): _PREDICT,
        Path("requirements.txt"): "# one requirement per line, e.g. scikit-learn==1.5.2\n",
        Path("mlbuild.toml"): _TOML.format(name=sanitize_name(name or directory.resolve().name)),
        Path("artifacts") / "greeting.txt": "Hello\n",
    }
    created = [directory / rel for rel in contents]
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"mlbuild init: {directory} exists and is not a directory",
            hint="choose an empty or new directory",
        )
    existing = [p for p in created if p.exists() or p.is_symlink()]
    if existing:
        raise ConfigError(
            f"mlbuild init: {existing[0]} already exists",
            hint="choose an empty or new directory; mlbuild init never overwrites files",
        )
    try:
        if directory.is_dir():
            _fill_existing(directory, contents)
        else:
            _create_new(directory, contents)
    except OSError as exc:
        failed = f"{exc.filename}" if exc.filename and Path(exc.filename) != directory else None
        raise ConfigError(
            f"mlbuild init: cannot create {directory}: {exc.strerror or exc}",
            hint="choose a directory you can write to, on a writable file system",
            details=f"(failed on {failed}; nothing was written)" if failed else None,
        ) from None
    return created


def _write_all(root: Path, contents: dict[Path, str]) -> None:
    for rel, text in contents.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _create_new(directory: Path, contents: dict[Path, str]) -> None:
    # Stage beside the target (same file system, so the final rename is atomic).
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.mlbuild-init-", dir=directory.parent))
    try:
        _write_all(staging, contents)
        # mkdtemp makes 0700; a scaffolded directory gets the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        # rename() onto a directory that appeared meanwhile only succeeds when it is empty.
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fill_existing(directory: Path, contents: dict[Path, str]) -> None:
    # Stage inside the target: guaranteed to be the same file system for link()/rename().
    staging = Path(tempfile.mkdtemp(prefix=".mlbuild-init-", dir=directory))
    moved: list[Path] = []
    made_dirs: list[Path] = []
    try:
        _write_all(staging, contents)
        for rel in contents:
            dest = directory / rel
            for parent in reversed(rel.parents[:-1]):
                if not (directory / parent).is_dir():
                    (directory / parent).mkdir()
                    made_dirs.append(directory / parent)
            # link() never replaces an existing file (FileExistsError), unlike rename().
            os.link(staging / rel, dest)
            moved.append(dest)
    except BaseException as exc:
        for path in moved:
            path.unlink(missing_ok=True)
        for path in reversed(made_dirs):
            with contextlib.suppress(OSError):
                path.rmdir()
        if isinstance(exc, FileExistsError):
            raise ConfigError(
                f"mlbuild init: {exc.filename} already exists",
                hint="choose an empty or new directory; mlbuild init never overwrites files",
            ) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
