"""Backends turn a ``BuildPlan`` into an image, behind one protocol and a registry of names
(the way cibuildwheel keeps its platforms, ko its builders):

``docker`` (``docker.py``): a Dockerfile rendered from templates, built by the engine; the image
lands in the engine, which is its publisher. The env image it builds FROM is cached in the
engine under a tag made of what determines it (``DockerBackend(env_cache=False)``: no env image).
``oci`` (``oci.py``): the same image contents assembled in Python, no engine, bit-for-bit
reproducible; returns blobs and a manifest (or index) that a publisher (_publish) writes as
a layout or an archive, pushes to a registry or loads into an engine.

A backend reads the plan and never calls back into the pipeline (_plan).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

from .._result import ImageResult

if TYPE_CHECKING:  # pragma: no cover
    from .._plan import BuildPlan
    from .oci import OciImage

__all__ = ["BACKENDS", "Backend", "ImageResult", "backend_class"]

# name -> "module:class", imported when asked for: the docker SDK and the OCI code stay unloaded
# until a build needs them.
BACKENDS = {
    "docker": "mlbuild._backends.docker:DockerBackend",
    "oci": "mlbuild._backends.oci:OciBackend",
}


class Backend(Protocol):
    name: str

    def build(self, plan: BuildPlan) -> ImageResult | OciImage:
        """The image for ``plan``: an ImageResult when the backend published it itself (the
        docker engine), else an unpublished OciImage for a publisher."""
        ...


def backend_class(name: str) -> Any:
    """The backend class registered under ``name``."""
    target = BACKENDS.get(name)
    if target is None:
        from .._errors import ConfigError

        raise ConfigError(f"unknown backend {name!r}", hint="choose one of: " + ", ".join(sorted(BACKENDS)))
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
