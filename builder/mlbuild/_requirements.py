"""The model's requirements, read once into a frozen ``RequirementsSource``: requirements.txt
(with ``-r`` includes and pip's line continuations; index options refused so no host name reaches
the lock), a configured path, or pyproject.toml's ``[project] dependencies``. Each line is in
packaging's canonical form, sorted and de-duplicated, so reformatting never makes a lock stale.
The server env's own lock (_server_env) is read with the same functions."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict

from ._errors import ConfigError
from ._tomlfile import read_toml, subtable
from ._values import ALLOWED, requirements_path_problem, show

__all__ = [
    "PYPROJECT", "RequirementsSource", "normalize_requirement", "pyproject_requirements", "read_requirements_file",
    "requirements_source",
]

PYPROJECT = "pyproject.toml"


class RequirementsSource(BaseModel):
    """Where the model's requirements came from and the normalized requirement lines.

    ``requirements`` is sorted and de-duplicated, each line in packaging's canonical form, so
    reordering or reformatting the file does not make the lock stale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["requirements.txt", "pyproject", "none"]
    path: Path | None = None
    requirements: tuple[str, ...] = ()

    @property
    def sha256(self) -> str:
        """Hex sha256 of the normalized lines: what mlbuild.lock's requirements-sha256 records."""
        text = "".join(line + "\n" for line in self.requirements)
        return hashlib.sha256(text.encode()).hexdigest()


_INDEX_OPTIONS = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host",
                  "--no-index")


def normalize_requirement(text: str, where: str) -> str:
    try:
        return str(Requirement(text))
    except InvalidRequirement as exc:
        # packaging's message has a caret diagram on later lines: keep the first line up front.
        first, _, rest = str(exc).partition("\n")
        raise ConfigError(
            f"{where}: not a valid requirement {text!r}: {first}",
            details=rest.strip("\n") or None,
            hint="write requirements as on PyPI, e.g. 'numpy>=1.26' or 'pkg @ https://...whl'; "
            "local paths and editables (-e) are not supported",
        ) from None


def read_requirements_file(path: Path, seen: frozenset[Path] = frozenset()) -> list[str]:
    if path in seen:
        return []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"requirements file {path} not found", hint="create it or fix the path") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read requirements file {path}: {exc.strerror}",
            hint="check that it is a readable file",
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: requirements file is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
            hint="save the requirements file as UTF-8 text",
        ) from None

    out: list[str] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):  # pip's line continuation
            pending += line[:-1] + " "
            continue
        line = re.sub(r"(^|\s)#.*$", "", pending + line).strip()
        pending = ""
        if not line:
            continue
        where = f"{path}:{start}"
        if line.startswith("-"):
            opt, _, arg = line.partition(" ")
            opt, eq, arg2 = opt.partition("=")
            arg = (arg2 if eq else arg).strip()
            if opt in ("-r", "--requirement"):
                out += read_requirements_file((path.parent / arg).resolve(), seen | {path})
                continue
            if opt in _INDEX_OPTIONS:
                raise ConfigError(
                    f"{where}: index option {opt!r} is not allowed in the requirements file",
                    hint="set UV_INDEX_URL / UV_EXTRA_INDEX_URL in the environment instead, so that "
                    "no host name is written into the lock or the image",
                )
            raise ConfigError(
                f"{where}: option {opt!r} is not supported in requirements",
                hint="list plain requirements (name, version specifiers, markers, or name @ URL)",
            )
        out.append(normalize_requirement(line, where))
    return out


def requirements_source(
    directory: Path, configured: str | None, where: str, pyproject: dict[str, Any] | None
) -> RequirementsSource:
    if configured is not None:
        problem = requirements_path_problem(configured)
        if problem is not None:
            raise ConfigError(
                f"{where}: key 'requirements': bad value {show(configured)}: {problem}",
                hint=f"requirements must be {ALLOWED['requirements']}, e.g. 'requirements/prod.txt'",
            )
        path = (directory / configured).resolve()
        try:
            found = path.is_file()
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise ConfigError(
                f"{where}: key 'requirements': cannot use {show(configured)}: {exc.strerror}",
                hint="fix the path (it is relative to the model directory) or remove the key",
            ) from None
        if not found:
            raise ConfigError(
                f"{where}: requirements file {configured!r} not found in {directory}",
                hint="fix the path (it is relative to the model directory) or remove the key",
            )
        if path.name == PYPROJECT:
            return pyproject_requirements(path, read_toml(path))
        return RequirementsSource(
            kind="requirements.txt", path=path, requirements=_unique(read_requirements_file(path))
        )
    txt = directory / "requirements.txt"
    if txt.exists():
        return RequirementsSource(
            kind="requirements.txt", path=txt, requirements=_unique(read_requirements_file(txt))
        )
    if pyproject is not None and "dependencies" in subtable(pyproject, "project", directory / PYPROJECT):
        return pyproject_requirements(directory / PYPROJECT, pyproject)
    return RequirementsSource(kind="none")


def pyproject_requirements(path: Path, data: dict[str, Any]) -> RequirementsSource:
    deps = subtable(data, "project", path).get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ConfigError(
            f"{path}: bad value for 'project.dependencies': expected a list of requirement strings",
            hint="write dependencies = [\"numpy>=1.26\", ...] under [project]",
        )
    reqs = [normalize_requirement(d, f"{path}: project.dependencies[{i}]") for i, d in enumerate(deps)]
    return RequirementsSource(kind="pyproject", path=path, requirements=_unique(reqs))


def _unique(lines: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(lines)))
