"""Build images with a Docker engine (docker SDK, classic builder or BuildKit alike).

Every build streams a context tar mlbuild assembled itself (see _context.py) and runs with
``network_mode="none"``: wheels were fetched and installed on the host, so nothing in the build
needs a network. The one exception is ``system_packages`` (apt-get needs Debian's mirror): the
build that holds that step - the env image, below - gets the default network, and says so.

Env image (ko-style cache): the lower half of the image (base, system packages, venvs, server
env, model env) depends only on the base image, the two locks, the platform and the template's
lower blocks. It is built once into ``mlbuild-cache/env:<digest of those>`` and the model's
image is built FROM it with a small context (runtime, artefacts, code). A code-only rebuild
then sends kilobytes, not the few hundred MB of the envs, and the final image still has the
layers in the designed order. ``BuildOptions(env_cache=False)`` builds everything in one go.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._context import BuildContext, ContextEntry, context_for_app, context_for_env, env_layer_tar, full_context
from .._errors import BuildError, ConfigError, EngineUnavailableError
from .._templates import (
    IMAGE_PATHS,
    MODEL_TEMPLATE_NAME,
    ContextLayout,
    model_template_path,
    render_dockerfile,
    render_dockerignore,
)
from .._values import base_image_problem, is_local_base, show
from . import BuildOptions, ImageResult

if TYPE_CHECKING:  # pragma: no cover
    import docker

    from .._lock import Lock
    from .._spec import ModelSpec

__all__ = [
    "DockerBackend", "ENV_CACHE_REPOSITORY", "engine_answers", "engine_client", "engine_address", "engine_base_image",
]

ENV_CACHE_REPOSITORY = "mlbuild-cache/env"
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

    def __init__(self, client_factory: Callable[[], Any] | None = None) -> None:
        self._client_factory = client_factory
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = engine_client(self._client_factory)
        return self._client

    # ------------------------------------------------------------------ the interface
    def build(self, spec: ModelSpec, lock: Lock, options: BuildOptions) -> ImageResult:
        from .._files import select_model_files

        started = time.monotonic()
        base_image = engine_base_image(options.base_image or spec.resolved_base_image)  # before any engine call
        files = select_model_files(spec)
        base_id = self._ensure_base(base_image, options)
        base_digest = self._base_digest(base_image)
        layout = dict(
            has_artifacts=any(p.as_posix() != MODEL_TEMPLATE_NAME for p in files.artifacts),
            source=options.source,
            revision=options.revision,
            base_image=base_image,
            base_digest=base_digest,
        )
        dockerignore = render_dockerignore()

        def env_context(dockerfile: str) -> BuildContext:
            return context_for_env(
                dockerfile=dockerfile,
                dockerignore=dockerignore,
                server_env=options.envs.server_env,
                model_env=options.envs.model_env,
                python=spec.python,
            )

        def app_context(dockerfile: str) -> BuildContext:
            return context_for_app(
                dockerfile=dockerfile, dockerignore=dockerignore, spec_directory=spec.directory, files=files
            )

        env_image = None
        if options.env_cache:
            env_dockerfile = render_dockerfile(spec, lock, ContextLayout(stage="env", **layout))
            env_base = None
            if model_template_path(spec) is None:
                env_base = render_dockerfile(spec, lock, ContextLayout(stage="env-base", **layout))
            env_image = self._ensure_env_image(
                env_dockerfile, env_context, spec=spec, lock=lock, base_id=base_id, options=options,
                env_base_dockerfile=env_base,
            )
            dockerfile = render_dockerfile(spec, lock, ContextLayout(stage="app", env_image=env_image, **layout))
            context = app_context(dockerfile)
            network = "none"
        else:
            dockerfile = render_dockerfile(spec, lock, ContextLayout(stage="full", **layout))
            env_part = env_context(dockerfile)
            context = full_context(env_part, app_context(dockerfile), dockerfile)
            network = self._network_for(spec, options)
        options.say(f"building {options.tag} (context {context.size_bytes() / 1e6:.1f} MB, network: {network})")
        image_id = self.build_context(context, tag=options.tag, network_mode=network, options=options)
        size = int(self.client.images.get(image_id).attrs.get("Size", 0))
        return ImageResult(
            tag=options.tag,
            image_id=image_id,
            size_bytes=size,
            seconds=time.monotonic() - started,
            lock_digest=lock.digest,
            base_image=base_image,
            excluded=tuple(f"{path.as_posix()} ({why})" for path, why in files.excluded),
            env_image=env_image,
            base_digest=base_digest,
            dockerfile=dockerfile,
        )

    # ------------------------------------------------------------------ pieces
    def _network_for(self, spec: ModelSpec, options: BuildOptions) -> str:
        if spec.system_packages:
            options.say(
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

    def _ensure_base(self, base_image: str, options: BuildOptions) -> str:
        """The base image's id; pulled when the engine does not have it (the build itself cannot)."""
        import docker.errors

        try:
            return self.client.images.get(base_image).id
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise BuildError(f"could not inspect base image {base_image}: {exc.explanation or exc}") from None
        options.say(f"pulling base image {base_image}")
        try:
            return self.client.images.pull(base_image, platform=options.platform).id
        except docker.errors.APIError as exc:
            raise BuildError(
                f"base image {base_image} is not in the engine and could not be pulled",
                hint="pull it (docker pull), build it (scripts/build-base-image.sh), or choose another with --base",
                details=f"docker said: {exc.explanation or exc}",
            ) from None

    def env_image_key(self, env_dockerfile: str, *, spec: ModelSpec, lock: Lock, base_id: str, options: BuildOptions) -> str:
        # Comments in the rendered file name the model; they do not change a layer, so two
        # models with the same locks and base share one env image.
        steps = "\n".join(line for line in env_dockerfile.splitlines() if line and not line.startswith("#"))
        material = {
            "mlbuild": __version__,
            "base_id": base_id,
            "server_lock": options.envs.server_lock_digest,
            "model_lock": lock.digest,
            "platform": options.platform,
            "python": spec.python,
            "dockerfile": steps,
        }
        blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:40]

    def _ensure_env_image(
        self,
        env_dockerfile: str,
        env_context: Callable[[str], BuildContext],
        *,
        spec: ModelSpec,
        lock: Lock,
        base_id: str,
        options: BuildOptions,
        env_base_dockerfile: str | None = None,
    ) -> str:
        import docker.errors

        tag = f"{ENV_CACHE_REPOSITORY}:{self.env_image_key(env_dockerfile, spec=spec, lock=lock, base_id=base_id, options=options)}"
        try:
            self.client.images.get(tag)
            options.say(f"env image {tag} (cached)")
            return tag
        except docker.errors.ImageNotFound:
            pass
        network = self._network_for(spec, options)
        if env_base_dockerfile is None:  # a model template may change the env steps: build them as written
            context = env_context(env_dockerfile)
            options.say(f"building env image {tag} (context {context.size_bytes() / 1e6:.1f} MB, network: {network})")
            self.build_context(context, tag=tag, network_mode=network, options=options)
            return tag
        # Our own template: build FROM, system packages and venvs from the Dockerfile, then add
        # the two env layers by extracting each env straight into a container and committing
        # it. Same files as `COPY <kind>-env/`, written once instead of uploaded as a context,
        # copied and committed (about 2 s less for a 230 MB env).
        options.say(f"building env image {tag} (network: {network})")
        image_id = self.build_context(
            BuildContext((ContextEntry("Dockerfile", data=env_base_dockerfile.encode()),)),
            tag=None, network_mode=network, options=options,
        )
        for kind, env_dir in (("server", options.envs.server_env), ("model", options.envs.model_env)):
            image_id = self._commit_layer(image_id, env_layer_tar(kind=kind, env_dir=env_dir, python=spec.python),
                                          f"COPY {kind}-env/ {IMAGE_PATHS[f'{kind}_env_path']}/", options)
        repository, _, key = tag.rpartition(":")
        self.client.images.get(image_id).tag(repository, key)
        return tag

    def _commit_layer(self, image_id: str, files: BuildContext, what: str, options: BuildOptions) -> str:
        """A new image: ``image_id`` plus one layer holding ``files`` (never started, no network)."""
        import docker.errors

        options.say(f"{what} ({files.size_bytes() / 1e6:.1f} MB)")
        # The command is never run: `docker commit` records it as the layer's history line, so
        # it reads like the COPY step it stands for (the app image sets the real CMD).
        command = ["/bin/sh", "-c", f"#(nop) {what} (mlbuild {__version__})"]
        container = self.client.containers.create(image_id, command=command, network_disabled=True)
        try:
            if not self.client.api.put_archive(container.id, "/", files.iter_tar()):
                raise BuildError(f"the Docker engine refused the files of {what}")
            return container.commit(message=f"mlbuild {__version__}: {what}").id
        except docker.errors.APIError as exc:
            raise BuildError(f"the Docker engine failed to add {what}: {exc.explanation or exc}") from None
        finally:
            container.remove(force=True)

    def build_context(self, context: BuildContext, *, tag: str | None, network_mode: str, options: BuildOptions) -> str:
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
                platform=options.platform,
                decode=True,
            )
            for chunk in stream:
                for line in (chunk.get("stream") or "").splitlines():
                    if not line.strip():
                        continue
                    log.append(line)
                    if _STEP_RE.match(line):
                        step = line
                        options.say(line)
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
