"""``OciBackend``: the image assembled in Python, no engine, no container, same digest every time.

Layers (lowest first), matching what the docker backend's Dockerfile produces:

    base (as is) -> user (/etc/passwd, /etc/group + mlbuild 10001) -> server env (venv)
    -> model env (venv) -> runtime -> artefacts (if any) -> model code; config last

Each env is split (``venv.split_env``) into one layer per distribution of >= 16 MiB installed,
ordered by name, then one layer with the rest; every such layer is cached under a key made of
the distribution, its version, the RECORD hashes of its files, platform, Python, epoch and gzip
level, so two models that pin the same numpy share that blob. Which layers an env split into is
cached by what determines it (lock digest, platform, Python, base's python location, epoch,
level): a code-only rebuild finds them without walking the env and writes only the small layers
above them, which are cached by a stat fingerprint of their files. Layers that must be written
are compressed in parallel (zlib releases the GIL), largest first.

Where the image goes is the backend's own configuration (``output``: an OCI layout directory
or a ``.tar`` that ``docker load`` and ``skopeo copy oci-archive:`` both take; ``push``: a
registry reference; ``load``: the local engine), since ``BuildOptions`` is shared with the
docker backend, which publishes through the engine instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform as _host
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._backends import BuildOptions, ImageResult
from .._errors import BuildError, ConfigError
from .._platforms import Platform, parse_platforms
from .._runner import Runner, SubprocessRunner
from .base import BaseImage, open_base, python_minor
from .cache import BlobStore, layer_key
from .image import Descriptor, Healthcheck, NewLayer, RunConfig, build_config, build_index, build_manifest
from .layout import Blob, BuiltImages, DockerEntry, write_archive, write_layout
from .rootfs import DEFAULT_PATH, rootfs_facts
from .tarlayer import GZIP_LEVEL, Entry, LayerBlob, bytes_entry, dir_entry, file_entry, tree_entries
from .users import user_entries
from .venv import DIST_LAYER_MIN_BYTES, MAX_DIST_LAYERS, EnvPart, is_venv_own, split_env, venv_entries

if TYPE_CHECKING:  # pragma: no cover
    from .._lock import Lock
    from .._spec import ModelSpec

__all__ = ["OciBackend", "OciImageResult", "build_oci_image"]

_SKIP_NAMES = {"__pycache__", ".DS_Store"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(_host.machine().lower(), "amd64")


@dataclass(frozen=True)
class OciImageResult(ImageResult):
    digest: str = ""  # manifest digest (one platform) or index digest (several)
    platforms: tuple[str, ...] = ()
    layout: Path | None = None
    archive: Path | None = None
    pushed: str | None = None  # reference@digest
    loaded: str | None = None
    timings: tuple[tuple[str, float], ...] = field(default=(), repr=False)


def _is_skipped(rel: str) -> bool:
    parts = rel.split("/")
    return any(p in _SKIP_NAMES for p in parts) or rel.endswith(_SKIP_SUFFIXES)


# Files an env's RECORD gives no hash for (RECORD itself) and no larger than this are hashed by
# content, so a per-distribution layer's key is the same in every env that installed it.
_HASH_UNRECORDED_MAX = 1 << 20


def _stat_key(st: os.stat_result) -> bytes:
    """A file's identity without reading it. Size and mtime alone miss a file rewritten in place
    with both kept (cp -p, rsync -t, archives with fixed timestamps: new weights of the same
    shape); st_ctime_ns cannot be set by utime and moves on every write or rename, and st_dev with
    st_ino names the file itself."""
    return f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_dev}\0{st.st_ino}\0".encode()


def _content_fingerprint(part: EnvPart) -> str:
    """Identity of an env part's files by content, never by host stat: RECORD's sha256 (and the
    size on disk, so a truncated file is noticed), else the bytes themselves. The env cache is
    written once by install_env and never edited, so RECORD's hashes stand for the files."""
    h = hashlib.sha256()
    for e in sorted(part.entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.kind}\0{e.executable}\0{e.target}\0".encode("utf-8", "surrogateescape"))
        if isinstance(e.source, bytes):
            h.update(hashlib.sha256(e.source).digest())
        elif e.source is not None:
            st = os.stat(e.source)
            recorded = part.record_hashes.get(e.path)
            if recorded:
                h.update(f"{recorded}\0{st.st_size}\0".encode())
            elif st.st_size <= _HASH_UNRECORDED_MAX:
                h.update(hashlib.sha256(Path(e.source).read_bytes()).digest())
            else:
                h.update(_stat_key(st))
    return h.hexdigest()


