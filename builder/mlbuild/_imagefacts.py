"""What the image is, besides its files: ONE home, read by the Dockerfile template's variables
(_templates), the oci backend's config and layers, and the docker build context (_context).

Paths (docs/internals.md, "Image layout"), the user and its uid, the runtime's ``.pth``, the
fixed epoch, and ``image_facts()``: the ENV, LABELs, CMD, HEALTHCHECK, EXPOSE, USER and
WORKDIR of one model's image as a frozen ``ImageFacts``. Every value that mlbuild bakes from
its environment (a source URL, a revision) is checked here, so both backends refuse the same.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import ConfigError
from ._values import credential_problem, show, text_problem
from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from ._lock import Lock
    from ._spec import ModelSpec

__all__ = [
    "FIXED_EPOCH", "HEALTHCHECK_TIMING", "IMAGE_PATHS", "MODEL_DIR_PATH", "MODEL_ENV_PATH", "RUNTIME_PATH",
    "RUNTIME_PTH_NAME", "SERVER_ENV_PATH", "UID", "USER_NAME", "ImageFacts", "created_timestamp", "image_facts",
    "passwd_line", "runtime_pth", "source_date_epoch",
]

SERVER_ENV_PATH = "/opt/mlbuild/server-env"
MODEL_ENV_PATH = "/opt/mlbuild/model-env"
RUNTIME_PATH = "/opt/mlbuild/runtime"
MODEL_DIR_PATH = "/opt/mlbuild/model"
# The template's variable names for the four paths.
IMAGE_PATHS = {
    "server_env_path": SERVER_ENV_PATH,
    "model_env_path": MODEL_ENV_PATH,
    "runtime_path": RUNTIME_PATH,
    "model_dir_path": MODEL_DIR_PATH,
}
USER_NAME = "mlbuild"
UID = 10001
# The server env finds mlbuild_runtime through this .pth; its path and content are constant, so
# the server env's layer is the same for every model built by one mlbuild version.
RUNTIME_PTH_NAME = "mlbuild-runtime.pth"
# Seconds: interval, timeout, start period; then retries (the Dockerfile's HEALTHCHECK flags).
HEALTHCHECK_TIMING = (10, 5, 60, 3)
# Used when SOURCE_DATE_EPOCH is not set, so that two builds of the same inputs agree: every
# file mtime and the `created` time. 2000-01-01T00:00:00Z rather than 0: zip (Python's zipfile
# included) refuses timestamps before 1980, and a model may zip files it finds in the image.
FIXED_EPOCH = 946684800


def runtime_pth(env_root: str, python_minor: str) -> tuple[str, bytes]:
    """(path, content) of the server env's .pth that puts the runtime on its path; ``env_root``
    is where the env sits (the image path, or the build context's ``server-env``)."""
    return f"{env_root}/lib/python{python_minor}/site-packages/{RUNTIME_PTH_NAME}", (RUNTIME_PATH + "\n").encode()


def passwd_line() -> str:
    """The user's /etc/passwd line: home = the model dir, no login shell (HOME=/tmp comes from
    the image env); the same in the Dockerfile's RUN step and the oci backend's user layer."""
    return f"{USER_NAME}:x:{UID}:{UID}:{USER_NAME}:{MODEL_DIR_PATH}:/usr/sbin/nologin"


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds.org), else a fixed epoch."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return FIXED_EPOCH
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"SOURCE_DATE_EPOCH={raw!r} is not an integer",
            hint="set it to seconds since 1970, e.g. $(git log -1 --format=%ct), or unset it",
        ) from None
    if value < 0:
        raise ConfigError(f"SOURCE_DATE_EPOCH={raw!r} is negative", hint="unset it or use a positive value")
    return value


