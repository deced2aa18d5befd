"""The one orchestration of a build, which the API and the CLI both go through:

    make_plan(dir, request)       spec, lock, files, envs: once (_plan)
    backend.build(plan)           docker: an image in the engine; oci: blobs + manifest/index
    publisher.publish(image)      oci only: layout, archive, registry push, engine load (_publish)
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ._backends import Backend, backend_class
from ._plan import BuildPlan, BuildRequest, Progress, make_plan
from ._result import ImageResult

if TYPE_CHECKING:  # pragma: no cover
    from ._oci.registry import RegistryClient
    from ._publish import Publisher
    from ._runner import Runner

__all__ = ["build", "build_directory"]


def build(plan: BuildPlan, backend: Backend, publisher: Publisher | None = None) -> ImageResult:
    """``plan`` built by ``backend``, then published (an oci image; default: a cached layout)."""
    from ._backends.oci import OciImage
    from ._publish import publishers_for
    from ._result import Published

    built = backend.build(plan)
    if isinstance(built, OciImage):
        started = time.monotonic()
        published = (publisher or publishers_for()).publish(built, Published())
        now = time.monotonic()
        return built.result(published, seconds=now - plan.started, publish_seconds=now - started)
    return dataclasses.replace(built, seconds=time.monotonic() - plan.started)


def build_directory(
    path: str | os.PathLike[str],
    *,
    tag: str | None = None,
    base_image: str | None = None,
    platform: str = "linux/amd64",
    python: str | None = None,
    progress: Progress | None = None,
    runner: Runner | None = None,
    backend: str | Backend = "docker",
    output: str | os.PathLike[str] | None = None,
    push: str | None = None,
    load: bool = False,
    registry_client: RegistryClient | None = None,
) -> ImageResult:
    """Build the model directory at ``path``: plan, backend (a name from the registry or an
    instance), and for the oci backend the publishers ``output``/``push``/``load`` ask for.
    ``platform`` may name several, comma-separated (oci: one image each, plus an index)."""
    from ._platforms import parse_platform, parse_platforms
    from ._publish import publishers_for

    chosen: Backend = backend_class(backend)(runner=runner) if isinstance(backend, str) else backend
    if chosen.name == "oci":
        platforms = tuple(str(p) for p in parse_platforms(platform))
    else:  # an engine builds one platform per image
        platforms = (str(parse_platform(platform)),)
    request = BuildRequest(tag=tag, base_image=base_image, platforms=platforms, python=python, progress=progress)
    plan = make_plan(path, request, runner=runner)
    publisher = None
    if chosen.name == "oci":
        publisher = publishers_for(output=Path(output) if output else None, push=push, load=load, runner=runner,
                                   registry_client=registry_client)
    return build(plan, chosen, publisher)
