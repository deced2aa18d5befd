"""A venv's scaffolding written as layer entries, without running ``python -m venv`` anywhere.

``install_env`` lays out ``lib/python3.X/site-packages`` and ``bin/`` scripts for the image
path; what makes that directory a venv is exactly what ``python3 -m venv`` (3.11, symlinks)
adds: ``pyvenv.cfg`` whose ``home`` is the directory of the base's python, ``bin/python3`` (the
base executable's name) -> that python, ``bin/python`` and ``bin/python3.X`` -> ``python3``,
``lib64`` -> ``lib`` and an empty ``include/python3.X``. Only the ``activate`` scripts are left
out: nothing in an image sources them.
The interpreter finds ``pyvenv.cfg`` next to ``bin/`` at start-up and takes the venv's
site-packages; the base's own site-packages stay off the path.
"""

from __future__ import annotations

import posixpath

from .rootfs import RootfsFacts
from .tarlayer import Entry, bytes_entry, dir_entry, symlink_entry

__all__ = ["venv_entries", "VENV_OWN_PATHS"]

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
