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
*full* match (``re.fullmatch`` / ``\A...\Z``; never ``re.match(...$)``, whose ``$`` also matches
before a trailing newline: that is how ``"bash\n"`` once passed as a package name and became a
RUN step). ENV and LABEL values are free text, so they are checked by what they may not hold
(see ``_text_problem``) and quoted by the template's ``dq`` filter.

Precedence, highest first: an explicit override (``SpecOverrides``, from the CLI or the API) >
the config file > the inferred default.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._entrypoint import find_entrypoint
from ._errors import ConfigError, EntrypointError
from ._oci.reference import DEFAULT_REGISTRY_ENV, parse_reference

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ModelSpec",
    "RequirementsSource",
    "SpecOverrides",
    "load_spec",
    "CONFIG_FILE",
    "LOCK_FILE",
    "SUPPORTED_PYTHONS",
]

CONFIG_FILE = "mlbuild.toml"
PYPROJECT = "pyproject.toml"
LOCK_FILE = "mlbuild.lock"
# The server env's lock (mlbuild/_data/server.lock) covers exactly these.
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")

# Every pattern is anchored with \A ... \Z, so even a caller that uses .match() (mlbuild._save
# does, with _NAME_RE) gets a full match: `$` would also match before a trailing "\n".
# Docker reference grammar: path components of lowercase alnum separated by ., _, __ or -s.
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"\A{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*\Z")
_TAG_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,254}\Z")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRYPOINT_RE = re.compile(rf"\A{_IDENT}(?:\.{_IDENT})*:{_IDENT}\Z")
# What `apt-get install` takes, and nothing of what it would read as more than a package:
#   name      Debian policy 5.6.1: [a-z0-9][a-z0-9+.-]+ (two chars at least), here also not ending
#             in "-", which apt-get reads as "remove this package"
#   :arch     e.g. libc6:amd64 (multiarch)
#   =version  e.g. curl=7.88.1-10+deb12u5: policy 5.6.12 characters, starting with a digit (an
#             epoch or an upstream version) and not ending in "-" (apt's remove suffix again)
#   /release  e.g. libgomp1/bookworm-backports
# None of these characters is special to the shell in the middle of a word, so the list is
# written into the RUN step as plain words.
_DEBIAN_PKG_RE = re.compile(
    r"\A[a-z0-9][a-z0-9+.-]*[a-z0-9+.]"
    r"(?::[a-z0-9]+(?:-[a-z0-9]+)*)?"
    r"(?:=[0-9](?:[A-Za-z0-9.+~:-]*[A-Za-z0-9.+~:])?|/[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)?\Z"
)
_DEBIAN_PKG_MAX = 200
_LABEL_KEY_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\Z")
# base_image lands in FROM and, in the venvs step, inside a double-quoted shell string that runs
# as root: only characters that are inert in both places (no space, quote, $, `, \, control or
# non-ASCII character), then the reference grammar for anything that is not a local path.
_BASE_IMAGE_RE = re.compile(r"\A[A-Za-z0-9._/:@+-]{1,1024}\Z")
_BASE_PATH_PREFIXES = ("oci:", "docker-archive:")  # the oci backend's local sources (_oci/base.py)
# ENV/LABEL values: a Dockerfile line holds at most 64 KiB for Docker's parser (bufio.Scanner's
# default token size); 16 KiB, even with every byte escaped, stays well below that.
_TEXT_MAX_BYTES = 16384

# What each key accepts, for error messages ("bad values name file + key + what is allowed").
_ALLOWED: dict[str, str] = {
    "name": "a lowercase image name: letters, digits and . _ - (and / between parts)",
    "version": "an image tag: letters, digits, _ . - (at most 128, not starting with . or -)",
    "entrypoint": "a string 'module:attr', e.g. 'predict:Model' (ASCII letters, digits, _ and .)",
    "python": "one of " + ", ".join(repr(p) for p in SUPPORTED_PYTHONS) + " (a string)",
    "requirements": "a path relative to the model directory, as a string (no control characters)",
    "base_image": "an image reference string, e.g. 'python:3.11-slim' or 'registry.example.com/team/py:3.11' "
    "(or oci:DIR, docker-archive:FILE, docker:REF, /path, ./path); letters, digits and . _ / : @ + - only",
    "system_packages": "a list of Debian package names, e.g. ['libgomp1'], each optionally with "
    ":arch, =version or /release",
    "env": "a table of NAME = \"value\" strings (NAME: letters, digits, _; value: one line of text, "
    f"no control characters, at most {_TEXT_MAX_BYTES} bytes)",
    "labels": "a table of \"key\" = \"value\" strings (key: letters, digits, . _ / -; value: one line "
    f"of text, no control characters, at most {_TEXT_MAX_BYTES} bytes)",
    "include": "a list of glob strings, e.g. ['artifacts/**']",
    "exclude": "a list of glob strings, e.g. ['data/raw/**']",
    "port": "an integer from 1 to 65535",
}
_GLOB_HINT = ("globs use * and ? (within one path part), ** (across parts) and [abc], [a-z], [!abc] "
              "classes with ranges written low-high; for a literal '[' write '[[]'")