def created_timestamp() -> str:
    return _dt.datetime.fromtimestamp(source_date_epoch(), tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageFacts:
    """The config of one model's image, as both backends bake it."""

    base_image: str
    env: tuple[tuple[str, str], ...]  # sorted by name
    labels: tuple[tuple[str, str], ...]  # sorted by name
    port: int
    healthcheck: tuple[str, ...]  # the exec form after CMD
    cmd: tuple[str, ...]
    uid: int = UID
    workdir: str = MODEL_DIR_PATH


def _check_baked(kind: str, items: Mapping[str, str]) -> None:
    """Refuse, naming the key, an ENV/LABEL value the Dockerfile could not quote or that holds a
    URL with credentials. The spec checked the user's own; this catches those mlbuild adds from
    its environment (a source URL from MLBUILD_SOURCE_URL or the CI's variables, a revision)
    before any template runs, and holds for the oci backend too, which bakes the same values."""
    for key, value in items.items():
        problem = text_problem(value)
        if problem is not None:
            raise ConfigError(
                f"{kind} {key!r}: value {show(value)} {problem}",
                hint="check the environment it came from (MLBUILD_SOURCE_URL, GITHUB_SERVER_URL, "
                "GITHUB_REPOSITORY, GITHUB_SHA) or the model's mlbuild.toml",
            )
        # Labels are public and ENV ships with every copy: no URL with credentials, whoever set it
        # (the build strips them from the source URL; a caller handing one in is refused).
        problem = credential_problem(value)
        if problem is not None:
            raise ConfigError(
                f"{kind} {key!r}: the value {problem}; refusing to bake it into the image",
                hint="remove the credentials from the URL where it came from (the build request's or "
                "ContextLayout's source, the model's mlbuild.toml); a secret belongs in the runtime "
                "environment (docker run -e, a secret store), never in the image",
            )


def image_facts(
    spec: ModelSpec,
    lock: Lock,
    *,
    base_image: str | None = None,
    source: str | None = None,
    revision: str | None = None,
    base_digest: str | None = None,
) -> ImageFacts:
    """ENV, labels, port, healthcheck and CMD of ``spec``'s image (``base_image`` overrides the
    spec's; ``source``/``revision``/``base_digest`` become OCI labels when known)."""
    base = base_image or spec.resolved_base_image
    port = int(spec.port)
    mlbuild_env = {
        "HOME": "/tmp",  # the user owns no home; libraries that cache (joblib, HF) get a writable one
        "MLBUILD_MODEL_DIR": MODEL_DIR_PATH,
        "MLBUILD_PYTHON": MODEL_ENV_PATH + "/bin/python",
        "MLBUILD_ENTRYPOINT": spec.entrypoint,
        "MLBUILD_MODEL_NAME": spec.name,
        "MLBUILD_MODEL_VERSION": spec.version,
        "MLBUILD_LOCK_DIGEST": lock.digest,
        "MLBUILD_LOG_FORMAT": "json",
        "MLBUILD_PORT": str(port),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    # The user's env wins over ours (they may set MLBUILD_WORKERS, a log format...).
    env = {**mlbuild_env, **dict(spec.env)}
    labels = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.version": spec.version,
        "org.opencontainers.image.created": created_timestamp(),
        "org.opencontainers.image.base.name": base,
        "io.mlbuild.version": __version__,
        "io.mlbuild.lock-digest": lock.digest,
        "io.mlbuild.python": spec.python,
    }
    if source:
        labels["org.opencontainers.image.source"] = source
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    if base_digest:
        labels["org.opencontainers.image.base.digest"] = base_digest
    labels.update(dict(spec.labels))
    _check_baked("environment variable", env)
    _check_baked("label", labels)
    python = SERVER_ENV_PATH + "/bin/python"
    healthcheck = (
        python,
        "-c",
        "import os, urllib.request; "
        "port = os.environ.get('AIP_HTTP_PORT') or os.environ.get('MLBUILD_PORT') or '8080'; "
        "urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % port, timeout=4)",
    )
    return ImageFacts(
        base_image=base,
        env=tuple(sorted(env.items())),
        labels=tuple(sorted(labels.items())),
        port=port,
        healthcheck=healthcheck,
        cmd=(python, "-m", "mlbuild_runtime"),
    )
