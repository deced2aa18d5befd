"""Where mlbuild keeps what it can make again: the ONLY reader of MLBUILD_CACHE_DIR and
XDG_CACHE_HOME. Every cache lives under ``cache_root()``, each in its named sub-root, so one
variable moves (or one ``rm -r`` clears) all of them.

    envs/    installed envs keyed by lock digest, platform and Python (_envs.installed_env)
    oci/     the oci backend's blobs, layer and group caches, engine exports, default layouts
    venvs/   `mlbuild serve --isolated` venvs keyed by lock digest and Python
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "envs_cache", "oci_cache", "venvs_cache"]


def cache_root() -> Path:
    """MLBUILD_CACHE_DIR, else $XDG_CACHE_HOME/mlbuild, else ~/.cache/mlbuild."""
    explicit = os.environ.get("MLBUILD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlbuild"


def envs_cache() -> Path:
    return cache_root() / "envs"


def oci_cache() -> Path:
    return cache_root() / "oci"


def venvs_cache() -> Path:
    return cache_root() / "venvs"
