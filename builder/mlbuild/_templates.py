"""Render the Dockerfile from templates/Dockerfile.j2 (Jinja2).

A model may bring its own ``Dockerfile.j2`` in its directory. It is rendered with the same
loader, so ``{% extends "Dockerfile.j2" %}`` in it names mlbuild's template and it overrides the
blocks it needs (see templates/README.md). Variables are computed here once, from the frozen
spec and lock; templates never see raw config.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from . import __version__
from ._errors import BuildError, ConfigError, MlbuildError
from ._values import base_image_problem, credential_problem, show, text_problem  # the spec's rules

if TYPE_CHECKING:  # pragma: no cover
    from ._lock import Lock
    from ._spec import ModelSpec

__all__ = [
    "ContextLayout",
    "IMAGE_PATHS",
    "MODEL_TEMPLATE_NAME",
    "created_timestamp",
    "dockerfile_for",
    "model_template_path",
    "render_dockerfile",
    "render_dockerignore",
    "source_date_epoch",
    "templates_dir",
]

# The model directory may hold this file: a template that extends ours.
MODEL_TEMPLATE_NAME = "Dockerfile.j2"

# Where things live inside the image (docs/internals.md, "Image layout").
IMAGE_PATHS = {
    "server_env_path": "/opt/mlbuild/server-env",
    "model_env_path": "/opt/mlbuild/model-env",
    "runtime_path": "/opt/mlbuild/runtime",
    "model_dir_path": "/opt/mlbuild/model",
}
UID = 10001
# Used when SOURCE_DATE_EPOCH is not set, so that two builds of the same inputs agree: every
# file mtime and the `created` time. 2000-01-01T00:00:00Z rather than 0: zip (Python's zipfile
# included) refuses timestamps before 1980, and a model may zip files it finds in the image.
FIXED_EPOCH = 946684800


@dataclass(frozen=True)
class ContextLayout:
    """What the build context holds, as far as the Dockerfile needs to know.

    ``stage``: "full" (one Dockerfile, every layer), "env" (base .. model env only: the cached
    env image), "env-base" ("env" without the two env COPY steps) or "app" (FROM ``env_image``,
    runtime .. config).
    """

    has_artifacts: bool = False
    stage: str = "full"
    env_image: str | None = None
    source: str | None = None  # org.opencontainers.image.source, when known
    revision: str | None = None  # org.opencontainers.image.revision, when known
    base_image: str | None = None  # overrides spec.resolved_base_image
    base_digest: str | None = None  # org.opencontainers.image.base.digest: the base's manifest digest
    extra: Mapping[str, Any] = field(default_factory=dict)  # more variables for model templates

    def __post_init__(self) -> None:
        if self.stage not in ("full", "env", "env-base", "app"):
            raise ValueError(f"unknown stage {self.stage!r}")
        if self.stage == "app" and not self.env_image:
            raise ValueError("stage 'app' needs env_image")


def templates_dir() -> Path:
    """mlbuild's templates: packaged as mlbuild/templates in the wheel, templates/ in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent.parent / "templates"):
        if (candidate / "Dockerfile.j2").is_file():
            return candidate
    raise BuildError(  # pragma: no cover - a broken installation
        f"mlbuild's Dockerfile template is missing (looked in {here / 'templates'})",
        hint="reinstall mlbuild",
    )


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


def model_template_path(spec: ModelSpec) -> Path | None:
    path = Path(spec.directory) / MODEL_TEMPLATE_NAME
    return path if path.is_file() else None


