"""Pickle a live object and find out which installed distributions its pickle needs.

Why walk the pickle rather than ``pip freeze``: a notebook's environment holds hundreds of
packages, the object needs a handful. Every class, function and module the pickle refers to
passes through ``reducer_override`` of a cloudpickle Pickler, so recording ``__module__`` there
gives exactly the modules that unpickling (and the by-value code's globals) will import. Code
objects captured by value are scanned for ``import`` statements too, so a function that does
``import scipy.special`` inside its body still pins scipy.

Modules that belong to no installed distribution (the user's own ``features.py`` next to the
notebook, or a package installed editable / from a local directory) cannot be installed in the
image from an index, so they are registered with ``cloudpickle.register_pickle_by_value`` and
travel inside the payload; we pickle again until no new such module shows up, because by-value
code can reference further modules.
"""

from __future__ import annotations

import dis
import hashlib
import importlib.metadata as metadata
import io
import json
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cloudpickle

__all__ = ["PickleAnalysis", "analyse_and_pickle", "Classification", "classify_modules", "stable_tracker_ids"]

# By-value registration can reveal new modules; real code converges in 2-3 rounds.
_MAX_ROUNDS = 10


@dataclass(frozen=True)
class Classification:
    """What the top-level modules a pickle references are, for requirements purposes."""

    distributions: dict[str, str]  # distribution name -> running version
    user_modules: frozenset[str]  # top-level modules to capture by value
    stdlib: frozenset[str]
    unknown: frozenset[str]  # not stdlib, not installed, not a file we could capture


@dataclass(frozen=True)
class PickleAnalysis:
    payload: bytes
    distributions: dict[str, str]  # name -> version, cloudpickle always included
    by_value_modules: tuple[str, ...]  # top-level modules captured by value (besides __main__)


class _RecordingPickler(cloudpickle.Pickler):
    """A cloudpickle Pickler that notes the module of everything it is asked to reduce."""

    def __init__(self, file: io.BytesIO, modules: set[str], classes: list[type]) -> None:
        super().__init__(file, protocol=cloudpickle.DEFAULT_PROTOCOL)
        self._modules = modules
        self._classes = classes

    def reducer_override(self, obj):  # noqa: ANN001 - pickle API
        _record(obj, self._modules)
        if isinstance(obj, type):
            self._classes.append(obj)
        return super().reducer_override(obj)


def _record(obj: object, modules: set[str]) -> None:
    if isinstance(obj, types.ModuleType):
        modules.add(obj.__name__)
    elif isinstance(obj, types.CodeType):
        modules.update(_imports_in_code(obj))
    elif isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)) or callable(obj):
        name = getattr(obj, "__module__", None)
        if isinstance(name, str):
            modules.add(name)
        modules.add(type(obj).__module__)
    else:
        modules.add(type(obj).__module__)


def _imports_in_code(code: types.CodeType) -> set[str]:
    """Absolute ``import x.y`` / ``from x import y`` inside a by-value function body."""
    found: set[str] = set()
    level = 0
    for ins in dis.get_instructions(code):
        # LOAD_CONST <level>; LOAD_CONST <fromlist>; IMPORT_NAME <name>: the level comes first.
        if ins.opname == "LOAD_CONST" and isinstance(ins.argval, int):
            level = ins.argval
        elif ins.opname == "IMPORT_NAME":
            if level == 0 and isinstance(ins.argval, str):
                found.add(ins.argval)
            level = 0
    return found


def _dumps_recording(obj: object) -> tuple[bytes, set[str], list[type]]:
    buffer = io.BytesIO()
    modules: set[str] = set()
    classes: list[type] = []
    _RecordingPickler(buffer, modules, classes).dump(obj)
    return buffer.getvalue(), modules, classes


