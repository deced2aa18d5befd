"""Write the predict.py that serves a pickled object (templates/predict_pickle.py.j2).

The generated file must run in the model env, where mlbuild is not installed: it imports only
the standard library and cloudpickle. Its ``predict`` carries the object's own type hints when
they are made of builtins and ``typing`` constructs only, because those can be written as
source text that imports nothing; anything else (``np.ndarray``, a pandas frame, a user class)
leaves the parameter untyped rather than drag an import into the file.
"""

from __future__ import annotations

import inspect
import keyword
import types
import typing
from dataclasses import dataclass

import jinja2

from .._errors import SaveError
from .._resources import templates_dir  # the one lookup: templates/ in a checkout, in the wheel

__all__ = ["Entry", "describe_entry", "render_annotation", "render_predict"]

_PLAIN = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict",
          tuple: "tuple", type(None): "None"}
_GENERIC = {list: "list", dict: "dict", tuple: "tuple"}
_LITERAL_TYPES = (str, int, bool, type(None))


@dataclass(frozen=True)
class Entry:
    """How the generated predict.py reaches the object's prediction code."""

    method: str  # "predict" or "__call__"
    is_async: bool
    param: str  # the input parameter's name
    input_annotation: str | None  # source text, or None for untyped
    output_annotation: str | None


def render_annotation(tp: object) -> str | None:
    """Source text for a builtins/typing-only annotation; None when it uses anything else."""
    if tp is None:
        return "None"
    if tp is typing.Any:
        return "typing.Any"
    if isinstance(tp, type) and tp in _PLAIN:
        return _PLAIN[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None:
        return None
    if origin is typing.Literal:
        if all(type(a) in _LITERAL_TYPES for a in args):
            return "typing.Literal[" + ", ".join(repr(a) for a in args) + "]"
        return None
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        parts = [render_annotation(a) for a in args]
        if None in parts:
            return None
        return "typing.Union[" + ", ".join(parts) + "]"  # type: ignore[arg-type]
    if origin in _GENERIC:
        parts = ["..." if a is Ellipsis else render_annotation(a) for a in args]
        if None in parts:
            return None
        return _GENERIC[origin] + ("[" + ", ".join(parts) + "]" if parts else "")  # type: ignore[arg-type]
    return None


def _callable_target(obj: object) -> tuple[str, typing.Callable]:
    if isinstance(obj, type):
        raise SaveError(
            f"mlbuild.save() got the class {obj.__qualname__}, not an instance",
            hint=f"pass a fitted instance, e.g. mlbuild.save({obj.__name__}(...), path)",
        )
    method = getattr(obj, "predict", None)
    if callable(method):
        return "predict", method
    if callable(obj):
        return "__call__", obj
    raise SaveError(
        f"mlbuild.save(): a {type(obj).__qualname__} object has no predict() method and is not callable",
        hint="save an object with a predict(x) method, or a function of one argument",
    )


def describe_entry(obj: object) -> Entry:
    """Check that ``obj`` can be served as ``predict(x)`` and read its hints."""
    name, target = _callable_target(obj)
    label = f"{type(obj).__qualname__}.{name}" if name == "predict" else getattr(obj, "__qualname__", name)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None  # builtins without a signature: call with one argument, untyped
    param, hints_for = "x", None
    if signature is not None:
        positional = [
            p for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        has_varargs = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
        required = [p for p in positional if p.default is p.empty]
        required_kw = [
            p.name for p in signature.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty
        ]
        if len(required) > 1 or required_kw:
            extra = [p.name for p in required[1:]] + required_kw
            raise SaveError(
                f"mlbuild.save(): {label}() needs more than one argument ({', '.join(extra)})",
                hint="the server calls predict(x) with one input; give the other arguments defaults "
                "or wrap the object in a class whose predict(x) supplies them",
            )
        if not positional and not has_varargs:
            raise SaveError(
                f"mlbuild.save(): {label}() takes no input argument",
                hint="the server calls predict(x) with the request's JSON body as x",
            )
        if positional and positional[0].name.isidentifier() and not keyword.iskeyword(positional[0].name) \
                and positional[0].name != "self":
            param = positional[0].name
            hints_for = positional[0].name
    func = getattr(target, "__func__", target)
    if not inspect.isroutine(func):  # a callable instance: what runs is its class's __call__
        func = type(func).__call__
    is_async = inspect.iscoroutinefunction(func)
    hints: dict[str, object] = {}
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: leave untyped
        hints = {}
    input_annotation = render_annotation(hints[hints_for]) if hints_for in hints else None
    output_annotation = render_annotation(hints["return"]) if "return" in hints else None
    return Entry(name, is_async, param, input_annotation, output_annotation)


def render_predict(
    entry: Entry,
    *,
    object_path: str,
    payload_name: str,
    payload_sha256: str,
    python: str,
    cloudpickle_version: str,
    mlbuild_version: str,
) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - Python source, not HTML
    )
    annotations = [a for a in (entry.input_annotation, entry.output_annotation) if a]
    return env.get_template("predict_pickle.py.j2").render(
        entry=entry,
        object_path=object_path,
        payload_name=payload_name,
        payload_sha256=payload_sha256,
        python=python,
        cloudpickle_version=cloudpickle_version,
        mlbuild_version=mlbuild_version,
        needs_typing=any("typing." in a for a in annotations),
    )
