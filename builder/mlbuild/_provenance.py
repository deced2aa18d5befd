"""Where an image's inputs came from, for its OCI ``source`` and ``revision`` labels: read from
the environment (MLBUILD_SOURCE_URL, GitHub's variables) and git, never from a git remote URL.

Labels are public, and CI variables carry tokens: GitLab's CI_REPOSITORY_URL, the obvious thing
to put in MLBUILD_SOURCE_URL, is ``https://gitlab-ci-token:TOKEN@host/group/project.git``. So the
user-info, the query and the fragment of a source URL are silently dropped (the label names the
repository; none of them is part of that).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ._runner import Runner

__all__ = ["revision", "source"]


def revision(directory: Path, runner: Runner | None) -> str | None:
    """GITHUB_SHA, else ``git rev-parse HEAD`` in ``directory``, else None (never an error)."""
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    if runner is None or shutil.which("git") is None:
        return None
    try:
        result = runner.run(["git", "-C", str(directory), "rev-parse", "HEAD"], check=False, timeout=10)
    except Exception:  # noqa: BLE001 - the revision label is a nicety, never a build failure
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and len(sha) in (40, 64) else None


def source() -> str | None:
    """MLBUILD_SOURCE_URL, else GitHub's GITHUB_SERVER_URL/GITHUB_REPOSITORY, else None; without
    credentials, query or fragment."""
    value = os.environ.get("MLBUILD_SOURCE_URL")
    if not value:
        server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
        value = f"{server}/{repo}" if server and repo else None
    return None if value is None else _public_url(value)


def _public_url(value: str) -> str:
    """``value`` without user-info, query or fragment when it is a ``scheme://`` URL; as it is
    otherwise (the label's own check refuses what cannot be a label value)."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}"
