"""mlbuild: turn a Python model directory into one self-contained, reproducible container image.

The public API is what this module exports; everything in ``mlbuild._*`` is private.

    import mlbuild
    lock = mlbuild.lock("./model")                      # writes ./model/mlbuild.lock
    result = mlbuild.build_image("./model", tag="iris:1")
    mlbuild.save(trained_pipeline, "./model")           # a live object -> a model directory

Names are resolved lazily (PEP 562) so ``import mlbuild`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# name -> private module that defines it
_EXPORTS = {
    "lock": "._api",
    "build_image": "._api",
    "save": "._save",
    "load_spec": "._spec",
    "ModelSpec": "._spec",
    "SpecOverrides": "._spec",
    "Lock": "._lock",
    "LockedPackage": "._lock",
    "ImageResult": "._result",
    "MlbuildError": "._errors",
    "ConfigError": "._errors",
    "EntrypointError": "._errors",
    "SaveError": "._errors",
    "LockError": "._errors",
    "ResolutionError": "._errors",
    "StaleLockError": "._errors",
    "FetchError": "._errors",
    "NoWheelError": "._errors",
    "BuildError": "._errors",
    "EngineUnavailableError": "._errors",
    "RunError": "._errors",
    "PublishError": "._errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlbuild' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # cache: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ._api import build_image, lock
    from ._errors import (
        BuildError,
        ConfigError,
        EngineUnavailableError,
        EntrypointError,
        FetchError,
        LockError,
        MlbuildError,
        NoWheelError,
        PublishError,
        ResolutionError,
        RunError,
        SaveError,
        StaleLockError,
    )
    from ._lock import Lock, LockedPackage
    from ._result import ImageResult
    from ._save import save
    from ._spec import ModelSpec, SpecOverrides, load_spec
