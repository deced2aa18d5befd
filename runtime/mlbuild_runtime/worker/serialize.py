"""predict's result -> JSON bytes, without importing numpy, pandas or pydantic. Standard library only.

Fast path: ``json.dumps`` with a ``default`` hook that converts one non-JSON object a step
(numpy ``.tolist()``, pandas ``.to_dict()``, pydantic ``.model_dump()``...); the hook's choice is
cached per type, so duck typing costs one dict lookup after the first time. ``allow_nan=False``
makes NaN/inf raise, and so do non-string dict keys of odd types; then a slow path rebuilds the
value as plain JSON (NaN/inf -> null, keys -> strings) and reports the path of anything it
cannot convert.

Choices: DataFrame -> list of records; Series -> list, or an object when its index is not the
default 0..n-1; Decimal -> string (keeps every digit); bytes -> base64 string; sets -> lists
(sorted when possible, so the output is stable); datetime/date/time -> ISO 8601; Enum -> value.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import json
import math
import types
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Callable, Dict

__all__ = ["Unserializable", "dumps"]


class Unserializable(TypeError):
    """The result holds a value JSON cannot represent; the message names its type and path."""


def dumps(obj: Any) -> bytes:
    """JSON bytes of ``obj``; raises Unserializable naming the offending type and where it is."""
    try:
        return _fast(obj).encode("ascii")
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        plain = _plain(obj, "result", 0)
    except RecursionError:
        raise Unserializable("the result is nested too deeply to convert to JSON") from None
    return json.dumps(plain, allow_nan=False, separators=(",", ":")).encode("ascii")


def _type_name(t: type) -> str:
    module = getattr(t, "__module__", "")
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


# -- one conversion step, chosen once per type ---------------------------------------------------

_CHOSEN: Dict[type, Callable[[Any], Any]] = {}


def _step(o: Any) -> Any:
    """The ``default`` hook: o (not plain JSON) -> something closer to JSON."""
    t = type(o)
    conv = _CHOSEN.get(t)
    if conv is None:
        conv = _CHOSEN[t] = _choose(t)
    return conv(o)


def _unsupported(o: Any) -> Any:
    raise Unserializable(f"an object of type {_type_name(type(o))} cannot be converted to JSON")


def _none(o: Any) -> None:
    return None


def _b64(o: Any) -> str:
    return base64.b64encode(bytes(o)).decode("ascii")


def _dataclass(o: Any) -> dict:
    return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}


def _set(o: Any) -> list:
    try:
        return sorted(o)
    except TypeError:
        return list(o)


def _series(o: Any) -> Any:
    index = o.index
    if (type(index).__name__ == "RangeIndex" and getattr(index, "start", None) == 0
            and getattr(index, "step", None) == 1):
        return o.tolist()
    return {str(k): v for k, v in o.to_dict().items()}


def _choose(t: type) -> Callable[[Any], Any]:
    name = t.__name__
    if name in ("NaTType", "NAType"):  # pandas' missing markers (NaT even has isoformat)
        return _none
    if dataclasses.is_dataclass(t):
        return _dataclass
    if hasattr(t, "model_dump") and hasattr(t, "model_fields"):  # pydantic v2
        return lambda o: o.model_dump(mode="json")
    if hasattr(t, "dict") and hasattr(t, "__fields__") and hasattr(t, "json"):  # pydantic v1
        return lambda o: o.dict()
    if hasattr(t, "to_dict") and hasattr(t, "columns") and hasattr(t, "iloc"):  # DataFrame
        return lambda o: o.to_dict(orient="records")
    if hasattr(t, "to_dict") and hasattr(t, "tolist") and hasattr(t, "index"):  # Series
        return _series
    if name == "datetime64" or name == "timedelta64":  # numpy: .item() may give raw ints
        return str
    if hasattr(t, "tolist"):  # numpy arrays and scalars, pandas Index, array.array
        return lambda o: o.tolist()
    if hasattr(t, "item") and hasattr(t, "dtype"):
        return lambda o: o.item()
    if issubclass(t, (datetime.date, datetime.time)):
        return lambda o: o.isoformat()
    if issubclass(t, datetime.timedelta):
        return lambda o: o.total_seconds()
    if issubclass(t, enum.Enum):
        return lambda o: o.value
    if issubclass(t, (decimal.Decimal, uuid.UUID, PurePath)):
        return str
    if issubclass(t, (bytes, bytearray, memoryview)):
        return _b64
    if issubclass(t, (set, frozenset)):
        return _set
    if issubclass(t, Mapping):
        return dict
    if issubclass(t, (types.GeneratorType, range)) or name == "deque":
        return list
    return _unsupported


_fast = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_step).encode


# -- slow path: rebuild as plain JSON, with a path for errors ------------------------------------

_MAX_DEPTH = 200


def _plain(o: Any, path: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:  # circular (json's own check already failed), or absurdly deep
        raise Unserializable(f"the result is circular or nested too deeply at {path[:200]}...")
    t = type(o)
    if t is str or t is int or t is bool or o is None:
        return o
    if isinstance(o, float):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, (str, int)) and not isinstance(o, enum.Enum):
        return o
    if isinstance(o, dict):
        return {_key(k, path): _plain(v, f"{path}[{k!r}]", depth + 1) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(o)]
    try:
        stepped = _step(o)
    except Unserializable as e:
        raise Unserializable(f"{e} (at {path})") from None
    except Exception as e:  # a converter of the model's own type blew up
        raise Unserializable(
            f"converting {_type_name(t)} to JSON failed at {path}: {type(e).__name__}: {e}"
        ) from None
    return _plain(stepped, path, depth + 1)


def _key(k: Any, path: str) -> str:
    if isinstance(k, str):
        return str(k)
    if isinstance(k, bool):
        return "true" if k else "false"
    if k is None:
        return "null"
    if isinstance(k, (int, float)) and not isinstance(k, enum.Enum):
        return str(k) if not isinstance(k, float) else repr(float(k))
    plain = _plain(k, path, 0)
    return plain if isinstance(plain, str) else json.dumps(plain, separators=(",", ":"))
