"""The server env's own lock (FastAPI, uvicorn, prometheus-client...), shipped in the wheel.

Every image built by one mlbuild version gets the same server env, so its layer is shared
between images. The lock is one ``uv pip compile --universal --python-version 3.10`` resolution:
its markers cover CPython 3.10-3.13 on linux/amd64 and linux/arm64, and the builder installs it
with ``install_env(server_lock_path(), ..., python=<model's python>, platform=<target>)``.

Regenerate after editing runtime/requirements.in (from a source checkout)::

    python -m mlbuild._server_env --refresh     # rewrite mlbuild/_data/server.lock
    python -m mlbuild._server_env --check       # exit 1 when it no longer matches requirements.in
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from ._errors import LockError, MlbuildError
from ._lock import Lock, read_lock, write_lock
from ._requirements import RequirementsSource, read_requirements_file
from ._runner import Runner

__all__ = [
    "server_lock_path",
    "read_server_lock",
    "server_requirements",
    "refresh_server_lock",
    "SERVER_PYTHON",
    "SERVER_PLATFORMS",
]

SERVER_PYTHON = "3.10"  # lowest supported: a universal lock for 3.10 covers the later ones
SERVER_PLATFORMS = ("linux/amd64", "linux/arm64")
# Used when runtime/requirements.in is not at hand (an installed wheel has no runtime/ dir).
_FALLBACK_REQUIREMENTS = (
    "fastapi>=0.110",
    "httptools>=0.6",
    "prometheus-client>=0.20",
    "uvicorn>=0.29",
    'uvloop>=0.19; sys_platform != "win32"',
)


def server_lock_path() -> Path:
    """Path of the shipped server.lock (inside the installed mlbuild package)."""
    path = Path(str(resources.files("mlbuild") / "_data" / "server.lock"))
    if not path.is_file():  # pragma: no cover - a broken installation
        raise LockError(f"{path} is missing", hint="reinstall mlbuild; its wheel ships mlbuild/_data/server.lock")
    return path


def read_server_lock() -> Lock:
    return read_lock(server_lock_path())


def _source_requirements_in() -> Path:
    # builder/mlbuild/_server_env.py -> <repo>/runtime/requirements.in
    return Path(__file__).resolve().parents[2] / "runtime" / "requirements.in"


def server_requirements(requirements_in: Path | None = None) -> RequirementsSource:
    """The server env's direct requirements, normalized exactly like a model's."""
    path = requirements_in or _source_requirements_in()
    if path.is_file():
        reqs = tuple(sorted(set(read_requirements_file(path))))
        return RequirementsSource(kind="requirements.txt", path=path, requirements=reqs)
    from ._requirements import normalize_requirement

    reqs = tuple(sorted({normalize_requirement(r, "mlbuild._server_env") for r in _FALLBACK_REQUIREMENTS}))
    return RequirementsSource(kind="requirements.txt", path=None, requirements=reqs)


def refresh_server_lock(
    *, requirements_in: Path | None = None, output: Path | None = None, runner: Runner | None = None
) -> Lock:
    source = server_requirements(requirements_in)
    target = output or Path(__file__).resolve().parent / "_data" / "server.lock"
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_lock(
        source.requirements,
        target,
        requirements_sha256=source.sha256,
        python=SERVER_PYTHON,
        platforms=SERVER_PLATFORMS,
        resolver="uv",
        runner=runner,
        source=str(source.path or "mlbuild's server requirements"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlbuild._server_env", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--refresh", action="store_true", help="re-resolve and rewrite _data/server.lock")
    group.add_argument("--check", action="store_true", help="fail when server.lock is stale")
    parser.add_argument("--requirements", type=Path, default=None, help="requirements.in to lock")
    args = parser.parse_args(argv)
    try:
        if args.refresh:
            result = refresh_server_lock(requirements_in=args.requirements)
            print(f"wrote {result.path} ({len(result.packages)} packages, {result.digest})")
            return 0
        current = read_server_lock()
        wanted = server_requirements(args.requirements)
        if current.requirements_sha256 != wanted.sha256:
            print(f"{current.path} is stale: {wanted.path} changed; run python -m mlbuild._server_env --refresh",
                  file=sys.stderr)
            return 1
        print(f"{current.path} is current ({len(current.packages)} packages)")
        return 0
    except MlbuildError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
