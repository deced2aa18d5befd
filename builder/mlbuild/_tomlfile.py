"""Reading a TOML file (mlbuild.toml, pyproject.toml) into a dict, with errors that name the
file, the line and the key: shared by the spec and the requirements reader."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from ._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["read_toml", "subtable", "type_name"]


def type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "float", bool: "boolean", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def read_toml(path: Path) -> dict[str, Any]:
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


def subtable(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """``data[key]`` when it is a table, {} when absent; a ConfigError for any other type (a
    pyproject.toml with ``tool = "mlbuild"`` is valid TOML but not a usable file)."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path}: bad value for {key!r}: got {type_name(value)} {value!r}; expected a table",
            hint=f"write it as a [{key}] table (or remove the key)",
        )
    return value