def _sanitize_name(text: str) -> str:
    """A name _NAME_RE accepts, from any text (a directory name, `mlbuild init --name`)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    name = re.sub(r"[._-]{2,}", "-", name).strip("._-")
    return name[:128].rstrip("._-") or "model"  # cut first, strip after: no trailing separator


def _show(value: str, limit: int = 80) -> str:
    """``repr`` of a value for a one-line message: escapes every line break, cuts long values."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


# Control characters have no Unicode name; the ones people meet get a word.
_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte",
                  "\v": "a vertical tab", "\f": "a form feed", "\x85": "NEXT LINE, a line break",
                  "\x1c": "a file separator, a line break", "\x1d": "a group separator, a line break",
                  "\x1e": "a record separator, a line break"}


def _char(ch: str) -> str:
    name = unicodedata.name(ch, "") or _CONTROL_NAMES.get(ch, "a control character")
    return f"U+{ord(ch):04X} ({name})"


def _unsafe_char(text: str) -> str | None:
    """The first character no config text may hold, described; None when there is none.

    Control characters (C0 with tab, DEL, C1 with U+0085), U+2028/U+2029 and lone surrogates:
    every one of str.splitlines()' separators is among them, so no parser can see a line break.
    """
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            return _char(ch)
    return None


def _text_problem(value: str) -> str | None:
    r"""Why ``value`` cannot be an ENV or LABEL value; None when it can.

    Refused, not escaped: a double-quoted Dockerfile word has no escape for a line break (Docker's
    lexer keeps ``\n`` as a backslash and an n), and a tab or another control character in an
    image's environment is a mistake far more often than data. What *can* be escaped (``"``,
    ``\``, ``$``) is accepted and escaped by the template's ``dq`` filter."""
    bad = _unsafe_char(value)
    if bad is not None:
        return f"contains {bad}, which an ENV or LABEL value cannot hold (one line of text, no control characters)"
    if len(value.encode("utf-8")) > _TEXT_MAX_BYTES:
        return f"is longer than {_TEXT_MAX_BYTES} bytes"
    return None


def _base_image_problem(value: str) -> str | None:
    """Why ``value`` cannot be a base image; None when it can. The same check runs for the
    config key, the --base override (through SpecOverrides) and the render itself."""
    if not _BASE_IMAGE_RE.fullmatch(value):
        bad = _unsafe_char(value) or next(
            (repr(c) for c in value if not re.fullmatch(r"[A-Za-z0-9._/:@+-]", c)), "its length")
        return (f"not an image reference: {bad} is not allowed (letters, digits and . _ / : @ + - only, "
                "at most 1024)")
    if value.startswith(_BASE_PATH_PREFIXES):
        return None if value.partition(":")[2] else "not an image reference: the path after the ':' is missing"
    if value.startswith(("/", "./", "../")):
        return None  # a local layout or archive for the oci backend
    try:  # only the grammar matters: any registry resolves a short name here
        parse_reference(value.removeprefix("docker:"), env={DEFAULT_REGISTRY_ENV: "localhost"})
    except ConfigError as exc:
        return "not an image reference: " + str(exc).split(": ", 1)[-1]
    return None


def _default_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


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


