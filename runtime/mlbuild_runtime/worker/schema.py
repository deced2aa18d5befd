"""Type hints -> JSON Schema (draft 2020-12, as OpenAPI 3.1 takes it). Standard library only.

Dataclasses, TypedDicts, NamedTuples and pydantic models (v1 or v2, recognised by duck typing,
never imported) are built once into ``$defs`` and then *inlined* wherever that is possible, so
the schema can be pasted anywhere in an OpenAPI document without rewriting refs. Only
recursive types stay as ``{"$ref": "#/$defs/Name"}`` with ``$defs`` at the schema's root.

Anything this module cannot describe becomes ``{}`` ("any JSON"); it never raises.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import enum
import inspect
import typing
import uuid
from typing import Any, Dict, List

from . import hints as H

__all__ = ["input_schema", "output_schema", "hint_schema"]

_REF = "#/$defs/"

_SCALARS = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bytes: {"type": "string", "contentEncoding": "base64"},
    bytearray: {"type": "string", "contentEncoding": "base64"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"},
    uuid.UUID: {"type": "string", "format": "uuid"},
}

_ARRAY_ORIGINS = {list, typing.List}
_SEQUENCE_NAMES = {"Sequence", "MutableSequence", "Iterable", "Collection", "Iterator",
                   "Generator", "deque"}
_SET_ORIGINS = {set, frozenset}
_MAPPING_NAMES = {"Mapping", "MutableMapping", "OrderedDict", "defaultdict"}


def input_schema(params: List[H.Param]) -> dict:
    """Schema of the request body for predict's parameters (after self)."""
    builder = _Builder("input")
    if not params:
        return {}
    if H.single_input(params):
        root = builder.schema(params[0].hint)
    else:
        props = {}
        required = []
        for p in params:
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            props[p.name] = builder.schema(p.hint)
            if p.required:
                required.append(p.name)
        root = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            root["required"] = required
    return builder.finish(root)


def output_schema(return_hint: Any) -> dict:
    """Schema of predict's result, from its return hint."""
    builder = _Builder("output")
    return builder.finish(builder.schema(return_hint))


def hint_schema(hint: Any, mode: str = "input") -> dict:
    """Schema of one type hint as a self-contained document."""
    builder = _Builder(mode)
    return builder.finish(builder.schema(hint))


