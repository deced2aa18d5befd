"""Which files of the model directory go into the image, split into code and artefacts.

Code (``*.py``, mlbuild.toml, requirements.txt, pyproject.toml, mlbuild.lock) changes often and
goes in the top layer; everything else is an artefact (weights, encoders...) in the layer below.

Left out by default, each with a reason the builder prints:

* secrets — ``.env``, ``.env.*``, ``*.pem``, ``*.key``, ``id_rsa*`` (and other ssh keys),
  ``.netrc``, ``.pypirc``, ``credentials*.json``, and the directories ``.aws/``, ``.ssh/``,
  ``.git/``;
* caches and local environments — ``__pycache__/``, ``*.pyc``, ``.venv/``, ``venv/``,
  ``.mypy_cache/``, ``.pytest_cache/``, ``.ruff_cache/``, ``.ipynb_checkpoints/``, ``.tox/``,
  ``.DS_Store``;
* anything that is not a regular file, and symlinks that leave the model directory.

``spec.exclude`` globs drop more; ``spec.include`` globs take back what ``exclude`` or the cache
rules dropped (like ``!pattern`` in a .dockerignore). A secret is taken back only by an include
entry that is its exact relative path (no wildcard), so a broad ``"**"`` can never bake a key
by accident, while a model artefact that happens to be called ``tokenizer.key`` can be named.

Globs are relative to the model directory, ``/``-separated: ``*`` and ``?`` stay within one path
part, ``**`` crosses parts; a pattern without ``/`` matches at any depth (``*.csv``), and a
pattern matching a directory covers everything under it.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ._spec import ModelSpec

__all__ = ["ModelFiles", "select_model_files", "glob_match", "CODE_NAMES"]

CODE_NAMES = frozenset({"mlbuild.toml", "requirements.txt", "pyproject.toml", "mlbuild.lock"})
_SECRET_FILES = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_dsa*", "id_ecdsa*",
                 "id_ed25519*", ".netrc", ".pypirc", "credentials*.json")
_SECRET_DIRS = frozenset({".aws", ".ssh", ".git", ".gnupg"})
_CACHE_DIRS = frozenset({"__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                         ".ruff_cache", ".ipynb_checkpoints", ".tox"})
_CACHE_FILES = ("*.pyc", "*.pyo", ".DS_Store")


@dataclass(frozen=True)
class ModelFiles:
    code: tuple[Path, ...]
    artifacts: tuple[Path, ...]
    excluded: tuple[tuple[Path, str], ...]  # (relative path, why it was left out)

    @property
    def all(self) -> tuple[Path, ...]:
        return tuple(sorted(self.code + self.artifacts, key=lambda p: p.as_posix()))


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    raw = pattern.strip()
    pat = raw.lstrip("/")
    # Like .gitignore: a leading or inner "/" anchors the pattern at the model directory.
    anchored = raw.startswith("/") or "/" in pat.rstrip("/")
    pat = pat.rstrip("/")
    out, i = [], 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif pat[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pat[i] == "?":
            out.append("[^/]")
            i += 1
        elif pat[i] == "[":
            end = pat.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = pat[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(pat[i]))
            i += 1
    prefix = "" if anchored else "(?:.*/)?"
    # "(?:/.*)?" : a pattern that names a directory covers what is under it.
    return re.compile(f"^{prefix}{''.join(out)}(?:/.*)?$")


def glob_match(pattern: str, relpath: str) -> bool:
    """True when ``relpath`` (posix, relative to the model dir) matches ``pattern``."""
    return bool(_glob_regex(pattern).match(relpath))


def _is_secret_name(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in _SECRET_FILES)


def select_model_files(spec: ModelSpec) -> ModelFiles:
    root = spec.directory
    literal_includes = {p.strip().strip("/") for p in spec.include if not any(c in p for c in "*?[")}

    def included(rel: str) -> bool:
        return any(glob_match(p, rel) for p in spec.include)

    def user_excluded(rel: str) -> str | None:
        for p in spec.exclude:
            if glob_match(p, rel):
                return f"matches exclude pattern {p!r}"
        return None

    def may_include_under(rel_dir: str) -> bool:
        # Could an include pattern match something under this directory? Cheap, conservative test.
        return any(
            glob_match(p, rel_dir) or p.lstrip("/").startswith(rel_dir + "/") or p.startswith("**")
            for p in spec.include
        )

    code: list[Path] = []
    artifacts: list[Path] = []
    excluded: list[tuple[Path, str]] = []

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        keep_dirs = []
        for d in sorted(dirnames):
            rel = (rel_dir / d).as_posix().removeprefix("./")
            full = Path(dirpath, d)
            if full.is_symlink():
                excluded.append((Path(rel), "symlinked directory (not followed)"))
            elif d in _SECRET_DIRS and rel not in literal_includes:
                excluded.append((Path(rel), "may hold secrets (never baked)"))
            elif d in _CACHE_DIRS and not may_include_under(rel):
                excluded.append((Path(rel), "cache or local environment"))
            else:
                keep_dirs.append(d)
        dirnames[:] = keep_dirs

        for f in sorted(filenames):
            rel = (rel_dir / f).as_posix().removeprefix("./")
            full = Path(dirpath, f)
            reason = _file_problem(root, full)
            if reason is None and _is_secret_name(f) and rel not in literal_includes:
                reason = "may hold secrets (never baked)"
            if reason is None:
                why = user_excluded(rel)
                if why is None and any(fnmatch.fnmatchcase(f, p) for p in _CACHE_FILES):
                    why = "cache file"
                if why is None and any(part in _CACHE_DIRS for part in PurePosixPath(rel).parts[:-1]):
                    why = "cache or local environment"
                if why is not None and not included(rel):
                    reason = why
            if reason is not None:
                excluded.append((Path(rel), reason))
            elif f.endswith(".py") or f in CODE_NAMES:
                code.append(Path(rel))
            else:
                artifacts.append(Path(rel))

    key = lambda p: p.as_posix()  # noqa: E731 - sort by the path as it will appear in the image
    return ModelFiles(
        code=tuple(sorted(code, key=key)),
        artifacts=tuple(sorted(artifacts, key=key)),
        excluded=tuple(sorted(excluded, key=lambda e: e[0].as_posix())),
    )


def _file_problem(root: Path, full: Path) -> str | None:
    """Why a directory entry cannot be baked as a file, or None."""
    try:
        st = full.stat()  # follows symlinks
    except OSError:
        return "broken symlink" if full.is_symlink() else "cannot be read"
    if full.is_symlink():
        try:
            full.resolve().relative_to(root)
        except ValueError:
            return "symlink pointing outside the model directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(full, os.R_OK):
        return "cannot be read (permission denied)"
    return None
