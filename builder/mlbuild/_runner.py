"""The one way mlbuild runs external programs (uv, pip-compile, docker CLI, skopeo...).

Everything that shells out takes a ``Runner``; unit tests pass a fake that records the calls
and answers from a script, integration tests use ``SubprocessRunner``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["CommandResult", "Runner", "SubprocessRunner", "CommandFailed", "uv_binary"]


@dataclass(frozen=True)
class CommandResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(Exception):
    """A command exited non-zero while ``check=True``. Callers turn it into an MlbuildError
    that says what the command was for; this one only carries the facts."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(f"{result.args[0]} exited with {result.returncode}")
        self.result = result


class Runner(Protocol):
    def run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult: ...


@dataclass
class SubprocessRunner:
    """Runs commands for real. ``extra_env`` is laid over os.environ for every call."""

    extra_env: Mapping[str, str] = field(default_factory=dict)

    def run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        full_env = {**os.environ, **self.extra_env, **(env or {})}
        argv = tuple(str(a) for a in args)
        proc = subprocess.run(
            argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
        )
        result = CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandFailed(result)
        return result


def uv_binary() -> str:
    """Path of the uv binary that the `uv` PyPI package (a dependency of mlbuild) installed."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):  # pragma: no cover - uv is a hard dependency
        return "uv"
