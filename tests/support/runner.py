"""ScriptedRunner: a Runner for tests (like httpx's MockTransport). It lives here, not in the
wheel: mlbuild itself only ever runs programs through SubprocessRunner."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlbuild._runner import CommandFailed, CommandResult

__all__ = ["Call", "ScriptedRunner"]


@dataclass(frozen=True)
class Call:
    """One command a ScriptedRunner was asked to run."""

    args: tuple[str, ...]
    cwd: Path | None = None
    env: dict[str, str] | None = None


@dataclass
class ScriptedRunner:
    """A Runner for tests (like httpx's MockTransport): records every call and answers it
    from ``action(call) -> (returncode, stdout, stderr)``, which may also write files the
    real program would have written."""

    action: Callable[[Call], tuple[int, str, str]] = lambda call: (0, "", "")
    calls: list[Call] = field(default_factory=list)

    def run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        call = Call(tuple(str(a) for a in args), Path(cwd) if cwd else None, dict(env) if env else None)
        self.calls.append(call)
        code, out, err = self.action(call)
        result = CommandResult(call.args, code, out, err)
        if check and code != 0:
            raise CommandFailed(result)
        return result