def _dockerfile_quote(value: object) -> str:
    """A double-quoted Dockerfile word: ENV/LABEL values may hold spaces, quotes and `$`.

    Inside double quotes Docker's lexer takes ``\\"``, ``\\\\`` and ``\\$`` as the character itself
    and expands an unescaped ``$``: those three are escaped, so the value is data, never syntax.
    A line break cannot be written at all (``\\n`` stays a backslash and an n), so a value with
    any of str.splitlines()' separators or another control character is refused here: the last
    guard, behind the spec's own checks, for values that never went through the spec."""
    text = str(value)
    problem = text_problem(text)
    if problem is not None:
        raise ConfigError(
            f"value {show(text)} {problem}",
            hint="use one line of text without control characters",
        )
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _check_baked(kind: str, items: Mapping[str, str]) -> None:
    """Refuse, naming the key, an ENV/LABEL value the dq filter could not quote or that holds a URL
    with credentials. The spec checked the user's own; this catches those mlbuild adds from its environment (a source URL from
    MLBUILD_SOURCE_URL or the CI's variables, a revision) before any template runs, and holds for
    the oci backend too, which bakes the same values without a Dockerfile."""
    for key, value in items.items():
        problem = text_problem(value)
        if problem is not None:
            raise ConfigError(
                f"{kind} {key!r}: value {show(value)} {problem}",
                hint="check the environment it came from (MLBUILD_SOURCE_URL, GITHUB_SERVER_URL, "
                "GITHUB_REPOSITORY, GITHUB_SHA) or the model's mlbuild.toml",
            )
        # Labels are public and ENV ships with every copy: no URL with credentials, whoever set it
        # (build_image strips them from the source URL; a caller handing one in is refused).
        problem = credential_problem(value)
        if problem is not None:
            raise ConfigError(
                f"{kind} {key!r}: the value {problem}; refusing to bake it into the image",
                hint="remove the credentials from the URL where it came from (BuildOptions/ContextLayout "
                "source, the model's mlbuild.toml); a secret belongs in the runtime environment "
                "(docker run -e, a secret store), never in the image",
            )


def _where(path: Path, exc: BaseException) -> str:
    """``path:line`` using the template line Jinja put in the traceback, else just ``path``.

    Jinja rewrites tracebacks so a frame points at the template line being run; the filename is
    "<template>" for a template made from a string (the model's) or the file for a loaded one."""
    line, name = None, None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename == "<template>" or filename.endswith(".j2"):
            line, name = tb.tb_lineno, filename
        tb = tb.tb_next
    if line is None:
        return str(path)
    if name != "<template>":
        path = Path(name)
    return f"{path}:{line}"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # One environment per process: it caches compiled templates (the loader still notices a
    # changed file); model templates are compiled with from_string and never cached in it.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["dq"] = _dockerfile_quote
    env.filters["json"] = lambda value: json.dumps(value)
    return env


def image_variables(spec: ModelSpec, lock: Lock, layout: ContextLayout) -> dict[str, Any]:
    """Everything the image carries besides files (ENV, labels, user, ports, healthcheck, CMD),
    computed once here so the docker template and the oci backend bake identical configs."""
    base_image = layout.base_image or spec.resolved_base_image
    port = int(spec.port)
    mlbuild_env = {
        "HOME": "/tmp",  # the user owns no home; libraries that cache (joblib, HF) get a writable one
        "MLBUILD_MODEL_DIR": IMAGE_PATHS["model_dir_path"],
        "MLBUILD_PYTHON": IMAGE_PATHS["model_env_path"] + "/bin/python",
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
    merged_env = {**mlbuild_env, **dict(spec.env)}
    labels = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.version": spec.version,
        "org.opencontainers.image.created": created_timestamp(),
        "org.opencontainers.image.base.name": base_image,
        "io.mlbuild.version": __version__,
        "io.mlbuild.lock-digest": lock.digest,
        "io.mlbuild.python": spec.python,
    }
    if layout.source:
        labels["org.opencontainers.image.source"] = layout.source
    if layout.revision:
        labels["org.opencontainers.image.revision"] = layout.revision
    if layout.base_digest:
        labels["org.opencontainers.image.base.digest"] = layout.base_digest
    labels.update(dict(spec.labels))
    _check_baked("environment variable", merged_env)
    _check_baked("label", labels)
    python = IMAGE_PATHS["server_env_path"] + "/bin/python"
    healthcheck = [
        python,
        "-c",
        "import os, urllib.request; "
        "port = os.environ.get('AIP_HTTP_PORT') or os.environ.get('MLBUILD_PORT') or '8080'; "
        "urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % port, timeout=4)",
    ]
    return {
        **IMAGE_PATHS,
        **dict(layout.extra),
        "stage": layout.stage,
        "env_image": layout.env_image or "",
        "base_image": base_image,
        "python": spec.python,
        "name": spec.name,
        "version": spec.version,
        "mlbuild_version": __version__,
        "lock_digest": lock.digest,
        "system_packages": list(spec.system_packages),
        "has_artifacts": layout.has_artifacts,
        "uid": UID,
        "port": port,
        "env": sorted(merged_env.items()),
        "labels": sorted(labels.items()),
        "healthcheck": healthcheck,
        "cmd": [python, "-m", "mlbuild_runtime"],
    }


