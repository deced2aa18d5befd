"""Image backends share one interface: ``build(spec, lock, options) -> ImageResult``.

``docker`` (``_backends/docker.py``): a Dockerfile rendered from templates, built by the engine.
``oci`` (``_oci/backend.py``): the same image contents assembled in Python, no engine, bit-for-bit
reproducible; writes an OCI layout, an archive, pushes to a registry or loads into an engine.
Caching (the env image) and progress are wrappers around the
backend's one build primitive, not flags threaded through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from .._lock import Lock
    from .._spec import ModelSpec

__all__ = ["Backend", "BuildOptions", "EnvDirs", "ImageResult", "ProgressCallback"]

ProgressCallback = Callable[[str], None]


@dataclass(frozen=True)
class EnvDirs:
    """The two installed envs on the host (install_env output roots), ready to be copied."""

    server_env: Path
    model_env: Path
    server_lock_digest: str


@dataclass(frozen=True)
class BuildOptions:
    tag: str
    envs: EnvDirs
    base_image: str | None = None  # overrides spec.resolved_base_image
    platform: str = "linux/amd64"
    quiet: bool = False
    progress: ProgressCallback | None = None
    source: str | None = None  # OCI source/revision labels, when known
    revision: str | None = None
    env_cache: bool = True  # build the envs once into mlbuild-cache/env:<digest> and build FROM it

    def say(self, line: str) -> None:
        if not self.quiet and self.progress is not None:
            self.progress(line)


@dataclass(frozen=True)
class ImageResult:
    tag: str
    image_id: str
    size_bytes: int
    seconds: float
    lock_digest: str
    base_image: str
    excluded: tuple[str, ...] = ()
    backend: str = "docker"
    env_image: str | None = None  # the cached env image it was built FROM, if any
    base_digest: str | None = None  # the base's manifest digest (sha256:...), when it has one
    dockerfile: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        """Every field (subclasses' too) as JSON-ready values, for `mlbuild image --json`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "dockerfile":
                continue  # long, and `mlbuild dockerfile` prints it
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        out["seconds"] = round(self.seconds, 3)
        return out

    def summary(self) -> str:
        """One line for humans: what was built, how big, how long."""
        name = self.tag or self.image_id
        short_id = self.image_id.split(":", 1)[-1][:12]
        return f"built {name} ({short_id}, {self.size_bytes / 1e6:.0f} MB, {self.backend}) in {self.seconds:.1f} s"


class Backend(Protocol):
    name: str

    def build(self, spec: ModelSpec, lock: Lock, options: BuildOptions) -> ImageResult: ...