class _Builder:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.defs: Dict[str, dict] = {}
        self.names: Dict[Any, str] = {}  # class -> its $defs name

    # -- public steps ------------------------------------------------------------------------
    def schema(self, hint: Any) -> dict:
        try:
            return self._schema(hint)
        except Exception:  # an exotic hint must not stop the worker from serving
            return {}

    def finish(self, root: dict) -> dict:
        return _inline(root, self.defs)

    # -- dispatch ----------------------------------------------------------------------------
    def _schema(self, hint: Any) -> dict:
        hint = H.strip(hint)
        if hint is Any or hint is object or hint is inspect.Parameter.empty:
            return {}
        if hint is None or hint is H.NoneType:
            return {"type": "null"}
        if isinstance(hint, typing.TypeVar):
            bound = hint.__bound__
            return self._schema(bound) if bound is not None else {}
        origin = typing.get_origin(hint)
        if origin is None:
            # (checked after get_origin: on 3.9/3.10 list[int] passes isinstance(x, type))
            return self._class(hint) if isinstance(hint, type) else {}
        args = typing.get_args(hint)
        if H.is_union(origin):
            members = [self._schema(a) for a in args]
            return {"anyOf": members} if all(members) else {}
        if H.is_literal(origin):
            return _literal(args)
        if origin in _ARRAY_ORIGINS or getattr(origin, "__name__", "") in _SEQUENCE_NAMES:
            return self._array(args[0] if args else Any)
        if origin in _SET_ORIGINS or getattr(origin, "__name__", "") in ("Set", "AbstractSet", "MutableSet"):
            out = self._array(args[0] if args else Any)
            out["uniqueItems"] = True
            return out
        if origin is tuple:
            return self._tuple(args)
        if origin is dict or getattr(origin, "__name__", "") in _MAPPING_NAMES:
            value = self._schema(args[1]) if len(args) == 2 else {}
            out = {"type": "object"}
            if value:
                out["additionalProperties"] = value
            return out
        if origin is type:
            return {}
        return {}

    def _class(self, cls: type) -> dict:
        if issubclass(cls, enum.Enum):
            values = [m.value for m in cls]
            out = {"title": cls.__name__, "enum": values}
            kinds = {_json_type(v) for v in values}
            if len(kinds) == 1 and None not in kinds:
                out["type"] = kinds.pop()
            return out
        if cls in _SCALARS:
            return dict(_SCALARS[cls])
        if cls is decimal.Decimal:
            if self.mode == "output":
                return {"type": "string", "format": "decimal"}
            return {"anyOf": [{"type": "number"}, {"type": "string", "format": "decimal"}]}
        if cls in (list, tuple, set, frozenset):
            return {"type": "array"} if cls in (list, tuple) else {"type": "array", "uniqueItems": True}
        if cls is dict:
            return {"type": "object"}
        if H.pydantic_version(cls):
            return self._pydantic(cls)
        if H.is_typeddict(cls) or H.is_dataclass_type(cls) or H.is_namedtuple(cls):
            return self._named(cls)
        for base in (int, float, str, bool):  # a user subclass of a scalar
            if issubclass(cls, base):
                return dict(_SCALARS[base])
        name = cls.__module__.split(".")[0] + "." + cls.__name__
        if name == "numpy.ndarray":
            return {"type": "array"}
        if name == "pandas.DataFrame":
            records = {"type": "array", "items": {"type": "object"}}
            if self.mode == "output":
                return records
            return {"anyOf": [records, {"type": "object"}]}
        if name == "pandas.Series":
            return {"anyOf": [{"type": "array"}, {"type": "object"}]}
        return {}

    def _array(self, item: Any) -> dict:
        out = {"type": "array"}
        items = self._schema(item)
        if items:
            out["items"] = items
        return out

    def _tuple(self, args: tuple) -> dict:
        if not args:
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return self._array(args[0])
        if args == ((),):  # Tuple[()]
            return {"type": "array", "maxItems": 0}
        return {
            "type": "array",
            "prefixItems": [self._schema(a) for a in args],
            "minItems": len(args),
            "maxItems": len(args),
        }

    # -- named types go to $defs -------------------------------------------------------------
    def _ref_name(self, cls: type) -> str:
        name = getattr(cls, "__name__", "Model")
        base, n = name, 2
        while name in self.defs or name in self.names.values():
            name = f"{base}{n}"
            n += 1
        return name

    def _named(self, cls: type) -> dict:
        if cls in self.names:
            return {"$ref": _REF + self.names[cls]}
        name = self._ref_name(cls)
        self.names[cls] = name
        self.defs[name] = {}  # placeholder: a recursive reference finds the name
        hints = H.type_hints(cls)
        props: Dict[str, dict] = {}
        required: List[str] = []
        if H.is_typeddict(cls):
            for key, hint in hints.items():
                props[key] = self.schema(hint)
            required = [k for k in hints if k in cls.__required_keys__]
        elif H.is_dataclass_type(cls):
            for f in dataclasses.fields(cls):
                if self.mode == "input" and not f.init:
                    continue
                props[f.name] = self.schema(hints.get(f.name, Any))
                has_default = not (
                    f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                )
                if self.mode == "output" or not has_default:
                    required.append(f.name)
                elif _json_type(f.default) is not None or f.default is None:
                    props[f.name] = dict(props[f.name], default=f.default)
        else:  # NamedTuple: an array with one item per field
            fields = list(cls._fields)
            defaults = getattr(cls, "_field_defaults", {})
            self.defs[name] = {
                "title": cls.__name__,
                "type": "array",
                "prefixItems": [self.schema(hints.get(f, Any)) for f in fields],
                "minItems": len([f for f in fields if f not in defaults]),
                "maxItems": len(fields),
            }
            return {"$ref": _REF + name}
        body = {"title": cls.__name__, "type": "object", "properties": props,
                "additionalProperties": False}
        if required:
            body["required"] = required
        self.defs[name] = body
        return {"$ref": _REF + name}

    def _pydantic(self, cls: type) -> dict:
        if cls in self.names:
            return {"$ref": _REF + self.names[cls]}
        template = _REF + "{model}"
        if H.pydantic_version(cls) == 2:
            mode = "serialization" if self.mode == "output" else "validation"
            doc = cls.model_json_schema(ref_template=template, mode=mode)
            nested = doc.pop("$defs", {})
        else:
            doc = cls.schema(ref_template=template)
            nested = doc.pop("definitions", {})
        doc = copy.deepcopy(doc)
        for key, value in nested.items():  # the same class twice gives the same body
            self.defs.setdefault(key, value)
        name = cls.__name__ if cls.__name__ not in self.defs else self._ref_name(cls)
        self.names[cls] = name
        self.defs[name] = doc
        return {"$ref": _REF + name}


def _json_type(value: Any):
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _literal(values: tuple) -> dict:
    flat: List[Any] = []
    for v in values:
        flat.append(v.value if isinstance(v, enum.Enum) else v)
    out: Dict[str, Any] = {"const": flat[0]} if len(flat) == 1 else {"enum": flat}
    kinds = {_json_type(v) for v in flat}
    if len(kinds) == 1:
        kind = kinds.pop()
        out["type"] = kind if kind is not None else "null"
    return out


# -- inlining ----------------------------------------------------------------------------------

def _refs_in(node: Any, out: set) -> set:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            out.add(ref[len(_REF):])
        for v in node.values():
            _refs_in(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs_in(v, out)
    return out


def _recursive_names(defs: Dict[str, dict]) -> set:
    """Names of defs that can reach themselves through refs (these cannot be inlined)."""
    edges = {name: _refs_in(body, set()) for name, body in defs.items()}
    cyclic = set()
    for start in defs:
        seen, stack = set(), list(edges.get(start, ()))
        while stack:
            n = stack.pop()
            if n == start:
                cyclic.add(start)
                break
            if n in seen:
                continue
            seen.add(n)
            stack.extend(edges.get(n, ()))
    return cyclic


def _inline(root: dict, defs: Dict[str, dict]) -> dict:
    if not defs:
        return root
    keep = _recursive_names(defs)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF) and ref[len(_REF):] not in keep:
                target = ref[len(_REF):]
                body = walk(copy.deepcopy(defs.get(target, {})))
                siblings = {k: walk(v) for k, v in node.items() if k != "$ref"}
                body.update(siblings)
                return body
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(root)
    if keep:
        # Only the recursive defs (and whatever they still reference) remain.
        needed = set()
        frontier = _refs_in(out, set())
        while frontier:
            n = frontier.pop()
            if n in needed or n not in defs:
                continue
            needed.add(n)
            frontier |= _refs_in(defs[n], set())
        if needed:
            out = dict(out)
            out["$defs"] = {n: walk(defs[n]) for n in sorted(needed)}
    return out
