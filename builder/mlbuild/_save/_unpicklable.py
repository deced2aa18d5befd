"""Find *where* an object stops being picklable.

``cloudpickle.dumps`` says "cannot pickle '_io.TextIOWrapper' object" but not which of the
model's thousand attributes holds the open file. We descend from the root, trying each child
(``__dict__`` and ``__slots__`` attributes, list/tuple items, dict values) and following the
first one that fails on its own, until a node fails while all its children pickle: that node
is the culprit, named by the path we took (``model.steps[1][1].cache_file``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cloudpickle

__all__ = ["Unpicklable", "find_unpicklable"]

# Deep enough for real pipelines; bounded so a pathological self-similar structure cannot loop.
_MAX_DEPTH = 64


@dataclass(frozen=True)
class Unpicklable:
    path: str  # e.g. "model.steps[1][1].cache_file"
    type_name: str  # type of the failing leaf, e.g. "_io.TextIOWrapper"
    error: BaseException


def _pickle_error(obj: object) -> BaseException | None:
    try:
        cloudpickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 - any failure counts: that is what we are locating
        return exc
    return None


def _slot_names(cls: type) -> Iterator[str]:
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for name in slots:
            if name not in ("__dict__", "__weakref__"):
                yield name


def _children(obj: object) -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"[{key!r}]", value
        return
    if isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield f"[{index}]", value
        return
    if isinstance(obj, (set, frozenset)):
        for value in obj:
            yield "{item}", value
        return
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        for key, value in state.items():
            yield f".{key}", value
    for name in _slot_names(type(obj)):
        try:
            yield f".{name}", getattr(obj, name)
        except AttributeError:  # an unset slot
            continue


def _type_name(obj: object) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def find_unpicklable(obj: object, root: str = "model") -> Unpicklable | None:
    """The deepest attribute path under ``obj`` that cannot be pickled, or None if ``obj``
    pickles fine."""
    error = _pickle_error(obj)
    if error is None:
        return None
    path, node = root, obj
    visited = {id(obj)}
    for _ in range(_MAX_DEPTH):
        for label, child in _children(node):
            if id(child) in visited:
                continue
            child_error = _pickle_error(child)
            if child_error is not None:
                visited.add(id(child))
                path, node, error = path + label, child, child_error
                break
        else:
            break  # every child pickles: this node itself is the problem
    return Unpicklable(path, _type_name(node), error)
