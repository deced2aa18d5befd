"""How the server starts a worker: the argv and the environment. Standard library only.

The worker runs in the *model's* interpreter, which has nothing of mlbuild installed and must
never see the server env's site-packages (their pydantic would shadow the model's). So instead
of ``-m mlbuild_runtime.worker`` (which needs the runtime on sys.path) the server runs a tiny
bootstrap that loads this directory as a package named ``mlbuild_worker`` from its path.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

__all__ = ["BOOTSTRAP", "PACKAGE_NAME", "WORKER_DIR", "worker_command", "worker_env"]

PACKAGE_NAME = "mlbuild_worker"
WORKER_DIR = os.path.dirname(os.path.abspath(__file__))

# `python -c` puts '' (the cwd) first on sys.path; the cwd is the model dir, which the worker
# puts on sys.path itself, so drop it here to keep the bootstrap's own imports clean.
BOOTSTRAP = (
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    "import importlib, importlib.util, os\n"
    "d = sys.argv[1]\n"
    "s = importlib.util.spec_from_file_location("
    "'" + PACKAGE_NAME + "', os.path.join(d, '__init__.py'), submodule_search_locations=[d])\n"
    "m = importlib.util.module_from_spec(s)\n"
    "sys.modules[s.name] = m\n"
    "s.loader.exec_module(m)\n"
    "del sys.argv[1:]\n"
    "importlib.import_module('" + PACKAGE_NAME + ".__main__').main()\n"
)

# Variables that would put the server env (or anything else) on the model interpreter's path.
_DROPPED = ("PYTHONPATH", "PYTHONHOME")


def worker_command(python: str) -> list[str]:
    """The argv that starts a worker under the interpreter ``python`` (the model env's)."""
    return [python, "-c", BOOTSTRAP, WORKER_DIR]


def worker_env(
    base_env: Mapping[str, str], model_dir: str, entrypoint: Optional[str] = None
) -> dict[str, str]:
    """``base_env`` without the path-changing PYTHON* variables, plus what the worker reads.

    ``entrypoint`` is ``"module:attr"`` (or ``"module"``); None keeps the default rule
    (module ``predict``; class ``Model`` if defined, else function ``predict``).
    """
    env = {k: v for k, v in base_env.items() if k not in _DROPPED}
    env["MODEL_DIR"] = os.path.abspath(model_dir)
    if entrypoint:
        env["MLBUILD_ENTRYPOINT"] = entrypoint
    else:
        env.pop("MLBUILD_ENTRYPOINT", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env
