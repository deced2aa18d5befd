"""The one pipeline: a model directory and a ``BuildRequest`` in, a frozen ``BuildPlan`` out.

``make_plan`` does the work every backend needs, once: it parses the spec, ensures the lock for
every target platform, selects the model's files (one walk of the directory), and installs the
server env and the model env for every platform on the host (the image build reaches no
network). A backend reads the plan and never calls back into the pipeline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import BuildError, ConfigError
from ._imagefacts import MODEL_ENV_PATH, SERVER_ENV_PATH, ImageFacts, image_facts, source_date_epoch
from ._runner import Runner

if TYPE_CHECKING:  # pragma: no cover
    from ._files import ModelFiles
    from ._lock import Lock
    from ._spec import ModelSpec

__all__ = ["BuildPlan", "BuildRequest", "PlatformEnvs", "Progress", "check_tag", "make_plan"]

Progress = Callable[[str], None]
EnvInstaller = Callable[..., Path]  # _envs.installed_env's signature


@dataclass(frozen=True)
class BuildRequest:
    """What the caller asks for. ``progress`` is the one reporter: None means quiet."""

    tag: str | None = None
    base_image: str | None = None  # overrides the spec's base image
    platforms: tuple[str, ...] = ("linux/amd64",)
    python: str | None = None
    progress: Progress | None = None


@dataclass(frozen=True)
class PlatformEnvs:
    """One target platform's two installed envs on the host, ready to be copied into an image."""

    platform: str
    server_env: Path
    model_env: Path
    server_lock_digest: str


@dataclass(frozen=True)
class BuildPlan:
    """Everything a backend needs, decided once. ``envs`` holds one entry per target platform,
    in the order asked for; the first is the image's platform when there is one."""

    spec: ModelSpec
    lock: Lock
    files: ModelFiles
    tag: str
    base_image: str  # the reference to build on: the request's override, else the spec's
    epoch: int  # SOURCE_DATE_EPOCH or the fixed epoch: every mtime and the created time
    source: str | None  # org.opencontainers.image.source, when known
    revision: str | None  # org.opencontainers.image.revision, when known
    envs: tuple[PlatformEnvs, ...]
    progress: Progress | None = field(default=None, compare=False, repr=False)
    started: float = field(default_factory=time.monotonic, compare=False, repr=False)

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(e.platform for e in self.envs)

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def facts(self, *, base_image: str | None = None, base_digest: str | None = None) -> ImageFacts:
        """The image's ENV, labels, CMD...: ``base_image`` is the name the backend resolved the
        base to (default: the plan's), ``base_digest`` its manifest digest when it has one."""
        return image_facts(self.spec, self.lock, base_image=base_image or self.base_image, source=self.source,
                           revision=self.revision, base_digest=base_digest)


def check_tag(tag: str) -> None:
    """Refuse a --tag docker would refuse (its reference grammar, name[:tag], no digest), before
    any work: the engine would otherwise reject it only once the context is being sent."""
    from ._oci.reference import DEFAULT_REGISTRY_ENV, parse_reference

    why = None
    if tag != tag.strip() or not tag:
        why = "it is empty or has spaces around it"
    elif not tag.isascii() or not tag.isprintable():
        # The reference parser's tag pattern uses \w, which also matches non-ASCII letters.
        why = "it holds characters other than ASCII letters, digits and . _ - / : @"
    elif "@" in tag:
        why = "a build names a tag, not a digest (drop the @...)"
    else:
        try:  # any registry will do: only the grammar is checked, nothing is resolved
            parse_reference(tag, env={DEFAULT_REGISTRY_ENV: "localhost"})
        except ConfigError as exc:
            why = str(exc).split(": ", 1)[-1]
    if why is not None:
        raise ConfigError(
            f"--tag {tag!r} is not a valid image name: {why}",
            hint="write it as [registry/]repository[:tag]: a lowercase repository (letters, digits, . _ -, "
            "parts separated by /) and a tag of letters, digits, _ . - (at most 128), e.g. mymodel:1.0",
        )