@dataclass(frozen=True)
class _EnvInput:
    """One installed env on the host and what it becomes in the image."""

    kind: str  # "server-env" | "model-env"
    host: Path
    image_path: str
    lock_digest: str
    added: list[Entry]  # venv scaffolding (and the server's .pth), always in the shared layer


def _fingerprint(entries: Sequence[Entry]) -> str:
    """Cheap identity of a layer's inputs: paths, kinds, modes and file stats (_stat_key).
    A touched-but-equal file costs one rebuild of a small layer, never a wrong one."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.kind}\0{e.executable}\0{e.target}\0".encode("utf-8", "surrogateescape"))
        if isinstance(e.source, bytes):
            h.update(hashlib.sha256(e.source).digest())
        elif e.source is not None:
            h.update(_stat_key(os.stat(e.source)))
    return h.hexdigest()


@dataclass(frozen=True)
class _Plan:
    """What every platform's image shares, computed once per build."""

    spec: Any
    lock: Any
    base_ref: str
    epoch: int
    run: RunConfig
    upper: tuple[tuple[LayerBlob, str], ...]  # runtime, artefacts, code: arch-independent


class OciBackend:
    name = "oci"

    def __init__(
        self,
        *,
        output: str | os.PathLike[str] | None = None,
        push: str | None = None,
        load: bool = False,
        platforms: Sequence[str] | str | None = None,
        cache_dir: Path | None = None,
        runner: Runner | None = None,
        registry_client: Any = None,
        gzip_level: int = GZIP_LEVEL,
        env_installer: Callable[..., Path] | None = None,
        dist_layer_min_bytes: int = DIST_LAYER_MIN_BYTES,
    ) -> None:
        self.output = Path(output) if output is not None else None
        self.push = push
        self.load = load
        self.platforms = platforms
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.runner = runner
        self.registry_client = registry_client
        self.gzip_level = gzip_level
        self.dist_layer_min_bytes = dist_layer_min_bytes
        self._env_installer = env_installer

    # ------------------------------------------------------------------ the interface
    def build(self, spec: ModelSpec, lock: Lock, options: BuildOptions) -> OciImageResult:
        from .._files import select_model_files
        from .._templates import model_template_path, source_date_epoch

        started = time.monotonic()
        timings: list[tuple[str, float]] = []

        def mark(what: str, t0: float) -> float:
            now = time.monotonic()
            timings.append((what, round(now - t0, 4)))
            return now

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
        platforms = parse_platforms(self.platforms) if self.platforms else parse_platforms(options.platform)
        if len(platforms) > 1 and not lock.covers([str(p) for p in platforms]):
            raise ConfigError(
                f"{lock.path} is locked for {', '.join(lock.platforms)}, not for all of {', '.join(map(str, platforms))}",
                hint=f"run `mlbuild lock --platform {','.join(map(str, platforms))}` (or build for the locked platforms)",
            )
        runner = self.runner or SubprocessRunner()
        cache = self.cache_dir or _cache_root()
        store = BlobStore(cache / "oci")
        epoch = source_date_epoch()
        base_ref = options.base_image or spec.resolved_base_image
        t = time.monotonic()

        bases = {plat: open_base(base_ref, plat, runner=runner, cache_dir=cache / "oci", registry_client=self.registry_client)
                 for plat in platforms}
        t = mark("open base", t)
        files = select_model_files(spec)
        run = _run_config(spec, lock, options, bases[platforms[0]])
        upper = self._upper_layers(spec, files, store, epoch)
        plan = _Plan(spec, lock, base_ref, epoch, run, upper)
        t = mark("upper layers", t)

        per_platform = []
        for plat in platforms:
            per_platform.append(self._platform_image(plan, plat, bases[plat], options, store, cache, runner, timings))
        t = mark("platform images", t)

        images = _assemble(per_platform, base_family=per_platform[0][0].family)
        outputs = self._publish(images, options.tag, epoch, cache, runner)
        mark("publish", t)

        first_blobs = {b.digest: b.size for b in per_platform[0][1]}
        return OciImageResult(
            tag=options.tag,
            image_id=images.digest,
            size_bytes=sum(first_blobs.values()),
            seconds=time.monotonic() - started,
            lock_digest=lock.digest,
            base_image=base_ref,
            excluded=tuple(f"{path.as_posix()} ({why})" for path, why in files.excluded),
            backend="oci",
            base_digest=bases[platforms[0]].manifest_digest,
            digest=images.digest,
            platforms=tuple(str(p) for p in platforms),
            timings=tuple(timings),
            **outputs,
        )

    # ------------------------------------------------------------------ layers
    def _layer(self, store: BlobStore, key: str | None, entries: Callable[[], list[Entry]], epoch: int) -> LayerBlob:
        return store.layer(key, entries, epoch=epoch, level=self.gzip_level)

    def _upper_layers(self, spec: Any, files: Any, store: BlobStore, epoch: int) -> tuple[tuple[LayerBlob, str], ...]:
        from .._context import runtime_package_dir
        from .._templates import IMAGE_PATHS, MODEL_TEMPLATE_NAME

        model_dir = IMAGE_PATHS["model_dir_path"]
        runtime = tree_entries(runtime_package_dir(), f"{IMAGE_PATHS['runtime_path']}/mlbuild_runtime", skip=_is_skipped)
        directory = Path(spec.directory)
        artifacts = [
            file_entry(f"{model_dir}/{p.as_posix()}", directory / p)
            for p in files.artifacts if p.as_posix() != MODEL_TEMPLATE_NAME
        ]
        code = [dir_entry(model_dir)] + [
            file_entry(f"{model_dir}/{p.as_posix()}", directory / p)
            for p in files.code if p.as_posix() != MODEL_TEMPLATE_NAME
        ]
        wanted = [("runtime", runtime, "COPY runtime/ /opt/mlbuild/runtime/")]
        if artifacts:
            wanted.append(("artifacts", artifacts, f"COPY model/artifacts/ {model_dir}/"))
        wanted.append(("code", code, f"COPY model/code/ {model_dir}/"))
        out = []
        for kind, entries, created_by in wanted:
            key = layer_key(kind=kind, fp=_fingerprint(entries), epoch=epoch, level=self.gzip_level)
            out.append((self._layer(store, key, lambda e=entries: e, epoch), f"mlbuild {__version__}: {created_by}"))
        return tuple(out)

    def _env_layers(
        self, envs: Sequence[_EnvInput], store: BlobStore, minor: str, epoch: int, common: dict[str, Any]
    ) -> list[tuple[LayerBlob, str]]:
        """Every env's layers, in image order: from the group cache, else split and written."""
        split_params = f"{self.dist_layer_min_bytes}/{MAX_DIST_LAYERS}"
        found: dict[int, list[tuple[LayerBlob, str]]] = {}
        pending: list[tuple[int, str, list[tuple[str, EnvPart, str]]]] = []  # env index, group key, parts
        for i, env in enumerate(envs):
            group = layer_key(kind=env.kind, lock=env.lock_digest, added=_fingerprint(env.added), split=split_params, **common)
            hit = store.cached_group(group)
            if hit is not None:
                found[i] = hit
                continue
            if not env.host.is_dir():
                raise BuildError(f"installed environment {env.host} is missing", hint="build again; if it persists, clear ~/.cache/mlbuild")
            skip = lambda rel: _is_skipped(rel) or is_venv_own(rel, minor)  # noqa: E731
            tree = tree_entries(env.host, env.image_path, skip=skip)
            parts = split_env([*tree, *env.added], env.host, env.image_path, python_minor=minor,
                              min_bytes=self.dist_layer_min_bytes, max_layers=MAX_DIST_LAYERS)
            keyed = []
            for part in parts:
                key = layer_key(kind=env.kind, dist=part.dist or "", version=part.version or "",
                                fp=_content_fingerprint(part), **common)
                what = f"COPY {env.kind}/ {env.image_path}/" + (f" ({part.dist} {part.version})" if part.dist else "")
                keyed.append((key, part, f"mlbuild {__version__}: {what}"))
            pending.append((i, group, keyed))

        # Cache hits cost nothing; the rest compress in parallel (zlib and sha256 release the
        # GIL), largest first so the longest job never starts last. Order never changes bytes.
        jobs = [(key, part) for _, _, keyed in pending for key, part, _ in keyed if store.cached_layer(key) is None]
        jobs.sort(key=lambda j: (-j[1].size, j[0]))
        if jobs:
            with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
                # Each blob is remembered under its key as it is written; the loop below finds it.
                for f in [pool.submit(self._layer, store, key, (lambda p=part: p.entries), epoch) for key, part in jobs]:
                    f.result()
        for i, group, keyed in pending:
            layers = [(self._layer(store, key, (lambda p=part: p.entries), epoch), created) for key, part, created in keyed]
            store.remember_group(group, layers)
            found[i] = layers
        return [layer for i in range(len(envs)) for layer in found[i]]

    def _env_dirs(self, plat: Platform, options: BuildOptions, spec: Any, lock: Any, runner: Runner) -> tuple[Path, Path, str]:
        from .._image import MODEL_ENV_PATH, SERVER_ENV_PATH, _file_digest, installed_env
        from .._server_env import server_lock_path

        if str(plat) == str(parse_platforms(options.platform)[0]):
            return options.envs.server_env, options.envs.model_env, options.envs.server_lock_digest
        # Another platform of a multi-arch build: wheels for *that* target, from the same locks.
        install = self._env_installer or installed_env
        server_lock = Path(server_lock_path())
        server_digest = _file_digest(server_lock)
        server = install("server", server_lock, server_digest, python=spec.python, platform=str(plat),
                         env_path_in_image=SERVER_ENV_PATH, runner=runner, say=options.say)
        model = install("model", Path(lock.path), lock.digest, python=spec.python, platform=str(plat),
                        env_path_in_image=MODEL_ENV_PATH, runner=runner, say=options.say)
        return server, model, server_digest

    def _platform_image(
        self, plan: _Plan, plat: Platform, base: BaseImage, options: BuildOptions, store: BlobStore, cache: Path,
        runner: Runner, timings: list[tuple[str, float]],
    ) -> tuple[BaseImage, list[Blob], Descriptor, bytes, DockerEntry]:
        from .._context import RUNTIME_PTH_NAME
        from .._templates import IMAGE_PATHS

        t0 = time.monotonic()
        minor = python_minor(base, plan.spec.python)
        if plan.lock.python and ".".join(plan.lock.python.split(".")[:2]) != minor:
            raise ConfigError(
                f"{plan.lock.path} was locked for Python {plan.lock.python} but the image has Python {minor} ({base.reference})",
                hint="run `mlbuild lock` again for this Python, or use a matching base image",
            )
        # Warnings about the base's layers (see rootfs) go where build progress goes.
        facts = rootfs_facts(base, minor, cache / "oci", warn=options.say)
        timings.append((f"{plat}: base", round(time.monotonic() - t0, 4)))
        t0 = time.monotonic()
        server_dir, model_dir, server_digest = self._env_dirs(plat, options, plan.spec, plan.lock, runner)
        full_version = base.env.get("PYTHON_VERSION") or None
        pth = (IMAGE_PATHS["runtime_path"] + "\n").encode()

        common = dict(platform=str(plat), python=minor, epoch=plan.epoch, level=self.gzip_level, mlbuild=__version__)
        server_path, model_path = IMAGE_PATHS["server_env_path"], IMAGE_PATHS["model_env_path"]
        envs = []
        for kind, host, image_path, lock_digest, extra in (
            ("server-env", server_dir, server_path, server_digest,
             [bytes_entry(f"{server_path}/lib/python{minor}/site-packages/{RUNTIME_PTH_NAME}", pth)]),
            ("model-env", model_dir, model_path, plan.lock.digest, []),
        ):
            # What mlbuild adds to the installed tree (venv scaffolding, .pth) is part of the key
            # by content: a change there can never be served a stale cached layer.
            added = [*venv_entries(image_path, facts, python_minor=minor, python_version=full_version), *extra]
            envs.append(_EnvInput(kind, Path(host), image_path, lock_digest, added))
        env_layers = self._env_layers(envs, store, minor, plan.epoch, common)
        user_layer = self._layer(store, None, lambda: user_entries(facts), plan.epoch)
        timings.append((f"{plat}: env layers", round(time.monotonic() - t0, 4)))

        new = [(user_layer, f"mlbuild {__version__}: user mlbuild (uid 10001)"), *env_layers, *plan.upper]
        family = base.family
        run = plan.run
        if base.manifest_digest:  # this platform's base, exactly (a docker-archive has none)
            labels = (*run.labels, ("org.opencontainers.image.base.digest", base.manifest_digest))
            run = dataclasses.replace(run, labels=tuple(sorted(labels)))
        config = build_config(base.config, run, [NewLayer(b.diff_id, c) for b, c in new], platform=plat, epoch=plan.epoch)
        config_desc = Descriptor.of(family.config, config)
        layer_descs = [Descriptor(l.media_type, l.digest, l.size, extra=l.extra) for l in base.layers]
        layer_descs += [Descriptor(family.layer_gzip, b.digest, b.size) for b, _ in new]
        manifest = build_manifest(family, config_desc, layer_descs)

        blobs = [Blob(l.digest, l.size, l.open, l.origin, verify=True) for l in base.layers]
        blobs += [Blob(b.digest, b.size, (lambda p=b.path: open(p, "rb")), f"layer {b.digest}", path=b.path) for b, _ in new]
        blobs.append(Blob(config_desc.digest, config_desc.size, _bytes_opener(config), "image config"))
        docker = DockerEntry(config_desc.digest, tuple(d.digest for d in layer_descs), plat)
        return base, blobs, Descriptor.of(family.manifest, manifest, platform=plat), manifest, docker

    # ------------------------------------------------------------------ outputs
    def _publish(self, images: BuiltImages, tag: str, epoch: int, cache: Path, runner: Runner) -> dict[str, Any]:
        out: dict[str, Any] = {}
        target = self.output
        if target is None and not self.load and not self.push:
            target = cache / "oci" / "images" / tag.replace("/", "_").replace(":", "_")
        if target is not None:
            if target.suffix == ".tar":
                out["archive"] = write_archive(target, images, tag, epoch=epoch, host_arch=_HOST_ARCH)
            else:
                out["layout"] = write_layout(target, images, tag)
        if self.load:
            from .publish import docker_load

            archive = out.get("archive")
            if archive is None:
                with tempfile.TemporaryDirectory(dir=cache / "oci" / "tmp") as tmp:
                    archive = write_archive(Path(tmp) / "image.tar", images, tag, epoch=epoch, host_arch=_HOST_ARCH)
                    out["loaded"] = docker_load(archive, runner)
            else:
                out["loaded"] = docker_load(archive, runner)
        if self.push:
            from .publish import push_layout

            layout = out.get("layout")
            if layout is None:
                with tempfile.TemporaryDirectory(dir=cache / "oci" / "tmp") as tmp:
                    layout = write_layout(Path(tmp) / "layout", images, tag)
                    digest = push_layout(layout, self.push, client=self.registry_client)
            else:
                digest = push_layout(layout, self.push, client=self.registry_client)
            out["pushed"] = f"{self.push}@{digest}"
        return out


