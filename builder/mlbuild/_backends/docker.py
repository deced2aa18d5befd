"""Build images with a Docker engine (docker SDK, classic builder or BuildKit alike).

Every build streams a context tar mlbuild assembled itself (see _context.py) and runs with
``network_mode="none"``: wheels were fetched and installed on the host, so nothing in the build
needs a network. The one exception is ``system_packages`` (apt-get needs Debian's mirror): the
build that holds that step - the env image, below - gets the default network, and says so.

The env image the model's image is built FROM, and the model's image itself when nothing
changed, are cached in the engine by docker_cache.py; ``DockerBackend(env_cache=False)`` uses
neither and builds everything from one context.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._context import BuildContext, context_for_app, context_for_env, full_context
from .._errors import BuildError, ConfigError, EngineUnavailableError
from .._resources import MODEL_TEMPLATE_NAME, model_template_path
from .._result import ImageResult
from .._runner import Runner
from .._templates import (
    ContextLayout,
    render_dockerfile,
    render_dockerignore,
)
from .._values import base_image_problem, is_local_base, show
from .docker_cache import ENV_CACHE_REPOSITORY, cached_app_image, context_key, ensure_env_image, remember_app_image

if TYPE_CHECKING:  # pragma: no cover
    import docker

    from .._plan import BuildPlan, Progress
    from .._spec import ModelSpec

__all__ = [
    "DockerBackend", "ENV_CACHE_REPOSITORY", "engine_answers", "engine_client", "engine_address", "engine_base_image", "dockerfile_for",
]

_STEP_RE = re.compile(r"^Step \d+/\d+ : ")
_LOG_TAIL = 40


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _default_factory() -> docker.DockerClient:
    import docker

    return docker.from_env(timeout=600)


def engine_client(client_factory: Callable[[], Any] | None = None) -> docker.DockerClient:
    """A client whose engine answered a ping, or EngineUnavailableError."""
    import docker.errors

    factory = client_factory or _default_factory
    try:
        client = factory()
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise EngineUnavailableError(
            f"no Docker engine answers at {engine_address()}",
            hint="start dockerd (or Docker Desktop), or point DOCKER_HOST at a running engine; "
            "or build without an engine: --backend oci --output IMAGE.tar",
            details=f"docker said: {exc}",
        ) from None
    return client


def engine_answers(client_factory: Callable[[], Any] | None = None) -> bool:
    """True when a Docker engine answers a ping (for ``--backend auto``)."""
    try:
        engine_client(client_factory)
    except EngineUnavailableError:
        return False
    return True


def engine_base_image(base_image: str) -> str:
    """The name the engine knows ``base_image`` by (``docker:REF`` is REF), checked before it
    reaches the engine's API; a ConfigError for a value that is no image reference, and for the
    oci backend's local forms (``oci:DIR``, ``docker-archive:FILE``, ``/path``, ``./path``), which
    the engine would look up, or pull, as an image name."""
    problem = base_image_problem(base_image)
    if problem is not None:
        raise ConfigError(f"base image {show(base_image)}: {problem}",
                          hint="name the base as an image reference, e.g. python:3.11-slim")
    if is_local_base(base_image):
        raise ConfigError(
            f"base image {show(base_image)} is a local image layout or archive; the docker backend "
            "only builds from images the engine has or can pull",
            hint="build with --backend oci (it reads oci:DIR, docker-archive:FILE and paths), or load the "
            "image into the engine (docker load -i FILE) and name it by its tag",
        )
    return base_image.removeprefix("docker:")


class DockerBackend:
    name = "docker"

    def __init__(
        self, client_factory: Callable[[], Any] | None = None, *, env_cache: bool = True, runner: Runner | None = None,
    ) -> None:
        # env_cache: build the envs once into mlbuild-cache/env:<digest> and build FROM it;
        # False builds every layer from one context. (runner: the registry's common signature;
        # the engine is reached through its API, not a program.)
        self._client_factory = client_factory
        self._client: Any = None
        self.env_cache = env_cache

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = engine_client(self._client_factory)
        return self._client

    # ------------------------------------------------------------------ the interface
    def build(self, plan: BuildPlan) -> ImageResult:
        spec, lock, files = plan.spec, plan.lock, plan.files
        started = time.monotonic()
        base_image = engine_base_image(plan.base_image)  # before any engine call
        base_id = self._ensure_base(base_image, plan)
        base_digest = self._base_digest(base_image)
        layout = dict(
            has_artifacts=any(p.as_posix() != MODEL_TEMPLATE_NAME for p in files.artifacts),
            source=plan.source,
            revision=plan.revision,
            base_image=base_image,
            base_digest=base_digest,
        )
        dockerignore = render_dockerignore()

        def env_context(dockerfile: str) -> BuildContext:
            return context_for_env(
                dockerfile=dockerfile,
                dockerignore=dockerignore,
                server_env=plan.envs[0].server_env,
                model_env=plan.envs[0].model_env,
                python=spec.python,
            )

        def app_context(dockerfile: str) -> BuildContext:
            return context_for_app(
                dockerfile=dockerfile, dockerignore=dockerignore, spec_directory=spec.directory, files=files
            )

        env_image = None
        if self.env_cache:
            env_dockerfile = render_dockerfile(spec, lock, ContextLayout(stage="env", **layout))
            env_base = None
            if model_template_path(spec) is None:
                env_base = render_dockerfile(spec, lock, ContextLayout(stage="env-base", **layout))
            env_image = ensure_env_image(
                self, env_dockerfile, env_context, base_id=base_id, plan=plan, env_base_dockerfile=env_base,
            )
            dockerfile = render_dockerfile(spec, lock, ContextLayout(stage="app", env_image=env_image, **layout))
            context = app_context(dockerfile)
            network = "none"
            app_key = context_key(context)
            cached = cached_app_image(self, app_key, plan)
            if cached is not None:  # nothing changed: the engine is not asked to build
                return self._result(plan, cached, started, base_image, base_digest, env_image, dockerfile)
        else:
            dockerfile = render_dockerfile(spec, lock, ContextLayout(stage="full", **layout))
            env_part = env_context(dockerfile)
            context = full_context(env_part, app_context(dockerfile), dockerfile)
            network = self.network_for(spec, plan)
        plan.say(f"building {plan.tag} (context {context.size_bytes() / 1e6:.1f} MB, network: {network})")
        image_id = self.build_context(context, tag=plan.tag, network_mode=network, platform=plan.platforms[0], say=plan.say)
        if self.env_cache:
            remember_app_image(self, image_id, app_key)
        return self._result(plan, image_id, started, base_image, base_digest, env_image, dockerfile)

    def _result(self, plan: BuildPlan, image_id: str, started: float, base_image: str, base_digest: str | None,
                env_image: str | None, dockerfile: str) -> ImageResult:
        return ImageResult(
            tag=plan.tag,
            image_id=image_id,
            size_bytes=int(self.client.images.get(image_id).attrs.get("Size", 0)),
            seconds=time.monotonic() - started,
            lock_digest=plan.lock.digest,
            base_image=base_image,
            excluded=tuple(f"{path.as_posix()} ({why})" for path, why in plan.files.excluded),
            env_image=env_image,
            base_digest=base_digest,
            dockerfile=dockerfile,
        )

    # ------------------------------------------------------------------ pieces
    def network_for(self, spec: ModelSpec, plan: BuildPlan) -> str:
        if spec.system_packages:
            plan.say(
                "system_packages: this build runs with the network on, for apt-get only "
                f"({', '.join(spec.system_packages)})"
            )
            return "default"
        return "none"

    def _base_digest(self, base_image: str) -> str | None:
        """The manifest digest the engine recorded when it pulled the base (RepoDigests), so a
        build names exactly what it was built on; None for a base that never came from a
        registry (built or imported locally), which has no manifest digest."""
        repo_digests = self.client.images.get(base_image).attrs.get("RepoDigests") or []
        repository = base_image.split("@", 1)[0]
        last = repository.rsplit("/", 1)[-1]
        if ":" in last:  # a tag, not a registry port (ports come before a "/")
            repository = repository[: len(repository) - len(last) + last.index(":")]
        for entry in repo_digests:
            name, _, digest = entry.partition("@")
            if name == repository or name.endswith("/" + repository):
                return digest
        return None

    def _ensure_base(self, base_image: str, plan: BuildPlan) -> str:
        """The base image's id; pulled when the engine does not have it (the build itself cannot)."""
        import docker.errors

        try:
            return self.client.images.get(base_image).id
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise BuildError(f"could not inspect base image {base_image}: {exc.explanation or exc}") from None
        plan.say(f"pulling base image {base_image}")
        try:
            return self.client.images.pull(base_image, platform=plan.platforms[0]).id
        except docker.errors.APIError as exc:
            raise BuildError(
                f"base image {base_image} is not in the engine and could not be pulled",
                hint="pull it (docker pull), build it (scripts/build-base-image.sh), or choose another with --base",
                details=f"docker said: {exc.explanation or exc}",
            ) from None

    def build_context(
        self, context: BuildContext, *, tag: str | None, network_mode: str, platform: str, say: Progress,
    ) -> str:
        """The one build primitive: stream ``context`` to the engine, return the image id
        (``tag`` None: an untagged intermediate image)."""
        import docker.errors

        log: list[str] = []
        step = "(before the first step)"
        image_id = None
        try:
            # A generator body goes out chunked while it is produced: no temp file, and the
            # engine unpacks the start of the context while the rest is still being read.
            stream = self.client.api.build(
                fileobj=context.iter_tar(),
                custom_context=True,
                tag=tag,
                network_mode=network_mode,
                rm=True,
                forcerm=True,
                pull=False,
                platform=platform,
                decode=True,
            )
            for chunk in stream:
                for line in (chunk.get("stream") or "").splitlines():
                    if not line.strip():
                        continue
                    log.append(line)
                    if _STEP_RE.match(line):
                        step = line
                        say(line)
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = aux["ID"]
                if "error" in chunk or "errorDetail" in chunk:
                    log.append((chunk.get("errorDetail") or {}).get("message") or chunk.get("error", ""))
                    tail = "\n".join(log[-_LOG_TAIL:])
                    raise BuildError(
                        f"image build failed at {step}",
                        hint=_hint_for(tail, network_mode),
                        details="last lines of the build log:\n" + tail,
                    )
        except docker.errors.APIError as exc:
            raise BuildError(
                f"the engine refused the build of {tag or 'the env image'}: {exc.explanation or exc}",
                hint=_hint_for(str(exc), network_mode),
                details="\n".join(log[-_LOG_TAIL:]) or None,
            ) from None
        except (docker.errors.DockerException, OSError) as exc:
            # Reading the context cannot land here (BuildContext.iter_tar turns that into a BuildError
            # naming the file): this is the connection. An engine that still answers a ping
            # dropped this one request (it refused what it was sent), it did not stop.
            if _still_answers(self.client):
                raise BuildError(
                    f"the Docker engine closed the connection during the build of {tag or 'the env image'}",
                    hint="the engine refused the request; check the tag and the engine's log (journalctl -u docker)",
                    details=str(exc),
                ) from None
            raise EngineUnavailableError(
                f"the Docker engine at {engine_address()} stopped answering during the build of {tag or 'the env image'}",
                hint="check that dockerd is running, then build again",
                details=str(exc),
            ) from None
        if image_id is None:
            if tag is None:
                raise BuildError("the Docker engine built the env image but did not say its id", hint="build again")
            image_id = self.client.images.get(tag).id
        return image_id