def make_plan(
    path: str | os.PathLike[str],
    request: BuildRequest,
    *,
    runner: Runner | None = None,
    installer: EnvInstaller | None = None,
    preflight: Callable[[ModelSpec], None] | None = None,
) -> BuildPlan:
    """Parse, lock, select and install once; the plan every backend builds from.

    ``preflight(spec)`` runs once the spec is read and checked, before the lock and the
    installs: a backend's own precondition (the docker backend: an engine answers) is then
    reported after the model directory's errors and before minutes of work."""
    from . import _provenance
    from ._envs import file_digest, installed_env
    from ._files import select_model_files
    from ._lock import ensure_lock
    from ._platforms import parse_platforms
    from ._runner import SubprocessRunner
    from ._server_env import server_lock_path
    from ._spec import SpecOverrides, load_spec

    started = time.monotonic()  # the result's seconds cover the whole build, lock included
    if request.tag is not None:
        check_tag(request.tag)  # before the lock and the installs, which cost minutes
    platforms = tuple(str(p) for p in parse_platforms(list(request.platforms)))
    runner = runner or SubprocessRunner()
    say: Progress = request.progress or (lambda _line: None)
    overrides = None
    if request.base_image is not None or request.python is not None:
        overrides = SpecOverrides(python=request.python, base_image=request.base_image)
    spec = load_spec(Path(path), overrides=overrides)
    # A directory written by mlbuild.save holds a pickle that only loads on the Python minor
    # version that made it: refuse another target before anything is locked or installed.
    # (Only a saved model has artifacts/payload.json; _save, cloudpickle and all, is imported
    # for those only: it costs a code-only rebuild 30 ms.)
    if (spec.directory / "artifacts" / "payload.json").is_file():
        from ._save import check_payload_python

        check_payload_python(spec.directory, spec.python)
    if preflight is not None:
        preflight(spec)
    lock = ensure_lock(spec, platforms=platforms, runner=runner)
    if len(platforms) > 1 and not lock.covers(platforms):
        raise ConfigError(
            f"{lock.path} is locked for {', '.join(lock.platforms)}, not for all of {', '.join(platforms)}",
            hint=f"run `mlbuild lock --platform {','.join(platforms)}` (or build for the locked platforms)",
        )

    files = select_model_files(spec)
    for rel, why in files.excluded:
        say(f"left out {rel.as_posix()}: {why}")

    server_lock = Path(server_lock_path())
    if not server_lock.is_file():
        raise BuildError(f"mlbuild's server lock {server_lock} is missing", hint="reinstall mlbuild")
    server_digest = file_digest(server_lock)
    install = installer or installed_env
    # The installs are independent uv processes into different directories: two at a time, the
    # shorter one hides behind the longer one's downloads and unpacking.
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs: list[tuple[str, Future[Path], Future[Path]]] = []
        for plat in platforms:
            server = pool.submit(install, "server", server_lock, server_digest, python=spec.python, platform=plat,
                                 env_path_in_image=SERVER_ENV_PATH, runner=runner, say=say)
            model = pool.submit(install, "model", Path(lock.path), lock.digest, python=spec.python, platform=plat,
                                env_path_in_image=MODEL_ENV_PATH, runner=runner, say=say)
            jobs.append((plat, server, model))
        # Every install finishes before an error is raised (the pool waits): never a stray one.
        # The server's error wins when both fail, as when they ran one after the other.
        envs = tuple(PlatformEnvs(plat, server.result(), model.result(), server_digest) for plat, server, model in jobs)
    return BuildPlan(
        spec=spec,
        lock=lock,
        files=files,
        tag=request.tag or f"{spec.name}:{spec.version}",
        base_image=request.base_image or spec.resolved_base_image,
        epoch=source_date_epoch(),
        source=_provenance.source(),
        revision=_provenance.revision(spec.directory, runner),
        envs=envs,
        progress=request.progress,
        started=started,
    )
