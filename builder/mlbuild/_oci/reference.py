"""Image references: ``[registry/]repository[:tag][@digest]``.

``registry.example.com/org/model``   -> registry registry.example.com, repository org/model, tag latest
``127.0.0.1:5000/m@sha256:...``      -> registry 127.0.0.1:5000, repository m, digest only
``python:3.11``                       -> a short name: see below

The grammar follows the distribution project's reference package (the one ``docker`` uses):
the first path part names a registry only when it holds a ``.`` or a ``:`` or is
``localhost``.

Short names (no registry part) are not tied to any public registry here, so that no registry
host is ever written into this code: they resolve against the registry named at run time by
``MLBUILD_DEFAULT_REGISTRY`` (``host[:port]``), and are an error when it is unset. Two optional
variables cover registries laid out like the big public one:

- ``MLBUILD_DEFAULT_REGISTRY_API`` (``host[:port]``): the host that serves the registry API,
  when it differs from the name used in references (see :func:`api_host`);
- ``MLBUILD_DEFAULT_REGISTRY_LIBRARY=1``: one-part short names get ``library/`` in front
  (``python`` -> ``library/python``), the convention of official images. It applies only to
  short names, never to a reference that writes its registry.

The ``docker`` backend does not come through here: the engine resolves short names itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .._errors import ConfigError

__all__ = [
    "DEFAULT_REGISTRY_ENV",
    "DEFAULT_REGISTRY_API_ENV",
    "DEFAULT_REGISTRY_LIBRARY_ENV",
    "Reference",
    "parse_reference",
    "default_registry",
    "api_host",
    "is_digest",
]

DEFAULT_REGISTRY_ENV = "MLBUILD_DEFAULT_REGISTRY"
DEFAULT_REGISTRY_API_ENV = "MLBUILD_DEFAULT_REGISTRY_API"
DEFAULT_REGISTRY_LIBRARY_ENV = "MLBUILD_DEFAULT_REGISTRY_LIBRARY"
_TRUE = {"1", "true", "yes", "on"}

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # ASCII: \w would admit any letter
# Only the algorithms a registry accepts in practice; the hex length is checked per algorithm.
_DIGEST_RE = re.compile(r"(sha256|sha512):([0-9a-f]+)")
_DIGEST_HEX_LEN = {"sha256": 64, "sha512": 128}
_MAX_NAME = 255


def is_digest(text: str) -> bool:
    """True when ``text`` is a well-formed ``sha256:<64 hex>`` / ``sha512:<128 hex>`` digest."""
    m = _DIGEST_RE.fullmatch(text)
    return bool(m) and len(m.group(2)) == _DIGEST_HEX_LEN[m.group(1)]


def _env_host(env: Mapping[str, str], name: str) -> str | None:
    """A ``host[:port]`` from an environment variable; None when unset or empty."""
    value = (env.get(name) or "").strip()
    if not value:
        return None
    if not _DOMAIN_RE.fullmatch(value):
        raise ConfigError(
            f"environment variable {name}={value!r} is not a host[:port]",
            hint=f"set {name} to a registry host such as registry.example.com or 127.0.0.1:5000 "
            "(no scheme, no path), or unset it",
        )
    return value


def default_registry(env: Mapping[str, str] | None = None) -> str | None:
    """The registry short names resolve against (``$MLBUILD_DEFAULT_REGISTRY``), or None.

    Read on every call, never cached: it is run-time configuration, not part of the code."""
    return _env_host(os.environ if env is None else env, DEFAULT_REGISTRY_ENV)


def api_host(registry: str, env: Mapping[str, str] | None = None) -> str:
    """The host[:port] that serves the registry API for a registry name.

    That is the name itself, except for the default registry when
    ``$MLBUILD_DEFAULT_REGISTRY_API`` names another host (a registry whose reference name is
    not the host of its API)."""
    env = os.environ if env is None else env
    # Compared raw first, so a malformed default cannot break references that name their host.
    if registry != (env.get(DEFAULT_REGISTRY_ENV) or "").strip():
        return registry
    return _env_host(env, DEFAULT_REGISTRY_API_ENV) or registry


@dataclass(frozen=True)
class Reference:
    """A parsed, normalized image reference. ``tag`` is None only when a digest pins the image
    and no tag was written; ``digest`` is None when only a tag was given."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest when there is one (it is exact), else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=tag)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _invalid(text: str, why: str) -> ConfigError:
    return ConfigError(
        f"invalid image reference {text!r}: {why}",
        hint="write it as [registry/]repository[:tag][@sha256:<64 hex>], "
        "e.g. registry.example.com/team/model:1.0 or 127.0.0.1:5000/model@sha256:...",
    )


def _no_registry(text: str) -> ConfigError:
    return ConfigError(
        f"image reference {text!r} names no registry",
        hint=f"write the full reference (host/repository:tag), or set {DEFAULT_REGISTRY_ENV} "
        "to the registry short names should use",
    )


def parse_reference(
    text: str, *, default_tag: str = "latest", env: Mapping[str, str] | None = None
) -> Reference:
    """Parse and normalize an image reference for a registry operation.

    A reference without a registry part takes ``$MLBUILD_DEFAULT_REGISTRY`` (read from ``env``,
    default ``os.environ``, at each call). Raises ConfigError naming the reference and the part
    that is wrong, or saying that it names no registry when that variable is unset.
    """
    raw = text.strip()
    if not raw:
        raise _invalid(text, "it is empty")
    if "://" in raw:
        raise _invalid(text, "a reference has no scheme (drop the http:// or https://)")

    name, at, digest = raw.partition("@")
    if at:
        if not is_digest(digest):
            raise _invalid(text, f"{digest!r} is not a sha256:<64 hex> or sha512:<128 hex> digest")
    else:
        digest = ""

    # The tag's colon is the last one after the last slash: a registry port comes before a slash.
    tag = ""
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise _invalid(text, f"tag {tag!r} is not valid (letters, digits, _ . -; at most 128)")

    first, slash, rest = name.partition("/")
    registry: str | None
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = first, rest
        if not _DOMAIN_RE.fullmatch(registry):
            raise _invalid(text, f"registry {registry!r} is not a host[:port]")
    else:
        registry, repository = None, name

    # The written name is checked before the registry is resolved, so a malformed short name
    # gets its syntax error rather than a complaint about a missing registry.
    if not repository:
        raise _invalid(text, "the repository name is missing")
    if not _REPOSITORY_RE.fullmatch(repository):
        if repository != repository.lower():
            raise _invalid(text, f"repository {repository!r} must be lowercase")
        raise _invalid(
            text,
            f"repository {repository!r} is not valid (lowercase letters, digits and . _ - "
            "between them, parts separated by /)",
        )
    if len(repository) > _MAX_NAME:  # too long whatever registry it ends up on
        raise _invalid(text, f"the name is longer than {_MAX_NAME} characters")

    if registry is None:
        env = os.environ if env is None else env
        registry = default_registry(env)
        if registry is None:
            raise _no_registry(raw)
        if "/" not in repository and (env.get(DEFAULT_REGISTRY_LIBRARY_ENV) or "").strip().lower() in _TRUE:
            repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > _MAX_NAME:
        raise _invalid(text, f"the name is longer than {_MAX_NAME} characters")

    if not tag and not digest:
        tag = default_tag
    return Reference(registry, repository, tag or None, digest or None)