class SpecOverrides(BaseModel):
    """Values given on the command line or through the API; they beat the config file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    python: str | None = None
    base_image: str | None = None
    name: str | None = None
    version: str | None = None


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if len(v) > 255 or not _NAME_RE.fullmatch(v):
            raise ValueError("expected " + _ALLOWED["name"])
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _TAG_RE.fullmatch(v):
            raise ValueError("expected " + _ALLOWED["version"])
        return v

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, v: str) -> str:
        if not _ENTRYPOINT_RE.fullmatch(v):
            raise ValueError("expected " + _ALLOWED["entrypoint"])
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if v not in SUPPORTED_PYTHONS:
            raise ValueError("expected " + _ALLOWED["python"])
        return v

    @field_validator("base_image")
    @classmethod
    def _base_image(cls, v: str | None) -> str | None:
        if v is not None:
            problem = _base_image_problem(v)
            if problem is not None:
                raise ValueError(problem)
        return v

    @field_validator("system_packages")
    @classmethod
    def _system_packages(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pkg in v:
            if len(pkg) > _DEBIAN_PKG_MAX or not _DEBIAN_PKG_RE.fullmatch(pkg):
                raise ValueError(f"{_show(pkg)} is not a Debian package name; expected {_ALLOWED['system_packages']}")
        return tuple(sorted(set(v)))

    @field_validator("env")
    @classmethod
    def _env(cls, v: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for key, value in v:
            if not _ENV_NAME_RE.fullmatch(key):
                raise ValueError(f"{_show(key)} is not a valid environment variable name (letters, digits, _)")
            problem = _text_problem(value)
            if problem is not None:
                raise ValueError(f"the value of {key!r}, {_show(value)}, {problem}")
        return tuple(sorted(v))

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for key, value in v:
            if not _LABEL_KEY_RE.fullmatch(key):
                raise ValueError(f"{_show(key)} is not a valid label key (letters, digits, . _ / -)")
            problem = _text_problem(value)
            if problem is not None:
                raise ValueError(f"the value of {key!r}, {_show(value)}, {problem}")
        return tuple(sorted(v))

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from ._files import check_glob  # _files imports this module: import at call time

        for pattern in v:
            # Globs reach no template, but a line break in one is never meant and would make
            # every message that quotes it ambiguous.
            bad = _unsafe_char(pattern)
            if bad is not None:
                raise ValueError(f"{_show(pattern)} is not a valid glob: contains {bad}")
            try:
                check_glob(pattern)
            except ValueError as exc:
                raise ValueError(f"{_show(pattern)} is not a valid glob: {exc}") from None
        return v

    @property
    def resolved_base_image(self) -> str:
        return self.base_image or f"python:{self.python}-slim"

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_FILE

    @property
    def entrypoint_module(self) -> str:
        return self.entrypoint.split(":", 1)[0]

    @property
    def entrypoint_attr(self) -> str:
        return self.entrypoint.split(":", 1)[1]


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


def _type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "float", bool: "boolean", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8", hint="save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "... (at line L, column C)"; put the line up front, compiler-style.
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m is None and "(at end of document)" in msg:
            # e.g. an unterminated table header on the last line: point at the last line.
            m = re.search(r"\(at end of document\)", msg)
            last_line = max(1, len(data.splitlines()))
            where = f"{path}:{last_line}"
            raise ConfigError(
                f"{where}: TOML syntax error: {msg[: m.start()].strip()} (at end of file)",
                hint="fix the TOML syntax (https://toml.io); strings need quotes, tables [brackets]",
            ) from None
        where = f"{path}:{m.group(1)}" if m else str(path)
        what = msg[: m.start()].strip() if m else msg
        col = f" (column {m.group(2)})" if m else ""
        raise ConfigError(
            f"{where}: TOML syntax error: {what}{col}",
            hint="fix the TOML syntax (https://toml.io); strings need quotes, tables [brackets]",
        ) from None


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
            f"{where}: bad value for {key!r}{sub}: got {_type_name(value)} {value!r}; "
            f"expected {_ALLOWED.get(key, err['msg'])}",
            hint=f"set {key} to {_ALLOWED.get(key, 'a valid value')}",
        ) from None


# ---------------------------------------------------------------------------- requirements

_INDEX_OPTIONS = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host",
                  "--no-index")


def _normalize_requirement(text: str, where: str) -> str:
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


def _read_requirements_file(path: Path, seen: frozenset[Path] = frozenset()) -> list[str]:
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
                out += _read_requirements_file((path.parent / arg).resolve(), seen | {path})
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
        out.append(_normalize_requirement(line, where))
    return out


def _requirements_source(
    directory: Path, configured: str | None, where: str, pyproject: dict[str, Any] | None
) -> RequirementsSource:
    if configured is not None:
        problem = _requirements_path_problem(configured)
        if problem is not None:
            raise ConfigError(
                f"{where}: key 'requirements': bad value {_show(configured)}: {problem}",
                hint=f"requirements must be {_ALLOWED['requirements']}, e.g. 'requirements/prod.txt'",
            )
        path = (directory / configured).resolve()
        try:
            found = path.is_file()
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise ConfigError(
                f"{where}: key 'requirements': cannot use {_show(configured)}: {exc.strerror}",
                hint="fix the path (it is relative to the model directory) or remove the key",
            ) from None
        if not found:
            raise ConfigError(
                f"{where}: requirements file {configured!r} not found in {directory}",
                hint="fix the path (it is relative to the model directory) or remove the key",
            )
        if path.name == PYPROJECT:
            return _pyproject_requirements(path, _read_toml(path))
        return RequirementsSource(
            kind="requirements.txt", path=path, requirements=_unique(_read_requirements_file(path))
        )
    txt = directory / "requirements.txt"
    if txt.exists():
        return RequirementsSource(
            kind="requirements.txt", path=txt, requirements=_unique(_read_requirements_file(txt))
        )
    if pyproject is not None and "dependencies" in _subtable(pyproject, "project", directory / PYPROJECT):
        return _pyproject_requirements(directory / PYPROJECT, pyproject)
    return RequirementsSource(kind="none")


def _requirements_path_problem(value: str) -> str | None:
    """The path is opened and quoted in the lock step's messages: one plain relative path,
    nothing that could read as a second line (or, written anywhere later, as an option)."""
    bad = _unsafe_char(value)
    if bad is not None:
        return f"contains {bad}"
    if not value.strip() or value != value.strip():
        return "is empty or has spaces around it"
    if value.startswith(("/", "~", "-")):
        return "must be a path relative to the model directory (not absolute, not starting with ~ or -)"
    return None


def _subtable(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """``data[key]`` when it is a table, {} when absent; a ConfigError for any other type (a
    pyproject.toml with ``tool = "mlbuild"`` is valid TOML but not a usable file)."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path}: bad value for {key!r}: got {_type_name(value)} {value!r}; expected a table",
            hint=f"write it as a [{key}] table (or remove the key)",
        )
    return value


