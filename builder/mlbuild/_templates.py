"""Render the Dockerfile from templates/Dockerfile.j2 (Jinja2).

A model may bring its own ``Dockerfile.j2`` in its directory. It is rendered with the same
loader, so ``{% extends "Dockerfile.j2" %}`` in it names mlbuild's template and it overrides the
blocks it needs (see templates/README.md). Variables are computed here once, from the frozen
spec and lock; templates never see raw config.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from ._errors import ConfigError, MlbuildError
from ._imagefacts import HEALTHCHECK_TIMING, IMAGE_PATHS, USER_NAME, image_facts, passwd_line
from ._resources import model_template_path, templates_dir
from ._values import base_image_problem, show, text_problem  # the spec's rules
from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from ._lock import Lock
    from ._spec import ModelSpec

__all__ = [
    "ContextLayout",
    "image_variables",
    "render_dockerfile",
    "render_dockerignore",
    "templates_dir",
]


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
    """The template's variables: the image facts (_imagefacts, which the oci backend bakes too)
    plus what only a Dockerfile needs (stage, env image, system packages, artefacts or not)."""
    facts = image_facts(
        spec, lock, base_image=layout.base_image, source=layout.source, revision=layout.revision,
        base_digest=layout.base_digest,
    )
    interval, timeout, start_period, retries = HEALTHCHECK_TIMING
    return {
        **IMAGE_PATHS,
        **dict(layout.extra),
        "stage": layout.stage,
        "env_image": layout.env_image or "",
        "base_image": facts.base_image,
        "python": spec.python,
        "name": spec.name,
        "version": spec.version,
        "mlbuild_version": __version__,
        "lock_digest": lock.digest,
        "system_packages": list(spec.system_packages),
        "has_artifacts": layout.has_artifacts,
        "user_name": USER_NAME,
        "uid": facts.uid,
        "passwd_line": passwd_line(),
        "port": facts.port,
        "env": list(facts.env),
        "labels": list(facts.labels),
        "healthcheck": list(facts.healthcheck),
        "healthcheck_interval": interval,
        "healthcheck_timeout": timeout,
        "healthcheck_start_period": start_period,
        "healthcheck_retries": retries,
        "cmd": list(facts.cmd),
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
