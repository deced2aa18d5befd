"""The transport half of the registry client (_oci/registry.py): one registry host over httpx,
with authentication by the registry's ``WWW-Authenticate`` challenge (Bearer token service,
anonymous or with credentials, or Basic; credentials looked up lazily on the first challenge),
retries of idempotent requests on 429 and gateway errors, bounded reads, and every failure as a
FetchError (reading) or PublishError (writing) whose first line names the registry, the
repository/reference and what went wrong; nothing from httpx leaks out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx

from .._errors import FetchError, MlbuildError, PublishError
from .._runner import Runner
from .auth import (
    Challenge,
    Credentials,
    CredentialSource,
    DockerConfig,
    basic_header,
    parse_challenges,
    parse_token_response,
    token_request,
)
from .reference import api_host

__all__ = ["CHUNK", "MAX_MANIFEST_BYTES", "Op", "RegistryTransport", "compute_digest", "new_hasher", "registry_error_codes",
           "registry_errors"]

log = logging.getLogger("mlbuild._oci.registry")

# containerd's limit: a manifest bigger than this is not a manifest.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
CHUNK = 1 << 20
# Statuses worth one more try on an idempotent request: rate limits and overloaded proxies.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
# Refresh a bearer token this long before the registry would expire it.
_TOKEN_MARGIN_S = 10.0


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def new_hasher(digest: str) -> hashlib._Hash:
    return hashlib.new(digest.split(":", 1)[0])


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return name in _LOOPBACK or name.startswith("127.")


@dataclass(frozen=True)
class Op:
    """What the client is doing: for the error class and every message's wording."""

    action: Literal["pull", "push"]
    what: str  # "manifest", "blob", "index"...
    repository: str
    target: str  # host/repo:tag or host/repo@digest

    @property
    def error(self) -> type[MlbuildError]:
        return FetchError if self.action == "pull" else PublishError

    @property
    def doing(self) -> str:
        return f"{'pulling' if self.action == 'pull' else 'pushing'} {self.what} {self.target}"


