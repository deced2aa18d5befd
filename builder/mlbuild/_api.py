"""The public Python API: lock() and build_image() (the CLI's `lock` and `image` commands call
them), and the one place where mlbuild.save and the build meet (save_and_build)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["lock", "build_image", "choose_backend", "save_and_build"]

Progress = Callable[[str], None]


def lock(
    path: str | os.PathLike[str],
    *,
    python: str | None = None,
    platforms: Sequence[str] = ("linux/amd64",),
    resolver: str = "uv",
    runner=None,
):
    """Resolve the model's requirements for the target Python and platform(s) and write
    ``<path>/mlbuild.lock``. Returns the :class:`Lock`."""
    from ._lock import lock as _lock
    from ._spec import SpecOverrides, load_spec

    spec = load_spec(path, overrides=SpecOverrides(python=python) if python else None)
    return _lock(spec, python=python, platforms=tuple(platforms), resolver=resolver, runner=runner)


def choose_backend(requested: str, *, wants_oci_output: bool, progress: Progress | None) -> str:
    """``auto`` means docker when an engine answers, else oci - saying which and why."""
    if requested != "auto":
        return requested
    if wants_oci_output:
        if progress:
            progress("backend: oci (an --output or --push target was given)")
        return "oci"
    from ._backends.docker import engine_address, engine_answers

    if engine_answers():
        return "docker"
    if progress:
        progress(f"backend: oci (no Docker engine answers at {engine_address()}; writing an OCI archive instead)")
    return "oci"


def build_image(
    model: Any,
    *,
    tag: str | None = None,
    base_image: str | None = None,
    platform: str = "linux/amd64",
    python: str | None = None,
    backend: str = "auto",
    output: str | os.PathLike[str] | None = None,
    push: str | None = None,
    load: bool = False,
    quiet: bool = False,
    progress: Progress | None = None,
    runner=None,
):
    """Build an image from a model directory (or, given a live Python object, save it with
    :func:`mlbuild.save` first). Returns an :class:`ImageResult`.

    ``backend``: ``"docker"`` (the Docker engine), ``"oci"`` (assembled in Python; needs
    ``output``, ``push`` or ``load``), or ``"auto"``. ``quiet`` drops ``progress``.
    """
    if not isinstance(model, (str, os.PathLike)):
        return save_and_build(
            model, tag=tag, base_image=base_image, platform=platform, python=python,
            backend=backend, output=output, push=push, load=load, quiet=quiet, progress=progress,
            runner=runner,
        )
    from ._build import build
    from ._plan import BuildRequest, make_plan
    from ._platforms import parse_platform, parse_platforms

    progress = None if quiet else progress
    chosen = choose_backend(backend, wants_oci_output=bool(output or push), progress=progress)
    if chosen == "docker":
        from ._backends.docker import DockerBackend, engine_client

        clients: list[Any] = []

        def preflight(_spec: Any) -> None:
            # No engine: say so after the model directory's own errors, before locking and
            # installing for nothing.
            clients.append(engine_client())

        engine: Any = DockerBackend(client_factory=lambda: clients[0])
        platforms = (str(parse_platform(platform)),)
    else:
        from ._backends.oci import OciBackend

        preflight = None
        engine = OciBackend(runner=runner)
        platforms = tuple(str(p) for p in parse_platforms(platform))
    request = BuildRequest(tag=tag, base_image=base_image, platforms=platforms, python=python, progress=progress)
    plan = make_plan(Path(model), request, runner=runner, preflight=preflight)
    publisher = None
    if chosen == "oci":
        from ._publish import publishers_for

        if output is None and push is None and not load and backend == "auto":
            # auto fell back to oci with no target: <name>-<version>.tar in the current directory,
            # loadable with `docker load` or `skopeo copy oci-archive:`.
            output = Path.cwd() / f"{plan.spec.name}-{plan.spec.version}.tar"
            plan.say(f"writing {output}")
        publisher = publishers_for(output=Path(output) if output else None, push=push, load=load, runner=runner)
    return build(plan, engine, publisher)


def save_and_build(
    obj: object,
    *,
    tag: str | None,
    workdir: str | os.PathLike[str] | None = None,
    requirements: Sequence[str] | None = None,
    python: str | None = None,
    name: str | None = None,
    **build_kwargs: Any,
):
    """save() then build_image() on the saved directory; returns its ImageResult. The one
    place where saving and building meet: mlbuild.save knows nothing of building.

    ``workdir``: where the model directory goes and stays (an earlier save there is replaced;
    any other non-empty directory is refused); default a temporary directory removed after
    the build. A ``python`` build target other than the running minor version is refused
    before anything is written. The remaining keyword arguments go to build_image unchanged.
    """
    from ._save import check_python_arg, read_payload_info, save

    with contextlib.ExitStack() as stack:
        if workdir is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlbuild-save-")))
            model_dir = base / "model"
        else:
            model_dir = Path(workdir)
        if "python" in build_kwargs:  # a target given to the build: refuse a mismatch up front
            check = check_python_arg(build_kwargs["python"])
            python = python or check
        # Replace a directory only when it holds an earlier save, never an unrelated one.
        replace = model_dir.is_dir() and read_payload_info(model_dir) is not None
        saved = save(obj, model_dir, requirements=requirements, python=python, name=name, overwrite=replace)
        return build_image(saved.path, tag=tag, **build_kwargs)
