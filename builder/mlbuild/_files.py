"""Which files of the model directory go into the image, split into code and artefacts.

Code (``*.py``, mlbuild.toml, requirements.txt, pyproject.toml, mlbuild.lock) changes often and
goes in the top layer; everything else is an artefact (weights, encoders...) in the layer below.

Left out by default, each with a reason the builder prints:

* secrets, by name — matched case-insensitively (``.ENV`` and ``Id_Rsa`` are ``.env`` and
  ``id_rsa``), at any depth; the full list is ``_SECRET_FILES`` / ``_SECRET_DIRS`` below:
  env files (``.env``, ``.env*``, ``*.env``, ``.envrc``), keys and certificates (``*.pem``,
  ``*.key``, ``*.ppk``, ssh keys ``id_rsa*``/``id_dsa*``/``id_ecdsa*``/``id_ed25519*``, public
  halves included), key stores, tool credential files (``.netrc``, ``_netrc``, ``.pgpass``,
  ``.my.cnf``, ``.vault-token``, ``.dockercfg``, ``.s3cfg``, ``.boto``, ``.databrickscfg``,
  ``kaggle.json``, ``.terraformrc``, ``.git-credentials``, ``htpasswd``, ``*.ovpn``...),
  kubeconfigs, terraform state and variables, shell histories (``.*_history``), ``secrets.*``,
  ``secret.*``, ``credentials*``, token files (``token``, ``token.*``, ``*_token``,
  ``*.token``...; not ``tokenizer.json``, ``tokens.txt`` or ``special_tokens_map.json``),
  service-account and OAuth client files, and the directories ``.aws/``, ``.ssh/``, ``.git/``,
  ``.gnupg/``, ``.docker/``, ``.kube/``, ``.azure/``, ``.oci/``, ``.terraform/``,
  ``.password-store/``, ``.config/gcloud/``, ``.config/gh/``;
* secrets, by content — a regular text file of at most 64 KiB (``CONTENT_SCAN_LIMIT``) that
  holds a private key block (PEM, OpenSSH, PGP, PuTTY), a Google service-account key, or an AWS
  secret access key with its value. Only files no other rule left out are read; bigger files,
  and files whose first 8 KiB hold a NUL byte (weights, images, archives), are never read, so
  the scan costs at most one small read per small file;
* caches and local environments — ``__pycache__/``, ``*.pyc``, ``.venv/``, ``venv/``,
  ``.mypy_cache/``, ``.pytest_cache/``, ``.ruff_cache/``, ``.ipynb_checkpoints/``, ``.tox/``,
  ``.DS_Store``;
* anything that is not a regular file, symlinks that leave the model directory, and symlinks
  whose target would itself be left out (``settings.txt -> .env`` must not bake ``.env`` under
  another name): a link is baked only when the file it points at would be.

``spec.exclude`` globs drop more; ``spec.include`` globs take back what ``exclude`` or the cache
rules dropped (like ``!pattern`` in a .dockerignore). A secret (by name or by content) is taken back
only by an include entry that is its exact relative path (no wildcard, same case), so a broad
``"**"`` can never bake a key by accident, while a model artefact that happens to be called
``tokenizer.key``, or a test fixture that holds a throwaway key, can be named.

Globs are relative to the model directory, ``/``-separated: ``*`` and ``?`` stay within one path
part, ``**`` crosses parts; a pattern without ``/`` matches at any depth (``*.csv``), and a
pattern matching a directory covers everything under it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ._globs import glob_match
from ._spec import ModelSpec

__all__ = ["ModelFiles", "select_model_files", "CODE_NAMES"]

CODE_NAMES = frozenset({"mlbuild.toml", "requirements.txt", "pyproject.toml", "mlbuild.lock"})
# File names that hold credentials, lower case: a name is lowered before it is matched, so
# ".ENV", "Id_Rsa" and "Credentials.JSON" are caught. Narrow on purpose where ML files live
# close by: "token.*" but not "token*" (tokenizer.json, tokens.txt), ssh key names but not
# "id_*" (id_to_label.json), "*.tfstate" but not "*state*".
_SECRET_FILES = (
    # environment files (dotenv, direnv)
    ".env", ".env*", "*.env", ".envrc",
    # keys, certificates, key stores, password vaults
    "*.pem", "*.key", "*.ppk", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",
    "*.keychain", "*.keychain-db",
    # ssh keys; the public halves too: nothing an image needs, and they name their owner
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    # credential files of common tools
    ".netrc", "_netrc", ".pypirc", ".npmrc", ".yarnrc*", ".git-credentials", ".htpasswd",
    "htpasswd", ".pgpass", ".my.cnf", ".vault-token", ".dockercfg", ".s3cfg", ".boto",
    ".passwd-s3fs", "rclone.conf", ".rclone.conf", ".databrickscfg", "kaggle.json",
    ".terraformrc", "terraform.rc", "*.ovpn",
    # kubernetes, terraform state and variables (state holds every secret terraform touched)
    "kubeconfig", "kubeconfig.*", "*.kubeconfig", "*.tfstate", "*.tfstate.*", "*.tfvars",
    "*.tfvars.json",
    # shell and REPL histories: pasted tokens and passwords
    ".*_history", ".zhistory", ".histfile",
    # secrets and credentials files by their plain names
    "secrets", "secrets.*", "secret", "secret.*", "*.secret", "*.secrets", "client_secret*",
    "credentials", "credentials.*", "credentials[-_]*", "*[-_]credentials", "*[-_]credentials.*",
    "accesskeys.csv", "*[-_]accesskeys.csv", "*service-account*.json", "*service_account*.json",
    # token files (huggingface writes "token" and "stored_tokens"; google quickstarts token.json)
    "token", "token.*", "*.token", "*[-_]token", "*[-_]token.txt", "*[-_]token.json",
    "stored_tokens",
)
# Directories (as trailing runs of path parts, lower case, matched at any depth) that hold
# credentials.
_SECRET_DIRS = ((".aws",), (".ssh",), (".git",), (".gnupg",), (".docker",), (".kube",), (".azure",),
                (".oci",), (".terraform",), (".password-store",), (".config", "gcloud"),
                (".config", "gh"))
SECRET_REASON = "may hold secrets (never baked)"
# One regex for all the name globs: a model directory may hold tens of thousands of files.
_SECRET_NAME_RE = re.compile("|".join(fnmatch.translate(p) for p in _SECRET_FILES))

# Content rules: cheap byte patterns over small text files. Each needs the secret itself, not a
# mention of it: a README saying "-----BEGIN PRIVATE KEY-----", or code reading
# os.environ["AWS_SECRET_ACCESS_KEY"], is kept.
CONTENT_SCAN_LIMIT = 64 * 1024  # bytes; bigger files are artefacts (weights), never read
_SNIFF = 8 * 1024  # a NUL byte in this much of the head means binary: stop reading
_EOL = rb"(?:\s|\\[rn])*"  # real line breaks, or escaped ones inside a JSON string
_PRIVATE_KEY = re.compile(
    # BEGIN line, optional "Header: value" lines (Proc-Type, DEK-Info, Comment), then base64.
    rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    + _EOL + rb"(?:[A-Za-z-]+:[^\r\n\\]*" + _EOL + rb")*[A-Za-z0-9+/=]{16}"
    rb"|PuTTY-User-Key-File-\d+:[^\n]*\n(?:.*\n)*?Private-Lines:"
)
_SERVICE_ACCOUNT = (re.compile(rb'"type"\s*:\s*"service_account"'), re.compile(rb'"private_key"\s*:'))
# The key name, then "=" or ":", then a 40-character value (the length of an AWS secret key).
_AWS_SECRET = re.compile(
    rb"(?i)secret_?access_?key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)

_CACHE_DIRS = frozenset({"__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                         ".ruff_cache", ".ipynb_checkpoints", ".tox"})
_CACHE_FILES = ("*.pyc", "*.pyo", ".DS_Store")


@dataclass(frozen=True)
class ModelFiles:
    code: tuple[Path, ...]
    artifacts: tuple[Path, ...]
    excluded: tuple[tuple[Path, str], ...]  # (relative path, why it was left out)


def _is_secret_name(name: str) -> bool:
    return _SECRET_NAME_RE.match(name.lower()) is not None


def _is_secret_dir(parts: tuple[str, ...]) -> bool:
    """True when the directory whose path parts are ``parts`` is one that holds credentials."""
    lowered = tuple(p.lower() for p in parts)
    return any(lowered[-len(d):] == d for d in _SECRET_DIRS if len(lowered) >= len(d))


def _content_problem(full: Path) -> str | None:
    """Why the small text file at ``full`` must not be baked (it holds a credential), or None.

    Reads at most CONTENT_SCAN_LIMIT bytes, and only _SNIFF of a binary file."""
    try:
        if full.stat().st_size > CONTENT_SCAN_LIMIT:
            return None
        with open(full, "rb") as fh:
            data = fh.read(_SNIFF)
            if b"\0" in data:
                return None
            data += fh.read(CONTENT_SCAN_LIMIT - len(data))
    except OSError:
        # It passed the readability check a moment ago; unreadable now means it cannot be
        # copied either, and unread means unchecked: leave it out.
        return "cannot be read"
    if all(p.search(data) for p in _SERVICE_ACCOUNT):  # before the key it holds: the better name
        return "holds a service-account key (never baked)"
    if _PRIVATE_KEY.search(data):
        return "holds a private key (never baked)"
    if _AWS_SECRET.search(data):
        return "holds an AWS secret access key (never baked)"
    return None


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

    def name_problem(rel: str) -> str | None:
        """Why the file at ``rel`` is left out by the name rules (secrets, caches, globs), or None.

        The walk prunes secret and cache directories before it reaches their files; the
        ancestor checks here give the same answer for a symlink's target, which the walk may
        reach by another path (or never)."""
        parts = PurePosixPath(rel).parts
        for n in range(1, len(parts)):
            prefix = "/".join(parts[:n])
            if _is_secret_dir(parts[:n]) and prefix not in literal_includes:
                return SECRET_REASON
        if _is_secret_name(parts[-1]) and rel not in literal_includes:
            return SECRET_REASON
        why = user_excluded(rel)
        if why is None and any(fnmatch.fnmatchcase(parts[-1], p) for p in _CACHE_FILES):
            why = "cache file"
        if why is None and any(part in _CACHE_DIRS for part in parts[:-1]):
            why = "cache or local environment"
        return why if why is not None and not included(rel) else None

    content_seen: dict[str, str | None] = {}  # a file and the links to it are read once

    def problem(rel: str) -> str | None:
        """Why the regular file at ``rel`` is left out: the name rules, then (only for a file
        they keep, and not one named exactly by an include entry) its content."""
        why = name_problem(rel)
        if why is None and rel not in literal_includes:
            if rel not in content_seen:
                content_seen[rel] = _content_problem(root / rel)
            why = content_seen[rel]
        return why

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
            elif _is_secret_dir(PurePosixPath(rel).parts) and rel not in literal_includes:
                excluded.append((Path(rel), SECRET_REASON))
            elif d in _CACHE_DIRS and not may_include_under(rel):
                excluded.append((Path(rel), "cache or local environment"))
            else:
                keep_dirs.append(d)
        dirnames[:] = keep_dirs

        for f in sorted(filenames):
            rel = (rel_dir / f).as_posix().removeprefix("./")
            full = Path(dirpath, f)
            reason = _file_problem(root, full)
            if reason is None and full.is_symlink():
                # The link's own name must pass, and the file it points at too, judged by its
                # own path and content (an include naming the link does not vouch for the target).
                reason = name_problem(rel)
                target = full.resolve().relative_to(root).as_posix()
                if reason is None and problem(target) is not None:
                    reason = f"symlink to an excluded file: {target}"
            elif reason is None:
                reason = problem(rel)
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
