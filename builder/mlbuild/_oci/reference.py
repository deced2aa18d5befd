"""Image references: ``[registry/]repository[:tag][@digest]``, with Docker's defaults.

``python:3.11``            -> docker.io/library/python:3.11
``ghcr.io/org/model``      -> ghcr.io/org/model:latest
``127.0.0.1:5000/m@sha256:...`` -> registry 127.0.0.1:5000, repository m, digest only

The grammar follows the distribution project's reference package (the one ``docker`` uses):
the first path part names a registry only when it holds a ``.`` or a ``:`` or is
``localhost``; otherwise the image lives on Docker Hub, whose one-part names get ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .._errors import ConfigError

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_API_HOST",
    "Reference",
    "parse_reference",
    "api_host",
    "is_digest",
]

DOCKER_HUB = "docker.io"
# Docker Hub's name in references is not the host that serves the registry API.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
# Only the algorithms a registry accepts in practice; the hex length is checked per algorithm.
_DIGEST_RE = re.compile(r"(sha256|sha512):([0-9a-f]+)")
_DIGEST_HEX_LEN = {"sha256": 64, "sha512": 128}
_MAX_NAME = 255


def is_digest(text: str) -> bool:
    """True when ``text`` is a well-formed ``sha256:<64 hex>`` / ``sha512:<128 hex>`` digest."""
    m = _DIGEST_RE.fullmatch(text)
    return bool(m) and len(m.group(2)) == _DIGEST_HEX_LEN[m.group(1)]


def api_host(registry: str) -> str:
    """The host[:port] that serves the registry API for a registry name (Docker Hub differs)."""
    return DOCKER_HUB_API_HOST if registry in _HUB_ALIASES else registry


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
        "e.g. python:3.11-slim or 127.0.0.1:5000/team/model:1.0",
    )


def parse_reference(text: str, *, default_tag: str = "latest") -> Reference:
    """Parse and normalize an image reference the way ``docker pull`` does.

    Raises ConfigError naming the reference and the part that is wrong.
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
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = first, rest
        if not _DOMAIN_RE.fullmatch(registry):
            raise _invalid(text, f"registry {registry!r} is not a host[:port]")
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"

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
    if len(f"{registry}/{repository}") > _MAX_NAME:
        raise _invalid(text, f"the name is longer than {_MAX_NAME} characters")

    if not tag and not digest:
        tag = default_tag
    return Reference(registry, repository, tag or None, digest or None)
