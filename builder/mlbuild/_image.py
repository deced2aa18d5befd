"""build_image(): model dir -> ModelSpec -> Lock -> installed envs -> backend -> ImageResult.

The envs are installed on the host (hermetic build: the image build reaches no network) into
a cache keyed by what determines their content - the lock's digest, the platform and the
Python - and reused as they are when present. install_env renames a finished env into place,
so an interrupted install never leaves a half env that a later build would trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ._backends import Backend, BuildOptions, EnvDirs, ImageResult, ProgressCallback
from ._errors import BuildError, ConfigError
from ._runner import Runner

__all__ = ["build_image", "cache_root", "check_tag", "installed_env", "default_tag"]

SERVER_ENV_PATH = "/opt/mlbuild/server-env"
MODEL_ENV_PATH = "/opt/mlbuild/model-env"


def cache_root() -> Path:
    """MLBUILD_CACHE_DIR, else $XDG_CACHE_HOME/mlbuild, else ~/.cache/mlbuild."""
    explicit = os.environ.get("MLBUILD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlbuild"


def _file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def installed_env(
    kind: str,
    requirements_file: Path,
    digest: str,
    *,
    python: str,
    platform: str,
    env_path_in_image: str,
    runner: Runner | None = None,
    say: ProgressCallback = lambda _line: None,
) -> Path:
    """The root of an installed env for ``requirements_file`` (a lock), from the cache or new."""
    from ._envs import install_env
    from ._platforms import parse_platform

    slug = platform.replace("/", "-")
    key = digest.split(":", 1)[-1][:24]
    final = cache_root() / "envs" / f"{kind}-py{python}-{slug}-{key}"
    if final.is_dir():
        return final
    say(f"installing the {kind} env ({requirements_file.name}) for {platform}, Python {python}")
    # install_env assembles beside ``final`` and renames it into place: never half-written.
    install_env(
        requirements_file,
        final,
        python=python,
        platform=parse_platform(platform),
        env_path_in_image=env_path_in_image,
        runner=runner,
    )
    return final


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


def default_tag(name: str, version: str) -> str:
    return f"{name}:{version}"


def _revision(directory: Path, runner: Runner | None) -> str | None:
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    if runner is None or shutil.which("git") is None:
        return None
    try:
        result = runner.run(["git", "-C", str(directory), "rev-parse", "HEAD"], check=False, timeout=10)
    except Exception:  # noqa: BLE001 - the revision label is a nicety, never a build failure
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and len(sha) in (40, 64) else None


def _source() -> str | None:
    """The org.opencontainers.image.source label: MLBUILD_SOURCE_URL, else GitHub's
    GITHUB_SERVER_URL/GITHUB_REPOSITORY, else None.

    Labels are public, and CI variables carry tokens: GitLab's CI_REPOSITORY_URL, the obvious
    thing to put in MLBUILD_SOURCE_URL, is ``https://gitlab-ci-token:TOKEN@host/group/project.git``.
    So the user-info, the query and the fragment of the URL are silently dropped (the label
    names the repository; none of them is part of that). A git remote URL is never read here,
    for the same reason."""
    value = os.environ.get("MLBUILD_SOURCE_URL")
    if not value:
        server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
        value = f"{server}/{repo}" if server and repo else None
    return None if value is None else _public_url(value)


def _public_url(value: str) -> str:
    """``value`` without user-info, query or fragment when it is a ``scheme://`` URL; as it is
    otherwise (the label's own check refuses what cannot be a label value)."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}"


def build_image(
    path: str | os.PathLike[str],
    *,
    tag: str | None = None,
    base_image: str | None = None,
    platform: str = "linux/amd64",
    python: str | None = None,
    quiet: bool = False,
    runner: Runner | None = None,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
    env_cache: bool = True,
) -> ImageResult:
    """Build the model directory at ``path`` into an image; returns what was built."""
    from ._files import select_model_files
    from ._lock import ensure_lock
    from ._platforms import parse_platform
    from ._runner import SubprocessRunner
    from ._server_env import server_lock_path
    from ._spec import SpecOverrides, load_spec

    started = time.monotonic()  # seconds in the result cover the whole build, lock included
    if tag is not None:
        check_tag(tag)  # before the lock and the installs, which cost minutes
    platform = str(parse_platform(platform))
    say: ProgressCallback = (lambda _line: None) if quiet or progress is None else progress
    runner = runner or SubprocessRunner()
    overrides = None
    if base_image is not None or python is not None:
        overrides = SpecOverrides(python=python, base_image=base_image)
    spec = load_spec(Path(path), overrides=overrides)
    lock = ensure_lock(spec, platforms=(platform,), runner=runner)

    files = select_model_files(spec)
    for rel, why in files.excluded:
        say(f"left out {rel.as_posix()}: {why}")

    server_lock = Path(server_lock_path())
    if not server_lock.is_file():
        raise BuildError(f"mlbuild's server lock {server_lock} is missing", hint="reinstall mlbuild")
    server_digest = _file_digest(server_lock)
    # The two installs are independent uv processes into different directories: run together,
    # the shorter one hides behind the longer one's downloads and unpacking.
    with ThreadPoolExecutor(max_workers=2) as pool:
        server_env = pool.submit(
            installed_env, "server", server_lock, server_digest, python=spec.python, platform=platform,
            env_path_in_image=SERVER_ENV_PATH, runner=runner, say=say,
        )
        model_env = pool.submit(
            installed_env, "model", Path(lock.path), lock.digest, python=spec.python, platform=platform,
            env_path_in_image=MODEL_ENV_PATH, runner=runner, say=say,
        )
        # Both finish before either error is raised (the pool waits): never a stray install.
        # The server's error wins when both fail, as when they ran one after the other.
        envs = EnvDirs(server_env=server_env.result(), model_env=model_env.result(), server_lock_digest=server_digest)
    if backend is None:
        from ._backends.docker import DockerBackend

        backend = DockerBackend()
    options = BuildOptions(
        tag=tag or default_tag(spec.name, spec.version),
        envs=envs,
        base_image=base_image,
        platform=platform,
        quiet=quiet,
        progress=progress,
        source=_source(),
        revision=_revision(spec.directory, runner),
        env_cache=env_cache,
    )
    result = backend.build(spec, lock, options)
    return dataclasses.replace(result, seconds=time.monotonic() - started)
