r"""ModelSpec: everything the builder needs to know about one model directory, parsed once.

Where the configuration comes from (first found wins)::

    <model>/mlbuild.toml                 the whole file is the mlbuild table
    <model>/pyproject.toml [tool.mlbuild]
    nothing                              every value inferred

Keys (all optional)::

    name            image name; default: the directory name lowered, other chars -> "-"
    version         image tag, default "0.1.0"
    entrypoint      "module:attr"; default: predict:Model if predict.py has class Model,
                    else predict:predict (checked by reading the source, never importing it)
    python          "3.10" .. "3.13"; default: the running interpreter's major.minor
    requirements    path (relative to the model dir) of a requirements file or pyproject.toml
    base_image      default python:<python>-slim; an image reference, or (oci backend) oci:DIR[:TAG],
                    docker-archive:FILE[:REPO:TAG], docker:REF or a path starting with / or ./
    system_packages Debian packages to apt-get install, e.g. ["libgomp1", "curl=7.88.1-10+deb12u5"]
    port            default 8080
    include/exclude glob lists applied on top of the default file selection (see _files.py)
    [env]           environment variables baked into the image
    [labels]        image labels

Requirements, unless ``requirements`` names a file: requirements.txt if present, else
``[project].dependencies`` of pyproject.toml, else none. Requirement files may use ``-r other.txt``;
index options (``--index-url`` ...) are refused so that no host name ends up in the lock or the
image: set ``UV_INDEX_URL`` / ``UV_EXTRA_INDEX_URL`` (or pip's variables) in the environment.

Every value that reaches the Dockerfile (or a command line) is checked against an allow-list by
*full* match; the rules live in ``_values``, shared with the render. An ``[env]`` or ``[labels]``
value holding a URL with credentials is refused: both ship, readable, with every copy of the image.

Precedence, highest first: an explicit override (``SpecOverrides``, from the CLI or the API) >
the config file > the inferred default.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ._entrypoint import find_entrypoint
from ._errors import ConfigError, EntrypointError
from ._globs import check_glob
from ._requirements import PYPROJECT, RequirementsSource, requirements_source
from ._tomlfile import read_toml, subtable, type_name
from ._values import (
    ALLOWED,
    ENTRYPOINT_RE,
    GLOB_HINT,
    NAME_RE,
    SUPPORTED_PYTHONS,
    TAG_RE,
    base_image_problem,
    credential_problem,
    debian_package_problem,
    sanitize_name,
    show,
    table_item_problem,
    unsafe_char,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on 3.10 only
    pass

__all__ = [
    "ModelSpec",
    "SpecOverrides",
    "load_spec",
    "CONFIG_FILE",
    "LOCK_FILE",
    "SUPPORTED_PYTHONS",
]

CONFIG_FILE = "mlbuild.toml"
LOCK_FILE = "mlbuild.lock"


def _default_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class SpecOverrides(BaseModel):
    """Values given on the command line or through the API; they beat the config file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    python: str | None = None
    base_image: str | None = None
    name: str | None = None
    version: str | None = None


# The plain allow-lists: key -> whether a value passes (the message is "expected ALLOWED[key]").
_KEY_RULES: dict[str, Callable[[str], bool]] = {
    "name": lambda v: len(v) <= 255 and NAME_RE.fullmatch(v) is not None,
    "version": lambda v: TAG_RE.fullmatch(v) is not None,
    "entrypoint": lambda v: ENTRYPOINT_RE.fullmatch(v) is not None,
    "python": lambda v: v in SUPPORTED_PYTHONS,
}


def _refuse(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)


