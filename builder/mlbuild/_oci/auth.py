"""Registry credentials and authentication challenges.

Where credentials come from, in Docker's order for one registry host:

1. ``credHelpers[<host>]`` in the Docker config -> ``docker-credential-<helper> get``
2. ``credsStore`` -> ``docker-credential-<store> get`` (falls back to 3. when the store has none)
3. ``auths[<host>]``: ``auth`` (base64 ``user:password``), or ``username``/``password``,
   or ``identitytoken`` (an OAuth2 refresh token)

``<host>`` is the registry's host[:port] exactly as references write it. In ``auths`` the key
``<host>`` itself is tried first, then any key whose host part is ``<host>`` (its URL forms:
``https://<host>``, ``https://<host>/v2/``...). No registry gets a special key here; helpers
are asked for ``<host>`` as-is.

The Docker config is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``. Helpers
run through the injectable Runner. Nothing here talks to a registry: the client in
``registry.py`` uses :class:`Challenge` and :func:`token_request` to do the exchange.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from .._errors import ConfigError
from .._runner import CommandFailed, Runner, SubprocessRunner

__all__ = [
    "Credentials",
    "CredentialSource",
    "DockerConfig",
    "NoCredentials",
    "Challenge",
    "parse_challenges",
    "repository_scope",
    "token_request",
    "parse_token_response",
    "basic_header",
]

# A helper's answer when it simply has nothing for the host (docker-credential-helpers' text).
_HELPER_NOT_FOUND = "credentials not found"
_TOKEN_USERNAME = "<token>"  # helpers return this user name for identity tokens


@dataclass(frozen=True)
class Credentials:
    """A user name + secret for one registry. ``source`` says where they came from, for
    messages ("~/.docker/config.json auths", "docker-credential-pass"...). When
    ``identity_token`` is set the registry's token service is asked with an OAuth2 refresh
    token instead of basic auth."""

    username: str
    password: str = field(repr=False)
    source: str = "given by the caller"
    identity_token: str | None = field(default=None, repr=False)


class CredentialSource(Protocol):
    """Something that knows credentials per registry host (the Docker config, a test double)."""

    def lookup(self, registry: str) -> Credentials | None: ...

    def describe(self) -> str:
        """Where it looks, for the message when nothing was found."""
        ...


class NoCredentials:
    """Anonymous only."""

    def lookup(self, registry: str) -> Credentials | None:
        return None

    def describe(self) -> str:
        return "no credential source (anonymous access only)"


def _config_host(key: str) -> str:
    """Docker's ConvertToHostname: ``https://host:5000/v2/`` -> ``host:5000``."""
    for prefix in ("http://", "https://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return key.split("/", 1)[0]


class DockerConfig:
    """Credentials from a Docker client config (``config.json``). Read once, on first use.

    ``config_dir`` defaults to ``$DOCKER_CONFIG`` or ``~/.docker``; a missing file means no
    credentials (anonymous access), a broken one is a ConfigError naming the file and key.
    """

    def __init__(
        self,
        config_dir: Path | None = None,
        *,
        runner: Runner | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        if config_dir is None:
            config_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else Path.home() / ".docker"
        self.path = Path(config_dir) / "config.json"
        self._runner = runner or SubprocessRunner()
        self._data: dict | None = None

    def describe(self) -> str:
        return str(self.path)

    def _load(self) -> dict:
        if self._data is None:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = "{}"
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the Docker config {self.path}: {exc.strerror}",
                    hint="fix its permissions, or point DOCKER_CONFIG at another directory",
                ) from None
            try:
                data = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"the Docker config {self.path} is not valid JSON (line {exc.lineno}: {exc.msg})",
                    hint="fix the file (or run `docker login` again to rewrite it)",
                ) from None
            if not isinstance(data, dict):
                raise ConfigError(
                    f"the Docker config {self.path} is not a JSON object",
                    hint="fix the file (or run `docker login` again to rewrite it)",
                )
            self._data = data
        return self._data

    def _section(self, key: str) -> dict:
        value = self._load().get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(
                f"the Docker config {self.path}: {key!r} must be an object",
                hint="fix the file (or run `docker login` again to rewrite it)",
            )
        return value

    def lookup(self, registry: str) -> Credentials | None:
        helpers = self._section("credHelpers")
        for key, helper in helpers.items():
            if _config_host(key) == registry:
                return self._from_helper(str(helper), registry, f"credHelpers[{key!r}]")
        store = self._load().get("credsStore")
        if store:
            creds = self._from_helper(str(store), registry, "credsStore")
            if creds is not None:
                return creds
        return self._from_auths(registry)

    def _from_auths(self, registry: str) -> Credentials | None:
        auths = self._section("auths")
        # The exact key first (what `docker login <host>` writes), then its URL forms, in the
        # order `docker login` with a URL argument or older clients would have written them.
        if registry in auths:
            return self._decode_entry(registry, auths[registry])
        for key, entry in auths.items():
            if _config_host(key) == registry:
                return self._decode_entry(key, entry)
        return None

    def _decode_entry(self, key: str, entry: object) -> Credentials | None:
        where = f"auths[{key!r}]"
        source = f"{self.path} {where}"
        if not isinstance(entry, dict):
            raise ConfigError(f"the Docker config {self.path}: {where} must be an object",
                              hint="run `docker login` again to rewrite it")
        token = entry.get("identitytoken") or None
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            user, colon, password = decoded.partition(":")
            if not colon:
                raise ConfigError(
                    f"the Docker config {self.path}: {where}.auth is not base64 of 'user:password'",
                    hint=f"run `docker login {_config_host(key)}` again to rewrite it",
                )
            return Credentials(user, password, source, token)
        if entry.get("username") or entry.get("password"):
            return Credentials(str(entry.get("username", "")), str(entry.get("password", "")), source, token)
        if token:
            return Credentials(_TOKEN_USERNAME, "", source, token)
        return None  # an empty entry: `docker login` with a credsStore leaves these behind

    def _from_helper(self, helper: str, registry: str, where: str) -> Credentials | None:
        program = f"docker-credential-{helper}"
        source = f"{program} ({where} in {self.path})"
        # Helpers read the server URL on stdin. The Runner has no stdin parameter, so a shell
        # pipes it in; the URL and program are positional arguments, never parsed by the shell.
        args = ["sh", "-c", 'printf "%s" "$1" | "$2" get', "mlbuild-credential-helper",
                registry, program]
        try:
            result = self._runner.run(args, timeout=60)
        except CommandFailed as exc:
            out = (exc.result.stdout + exc.result.stderr).strip()
            if _HELPER_NOT_FOUND in out.lower():
                return None
            if exc.result.returncode == 127:
                raise ConfigError(
                    f"credential helper {program} named by {where} in {self.path} is not installed",
                    hint=f"install {program}, or remove {where} from {self.path}",
                ) from None
            raise ConfigError(
                f"credential helper {program} failed for {registry} (exit {exc.result.returncode}): "
                f"{out.splitlines()[0] if out else 'no output'}",
                hint=f"run `echo {registry} | {program} get` to see why, "
                f"or `docker login {registry}` again",
            ) from None
        try:
            answer = json.loads(result.stdout)
            user, secret = str(answer["Username"]), str(answer["Secret"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(
                f"credential helper {program} gave an answer for {registry} that is not "
                "JSON with Username and Secret",
                hint=f"run `echo {registry} | {program} get` to see its output",
            ) from None
        if user == _TOKEN_USERNAME:
            return Credentials(user, "", source, identity_token=secret)
        return Credentials(user, secret, source)


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lowercase) and its parameters."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == key:
                return v
        return default

    @property
    def realm(self) -> str | None:
        return self.get("realm")

    @property
    def service(self) -> str | None:
        return self.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple((self.get("scope") or "").split())


_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*')
_SCHEME_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?=\s|$|,)")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate``: ``Bearer realm="...",service="...",scope="..."`` or
    ``Basic realm="..."`` (several challenges may share one header, comma-separated)."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME_RE.match(header, pos)
        if not m:
            pos += 1  # stray comma or junk between challenges
            continue
        scheme = m.group(1).lower()
        pos = m.end()
        params: list[tuple[str, str]] = []
        while True:
            pm = _PARAM_RE.match(header, pos)
            if not pm:
                break
            value = pm.group(2)
            value = re.sub(r"\\(.)", r"\1", value) if value is not None else pm.group(3)
            params.append((pm.group(1).lower(), value))
            pos = pm.end()
            if pos < len(header) and header[pos] == ",":
                pos += 1
                continue
            break
        challenges.append(Challenge(scheme, tuple(params)))
    return challenges


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:<name>:pull,push`` as the token service expects it."""
    return f"repository:{repository}:{','.join(actions)}"


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def token_request(
    challenge: Challenge, scopes: Iterable[str], credentials: Credentials | None
) -> httpx.Request:
    """The request that asks the challenge's token service for a bearer token.

    Anonymous or basic-auth GET (Docker's token protocol); an OAuth2 refresh-token POST when the
    credentials hold an identity token (what ``docker login`` stores for some registries).
    """
    realm = challenge.realm
    if not realm or not realm.startswith(("http://", "https://")):
        raise ValueError(f"bearer challenge without an http(s) realm: {realm!r}")
    wanted = list(dict.fromkeys([*challenge.scopes, *scopes]))  # ordered, unique
    service = challenge.service
    if credentials is not None and credentials.identity_token:
        form = {"grant_type": "refresh_token", "refresh_token": credentials.identity_token,
                "client_id": "mlbuild", "scope": " ".join(wanted)}
        if service:
            form["service"] = service
        return httpx.Request("POST", realm, data=form)
    params: list[tuple[str, str]] = []
    if service:
        params.append(("service", service))
    params += [("scope", s) for s in wanted]
    url = httpx.URL(realm)
    url = url.copy_with(params=httpx.QueryParams(list(url.params.multi_items()) + params))
    headers = {"Authorization": basic_header(credentials)} if credentials is not None else {}
    return httpx.Request("GET", url, headers=headers)


def parse_token_response(body: bytes) -> tuple[str, float]:
    """``(token, expires_in seconds)`` from a token service answer; ValueError if it has none."""
    data = json.loads(body)
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    if not token or not isinstance(token, str):
        raise ValueError("the token service answered without a token")
    try:
        expires = float(data.get("expires_in") or 60)
    except (TypeError, ValueError):
        expires = 60.0
    return token, max(expires, 1.0)

