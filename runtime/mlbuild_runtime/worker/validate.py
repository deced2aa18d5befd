"""Request validation: the input hint, compiled once into a converter. Standard library only.

A converter is ``conv(value, loc, errors) -> converted`` over parsed JSON. It appends
FastAPI-style error entries (``{"loc": [...], "msg", "type"}``) instead of raising, so one
request reports every problem at once. Hints that accept anything compile to ``None``
("identity"), and containers of those only type-check, so the common cases copy nothing.

Conversions: JSON object -> dataclass / TypedDict / pydantic model (v1 ``parse_obj``, v2
``model_validate``, recognised by duck typing); list -> tuple / set / NamedTuple; ISO string ->
datetime/date/time; string -> UUID / Decimal / bytes (base64); value -> Enum member; list ->
numpy array and records/columns -> pandas DataFrame when the hint asks for them (numpy/pandas
are taken from sys.modules, where the model's own import put them). bool is never an int;
an int is accepted for a float.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import decimal
import enum
import inspect
import sys
import typing
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import hints as H

__all__ = ["InvalidInput", "compile_input", "compile_hint"]

Conv = Optional[Callable[[Any, tuple, list], Any]]  # None = identity


class InvalidInput(Exception):
    """The request body does not match the input hint; ``detail`` is the 422 error list."""

    def __init__(self, detail: List[dict]) -> None:
        super().__init__(detail[0]["msg"] if detail else "invalid input")
        self.detail = detail


def _err(errors: list, loc: tuple, msg: str, kind: str) -> None:
    errors.append({"loc": list(loc), "msg": msg, "type": kind})


_BAD = object()  # returned by a converter after it recorded an error


def compile_hint(hint: Any) -> Callable[[Any], Any]:
    """A function body -> converted value that raises InvalidInput (loc starts with "body")."""
    conv = _Compiler().compile(hint)
    if conv is None:
        return _identity
    return _root(conv, ("body",))


def compile_input(params: List[H.Param]) -> Callable[[Any], Tuple[tuple, dict]]:
    """A function body -> (args, kwargs) for predict, raising InvalidInput."""
    if not params:
        return lambda body: ((), {})
    compiler = _Compiler()
    if H.single_input(params):
        one = compile_hint(params[0].hint)
        return lambda body: ((one(body),), {})
    fields = []
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        fields.append((p.name, compiler.compile(p.hint), p.required,
                       p.kind is inspect.Parameter.POSITIONAL_ONLY))
    names = {f[0] for f in fields}
    loc0 = ("body",)

    def convert(body: Any) -> Tuple[tuple, dict]:
        if type(body) is not dict:
            raise InvalidInput([{"loc": ["body"], "msg": "Input should be a valid dictionary "
                                 "with one key per argument of predict", "type": "dict_type"}])
        errors: list = []
        args: list = []
        kwargs: dict = {}
        for name, conv, required, positional in fields:
            if name in body:
                value = body[name]
                if conv is not None:
                    value = conv(value, loc0 + (name,), errors)
            elif required:
                _err(errors, loc0 + (name,), "Field required", "missing")
                continue
            else:
                continue
            if positional:
                args.append(value)
            else:
                kwargs[name] = value
        for key in body:
            if key not in names:
                _err(errors, loc0 + (key,), "Extra inputs are not permitted", "extra_forbidden")
        if errors:
            raise InvalidInput(errors)
        return tuple(args), kwargs

    return convert


def _identity(body: Any) -> Any:
    return body


def _root(conv: Callable, loc: tuple) -> Callable[[Any], Any]:
    def convert(body: Any) -> Any:
        errors: list = []
        value = conv(body, loc, errors)
        if errors:
            raise InvalidInput(errors)
        return value

    return convert


# -- scalars -------------------------------------------------------------------------------------

def _bool(v, loc, errors):
    if type(v) is bool:
        return v
    _err(errors, loc, "Input should be a valid boolean", "bool_type")
    return _BAD


def _int(v, loc, errors):
    t = type(v)
    if t is int:
        return v
    if t is float and v.is_integer():
        return int(v)
    _err(errors, loc, "Input should be a valid integer", "int_type")
    return _BAD


def _float(v, loc, errors):
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    _err(errors, loc, "Input should be a valid number", "float_type")
    return _BAD


def _str(v, loc, errors):
    if type(v) is str:
        return v
    _err(errors, loc, "Input should be a valid string", "string_type")
    return _BAD


def _none(v, loc, errors):
    if v is None:
        return None
    _err(errors, loc, "Input should be None", "none_required")
    return _BAD


def _bytes(v, loc, errors):
    if type(v) is str:
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            pass
    _err(errors, loc, "Input should be a base64-encoded string", "bytes_type")
    return _BAD


def _from_string(parse: Callable, kind: str, what: str) -> Callable:
    def conv(v, loc, errors):
        if type(v) is str:
            try:
                return parse(v)
            except (ValueError, TypeError):
                pass
        _err(errors, loc, f"Input should be a valid {what}", kind)
        return _BAD

    return conv


def _iso(cls: Any) -> Callable[[str], Any]:
    def parse(s: str):
        if s.endswith(("Z", "z")):  # fromisoformat only learnt 'Z' in 3.11
            s = s[:-1] + "+00:00"
        return cls.fromisoformat(s)

    return parse


def _decimal(v, loc, errors):
    if type(v) in (int, float, str):
        try:
            out = decimal.Decimal(str(v))
            if out.is_finite():
                return out
        except decimal.InvalidOperation:
            pass
    _err(errors, loc, "Input should be a valid decimal", "decimal_parsing")
    return _BAD


_SCALAR_CONVS: Dict[Any, Callable] = {
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
    bytes: _bytes,
    datetime.datetime: _from_string(_iso(datetime.datetime), "datetime_parsing", "datetime"),
    datetime.date: _from_string(_iso(datetime.date), "date_parsing", "date"),
    datetime.time: _from_string(_iso(datetime.time), "time_parsing", "time"),
    uuid.UUID: _from_string(uuid.UUID, "uuid_parsing", "UUID"),
    decimal.Decimal: _decimal,
}
_ALL_OF_TYPE = {_int: int, _float: float, _str: str, _bool: bool}


# -- the compiler --------------------------------------------------------------------------------

class _Compiler:
    def __init__(self) -> None:
        self.memo: Dict[Any, Callable] = {}  # named classes, so recursive types terminate

    def compile(self, hint: Any) -> Conv:
        try:
            return self._compile(hint)
        except Exception:  # a hint we cannot read accepts anything rather than break serving
            return None

    def _compile(self, hint: Any) -> Conv:
        hint = H.strip(hint)
        if hint is Any or hint is object or hint is inspect.Parameter.empty:
            return None
        if hint is None or hint is H.NoneType:
            return _none
        if isinstance(hint, typing.TypeVar):
            return self._compile(hint.__bound__) if hint.__bound__ is not None else None
        origin = typing.get_origin(hint)
        if origin is None:
            return self._class(hint) if isinstance(hint, type) else None
        args = typing.get_args(hint)
        name = getattr(origin, "__name__", "")
        if H.is_union(origin):
            return self._union(args)
        if H.is_literal(origin):
            return _literal(args)
        if origin is list or name in ("Sequence", "MutableSequence", "Iterable", "Collection"):
            return _list(self.compile(args[0]) if args else None)
        if origin in (set, frozenset) or name in ("Set", "AbstractSet", "MutableSet"):
            return _set(self.compile(args[0]) if args else None,
                        frozenset if origin is frozenset else set)
        if origin is tuple:
            return self._tuple(args)
        if origin is dict or name in ("Mapping", "MutableMapping"):
            return _dict(self.compile(args[0]) if args else None,
                         self.compile(args[1]) if len(args) == 2 else None)
        return None

    def _class(self, cls: type) -> Conv:
        if cls in self.memo:
            return self.memo[cls]
        if issubclass(cls, enum.Enum):
            return _enum(cls)
        if cls in _SCALAR_CONVS:
            return _SCALAR_CONVS[cls]
        if cls is list:
            return _list(None)
        if cls is tuple:
            return _tuple_any
        if cls in (set, frozenset):
            return _set(None, cls)
        if cls is dict:
            return _dict(None, None)
        version = H.pydantic_version(cls)
        if version:
            return _pydantic(cls, version)
        if H.is_typeddict(cls) or H.is_dataclass_type(cls) or H.is_namedtuple(cls):
            return self._named(cls)
        full = cls.__module__.split(".")[0] + "." + cls.__name__
        if full == "numpy.ndarray":
            return _via_module("numpy", "asarray", "array", (list,))
        if full == "pandas.DataFrame":
            return _via_module("pandas", "DataFrame", "table (a list of records or an object "
                               "of columns)", (list, dict))
        if full == "pandas.Series":
            return _via_module("pandas", "Series", "list or object", (list, dict))
        for base in (bool, int, float, str):  # user subclass of a scalar: check, then wrap
            if issubclass(cls, base):
                inner = _SCALAR_CONVS[base]

                def sub(v, loc, errors, _inner=inner, _cls=cls):
                    v = _inner(v, loc, errors)
                    return _BAD if v is _BAD else _cls(v)

                return sub
        return None  # a class JSON cannot describe: hand the raw value through

    def _union(self, args: tuple) -> Conv:
        members = [(a, self.compile(a)) for a in args]
        if any(c is None for _, c in members):
            return None
        has_none = any(H.strip(a) in (None, H.NoneType) for a, _ in members)
        others = [(a, c) for a, c in members if H.strip(a) not in (None, H.NoneType)]
        if has_none and len(others) == 1:  # Optional[T]: T's own errors are the useful ones
            inner = others[0][1]

            def optional(v, loc, errors):
                return None if v is None else inner(v, loc, errors)

            return optional
        # An exact JSON type match wins first (so Union[float, int] keeps 3 an int), then the
        # members are tried left to right, like pydantic's "smart" mode in the common cases.
        exact = {}
        for _a, c in members:
            t = _ALL_OF_TYPE.get(c)
            if t is not None:
                exact.setdefault(t, c)
        labels = [_label(a) for a, _ in members]
        convs = [c for _, c in members]

        def union(v, loc, errors):
            c = exact.get(type(v))
            if c is not None:
                return v
            if v is None and has_none:
                return None
            trial_errors: List[list] = []
            for conv in convs:
                trial: list = []
                out = conv(v, loc, trial)
                if not trial:
                    return out
                trial_errors.append(trial)
            for label, trial in zip(labels, trial_errors):
                for e in trial:
                    e["loc"] = list(loc) + [label] + e["loc"][len(loc):]
                    errors.append(e)
            return _BAD

        return union

    def _tuple(self, args: tuple) -> Conv:
        if not args:
            return _tuple_any
        if len(args) == 2 and args[1] is Ellipsis:
            return _list(self.compile(args[0]), tuple)
        if args == ((),):
            args = ()
        return _fixed_tuple([self.compile(a) for a in args], tuple)

    def _named(self, cls: type) -> Conv:
        cell: list = []

        def forward(v, loc, errors):
            return cell[0](v, loc, errors)

        self.memo[cls] = forward  # a recursive reference resolves through the cell
        hints = H.type_hints(cls)
        if H.is_namedtuple(cls):
            convs = [self.compile(hints.get(f, Any)) for f in cls._fields]
            conv = _fixed_tuple(convs, cls, min_items=len(cls._fields) - len(cls._field_defaults))
        elif H.is_typeddict(cls):
            fields = [(k, self.compile(h), k in cls.__required_keys__) for k, h in hints.items()]
            conv = _record(fields, None)
        else:
            fields = []
            for f in dataclasses.fields(cls):
                if not f.init:
                    continue
                required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                fields.append((f.name, self.compile(hints.get(f.name, Any)), required))
            conv = _record(fields, cls)
        cell.append(conv)
        self.memo[cls] = conv
        return conv


def _label(hint: Any) -> str:
    hint = H.strip(hint)
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


# -- containers ----------------------------------------------------------------------------------

def _list(item: Conv, build: Callable = list) -> Callable:
    same_type = _ALL_OF_TYPE.get(item)

    def conv(v, loc, errors):
        if type(v) is not list:
            _err(errors, loc, "Input should be a valid list", "list_type")
            return _BAD
        if item is None:
            return v if build is list else build(v)
        if same_type is not None:  # fast path: a list already all of the right scalar type
            for x in v:
                if type(x) is not same_type:
                    break
            else:
                return v if build is list else build(v)
        out = [item(x, loc + (i,), errors) for i, x in enumerate(v)]
        return out if build is list else build(out)

    return conv


def _tuple_any(v, loc, errors):
    if type(v) is not list:
        _err(errors, loc, "Input should be a valid array", "tuple_type")
        return _BAD
    return tuple(v)


def _fixed_tuple(items: List[Conv], build: Callable, min_items: Optional[int] = None) -> Callable:
    n = len(items)
    lo = n if min_items is None else min_items

    def conv(v, loc, errors):
        if type(v) is not list:
            _err(errors, loc, "Input should be a valid array", "tuple_type")
            return _BAD
        if not lo <= len(v) <= n:
            want = f"{n}" if lo == n else f"{lo} to {n}"
            _err(errors, loc, f"Array should have {want} items, not {len(v)}", "too_short"
                 if len(v) < lo else "too_long")
            return _BAD
        out = [x if c is None else c(x, loc + (i,), errors) for i, (c, x) in enumerate(zip(items, v))]
        return build(*out) if build is not tuple else tuple(out)

    return conv


def _set(item: Conv, build: Callable) -> Callable:
    inner = _list(item)

    def conv(v, loc, errors):
        out = inner(v, loc, errors)
        if out is _BAD:
            return _BAD
        try:
            return build(out)
        except TypeError:
            _err(errors, loc, "Set items should be hashable (not arrays or objects)", "set_type")
            return _BAD

    return conv


def _dict(key: Conv, value: Conv) -> Callable:
    if key is _str:
        key = None  # JSON keys are always strings

    def conv(v, loc, errors):
        if type(v) is not dict:
            _err(errors, loc, "Input should be a valid dictionary", "dict_type")
            return _BAD
        if key is None and value is None:
            return v
        out = {}
        for k, x in v.items():
            kl = loc + (k,)
            if key is not None:
                k = key(_key_to_int(k) if key is _int else k, kl, errors)
            out[k] = x if value is None else value(x, kl, errors)
        return out

    return conv


def _key_to_int(k: str) -> Any:
    try:
        return int(k)
    except ValueError:
        return k


def _record(fields: List[Tuple[str, Conv, bool]], build: Optional[type]) -> Callable:
    """A JSON object with known keys -> a dict (TypedDict) or ``build(**kwargs)`` (dataclass)."""
    known = {name for name, _, _ in fields}

    def conv(v, loc, errors):
        if type(v) is not dict:
            _err(errors, loc, "Input should be a valid dictionary or object", "dict_type")
            return _BAD
        before = len(errors)
        out = {}
        for name, c, required in fields:
            if name in v:
                out[name] = v[name] if c is None else c(v[name], loc + (name,), errors)
            elif required:
                _err(errors, loc + (name,), "Field required", "missing")
        if len(v) > len(out):
            for k in v:
                if k not in known:
                    _err(errors, loc + (k,), "Extra inputs are not permitted", "extra_forbidden")
        if len(errors) > before or build is None:
            return out
        try:
            return build(**out)
        except (ValueError, TypeError, AssertionError) as e:  # __post_init__ checks
            _err(errors, loc, f"Value error, {e}", "value_error")
            return _BAD

    return conv


def _literal(values: tuple) -> Callable:
    allowed = [(v.value, v) if isinstance(v, enum.Enum) else (v, v) for v in values]
    shown = " or ".join(repr(a) for a, _ in allowed)

    def conv(v, loc, errors):
        for raw, out in allowed:
            if v == raw and type(v) is type(raw):
                return out
        _err(errors, loc, f"Input should be {shown}", "literal_error")
        return _BAD

    return conv


def _enum(cls: type) -> Callable:
    shown = " or ".join(repr(m.value) for m in cls)

    def conv(v, loc, errors):
        if type(v) in (str, int, float, bool) or v is None:
            try:
                return cls(v)
            except ValueError:
                pass
        _err(errors, loc, f"Input should be {shown}", "enum")
        return _BAD

    return conv


def _pydantic(cls: type, version: int) -> Callable:
    parse = cls.model_validate if version == 2 else cls.parse_obj

    def conv(v, loc, errors):
        try:
            return parse(v)
        except Exception as e:  # pydantic's ValidationError, found by its errors() method
            details = getattr(e, "errors", None)
            if not callable(details):
                raise
            for d in details():
                errors.append({
                    "loc": list(loc) + [x if isinstance(x, (str, int)) else str(x)
                                        for x in d.get("loc", ())],
                    "msg": str(d.get("msg", "")),
                    "type": str(d.get("type", "value_error")),
                })
            return _BAD

    return conv


def _via_module(module: str, attr: str, what: str, accepted: tuple) -> Callable:
    def conv(v, loc, errors):
        if type(v) in accepted:
            try:
                return getattr(sys.modules[module], attr)(v)
            except Exception as e:  # ragged arrays, mixed columns...
                _err(errors, loc, f"Value error, {e}", "value_error")
                return _BAD
        _err(errors, loc, f"Input should be a {what}", "type_error")
        return _BAD

    return conv
