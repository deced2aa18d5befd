"""The public Python API; the CLI calls exactly these functions."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["lock", "build_image", "choose_backend"]

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


def default_archive(directory: Path, python: str | None) -> Path:
    """Where ``auto`` writes when it fell back to oci with no target: ``<name>-<version>.tar``
    in the current directory, loadable with ``docker load`` or ``skopeo copy oci-archive:``."""
    from ._spec import SpecOverrides, load_spec

    spec = load_spec(directory, overrides=SpecOverrides(python=python) if python else None)
    return Path.cwd() / f"{spec.name}-{spec.version}.tar"


def _refuse_python_mismatch_of_saved_model(directory: Path, python: str | None) -> None:
    """A directory written by mlbuild.save holds a pickle that only loads on the Python minor
    version that made it: refuse another target before anything is built."""
    if not (directory / "artifacts" / "payload.json").is_file():
        return
    from ._save import check_payload_python
    from ._spec import SpecOverrides, load_spec

    spec = load_spec(directory, overrides=SpecOverrides(python=python) if python else None)
    check_payload_python(directory, spec.python)


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
    ``output``, ``push`` or ``load``), or ``"auto"``.
    """
    if not isinstance(model, (str, os.PathLike)):
        from ._save import save_and_build

        return save_and_build(
            model, tag=tag, base_image=base_image, platform=platform, python=python,
            backend=backend, output=output, push=push, load=load, quiet=quiet, progress=progress,
            runner=runner,
        )
    _refuse_python_mismatch_of_saved_model(Path(model), python)
    chosen = choose_backend(backend, wants_oci_output=bool(output or push), progress=progress)
    if chosen == "docker":
        from ._backends.docker import DockerBackend, engine_client
        from ._image import build_image as docker_build

        client = engine_client()  # no engine: say so now, before locking and installing for nothing
        return docker_build(
            Path(model), tag=tag, base_image=base_image, platform=platform, python=python,
            quiet=quiet, runner=runner, progress=progress, backend=DockerBackend(client_factory=lambda: client),
        )
    from ._oci.backend import build_oci_image

    if output is None and push is None and not load and backend == "auto":
        output = default_archive(Path(model), python)
        if progress:
            progress(f"writing {output}")

    return build_oci_image(
        Path(model), tag=tag, base_image=base_image, platform=platform, python=python,
        output=Path(output) if output else None, push=push, load=load, quiet=quiet,
        runner=runner, progress=progress,
    )