def _pyproject_requirements(path: Path, data: dict[str, Any]) -> RequirementsSource:
    deps = _subtable(data, "project", path).get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ConfigError(
            f"{path}: bad value for 'project.dependencies': expected a list of requirement strings",
            hint="write dependencies = [\"numpy>=1.26\", ...] under [project]",
        )
    reqs = [_normalize_requirement(d, f"{path}: project.dependencies[{i}]") for i, d in enumerate(deps)]
    return RequirementsSource(kind="pyproject", path=path, requirements=_unique(reqs))


def _unique(lines: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(lines)))


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
    pyproject = _read_toml(pyproject_path) if pyproject_path.is_file() else None
    if (directory / CONFIG_FILE).is_file():
        config_file = directory / CONFIG_FILE
        raw = _read_toml(config_file)
        where = str(config_file)
    elif pyproject is not None and "mlbuild" in _subtable(pyproject, "tool", pyproject_path):
        config_file = pyproject_path
        raw = pyproject["tool"]["mlbuild"]
        where = f"{pyproject_path} [tool.mlbuild]"
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{pyproject_path}: bad value for 'tool.mlbuild': got {_type_name(raw)} {raw!r}; "
                "expected a table",
                hint="write the settings under a [tool.mlbuild] table",
            )
    table = _validate_table(raw, where)

    requirements = _requirements_source(directory, table.requirements, where, pyproject)
    if table.entrypoint is not None and not re.fullmatch(r"[A-Za-z0-9_.:]+", table.entrypoint):
        # The entrypoint becomes an ENV value and a worker argument; only its grammar's characters
        # (the format itself is checked, with a better message, by find_entrypoint).
        raise EntrypointError(
            f"{where}: key 'entrypoint': bad value {_show(table.entrypoint)}: expected {_ALLOWED['entrypoint']}",
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
    values.setdefault("name", _sanitize_name(directory.name))
    origin.setdefault("name", f"name derived from directory {directory.name!r}")
    if table.port is not None:
        values["port"], origin["port"] = table.port, f"{where}: key 'port'"
    for key in ("system_packages", "include", "exclude"):
        if getattr(table, key) is not None:
            values[key], origin[key] = tuple(getattr(table, key)), f"{where}: key {key!r}"
    for key in ("env", "labels"):
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
        shown = f" {_show(value)}" if isinstance(value, str) else f" {value!r}" if isinstance(value, (int, float)) else ""
        hint = f"{key} must be {_ALLOWED.get(key, 'valid')}"
        if key in ("include", "exclude"):
            hint = f"fix the pattern: {_GLOB_HINT}"
        raise ConfigError(f"{origin.get(key, key)}: bad value{shown}: {msg}", hint=hint) from None
