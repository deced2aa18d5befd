"""A small client for the OCI distribution API (what ``docker pull/push`` speak), on httpx.

What it guarantees:

- Manifests are handled as the exact bytes the registry served or the caller built: the digest
  is always ``sha256`` of those bytes, computed here, and checked against the digest asked for
  and against ``Docker-Content-Digest`` when the registry sends one.
- Blobs are verified against their digest while they stream; a mismatch is an error and a
  download never leaves a half-written file (written aside, then renamed).
- Pushes go blob by blob (HEAD to skip what exists, cross-repository mount when a source repo is
  given, else POST + monolithic PUT), and the manifest is pushed by the caller last.
- Authentication, retries and error wording: registry_transport.py (RegistryTransport, which
  RegistryClient extends).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import httpx

from .._errors import FetchError, PublishError
from .._platforms import Platform, parse_platform
from .auth import repository_scope
from .mediatypes import DOCKER, INDEX_TYPES, MANIFEST_TYPES, OCI
from .reference import is_digest
from .registry_transport import (
    CHUNK,
    MAX_MANIFEST_BYTES,
    Op,
    RegistryTransport,
    compute_digest,
    new_hasher,
    registry_error_codes,
)

log = logging.getLogger(__name__)

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


# The media types are mediatypes.py's; named here as the distribution API's callers know them.
OCI_MANIFEST = OCI.manifest
OCI_INDEX = OCI.index
DOCKER_MANIFEST = DOCKER.manifest
DOCKER_MANIFEST_LIST = DOCKER.index
DEFAULT_ACCEPT: tuple[str, ...] = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

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


class RegistryClient(RegistryTransport):
    """One registry host: manifests, indexes and blobs, pulled and pushed. The constructor's
    arguments (host, insecure, credentials, timeout, retries) and the transport, auth and error
    wording are RegistryTransport's. Use as a context manager (or call :meth:`close`)."""

    def __enter__(self) -> RegistryClient:
        return self

    # -- reading ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry answers the API (200 or an auth challenge both count)."""
        op = Op("pull", "API root", "", f"{self.registry}/v2/")
        resp = self._send(op, "GET", self._url("/v2/"), scopes=(), authenticate=False)
        if resp.status_code not in (200, 401):
            raise self._fail(resp, op)

    def get_manifest(
        self, repository: str, ref: str, accept: Sequence[str] = DEFAULT_ACCEPT
    ) -> FetchedManifest:
        """The manifest or index ``repository:ref`` (ref = tag or digest), exact bytes."""
        op = Op("pull", "manifest", repository, self._target(repository, ref))
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
        op = Op("pull", "manifest", repository, self._target(repository, ref))
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
        op = Op("pull", "blob", repository, self._target(repository, digest))
        if not is_digest(digest):
            raise FetchError(f"invalid digest {digest!r} for a blob of {self.registry}/{repository}",
                             hint="a digest is sha256:<64 lowercase hex>")
        resp = self._send(op, "GET", self._api(repository, "blobs", digest),
                          scopes=(repository_scope(repository, "pull"),), stream=True)
        try:
            if resp.status_code != 200:
                raise self._fail(resp, op)
            hasher = new_hasher(digest)
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
        op = Op("push", "blob", repository, self._target(repository, digest))
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
        op = Op("push", "blob", repository, self._target(repository, digest))
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
            if resp.status_code == 400 and "DIGEST_INVALID" in registry_error_codes(resp):
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
        op = Op("push", "manifest", repository, self._target(repository, ref))
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

    def _media_type(self, resp: httpx.Response, data: bytes, op: Op) -> str:
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
        self, op: Op, digest: str, data: bytes | Path, size: int
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
            hasher = new_hasher(digest)
            with open(path, "rb") as fh:
                pending = fh.read(CHUNK)
                while pending:
                    hasher.update(pending)
                    nxt = fh.read(CHUNK)
                    if not nxt and f"{digest.split(':')[0]}:{hasher.hexdigest()}" != digest:
                        raise PublishError(
                            f"blob file {path} does not hash to {digest} (pushing to {op.target})",
                            hint="the build output changed after it was written; rebuild the image",
                        )
                    yield pending
                    pending = nxt

        return chunks