def render_dockerfile(spec: ModelSpec, lock: Lock, context_layout: ContextLayout | None = None) -> str:
    """The Dockerfile text for this model: the model's own Dockerfile.j2 if it has one, else ours."""
    layout = context_layout or ContextLayout()
    env = _environment()
    custom = model_template_path(spec)
    if custom is not None:
        try:
            source = custom.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            lineno = exc.object[: exc.start].count(b"\n") + 1
            raise ConfigError(
                f"{custom}:{lineno}: Dockerfile template is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x})",
                hint="save the template as UTF-8 text",
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read Dockerfile template {custom}: {exc.strerror}",
                hint="check that it is a readable file",
            ) from None
    where = custom if custom is not None else templates_dir() / "Dockerfile.j2"  # for messages
    variables = image_variables(spec, lock, layout)
    # The FROM lines' values; base_image also sits in a double-quoted shell string of the venvs
    # RUN step. The spec checked its own, this holds for a base handed in through the layout.
    for key in ("base_image", "env_image"):
        problem = base_image_problem(variables[key]) if variables[key] else None
        if problem is not None:
            raise ConfigError(
                f"{key.replace('_', ' ')} {show(variables[key])}: {problem}",
                hint="name the base as an image reference, e.g. python:3.11-slim",
            )
    try:
        if custom is not None:
            template = env.from_string(source)
        else:
            template = env.get_template("Dockerfile.j2")
        text = template.render(**variables)
    except MlbuildError:
        raise  # already says what is wrong (e.g. the dq filter refusing a newline)
    except jinja2.TemplateSyntaxError as exc:
        syntax_where = exc.filename or (custom if custom is not None else templates_dir() / (exc.name or "Dockerfile.j2"))
        raise ConfigError(
            f"{syntax_where}:{exc.lineno}: Dockerfile template syntax error: {exc.message}",
            hint="fix the template; it should start with {% extends \"Dockerfile.j2\" %} and override blocks",
        ) from None
    except jinja2.UndefinedError as exc:
        raise ConfigError(
            f"{_where(where, exc)}: Dockerfile template uses an unknown variable: {exc.message}",
            hint="see templates/README.md for the variables a template may use",
        ) from None
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(
            f"{_where(where, exc)}: Dockerfile template names a template that does not exist: {exc.name!r}",
            hint="extend or include \"Dockerfile.j2\" (mlbuild's template); other names are not found",
        ) from None
    except jinja2.TemplateError as exc:
        raise ConfigError(
            f"{_where(where, exc)}: Dockerfile template failed: {exc.message or type(exc).__name__}",
            hint="fix the template; see templates/README.md",
        ) from None
    except Exception as exc:  # noqa: BLE001 - any error raised while running the model's template
        if custom is None:
            raise  # an error in mlbuild's own template is a bug: keep the traceback
        raise ConfigError(
            f"{_where(custom, exc)}: Dockerfile template failed: {type(exc).__name__}: {exc}",
            hint="fix the expression on that line of the template; see templates/README.md",
        ) from None
    # Blank runs left by skipped blocks carry no meaning; one blank line between steps reads best.
    # Split on "\n" only, as Docker does: str.splitlines() would turn a U+2028 or \x85 that a
    # model template printed into a real line break, i.e. a new instruction.
    lines: list[str] = []
    for line in text.split("\n"):
        if line.strip() == "" and (not lines or lines[-1] == ""):
            continue
        lines.append(line.rstrip())
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def render_dockerignore() -> str:
    return _environment().get_template("dockerignore.j2").render()


def dockerfile_for(path: str | os.PathLike[str], *, base_image: str | None = None, python: str | None = None) -> str:
    """What `mlbuild dockerfile ./model` prints: the single-stage Dockerfile for the model as it
    stands (its lock must exist or be creatable)."""
    from ._files import select_model_files
    from ._lock import ensure_lock
    from ._spec import SpecOverrides, load_spec

    overrides = None
    if base_image is not None or python is not None:
        overrides = SpecOverrides(python=python, base_image=base_image)
    from ._backends.docker import engine_base_image  # the backend imports this module

    spec = load_spec(Path(path), overrides=overrides)
    # A Dockerfile's FROM names an image: docker:REF is REF, a local layout or archive is refused
    # as the docker backend refuses it (before the lock, which may cost a resolution).
    base = engine_base_image(spec.resolved_base_image)
    lock = ensure_lock(spec)
    files = select_model_files(spec)
    has_artifacts = any(p.as_posix() != MODEL_TEMPLATE_NAME for p in files.artifacts)
    return render_dockerfile(spec, lock, ContextLayout(has_artifacts=has_artifacts, base_image=base))