def stable_tracker_ids(payload: bytes, classes: Iterable[type]) -> bytes:
    """Replace cloudpickle's random class-tracker ids (uuid4 hex, one per class pickled by
    value) with ids derived from the payload's content, so saving the same object twice gives
    the same bytes (and so the same image digest).

    The ids only serve to unify copies of one class when several payloads are loaded into one
    process; a content hash plus the class's position keeps them unique per distinct class.
    The user's process keeps its own ids: only the bytes are rewritten, and each id is a fixed
    32-character string, so no pickle offset moves."""
    tracker = getattr(cloudpickle.cloudpickle, "_DYNAMIC_CLASS_TRACKER_BY_CLASS", None)
    if tracker is None:  # another cloudpickle layout: stay correct, just not reproducible
        return payload
    ids: list[bytes] = []
    for cls in classes:
        tracker_id = tracker.get(cls)
        if isinstance(tracker_id, str) and len(tracker_id) == 32:
            raw = tracker_id.encode()
            if raw in payload and raw not in ids:
                ids.append(raw)
    if not ids:
        return payload
    ids.sort(key=payload.index)
    masked = payload
    for raw in ids:
        masked = masked.replace(raw, b"0" * 32)
    digest = hashlib.sha256(masked).digest()
    for position, raw in enumerate(ids):
        payload = payload.replace(raw, hashlib.sha256(digest + position.to_bytes(4, "big")).hexdigest()[:32].encode())
    return payload


def _is_local_install(dist: metadata.Distribution) -> bool:
    """Installed from a local directory or file (``pip install -e .``, ``pip install ./pkg``):
    no index can provide it to the image, so its code has to travel by value."""
    try:
        text = dist.read_text("direct_url.json")
    except Exception:  # noqa: BLE001 - unreadable metadata means "not local" here
        return False
    if not text:
        return False
    try:
        info = json.loads(text)
    except ValueError:
        return False
    return "dir_info" in info or str(info.get("url", "")).startswith("file:")


def _owning_distributions(module_name: str, candidates: list[str]) -> list[str]:
    """Several distributions can share a top-level name (namespace packages such as
    ``google``); keep the ones whose files contain the module actually used."""
    if len(candidates) <= 1:
        return candidates
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not path:
        return candidates
    owners = []
    for name in candidates:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            continue
        dist = metadata.distribution(name)
        if any(str(dist.locate_file(f)) == path for f in files):
            owners.append(name)
    return owners or candidates


def classify_modules(
    module_names: Iterable[str],
    *,
    packages: dict[str, list[str]] | None = None,
    get_distribution: Callable[[str], metadata.Distribution] = metadata.distribution,
) -> Classification:
    """Sort the referenced modules into installed distributions, the user's own code to
    capture by value, the standard library, and names we cannot place."""
    packages = metadata.packages_distributions() if packages is None else packages
    distributions: dict[str, str] = {}
    user: set[str] = set()
    stdlib: set[str] = set()
    unknown: set[str] = set()
    for full in sorted(set(module_names)):
        top = full.partition(".")[0]
        if not top or top == "__main__":
            continue  # cloudpickle captures __main__ by value on its own
        if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "builtins":
            stdlib.add(top)
            continue
        names = _owning_distributions(full, packages.get(top, []))
        if names:
            local = False
            for name in names:
                dist = get_distribution(name)
                if _is_local_install(dist):
                    local = True
                else:
                    distributions[dist.metadata["Name"]] = dist.version
            if local:
                user.add(top)
            continue
        module = sys.modules.get(top)
        if module is not None and getattr(module, "__file__", None):
            user.add(top)
        else:
            unknown.add(top)
    return Classification(distributions, frozenset(user), frozenset(stdlib), frozenset(unknown))


def _registered_by_value(module: types.ModuleType) -> bool:
    registry = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", set())
    return module.__name__ in registry


def analyse_and_pickle(obj: object) -> PickleAnalysis:
    """Pickle ``obj`` with its user code by value; return the bytes and the pinned
    distributions it needs. Pickling errors propagate unchanged (the caller explains them).
    Registrations this function makes are undone before it returns."""
    packages = metadata.packages_distributions()
    registered: list[types.ModuleType] = []
    try:
        for _ in range(_MAX_ROUNDS):
            payload, modules, classes = _dumps_recording(obj)
            found = classify_modules(modules, packages=packages)
            new = [
                sys.modules[name]
                for name in sorted(found.user_modules)
                if name in sys.modules and not _registered_by_value(sys.modules[name])
            ]
            if not new:
                break
            for module in new:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
        by_value = tuple(sorted({m.__name__ for m in registered} | set(found.user_modules)))
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)
    distributions = dict(found.distributions)
    # The generated predict.py imports cloudpickle to load the payload, whatever the object is.
    distributions[metadata.distribution("cloudpickle").metadata["Name"]] = cloudpickle.__version__
    return PickleAnalysis(stable_tracker_ids(payload, classes), distributions, by_value)