def _still_answers(client: Any) -> bool:
    try:
        client.ping()
    except Exception:  # noqa: BLE001 - any failure to answer is "not answering"
        return False
    return True


def _hint_for(message: str, network_mode: str) -> str:
    lowered = message.lower()
    if network_mode == "none" and any(
        s in lowered for s in ("temporary failure in name resolution", "network is unreachable", "could not resolve")
    ):
        return (
            "the build runs without network on purpose: everything is installed on the host. "
            "Remove network access from your Dockerfile.j2 steps (apt needs system_packages in mlbuild.toml)"
        )
    if "has python" in lowered and "model wants" in lowered:
        return "choose a base image with the model's Python, or set python in mlbuild.toml"
    return "read the log above; a RUN step from a model Dockerfile.j2 is the usual cause"


def dockerfile_for(path: str | os.PathLike[str], *, base_image: str | None = None, python: str | None = None) -> str:
    """What `mlbuild dockerfile ./model` prints: the single-stage Dockerfile for the model as it
    stands (its lock must exist or be creatable)."""
    from .._files import select_model_files
    from .._lock import ensure_lock
    from .._spec import SpecOverrides, load_spec

    overrides = None
    if base_image is not None or python is not None:
        overrides = SpecOverrides(python=python, base_image=base_image)
    spec = load_spec(Path(path), overrides=overrides)
    # A Dockerfile's FROM names an image: docker:REF is REF, a local layout or archive is refused
    # as the docker backend refuses it (before the lock, which may cost a resolution).
    base = engine_base_image(spec.resolved_base_image)
    lock = ensure_lock(spec)
    files = select_model_files(spec)
    has_artifacts = any(p.as_posix() != MODEL_TEMPLATE_NAME for p in files.artifacts)
    return render_dockerfile(spec, lock, ContextLayout(has_artifacts=has_artifacts, base_image=base))
