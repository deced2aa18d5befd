"""Type-hint plumbing shared by schema.py and validate.py: classify a hint without importing
any third-party library (pydantic, numpy... are recognised by duck typing). Standard library only.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

NoneType = type(None)
_UnionType = getattr(types, "UnionType", None)  # X | Y, Python >= 3.10

# typing.Required / NotRequired (3.11+) and typing_extensions' copies: markers on TypedDict
# keys; the required-ness itself comes from __required_keys__, so the wrapper is just stripped.
_KEY_MARKERS = {"Required", "NotRequired", "ReadOnly"}


class Param(NamedTuple):
    name: str
    hint: Any  # typing.Any when unannotated or unresolvable
    required: bool
    kind: Any  # inspect.Parameter kind


def strip(hint: Any) -> Any:
    """Annotated[T, ...] -> T; Required[T] / NotRequired[T] -> T."""
    while True:
        if hasattr(hint, "__metadata__") and hasattr(hint, "__origin__"):  # Annotated
            hint = hint.__origin__
            continue
        origin = typing.get_origin(hint)
        if origin is not None and getattr(origin, "_name", None) in _KEY_MARKERS:
            hint = typing.get_args(hint)[0]
            continue
        return hint


def is_union(origin: Any) -> bool:
    return origin is typing.Union or (_UnionType is not None and origin is _UnionType)


def is_literal(origin: Any) -> bool:
    return origin is typing.Literal or getattr(origin, "_name", None) == "Literal"


def is_typeddict(tp: Any) -> bool:
    return (
        isinstance(tp, type)
        and issubclass(tp, dict)
        and hasattr(tp, "__total__")
        and hasattr(tp, "__required_keys__")
    )


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def pydantic_version(tp: Any) -> int:
    """2 for a pydantic v2 model class, 1 for a v1 model class (incl. pydantic.v1), else 0."""
    if not isinstance(tp, type):
        return 0
    if hasattr(tp, "model_validate") and hasattr(tp, "model_json_schema"):
        return 2
    if hasattr(tp, "parse_obj") and hasattr(tp, "__fields__") and hasattr(tp, "schema"):
        return 1
    return 0


def is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def type_hints(obj: Any) -> dict:
    """get_type_hints with extras; on failure (a forward ref that does not resolve...) fall back
    to whatever annotations evaluate one by one, and Any for the rest. Never raises."""
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:
        pass
    raw = getattr(obj, "__annotations__", None) or {}
    if isinstance(obj, type):
        module = sys.modules.get(getattr(obj, "__module__", ""), None)
        globalns = dict(vars(module)) if module else {}
    else:
        globalns = dict(getattr(obj, "__globals__", {}) or {})
    out = {}
    for name, ann in dict(raw).items():
        if isinstance(ann, str):
            try:
                ann = eval(ann, globalns)  # noqa: S307 - the model's own annotation, in its module
            except Exception:
                ann = Any
        out[name] = ann
    return out


def predict_params(func: Callable, *, skip_first: bool) -> Tuple[List[Param], Any]:
    """(parameters after self, return hint) of the model's predict. Never raises."""
    hints = type_hints(getattr(func, "__func__", func))
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return [Param("x", Any, True, inspect.Parameter.POSITIONAL_OR_KEYWORD)], Any
    if skip_first and params:
        params = params[1:]
    out = [
        Param(p.name, hints.get(p.name, Any), p.default is inspect.Parameter.empty, p.kind)
        for p in params
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    return out, hints.get("return", Any)


def single_input(params: List[Param]) -> bool:
    """True when the request body *is* predict's one argument (not an object of arguments)."""
    return len(params) == 1 and (
        params[0].kind is not inspect.Parameter.KEYWORD_ONLY
    )


def optional_inner(hint: Any) -> Optional[Any]:
    """T for Optional[T] (exactly one non-None member), else None."""
    origin = typing.get_origin(hint)
    if not is_union(origin):
        return None
    args = [a for a in typing.get_args(hint) if a is not NoneType]
    if len(args) == 1 and len(typing.get_args(hint)) == 2:
        return args[0]
    return None