def registry_errors(resp: httpx.Response) -> str:
    """``CODE: message`` pairs from a registry's JSON error body (or its text, shortened)."""
    try:
        body = resp.read()
    except httpx.HTTPError:
        return ""
    try:
        errors = json.loads(body).get("errors") or []
        parts = [f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ") for e in errors]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError, TypeError):
        pass
    text = body.decode("utf-8", "replace").strip().splitlines()
    return text[0][:200] if text else ""


def registry_error_codes(resp: httpx.Response) -> set[str]:
    try:
        return {str(e.get("code")) for e in json.loads(resp.read()).get("errors") or []}
    except (ValueError, AttributeError, TypeError, httpx.HTTPError):
        return set()


class RegistryTransport:
    """One registry host's HTTP side: sending with retries, answering auth challenges (Bearer
    token service or Basic), reading bodies within limits, and the errors that name what failed.
    RegistryClient adds the distribution API's operations on top. Use as a context manager.

    ``registry`` is the host[:port] as written in image references; the API is reached at
    ``reference.api_host(registry)`` (the same host, unless it is ``$MLBUILD_DEFAULT_REGISTRY``
    and ``$MLBUILD_DEFAULT_REGISTRY_API`` names another). ``insecure`` means plain HTTP; None
    picks it for loopback hosts only. ``credentials`` skips the lookup; otherwise ``credential_source``
    (default: the Docker config, helpers run through ``runner``) is asked on the first
    challenge. ``transport`` is for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool | None = None,
        credentials: Credentials | None = None,
        timeout: float = 30,
        credential_source: CredentialSource | None = None,
        runner: Runner | None = None,
        transport: httpx.BaseTransport | None = None,
        retries: int = 2,
        retry_backoff: float = 0.5,
    ) -> None:
        self.registry = registry
        self.host = api_host(registry)
        self.insecure = _is_loopback(self.host) if insecure is None else insecure
        self.base_url = httpx.URL(f"{'http' if self.insecure else 'https'}://{self.host}")
        self.timeout = float(timeout)
        self._source: CredentialSource = credential_source or DockerConfig(runner=runner)
        self._creds = credentials
        self._creds_loaded = credentials is not None
        self._retries = retries
        self._backoff = retry_backoff
        self._http = httpx.Client(
            timeout=self.timeout,
            transport=transport,
            follow_redirects=True,  # blob GETs redirect to storage; httpx drops auth cross-origin
            headers={"User-Agent": "mlbuild"},
        )
        self._lock = threading.Lock()
        self._bearer: Challenge | None = None  # once known, tokens are fetched before asking
        self._basic = False
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.registry!r}, base_url={str(self.base_url)!r})"

    def _url(self, path: str) -> httpx.URL:
        return self.base_url.join(path)

    def _api(self, repository: str, kind: str, ref: str) -> httpx.URL:
        return self._url(f"/v2/{repository}/{kind}/{ref}")

    def _target(self, repository: str, ref: str) -> str:
        sep = "@" if ":" in ref else ":"
        return f"{self.registry}/{repository}{sep}{ref}"

    # -- internals: sending + auth ---------------------------------------------------------

    def _send(
        self,
        op: Op,
        method: str,
        url: httpx.URL,
        *,
        scopes: Sequence[str],
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], Iterable[bytes]] | None = None,
        stream: bool = False,
        authenticate: bool = True,
    ) -> httpx.Response:
        """Send with auth; answer one 401 challenge, retry idempotent requests on 429/5xx
        gateways. Returns the last response (the caller maps statuses); transport errors are
        raised as ``op.error``. ``body`` may be a factory so a retry re-reads a file."""
        challenged = False
        retries_left = self._retries if method in ("GET", "HEAD") else 0
        same_origin = (url.scheme, url.netloc) == (self.base_url.scheme, self.base_url.netloc)
        while True:
            hdrs = dict(headers or {})
            auth = self._auth_header(scopes, op) if (authenticate and same_origin) else None
            if auth:
                hdrs["Authorization"] = auth
            content = body() if callable(body) else body
            request = self._http.build_request(method, url, headers=hdrs, content=content)
            started = time.monotonic()
            try:
                resp = self._http.send(request, stream=True)
            except httpx.TimeoutException:
                raise op.error(
                    f"registry {self.registry} did not answer within {time.monotonic() - started:.1f} s "
                    f"while {op.doing} ({method} {url.path}; timeout {self.timeout:g} s)",
                    hint="check that the registry is up and reachable from here; on a slow link "
                    "raise the timeout",
                ) from None
            except httpx.TransportError as exc:
                raise self._connection_error(op, method, url, exc) from None
            if resp.status_code == 401 and authenticate and same_origin and not challenged:
                challenged = True
                challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
                resp.read()
                resp.close()
                if self._answer_challenge(challenges, scopes, op):
                    continue
                return resp
            if resp.status_code in _RETRY_STATUSES and retries_left > 0:
                retries_left -= 1
                resp.close()
                delay = self._retry_delay(resp, self._retries - retries_left)
                log.debug("%s %s: %d, retrying in %.1f s", method, url, resp.status_code, delay)
                time.sleep(delay)
                continue
            if not stream:
                resp.read()
                resp.close()
            return resp

    def _retry_delay(self, resp: httpx.Response, attempt: int) -> float:
        # Linear backoff; a Retry-After header wins, capped so a push never stalls for long.
        try:
            after = float(resp.headers.get("Retry-After", ""))
        except ValueError:
            after = 0.0
        return min(max(after, self._backoff * attempt), 10.0)

    def _credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            self._creds = self._source.lookup(self.registry)
            self._creds_loaded = True
            if self._creds is not None:
                log.debug("using credentials for %s from %s", self.registry, self._creds.source)
        return self._creds

    def _auth_header(self, scopes: Sequence[str], op: Op) -> str | None:
        with self._lock:
            if self._basic:
                creds = self._credentials()
                return basic_header(creds) if creds else None
            if self._bearer is None:
                return None
            key = tuple(sorted(scopes))
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            # The token service is known from an earlier challenge: ask before being refused.
            return f"Bearer {self._fetch_token(self._bearer, scopes, op)}"

    def _answer_challenge(self, challenges: list[Challenge], scopes: Sequence[str], op: Op) -> bool:
        """Set up auth for a 401; False when there is nothing to retry with."""
        by_scheme = {c.scheme: c for c in challenges}
        with self._lock:
            if "bearer" in by_scheme:
                challenge = by_scheme["bearer"]
                # Remembered without its scope: that scope was this request's, not the next one's.
                self._bearer = Challenge("bearer", tuple(p for p in challenge.params if p[0] != "scope"))
                self._tokens.pop(tuple(sorted(scopes)), None)
                self._fetch_token(challenge, scopes, op)
                return True
            if "basic" in by_scheme:
                if self._basic or self._credentials() is None:
                    return False  # already sent them (so they are wrong), or have none
                self._basic = True
                return True
        return False

    def _fetch_token(self, challenge: Challenge, scopes: Sequence[str], op: Op) -> str:
        creds = self._credentials()
        try:
            request = token_request(challenge, scopes, creds)
        except ValueError as exc:
            raise op.error(
                f"registry {self.registry} sent an unusable auth challenge while {op.doing}: {exc}",
                hint="the registry's token service is misconfigured; report it to its operator",
            ) from None
        realm_host = request.url.netloc.decode("ascii", "replace")
        started = time.monotonic()
        try:
            resp = self._http.send(request)
        except httpx.TimeoutException:
            raise op.error(
                f"token service {realm_host} of registry {self.registry} did not answer within "
                f"{time.monotonic() - started:.1f} s while {op.doing}",
                hint="check that the registry's token service is up and reachable from here",
            ) from None
        except httpx.TransportError as exc:
            raise op.error(
                f"cannot reach token service {realm_host} of registry {self.registry} while "
                f"{op.doing}: {exc}",
                hint="check the network and the registry's auth configuration",
            ) from None
        if resp.status_code in (401, 403):
            raise self._auth_failure(op, resp)
        if resp.status_code != 200:
            raise op.error(
                f"token service {realm_host} of registry {self.registry} answered "
                f"{resp.status_code} {resp.reason_phrase} while {op.doing}"
                + (f": {detail}" if (detail := registry_errors(resp)) else ""),
                hint="retry later; if it persists, the registry's token service is failing",
            )
        try:
            token, expires_in = parse_token_response(resp.content)
        except ValueError:
            raise op.error(
                f"token service {realm_host} of registry {self.registry} answered without a token "
                f"while {op.doing}",
                hint="the registry's token service is misconfigured; report it to its operator",
            ) from None
        self._tokens[tuple(sorted(scopes))] = (token, time.monotonic() + expires_in - _TOKEN_MARGIN_S)
        return token

    # -- internals: reading bodies ---------------------------------------------------------

    def _iter_response(self, resp: httpx.Response, op: Op) -> Iterator[bytes]:
        started = time.monotonic()
        try:
            yield from resp.iter_bytes(CHUNK)
        except httpx.TimeoutException:
            raise op.error(
                f"registry {self.registry} stopped sending after {time.monotonic() - started:.1f} s "
                f"while {op.doing} (timeout {self.timeout:g} s)",
                hint="check that the registry is up and reachable from here; on a slow link "
                "raise the timeout",
            ) from None
        except httpx.TransportError as exc:
            raise op.error(
                f"connection to registry {self.registry} broke while {op.doing}: {exc}",
                hint="retry; if it persists, check the network or the registry",
            ) from None

    def _read_limited(self, resp: httpx.Response, op: Op, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        for chunk in self._iter_response(resp, op):
            total += len(chunk)
            if total > limit:
                raise op.error(
                    f"registry {self.registry} sent more than {limit} bytes for {op.what} {op.target}",
                    hint="that is not a manifest; check the reference",
                )
            parts.append(chunk)
        return b"".join(parts)

    # -- internals: errors -----------------------------------------------------------------

    def _check_returned_digest(self, resp: httpx.Response, op: Op, digest: str) -> None:
        header = resp.headers.get("Docker-Content-Digest")
        if header and header.split(":")[0] == digest.split(":")[0] and header != digest:
            raise self._mismatch(op, digest, header, what="the registry's Docker-Content-Digest")

    def _mismatch(self, op: Op, expected: str, got: str, *, what: str = "the content received") -> MlbuildError:
        return op.error(
            f"digest mismatch for {op.what} {op.target}: expected {expected}, {what} is {got}",
            hint="the registry (or a proxy) altered the content; retry, and report it if it persists",
        )

    def _connection_error(self, op: Op, method: str, url: httpx.URL, exc: Exception) -> MlbuildError:
        text = str(exc) or type(exc).__name__
        hint = "check that the registry is running and the host and port are right"
        if url.scheme == "https" and ("SSL" in text or "TLS" in text or "certificate" in text.lower()):
            hint = ("the TLS handshake failed; if this registry serves plain HTTP, use it as an "
                    "insecure registry (loopback hosts are by default)")
        return op.error(
            f"cannot connect to registry {self.registry} ({url.scheme}://{url.netloc.decode()}) "
            f"while {op.doing}: {text}",
            hint=hint,
        )

    def _auth_failure(self, op: Op, resp: httpx.Response) -> MlbuildError:
        creds = self._creds
        detail = registry_errors(resp)
        insufficient = "insufficient_scope" in resp.headers.get("WWW-Authenticate", "")
        if creds is not None and not insufficient and resp.status_code == 401:
            return op.error(
                f"registry {self.registry} rejected the credentials of user {creds.username!r} "
                f"(from {creds.source}) while {op.doing}",
                hint=f"check the user name and password or token; `docker login {self.registry}` "
                "stores new ones",
            )
        if creds is None:
            return op.error(
                f"registry {self.registry} needs credentials to {op.action} {op.repository} and "
                f"none were found for it (looked in {self._source.describe()})",
                hint=f"run `docker login {self.registry}`, or set DOCKER_CONFIG to a directory "
                "whose config.json has credentials for it",
            )
        return op.error(
            f"registry {self.registry} denied {op.action} access to {op.repository} for user "
            f"{creds.username!r} (from {creds.source})" + (f": {detail}" if detail else ""),
            hint=f"check that this user may {op.action} {op.repository} (and that the repository exists)",
        )

    def _fail(self, resp: httpx.Response, op: Op) -> MlbuildError:
        status = resp.status_code
        if status in (401, 403):
            return self._auth_failure(op, resp)
        detail = registry_errors(resp)
        suffix = f" ({detail})" if detail else ""
        method, path = resp.request.method, resp.request.url.path
        if status == 404:
            codes = registry_error_codes(resp)
            if "NAME_UNKNOWN" in codes:
                return op.error(
                    f"repository not found: {self.registry}/{op.repository}{suffix}",
                    hint="check the repository name (and that you may see it)",
                )
            return op.error(
                f"{op.what} not found: {op.target}{suffix}",
                hint="check the image name and its tag or digest",
            )
        if status >= 500:
            return op.error(
                f"registry {self.registry} failed with {status} {resp.reason_phrase} while "
                f"{op.doing} ({method} {path})" + (f": {detail}" if detail else ""),
                hint="the registry had an internal error; retry later, or check the registry's logs",
            )
        return op.error(
            f"registry {self.registry} refused {op.doing}: {status} {resp.reason_phrase}"
            + (f": {detail}" if detail else "") + f" ({method} {path})",
            hint="the request was not accepted as sent; the registry's message above says why",
        )

