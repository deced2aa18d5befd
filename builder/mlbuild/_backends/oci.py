"""``OciBackend``: the image assembled in Python, no engine, no container, same digest every time.

Layers (lowest first), matching what the docker backend's Dockerfile produces:

    base (as is) -> user (/etc/passwd, /etc/group + mlbuild 10001) -> server env (venv)
    -> model env (venv) -> runtime -> artefacts (if any) -> model code; config last

How env and upper layers are split and cached: oci_layers. The backend returns an unpublished
``OciImage`` (blobs, manifest or index); where it goes is a publisher's business (_publish).
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .._cache import oci_cache
from .._errors import BuildError, ConfigError
from .._imagefacts import HEALTHCHECK_TIMING, MODEL_ENV_PATH, SERVER_ENV_PATH, UID, USER_NAME, runtime_pth
from .._oci.base import BaseImage, open_base, python_minor
from .._oci.cache import BlobStore
from .._oci.image import Descriptor, Healthcheck, NewLayer, RunConfig, build_config, build_index, build_manifest
from .._oci.layout import Blob, BuiltImages, DockerEntry
from .._oci.mediatypes import Family
from .._oci.rootfs import DEFAULT_PATH, rootfs_facts
from .._oci.tarlayer import GZIP_LEVEL, bytes_entry
from .._platforms import parse_platform
from .._resources import model_template_path, runtime_package_dir
from .._result import OciImageResult, Published
from .._runner import Runner, SubprocessRunner
from .._version import __version__
from .oci_layers import EnvInput, Layer, env_layers, upper_layers
from .oci_users import user_entries
from .oci_venv import DIST_LAYER_MIN_BYTES, venv_entries

if TYPE_CHECKING:  # pragma: no cover
    from .._oci.registry import RegistryClient
    from .._plan import BuildPlan

__all__ = ["OciBackend", "OciImage"]


@dataclass(frozen=True)
class _PlatformImage:
    base: BaseImage
    blobs: tuple[Blob, ...]
    descriptor: Descriptor  # the platform manifest's descriptor
    manifest: bytes
    docker: DockerEntry


@dataclass(frozen=True)
class OciImage:
    """A built, unpublished image: every blob it needs and its top manifest (or index)."""

    images: BuiltImages
    tag: str
    epoch: int
    platforms: tuple[str, ...]
    size_bytes: int  # the first platform's blobs
    lock_digest: str
    base_image: str
    base_digest: str | None
    excluded: tuple[str, ...]
    oci_dir: Path  # the cache the blobs live in (publishers write their temporary files there)
    timings: tuple[tuple[str, float], ...] = field(default=(), repr=False)

    @property
    def digest(self) -> str:
        return self.images.digest

    def result(self, published: Published, *, seconds: float, publish_seconds: float) -> OciImageResult:
        return OciImageResult(
            tag=self.tag, image_id=self.digest, size_bytes=self.size_bytes, seconds=seconds,
            lock_digest=self.lock_digest, base_image=self.base_image, excluded=self.excluded, backend="oci",
            base_digest=self.base_digest, digest=self.digest, platforms=self.platforms,
            timings=(*self.timings, ("publish", round(publish_seconds, 4))),
            layout=published.layout, archive=published.archive, pushed=published.pushed, loaded=published.loaded,
        )


class OciBackend:
    name = "oci"

    def __init__(
        self,
        *,
        cache_dir: Path | None = None,
        runner: Runner | None = None,
        registry_client: RegistryClient | None = None,
        gzip_level: int = GZIP_LEVEL,
        dist_layer_min_bytes: int = DIST_LAYER_MIN_BYTES,
    ) -> None:
        # cache_dir is a cache root (blobs under <cache_dir>/oci); default: _cache.oci_cache().
        self.oci_dir = Path(cache_dir) / "oci" if cache_dir else oci_cache()
        self.runner = runner
        self.registry_client = registry_client
        self.gzip_level = gzip_level
        self.dist_layer_min_bytes = dist_layer_min_bytes

    def build(self, plan: BuildPlan) -> OciImage:
        timings: list[tuple[str, float]] = []

        def mark(what: str, t0: float) -> float:
            now = time.monotonic()
            timings.append((what, round(now - t0, 4)))
            return now

        spec = plan.spec
        if spec.system_packages:
            raise BuildError(
                f"the oci backend cannot install system packages ({', '.join(spec.system_packages)}): it runs no container",
                hint="use --backend docker, or a base image that already has them",
            )
        custom = model_template_path(spec)
        if custom is not None:
            raise BuildError(
                f"{custom}: a custom Dockerfile template needs the docker backend",
                hint="use --backend docker, or remove the template to build with --backend oci",
            )
        runner = self.runner or SubprocessRunner()
        store = BlobStore(self.oci_dir)
        t = time.monotonic()
        bases = {plat: open_base(plan.base_image, parse_platform(plat), runner=runner, cache_dir=self.oci_dir,
                                 registry_client=self.registry_client) for plat in plan.platforms}
        t = mark("open base", t)
        upper = upper_layers(plan, runtime_package_dir(), store, self.gzip_level)
        t = mark("upper layers", t)
        first = bases[plan.platforms[0]]
        run = _run_config(plan, first)
        per_platform = [self._platform_image(plan, i, bases[envs.platform], run, upper, store, timings)
                        for i, envs in enumerate(plan.envs)]
        mark("platform images", t)
        images = _assemble(per_platform, base_family=first.family)
        return OciImage(
            images=images,
            tag=plan.tag,
            epoch=plan.epoch,
            platforms=plan.platforms,
            size_bytes=sum({b.digest: b.size for b in per_platform[0].blobs}.values()),
            lock_digest=plan.lock.digest,
            base_image=plan.base_image,
            base_digest=first.manifest_digest,
            excluded=tuple(f"{path.as_posix()} ({why})" for path, why in plan.files.excluded),
            oci_dir=self.oci_dir,
            timings=tuple(timings),
        )

    def _platform_image(
        self, plan: BuildPlan, index: int, base: BaseImage, run: RunConfig, upper: tuple[Layer, ...],
        store: BlobStore, timings: list[tuple[str, float]],
    ) -> _PlatformImage:
        envs = plan.envs[index]
        plat = parse_platform(envs.platform)
        t0 = time.monotonic()
        minor = python_minor(base, plan.spec.python)
        if plan.lock.python and ".".join(plan.lock.python.split(".")[:2]) != minor:
            raise ConfigError(
                f"{plan.lock.path} was locked for Python {plan.lock.python} but the image has Python {minor} ({base.reference})",
                hint="run `mlbuild lock` again for this Python, or use a matching base image",
            )
        # Warnings about the base's layers (see rootfs) go where build progress goes.
        facts = rootfs_facts(base, minor, self.oci_dir, warn=plan.say)
        timings.append((f"{plat}: base", round(time.monotonic() - t0, 4)))
        t0 = time.monotonic()
        full_version = base.env.get("PYTHON_VERSION") or None
        common = dict(platform=str(plat), python=minor, epoch=plan.epoch, level=self.gzip_level, mlbuild=__version__)
        inputs = []
        for kind, host, image_path, lock_digest, extra in (
            ("server-env", envs.server_env, SERVER_ENV_PATH, envs.server_lock_digest,
             [bytes_entry(*runtime_pth(SERVER_ENV_PATH, minor))]),
            ("model-env", envs.model_env, MODEL_ENV_PATH, plan.lock.digest, []),
        ):
            # What mlbuild adds to the installed tree (venv scaffolding, .pth) is part of the key
            # by content: a change there can never be served a stale cached layer.
            added = (*venv_entries(image_path, facts, python_minor=minor, python_version=full_version), *extra)
            inputs.append(EnvInput(kind, Path(host), image_path, lock_digest, added))
        layers = env_layers(inputs, store, minor=minor, epoch=plan.epoch, level=self.gzip_level,
                            dist_layer_min_bytes=self.dist_layer_min_bytes, common=common)
        user_layer = store.layer(None, lambda: user_entries(facts), epoch=plan.epoch, level=self.gzip_level)
        timings.append((f"{plat}: env layers", round(time.monotonic() - t0, 4)))

        new = [(user_layer, f"mlbuild {__version__}: user {USER_NAME} (uid {UID})"), *layers, *upper]
        family = base.family
        if base.manifest_digest:  # this platform's base, exactly (a docker-archive has none)
            labels = (*run.labels, ("org.opencontainers.image.base.digest", base.manifest_digest))
            run = dataclasses.replace(run, labels=tuple(sorted(labels)))
        config = build_config(base.config, run, [NewLayer(b.diff_id, c) for b, c in new], platform=plat, epoch=plan.epoch)
        config_desc = Descriptor.of(family.config, config)
        layer_descs = [Descriptor(l.media_type, l.digest, l.size, extra=l.extra) for l in base.layers]
        layer_descs += [Descriptor(family.layer_gzip, b.digest, b.size) for b, _ in new]
        manifest = build_manifest(family, config_desc, layer_descs)

        blobs = [Blob(l.digest, l.size, l.open, l.origin, verify=True) for l in base.layers]
        blobs += [Blob(b.digest, b.size, _file_opener(b.path), f"layer {b.digest}", path=b.path) for b, _ in new]
        blobs.append(Blob(config_desc.digest, config_desc.size, _bytes_opener(config), "image config"))
        docker = DockerEntry(config_desc.digest, tuple(d.digest for d in layer_descs), plat)
        return _PlatformImage(base, tuple(blobs), Descriptor.of(family.manifest, manifest, platform=plat), manifest, docker)


def _file_opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: open(path, "rb")


def _bytes_opener(data: bytes) -> Callable[[], IO[bytes]]:
    return lambda: io.BytesIO(data)


def _assemble(per_platform: list[_PlatformImage], *, base_family: Family) -> BuiltImages:
    blobs: dict[str, Blob] = {}
    for p in per_platform:
        for b in p.blobs:
            blobs.setdefault(b.digest, b)
        if len(per_platform) > 1:
            blobs[p.descriptor.digest] = Blob(p.descriptor.digest, p.descriptor.size, _bytes_opener(p.manifest),
                                              "platform manifest")
    docker = tuple(p.docker for p in per_platform)
    if len(per_platform) == 1:
        only = per_platform[0]
        return BuiltImages(only.descriptor.media_type, only.manifest, tuple(blobs.values()), docker)
    index = build_index(base_family, [p.descriptor for p in per_platform])
    return BuiltImages(base_family.index, index, tuple(blobs.values()), docker)


def _run_config(plan: BuildPlan, base: BaseImage) -> RunConfig:
    """ENV/LABEL/USER/CMD/HEALTHCHECK exactly as the docker backend's Dockerfile sets them."""
    facts = plan.facts(base_image=base.name)
    env = facts.env
    if "PATH" not in base.env:
        # The engine's builder writes its default PATH into the config when the base has none;
        # so do we, and runtimes that add no default PATH still find python3.
        env = (("PATH", DEFAULT_PATH), *env)
    interval, timeout, start_period, retries = HEALTHCHECK_TIMING
    return RunConfig(
        env=env,
        cmd=facts.cmd,
        user=f"{facts.uid}:{facts.uid}",
        working_dir=facts.workdir,
        exposed_ports=(f"{facts.port}/tcp",),
        labels=facts.labels,
        healthcheck=Healthcheck(("CMD", *facts.healthcheck), interval_s=interval, timeout_s=timeout,
                                start_period_s=start_period, retries=retries),
    )