class ModelSpec(BaseModel):
    # hide_input: pydantic's own message would quote a refused value whole (a URL's credentials);
    # load_spec words the error itself, from errors(), which still has the input.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    directory: Path
    config_file: Path | None = None
    name: str
    version: str = "0.1.0"
    entrypoint: str
    python: str = Field(default_factory=_default_python)
    requirements: RequirementsSource = RequirementsSource(kind="none")
    base_image: str | None = None
    system_packages: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    port: int = Field(default=8080, ge=1, le=65535, strict=True)  # strict: True is not port 1

    @field_validator("directory")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @field_validator(*_KEY_RULES)
    @classmethod
    def _allowed(cls, v: str, info: ValidationInfo) -> str:
        if not _KEY_RULES[info.field_name](v):
            raise ValueError("expected " + ALLOWED[info.field_name])
        return v

    @field_validator("base_image")
    @classmethod
    def _base_image(cls, v: str | None) -> str | None:
        _refuse(None if v is None else base_image_problem(v))
        return v

    @field_validator("system_packages")
    @classmethod
    def _system_packages(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        _refuse(debian_package_problem(v))
        return tuple(sorted(set(v)))

    @field_validator("env", "labels")
    @classmethod
    def _table(cls, v: tuple[tuple[str, str], ...], info: ValidationInfo) -> tuple[tuple[str, str], ...]:
        for key, value in v:
            _refuse(table_item_problem(info.field_name, key, value))
        return tuple(sorted(v))

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:

        for pattern in v:
            # Globs reach no template, but a line break in one is never meant and would make
            # every message that quotes it ambiguous.
            bad = unsafe_char(pattern)
            if bad is not None:
                raise ValueError(f"{show(pattern)} is not a valid glob: contains {bad}")
            try:
                check_glob(pattern)
            except ValueError as exc:
                raise ValueError(f"{show(pattern)} is not a valid glob: {exc}") from None
        return v

    @property
    def resolved_base_image(self) -> str:
        return self.base_image or f"python:{self.python}-slim"

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_FILE


# ---------------------------------------------------------------------------- config file

class _ConfigTable(BaseModel):
    """The raw [tool.mlbuild] / mlbuild.toml table, strictly typed (TOML has real types, so a
    port written as "8080" is a mistake worth reporting)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str | None = None
    version: str | None = None
    entrypoint: str | None = None
    python: str | None = None
    requirements: str | None = None
    base_image: str | None = None
    system_packages: list[str] | None = None
    env: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    port: int | None = None


def _validate_table(raw: Mapping[str, Any], where: str) -> _ConfigTable:
    known = list(_ConfigTable.model_fields)
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            suggestion = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{suggestion}",
                hint="known keys: " + ", ".join(known),
            )
    try:
        return _ConfigTable.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0])
        sub = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in err["loc"][1:])
        value = raw.get(key)
        raise ConfigError(
            f"{where}: bad value for {key!r}{sub}: got {type_name(value)} {value!r}; "
            f"expected {ALLOWED.get(key, err['msg'])}",
            hint=f"set {key} to {ALLOWED.get(key, 'a valid value')}",
        ) from None


# ---------------------------------------------------------------------------- load_spec

def load_spec(directory: str | Path, *, overrides: SpecOverrides | None = None) -> ModelSpec:
    """Read and check the model directory; return its frozen spec or raise a ConfigError."""
    overrides = overrides or SpecOverrides()
    directory = Path(directory).expanduser().absolute()
    if not directory.exists():
        raise ConfigError(
            f"model directory {directory} does not exist", hint="pass the path of a directory with predict.py"
        )
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory", hint="pass the model directory, not a file")
    directory = directory.resolve()

    config_file: Path | None = None
    where = "defaults"
    raw: dict[str, Any] = {}
    pyproject_path = directory / PYPROJECT
    pyproject = read_toml(pyproject_path) if pyproject_path.is_file() else None
    if (directory / CONFIG_FILE).is_file():
        config_file = directory / CONFIG_FILE
        raw = read_toml(config_file)
        where = str(config_file)
    elif pyproject is not None and "mlbuild" in subtable(pyproject, "tool", pyproject_path):
        config_file = pyproject_path
        raw = pyproject["tool"]["mlbuild"]
        where = f"{pyproject_path} [tool.mlbuild]"
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{pyproject_path}: bad value for 'tool.mlbuild': got {type_name(raw)} {raw!r}; "
                "expected a table",
                hint="write the settings under a [tool.mlbuild] table",
            )
    table = _validate_table(raw, where)

    requirements = requirements_source(directory, table.requirements, where, pyproject)
    if table.entrypoint is not None and not re.fullmatch(r"[A-Za-z0-9_.:]+", table.entrypoint):
        # The entrypoint becomes an ENV value and a worker argument; only its grammar's characters
        # (the format itself is checked, with a better message, by find_entrypoint).
        raise EntrypointError(
            f"{where}: key 'entrypoint': bad value {show(table.entrypoint)}: expected {ALLOWED['entrypoint']}",
            hint="write it as module:attr, e.g. entrypoint = \"predict:Model\"",
        )
    ep_source = f"{where}: key 'entrypoint'" if table.entrypoint is not None else "default entrypoint"
    entrypoint = find_entrypoint(directory, table.entrypoint, source=ep_source)

    # Explicit override > config file > inferred default. Track where each value came from so a
    # bad value is reported against the place the user wrote it.
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key in ("name", "version", "python", "base_image"):
        over = getattr(overrides, key)
        if over is not None:
            values[key], origin[key] = over, f"override {key}={over!r}"
        elif getattr(table, key) is not None:
            values[key], origin[key] = getattr(table, key), f"{where}: key {key!r}"
    if "python" not in values:
        values["python"], origin["python"] = _default_python(), "default python (this interpreter's version)"
    values.setdefault("name", sanitize_name(directory.name))
    origin.setdefault("name", f"name derived from directory {directory.name!r}")
    if table.port is not None:
        values["port"], origin["port"] = table.port, f"{where}: key 'port'"
    for key in ("system_packages", "include", "exclude"):
        if getattr(table, key) is not None:
            values[key], origin[key] = tuple(getattr(table, key)), f"{where}: key {key!r}"
    for key in ("env", "labels"):
        for item, text in (getattr(table, key) or {}).items():
            problem = credential_problem(text)  # the message shows the URL masked
            if problem is not None:
                raise ConfigError(
                    f"{where}: table [{key}]: key {item!r}: the value {problem}; refusing to bake it into the image",
                    hint="put the secret in the runtime environment instead (docker run -e NAME=..., a Kubernetes "
                    "Secret or your platform's secret store), never in the image: labels are public and ENV "
                    "values ship with every copy of it",
                )
        if getattr(table, key) is not None:
            values[key], origin[key] = tuple(getattr(table, key).items()), f"{where}: table [{key}]"

    try:
        return ModelSpec(
            directory=directory,
            config_file=config_file,
            entrypoint=str(entrypoint),
            requirements=requirements,
            **values,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0])
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = f" {show(value)}" if isinstance(value, str) else f" {value!r}" if isinstance(value, (int, float)) else ""
        hint = f"{key} must be {ALLOWED.get(key, 'valid')}"
        if key in ("include", "exclude"):
            hint = f"fix the pattern: {GLOB_HINT}"
        raise ConfigError(f"{origin.get(key, key)}: bad value{shown}: {msg}", hint=hint) from None
