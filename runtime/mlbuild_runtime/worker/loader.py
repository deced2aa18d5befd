"""Find, import and load the model's entrypoint. Standard library only.

Entrypoint rule (the builder's _entrypoint.py applies the same one by AST):
``MLBUILD_ENTRYPOINT=module:attr`` wins; else module ``predict``, attr ``Model`` when that
module defines a class ``Model``, else ``predict`` (a function). A class is instantiated with
no arguments and its ``load()`` called once; an object that already has a ``predict`` method
is used as is.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Optional, Tuple

from . import hints as H

__all__ = ["Entrypoint", "EntrypointNotFound", "parse_entrypoint", "import_entrypoint"]

DEFAULT_MODULE = "predict"


class EntrypointNotFound(Exception):
    """The module imported but the named class/function is not there (or is not callable)."""


def parse_entrypoint(value: Optional[str]) -> Tuple[str, Optional[str]]:
    """"module:attr" -> (module, attr); "module" -> (module, None); empty -> default module."""
    value = (value or "").strip()
    if not value:
        return DEFAULT_MODULE, None
    module, _, attr = value.partition(":")
    return module.strip() or DEFAULT_MODULE, attr.strip() or None


class Entrypoint:
    """The imported entrypoint: what to call, and its hints (read once, at import)."""

    def __init__(self, module: str, attr: str, target: Any) -> None:
        self.name = f"{module}:{attr}"
        self.target = target
        self.is_class = inspect.isclass(target)
        if self.is_class:
            raw = inspect.getattr_static(target, "predict", None)
            if raw is None or not callable(getattr(target, "predict", None)):
                raise EntrypointNotFound(f"class {self.name} has no predict method")
            # A plain function in the class body takes self; static/class methods do not.
            func = target.predict
            self.params, self.returns = H.predict_params(
                func, skip_first=inspect.isfunction(raw))
            self.is_async = inspect.iscoroutinefunction(getattr(func, "__func__", func))
        else:
            func = getattr(target, "predict", None) if not inspect.isroutine(target) else target
            if func is None or not callable(func):
                raise EntrypointNotFound(f"{self.name} is neither a class, a function nor an "
                                         "object with a predict method")
            self.params, self.returns = H.predict_params(func, skip_first=False)
            self.is_async = inspect.iscoroutinefunction(getattr(func, "__func__", func))

    def load(self, run_async: Callable[[Any], Any]) -> Callable[..., Any]:
        """Instantiate and load() (for a class; also load() on a ready-made object) and return
        the bound predict. Exceptions propagate: the caller reports them as a load failure."""
        if self.is_class:
            instance = self.target()
        elif inspect.isroutine(self.target):
            return self.target
        else:
            instance = self.target
        load = getattr(instance, "load", None)
        if callable(load):
            result = load()
            if inspect.isawaitable(result):
                run_async(result)
        return instance.predict


def import_entrypoint(spec: Optional[str]) -> Entrypoint:
    """Import the module (ImportError/SyntaxError/anything it raises propagate) and pick the
    attribute by the entrypoint rule (EntrypointNotFound when it is missing)."""
    module_name, attr = parse_entrypoint(spec)
    module = importlib.import_module(module_name)
    if attr is None:
        model = getattr(module, "Model", None)
        attr = "Model" if inspect.isclass(model) else "predict"
        if attr == "predict" and not hasattr(module, "predict"):
            raise EntrypointNotFound(
                f"{module_name} defines neither a class Model nor a function predict "
                f"(set entrypoint = \"{module_name}:<name>\" in mlbuild.toml to pick another)")
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise EntrypointNotFound(f"{module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    return Entrypoint(module_name, attr, target)
