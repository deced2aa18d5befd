"""A small client for the OCI distribution API (what ``docker pull/push`` speak), on httpx.

What it guarantees:

- Manifests are handled as the exact bytes the registry served or the caller built: the digest
  is always ``sha256`` of those bytes, computed here, and checked against the digest asked for
  and against ``Docker-Content-Digest`` when the registry sends one.
- Blobs are verified against their digest while they stream; a mismatch is an error and a
  download never leaves a half-written file (written aside, then renamed).
- Pushes go blob by blob (HEAD to skip what exists, cross-repository mount when a source repo is
  given, else POST + monolithic PUT), and the manifest is pushed by the caller last.
- Authentication follows the registry's ``WWW-Authenticate`` challenge: Bearer (token service,
  anonymous or with credentials) or Basic. Credentials are looked up lazily, on the first
  challenge, from the Docker config unless given.
- Every failure is a FetchError (reading) or PublishError (writing) whose first line names the
  registry, the repository/reference and what went wrong; nothing from httpx leaks out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import httpx

from .._errors import FetchError, MlbuildError, PublishError
from .._platforms import Platform, parse_platform
from .._runner import Runner
from .auth import (
    Challenge,
    Credentials,
    CredentialSource,
    DockerConfig,
    basic_header,
    parse_challenges,
    parse_token_response,
    repository_scope,
    token_request,
)
from .reference import api_host, is_digest

__all__ = [
    "OCI_MANIFEST",
    "OCI_INDEX",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MANIFEST_TYPES",
    "INDEX_TYPES",
    "DEFAULT_ACCEPT",
    "FetchedManifest",
    "Descriptor",
    "RegistryClient",
    "resolve_platform",
    "compute_digest",
]

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
DEFAULT_ACCEPT: tuple[str, ...] = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

# containerd's limit: a manifest bigger than this is not a manifest.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_CHUNK = 1 << 20
# Statuses worth one more try on an idempotent request: rate limits and overloaded proxies.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
# Refresh a bearer token this long before the registry would expire it.
_TOKEN_MARGIN_S = 10.0

BlobPush = Literal["exists", "mounted", "uploaded"]


class FetchedManifest(NamedTuple):
    """A manifest or index exactly as served: ``data`` hashes to ``digest``."""

    data: bytes
    media_type: str
    digest: str

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class Descriptor:
    """An entry of an image index (or the answer to a manifest HEAD). ``platform`` is
    ``os/arch[/variant]`` as written in the index, None when absent."""

    media_type: str
    digest: str
    size: int
    platform: str | None = None


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _hasher(digest: str) -> hashlib._Hash:
    return hashlib.new(digest.split(":", 1)[0])


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return name in _LOOPBACK or name.startswith("127.")


@dataclass(frozen=True)
class _Op:
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


def _registry_errors(resp: httpx.Response) -> str:
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


def _registry_error_codes(resp: httpx.Response) -> set[str]:
    try:
        return {str(e.get("code")) for e in json.loads(resp.read()).get("errors") or []}
    except (ValueError, AttributeError, TypeError, httpx.HTTPError):
        return set()


def resolve_platform(index: bytes, platform: str | Platform, *, image: str = "the image index") -> Descriptor:
    """The manifest descriptor for ``platform`` (``linux/arm64``...) in an image index.

    ``arm64`` and ``arm64/v8`` are the same platform; other variants must match exactly.
    Attestation entries (``unknown/unknown``) never match."""
    want = parse_platform(platform) if isinstance(platform, str) else platform
    try:
        doc = json.loads(index)
    except ValueError:
        raise FetchError(f"{image} is not valid JSON",
                         hint="check the reference: what was served is not an image index") from None
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list):
        raise FetchError(f"{image} is not an image index (it has no 'manifests' list)",
                         hint="a single-platform image has no index; read its config for the platform")
    offered: list[str] = []
    for entry in manifests:
        if not isinstance(entry, dict):
            continue
        plat = entry.get("platform") if isinstance(entry.get("platform"), dict) else {}
        os_name, arch, variant = plat.get("os"), plat.get("architecture"), plat.get("variant")
        text = "/".join(p for p in (os_name, arch, variant) if p) if os_name and arch else None
        if text:
            offered.append(text)
        if arch == "arm64" and variant == "v8":
            variant = None
        if os_name == want.os and arch == want.arch and (variant or None) == want.variant:
            try:
                return Descriptor(str(entry["mediaType"]), str(entry["digest"]), int(entry["size"]), text)
            except (KeyError, TypeError, ValueError):
                raise FetchError(f"{image}: the {want} entry lacks mediaType, digest or size",
                                 hint="the index is malformed; re-push the image") from None
    shown = ", ".join(p for p in offered if p != "unknown/unknown") or "no platforms"
    raise FetchError(
        f"{image} has no {want} image; it offers {shown}",
        hint=f"pick a base image published for {want}, or build for one of the offered platforms",
    )


class RegistryClient:
    """One registry host. Use as a context manager (or call :meth:`close`).

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

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, base_url={str(self.base_url)!r})"

    # -- reading ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry answers the API (200 or an auth challenge both count)."""
        op = _Op("pull", "API root", "", f"{self.registry}/v2/")
        resp = self._send(op, "GET", self._url("/v2/"), scopes=(), authenticate=False)
        if resp.status_code not in (200, 401):
            raise self._fail(resp, op)

    def get_manifest(
        self, repository: str, ref: str, accept: Sequence[str] = DEFAULT_ACCEPT
    ) -> FetchedManifest:
        """The manifest or index ``repository:ref`` (ref = tag or digest), exact bytes."""
        op = _Op("pull", "manifest", repository, self._target(repository, ref))
        if ":" in ref and not is_digest(ref):
            raise FetchError(f"invalid digest {ref!r} for {op.target}",
                             hint="a digest is sha256:<64 lowercase hex>")
        resp = self._send(op, "GET", self._api(repository, "manifests", ref),
                          scopes=(repository_scope(repository, "pull"),),
                          headers={"Accept": ", ".join(accept)}, stream=True)
        try:
            if resp.status_code != 200:
                raise self._fail(resp, op)
            data = self._read_limited(resp, op, MAX_MANIFEST_BYTES)
        finally:
            resp.close()
        pinned = is_digest(ref)
        digest = compute_digest(data, ref.split(":")[0] if pinned else "sha256")
        if pinned and digest != ref:
            raise self._mismatch(op, ref, digest)
        header = resp.headers.get("Docker-Content-Digest")
        if header and header.split(":")[0] == digest.split(":")[0] and header != digest:
            raise self._mismatch(op, header, digest)
        media_type = self._media_type(resp, data, op)
        log.debug("pulled %s (%s, %d bytes, %s)", op.target, media_type, len(data), digest)
        return FetchedManifest(data, media_type, digest)

    def head_manifest(
        self, repository: str, ref: str, accept: Sequence[str] = DEFAULT_ACCEPT
    ) -> Descriptor | None:
        """Digest, media type and size of ``repository:ref`` without its body; None if absent."""
        op = _Op("pull", "manifest", repository, self._target(repository, ref))
        resp = self._send(op, "HEAD", self._api(repository, "manifests", ref),
                          scopes=(repository_scope(repository, "pull"),),
                          headers={"Accept": ", ".join(accept)})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, op)
        digest = resp.headers.get("Docker-Content-Digest")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest or not is_digest(digest) or media_type not in MANIFEST_TYPES | INDEX_TYPES:
            # Not every registry answers HEAD fully; the body tells everything.
            got = self.get_manifest(repository, ref, accept)
            return Descriptor(got.media_type, got.digest, len(got.data))
        return Descriptor(media_type, digest, int(resp.headers.get("Content-Length") or 0))

    def get_platform_manifest(
        self, repository: str, ref: str, platform: str | Platform
    ) -> FetchedManifest:
        """The single-platform manifest of ``repository:ref``: resolved through the index for
        ``platform`` when ref names an index; returned as is when it names a manifest (the
        caller checks the config's os/architecture then)."""
        got = self.get_manifest(repository, ref)
        if not got.is_index:
            return got
        desc = resolve_platform(got.data, platform, image=self._target(repository, ref))
        return self.get_manifest(repository, desc.digest, accept=(OCI_MANIFEST, DOCKER_MANIFEST))

    def iter_blob(self, repository: str, digest: str, *, size: int | None = None) -> Iterator[bytes]:
        """Stream a blob in chunks. The digest (and size, if given) is checked after the last
        chunk: consume it to the end, and discard what was read if it raises."""
        op = _Op("pull", "blob", repository, self._target(repository, digest))
        if not is_digest(digest):
            raise FetchError(f"invalid digest {digest!r} for a blob of {self.registry}/{repository}",
                             hint="a digest is sha256:<64 lowercase hex>")
        resp = self._send(op, "GET", self._api(repository, "blobs", digest),
                          scopes=(repository_scope(repository, "pull"),), stream=True)
        try:
            if resp.status_code != 200:
                raise self._fail(resp, op)
            hasher = _hasher(digest)
            total = 0
            for chunk in self._iter_response(resp, op):
                total += len(chunk)
                if size is not None and total > size:
                    raise op.error(
                        f"blob {digest} from {self.registry}/{repository} is larger than the "
                        f"{size} bytes its descriptor says",
                        hint="the registry serves different content than the manifest describes",
                    )
                hasher.update(chunk)
                yield chunk
            got = f"{digest.split(':')[0]}:{hasher.hexdigest()}"
            if got != digest:
                raise self._mismatch(op, digest, got)
            if size is not None and total != size:
                raise op.error(
                    f"blob {digest} from {self.registry}/{repository} has {total} bytes, "
                    f"its descriptor says {size}",
                    hint="the registry serves different content than the manifest describes",
                )
        finally:
            resp.close()

    def get_blob(self, repository: str, digest: str, *, size: int | None = None) -> bytes:
        """A whole blob in memory (configs, small layers), verified."""
        return b"".join(self.iter_blob(repository, digest, size=size))

    def download_blob(
        self, repository: str, digest: str, dest: Path, *, size: int | None = None
    ) -> int:
        """Stream a blob to ``dest`` (written aside, renamed once verified); returns its size."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        total = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in self.iter_blob(repository, digest, size=size):
                    fh.write(chunk)
                    total += len(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return total

    # -- writing ---------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        """HEAD the blob (asked with push scope: it is the first step of a push)."""
        op = _Op("push", "blob", repository, self._target(repository, digest))
        resp = self._send(op, "HEAD", self._api(repository, "blobs", digest),
                          scopes=(repository_scope(repository, "pull", "push"),))
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, op)

    def push_blob(
        self,
        repository: str,
        digest: str,
        data: bytes | Path,
        size: int,
        mount_from: str | None = None,
    ) -> BlobPush:
        """Make ``digest`` exist in ``repository``: ``"exists"`` if it already did,
        ``"mounted"`` when the registry linked it from ``mount_from`` (a repository on this
        registry), else ``"uploaded"`` (POST, then one PUT with the whole blob)."""
        op = _Op("push", "blob", repository, self._target(repository, digest))
        if not is_digest(digest):
            raise PublishError(f"invalid digest {digest!r} for a blob of {self.registry}/{repository}",
                               hint="a digest is sha256:<64 lowercase hex>")
        body = self._blob_body(op, digest, data, size)
        if self.blob_exists(repository, digest):
            log.debug("blob %s exists in %s", digest, repository)
            return "exists"
        scopes: tuple[str, ...] = (repository_scope(repository, "pull", "push"),)
        location: str | None = None
        uploads = self._api(repository, "blobs", "uploads/")
        if mount_from and mount_from != repository:
            scopes += (repository_scope(mount_from, "pull"),)
            resp = self._send(op, "POST", uploads.copy_merge_params({"mount": digest, "from": mount_from}),
                              scopes=scopes, headers={"Content-Length": "0"})
            if resp.status_code == 201:
                self._check_returned_digest(resp, op, digest)
                log.debug("blob %s mounted from %s into %s", digest, mount_from, repository)
                return "mounted"
            if resp.status_code != 202:
                raise self._fail(resp, op)
            location = resp.headers.get("Location")  # no mount: the answer is an upload session
        if location is None:
            resp = self._send(op, "POST", uploads, scopes=scopes, headers={"Content-Length": "0"})
            if resp.status_code != 202:
                raise self._fail(resp, op)
            location = resp.headers.get("Location")
        if not location:
            raise PublishError(
                f"registry {self.registry} opened an upload for {op.target} without a Location header",
                hint="the registry does not follow the OCI distribution spec; report it to its operator",
            )
        put_url = self.base_url.join(location).copy_merge_params({"digest": digest})
        resp = self._send(op, "PUT", put_url, scopes=scopes, body=body,
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        if resp.status_code not in (201, 204):
            if resp.status_code == 400 and "DIGEST_INVALID" in _registry_error_codes(resp):
                raise PublishError(
                    f"registry {self.registry} rejected blob {digest} for {repository}: the uploaded "
                    "data does not hash to that digest",
                    hint="the blob changed on disk while it was pushed; rebuild and push again",
                )
            raise self._fail(resp, op)
        self._check_returned_digest(resp, op, digest)
        log.debug("blob %s uploaded to %s (%d bytes)", digest, repository, size)
        return "uploaded"

    def push_manifest(self, repository: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT the exact manifest/index bytes under ``ref`` (a tag or its digest); returns the
        digest, sha256 of ``data`` computed here. Push every blob it names first."""
        digest = compute_digest(data)
        op = _Op("push", "manifest", repository, self._target(repository, ref))
        if is_digest(ref) and ref != digest:
            raise PublishError(
                f"manifest for {op.target} hashes to {digest}, not to the digest it is pushed as",
                hint="push a manifest under its own digest (or under a tag)",
            )
        if not media_type:
            raise PublishError(f"no media type given for manifest {op.target}",
                               hint=f"use {OCI_MANIFEST} or {OCI_INDEX}")
        resp = self._send(op, "PUT", self._api(repository, "manifests", ref),
                          scopes=(repository_scope(repository, "pull", "push"),),
                          body=data, headers={"Content-Type": media_type})
        if resp.status_code not in (200, 201, 202, 204):
            raise self._fail(resp, op)
        self._check_returned_digest(resp, op, digest)
        log.debug("pushed manifest %s (%s)", op.target, digest)
        return digest

    # -- static helpers --------------------------------------------------------------------

    # Also reachable as a method, for callers that hold only a client.
    resolve_platform = staticmethod(resolve_platform)

    # -- internals: URLs -------------------------------------------------------------------

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
        op: _Op,
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

    def _auth_header(self, scopes: Sequence[str], op: _Op) -> str | None:
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

    def _answer_challenge(self, challenges: list[Challenge], scopes: Sequence[str], op: _Op) -> bool:
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

    def _fetch_token(self, challenge: Challenge, scopes: Sequence[str], op: _Op) -> str:
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
                + (f": {detail}" if (detail := _registry_errors(resp)) else ""),
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

    def _iter_response(self, resp: httpx.Response, op: _Op) -> Iterator[bytes]:
        started = time.monotonic()
        try:
            yield from resp.iter_bytes(_CHUNK)
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

    def _read_limited(self, resp: httpx.Response, op: _Op, limit: int) -> bytes:
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

    def _media_type(self, resp: httpx.Response, data: bytes, op: _Op) -> str:
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            # Some registries answer application/json; the document's own field is then the truth.
            try:
                field = json.loads(data).get("mediaType")
            except (ValueError, AttributeError):
                field = None
            if field in MANIFEST_TYPES | INDEX_TYPES:
                return field
            raise op.error(
                f"registry {self.registry} answered {op.target} with unsupported media type "
                f"{media_type or 'none'!r}",
                hint="only OCI and Docker v2 manifests and indexes are supported (not Docker "
                "schema 1); re-push the image with a current client",
            )
        return media_type

    def _blob_body(
        self, op: _Op, digest: str, data: bytes | Path, size: int
    ) -> Callable[[], Iterable[bytes]] | bytes:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
            got = compute_digest(data, digest.split(":")[0])
            if got != digest or len(data) != size:
                raise PublishError(
                    f"blob for {op.target} does not match its descriptor: {len(data)} bytes hashing "
                    f"to {got}, expected {size} bytes and {digest}",
                    hint="this is a bug in how the image was assembled; please report it",
                )
            return data
        path = Path(data)
        try:
            actual = path.stat().st_size
        except OSError as exc:
            raise PublishError(f"cannot read blob file {path} for {op.target}: {exc.strerror}",
                               hint="the build output is incomplete; rebuild the image") from None
        if actual != size:
            raise PublishError(
                f"blob file {path} for {op.target} has {actual} bytes, its descriptor says {size}",
                hint="the build output changed after it was written; rebuild the image",
            )

        def chunks() -> Iterator[bytes]:
            # Reads one chunk ahead so that a mismatch is raised before the last byte is sent:
            # the registry then never commits a blob under the wrong digest.
            hasher = _hasher(digest)
            with open(path, "rb") as fh:
                pending = fh.read(_CHUNK)
                while pending:
                    hasher.update(pending)
                    nxt = fh.read(_CHUNK)
                    if not nxt and f"{digest.split(':')[0]}:{hasher.hexdigest()}" != digest:
                        raise PublishError(
                            f"blob file {path} does not hash to {digest} (pushing to {op.target})",
                            hint="the build output changed after it was written; rebuild the image",
                        )
                    yield pending
                    pending = nxt

        return chunks

    # -- internals: errors -----------------------------------------------------------------

    def _check_returned_digest(self, resp: httpx.Response, op: _Op, digest: str) -> None:
        header = resp.headers.get("Docker-Content-Digest")
        if header and header.split(":")[0] == digest.split(":")[0] and header != digest:
            raise self._mismatch(op, digest, header, what="the registry's Docker-Content-Digest")

    def _mismatch(self, op: _Op, expected: str, got: str, *, what: str = "the content received") -> MlbuildError:
        return op.error(
            f"digest mismatch for {op.what} {op.target}: expected {expected}, {what} is {got}",
            hint="the registry (or a proxy) altered the content; retry, and report it if it persists",
        )

    def _connection_error(self, op: _Op, method: str, url: httpx.URL, exc: Exception) -> MlbuildError:
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

    def _auth_failure(self, op: _Op, resp: httpx.Response) -> MlbuildError:
        creds = self._creds
        detail = _registry_errors(resp)
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

    def _fail(self, resp: httpx.Response, op: _Op) -> MlbuildError:
        status = resp.status_code
        if status in (401, 403):
            return self._auth_failure(op, resp)
        detail = _registry_errors(resp)
        suffix = f" ({detail})" if detail else ""
        method, path = resp.request.method, resp.request.url.path
        if status == 404:
            codes = _registry_error_codes(resp)
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