def _bytes_opener(data: bytes) -> Callable[[], Any]:
    import io

    return lambda: io.BytesIO(data)


def _assemble(per_platform: list[tuple[BaseImage, list[Blob], Descriptor, bytes, DockerEntry]], *, base_family: Any) -> BuiltImages:
    blobs: dict[str, Blob] = {}
    for _, plat_blobs, desc, manifest, _ in per_platform:
        for b in plat_blobs:
            blobs.setdefault(b.digest, b)
        if len(per_platform) > 1:
            blobs[desc.digest] = Blob(desc.digest, desc.size, _bytes_opener(manifest), "platform manifest")
    docker = tuple(p[4] for p in per_platform)
    if len(per_platform) == 1:
        _, _, desc, manifest, _ = per_platform[0]
        return BuiltImages(desc.media_type, manifest, tuple(blobs.values()), docker)
    index = build_index(base_family, [p[2] for p in per_platform])
    return BuiltImages(base_family.index, index, tuple(blobs.values()), docker)


def _run_config(spec: Any, lock: Any, options: BuildOptions, base: BaseImage) -> RunConfig:
    """ENV/LABEL/USER/CMD/HEALTHCHECK exactly as the docker backend's Dockerfile sets them."""
    from .._templates import IMAGE_PATHS, ContextLayout, image_variables

    v = image_variables(spec, lock, ContextLayout(source=options.source, revision=options.revision, base_image=base.name))
    env = tuple(v["env"])
    if "PATH" not in base.env:
        # The engine's builder writes its default PATH into the config when the base has none;
        # so do we, and runtimes that add no default PATH still find python3.
        env = (("PATH", DEFAULT_PATH), *env)
    return RunConfig(
        env=env,
        cmd=tuple(v["cmd"]),
        user=f"{v['uid']}:{v['uid']}",
        working_dir=IMAGE_PATHS["model_dir_path"],
        exposed_ports=(f"{v['port']}/tcp",),
        labels=tuple(v["labels"]),
        # Same numbers as the Dockerfile's HEALTHCHECK line.
        healthcheck=Healthcheck(("CMD", *v["healthcheck"]), interval_s=10, timeout_s=5, start_period_s=60, retries=3),
    )


