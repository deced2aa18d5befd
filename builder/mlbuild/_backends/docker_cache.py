"""The docker backend's caches in the engine, beside its build (docker.py): images tagged by a
digest of everything that determines them, found again by that tag.

Env image (ko-style): the lower half of the image (base, system packages, venvs, server env,
model env) depends only on the base image, the two locks, the platform and the template's lower
blocks. It is built once into ``mlbuild-cache/env:<key>`` and the model's image is built FROM it
with a small context (runtime, artefacts, code): a code-only rebuild sends kilobytes.

App image: the model's image itself, remembered as ``mlbuild-cache/app:<key>`` where the key
covers the rendered Dockerfile (which names the env image) and every context entry by path,
mode and file identity (size, mtimes, inode: _context's files are read at build time, so a
touched-but-equal file costs one build, never a stale image). A rebuild with nothing changed
tags that image and asks the engine to build nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .._context import BuildContext, ContextEntry, env_layer_tar
from .._errors import BuildError
from .._imagefacts import IMAGE_PATHS
from .._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .._plan import BuildPlan, Progress


class Engine(Protocol):
    """What the caches need of the docker backend (DockerBackend is one)."""

    client: Any

    def network_for(self, spec: Any, plan: BuildPlan) -> str: ...

    def build_context(
        self, context: BuildContext, *, tag: str | None, network_mode: str, platform: str, say: Progress,
    ) -> str: ...

__all__ = [
    "APP_CACHE_REPOSITORY", "ENV_CACHE_REPOSITORY", "Engine", "cached_app_image", "context_key", "ensure_env_image",
    "env_image_key", "remember_app_image",
]

ENV_CACHE_REPOSITORY = "mlbuild-cache/env"
APP_CACHE_REPOSITORY = "mlbuild-cache/app"


def _split_tag(tag: str) -> tuple[str, str]:
    """``repository, tag`` of ``name[:tag]`` (a ``:`` before the last ``/`` is a registry port)."""
    repository, sep, name = tag.rpartition(":")
    if not sep or "/" in name:
        return tag, "latest"
    return repository, name


def context_key(context: BuildContext) -> str:
    h = hashlib.sha256(f"mlbuild {__version__}\0".encode())
    for e in context.entries:
        h.update(f"{e.arcname}\0{e.link}\0{e.executable}\0{e.is_dir}\0".encode("utf-8", "surrogateescape"))
        if e.data is not None:
            h.update(hashlib.sha256(e.data).digest())
        elif e.source is not None:
            st = os.stat(e.source)
            h.update(f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_dev}\0{st.st_ino}\0".encode())
    return h.hexdigest()[:40]


def cached_app_image(backend: Engine, key: str, plan: BuildPlan) -> str | None:
    """The image id built before from exactly this context, now tagged ``plan.tag``; else None."""
    import docker.errors

    try:
        image = backend.client.images.get(f"{APP_CACHE_REPOSITORY}:{key}")
    except docker.errors.ImageNotFound:
        return None
    image.tag(*_split_tag(plan.tag))
    plan.say(f"{plan.tag}: nothing changed since the last build (cached as {APP_CACHE_REPOSITORY}:{key})")
    return str(image.id)


def remember_app_image(backend: Engine, image_id: str, key: str) -> None:
    backend.client.images.get(image_id).tag(APP_CACHE_REPOSITORY, key)


def env_image_key(env_dockerfile: str, *, base_id: str, plan: BuildPlan) -> str:
    # Comments in the rendered file name the model; they do not change a layer, so two
    # models with the same locks and base share one env image.
    steps = "\n".join(line for line in env_dockerfile.splitlines() if line and not line.startswith("#"))
    material = {
        "mlbuild": __version__,
        "base_id": base_id,
        "server_lock": plan.envs[0].server_lock_digest,
        "model_lock": plan.lock.digest,
        "platform": plan.platforms[0],
        "python": plan.spec.python,
        "dockerfile": steps,
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:40]


def ensure_env_image(
    backend: Engine,
    env_dockerfile: str,
    env_context: Callable[[str], BuildContext],
    *,
    base_id: str,
    plan: BuildPlan,
    env_base_dockerfile: str | None = None,
) -> str:
    """The env image's tag: from the engine when it has it, else built now."""
    import docker.errors

    tag = f"{ENV_CACHE_REPOSITORY}:{env_image_key(env_dockerfile, base_id=base_id, plan=plan)}"
    try:
        backend.client.images.get(tag)
        plan.say(f"env image {tag} (cached)")
        return tag
    except docker.errors.ImageNotFound:
        pass
    network = backend.network_for(plan.spec, plan)
    if env_base_dockerfile is None:  # a model template may change the env steps: build them as written
        context = env_context(env_dockerfile)
        plan.say(f"building env image {tag} (context {context.size_bytes() / 1e6:.1f} MB, network: {network})")
        backend.build_context(context, tag=tag, network_mode=network, platform=plan.platforms[0], say=plan.say)
        return tag
    # Our own template: build FROM, system packages and venvs from the Dockerfile, then add
    # the two env layers by extracting each env straight into a container and committing
    # it. Same files as `COPY <kind>-env/`, written once instead of uploaded as a context,
    # copied and committed (about 2 s less for a 230 MB env).
    plan.say(f"building env image {tag} (network: {network})")
    image_id = backend.build_context(
        BuildContext((ContextEntry("Dockerfile", data=env_base_dockerfile.encode()),)),
        tag=None, network_mode=network, platform=plan.platforms[0], say=plan.say,
    )
    for kind, env_dir in (("server", plan.envs[0].server_env), ("model", plan.envs[0].model_env)):
        image_id = commit_layer(backend, image_id, env_layer_tar(kind=kind, env_dir=env_dir, python=plan.spec.python),
                                f"COPY {kind}-env/ {IMAGE_PATHS[f'{kind}_env_path']}/", plan)
    backend.client.images.get(image_id).tag(*_split_tag(tag))
    return tag


def commit_layer(backend: Engine, image_id: str, files: BuildContext, what: str, plan: BuildPlan) -> str:
    """A new image: ``image_id`` plus one layer holding ``files`` (never started, no network)."""
    import docker.errors

    plan.say(f"{what} ({files.size_bytes() / 1e6:.1f} MB)")
    # The command is never run: `docker commit` records it as the layer's history line, so
    # it reads like the COPY step it stands for (the app image sets the real CMD).
    command = ["/bin/sh", "-c", f"#(nop) {what} (mlbuild {__version__})"]
    container = backend.client.containers.create(image_id, command=command, network_disabled=True)
    try:
        if not backend.client.api.put_archive(container.id, "/", files.iter_tar()):
            raise BuildError(f"the Docker engine refused the files of {what}")
        return container.commit(message=f"mlbuild {__version__}: {what}").id
    except docker.errors.APIError as exc:
        raise BuildError(f"the Docker engine failed to add {what}: {exc.explanation or exc}") from None
    finally:
        container.remove(force=True)