def _cache_root() -> Path:
    from .._image import cache_root

    return cache_root()


def build_oci_image(
    path: str | os.PathLike[str],
    *,
    tag: str | None = None,
    base_image: str | None = None,
    platform: str = "linux/amd64",
    python: str | None = None,
    output: Path | None = None,
    push: str | None = None,
    load: bool = False,
    quiet: bool = False,
    runner: Runner | None = None,
    progress: Callable[[str], None] | None = None,
    cache_dir: Path | None = None,
) -> OciImageResult:
    """The oci backend behind ``mlbuild image --backend oci``: spec -> lock -> envs -> layers.

    ``platform`` may name several (``linux/amd64,linux/arm64``): one image each, plus an index.
    The lock must cover all of them; a missing lock is created for all of them here."""
    from .._image import build_image
    from .._lock import ensure_lock
    from .._spec import SpecOverrides, load_spec

    platforms = parse_platforms(platform)
    names = tuple(str(p) for p in platforms)
    if len(platforms) > 1:
        overrides = SpecOverrides(python=python, base_image=base_image) if (python or base_image) else None
        ensure_lock(load_spec(Path(path), overrides=overrides), platforms=names, runner=runner)
    backend = OciBackend(output=output, push=push, load=load, platforms=names, cache_dir=cache_dir, runner=runner)
    # build_image installs the first platform's envs; the backend installs the others'.
    return build_image(  # type: ignore[return-value]
        path, tag=tag, base_image=base_image, platform=names[0], python=python, quiet=quiet,
        runner=runner, backend=backend, progress=progress,
    )
