"""RegistryClient against an in-memory registry on httpx.MockTransport: auth flows, error
mapping, the upload/mount sequence, exact-bytes digests, platform resolution."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from mlbuild._errors import ConfigError, FetchError, PublishError
from mlbuild._oci.auth import Credentials, NoCredentials
from mlbuild._oci.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    RegistryClient,
    resolve_platform,
)

HOST = "registry.example.com"
REALM = "https://auth.example.com/token"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def registry_error(status: int, code: str, message: str, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"code": code, "message": message}]}, headers=headers)


@dataclass
class FakeRegistry:
    """Just enough of the distribution API. ``auth``: None, "bearer" or "basic"."""

    auth: str | None = None
    users: dict[str, str] = field(default_factory=lambda: {"alice": "right"})
    anonymous_pull: bool = True
    pushers: set[str] | None = None  # users who may push; None: every known user
    mount: bool = True
    upload_host: str | None = None  # serve upload Locations on another origin
    blobs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    manifests: dict[str, dict[str, tuple[bytes, str]]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    token_requests: list[httpx.Request] = field(default_factory=list)
    tokens: dict[str, set[str]] = field(default_factory=dict)  # token -> granted scopes

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self, **kwargs) -> RegistryClient:
        kwargs.setdefault("credential_source", NoCredentials())
        kwargs.setdefault("retry_backoff", 0)
        return RegistryClient(HOST, transport=self.transport(), **kwargs)

    @property
    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    # -- auth ----------------------------------------------------------------------------------

    def _basic_user(self, request: httpx.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        user = None
        if "Authorization" in request.headers:
            user = self._basic_user(request)
            if user is None:
                return httpx.Response(401, json={"details": "incorrect username or password"})
        granted = set()
        for scope in request.url.params.get_list("scope"):
            _, repo, actions = scope.split(":")
            for action in actions.split(","):
                may_push = user is not None and (self.pushers is None or user in self.pushers)
                if (action == "pull" and (user or self.anonymous_pull)) or (action == "push" and may_push):
                    granted.add(f"{repo}:{action}")
        token = f"tok-{len(self.tokens)}"
        self.tokens[token] = granted
        return httpx.Response(200, json={"token": token, "expires_in": 300})

    def _authorized(self, request: httpx.Request, repo: str, actions: list[str]) -> httpx.Response | None:
        if self.auth is None:
            return None
        scope = f"repository:{repo}:{','.join(actions)}"
        if self.auth == "basic":
            if self._basic_user(request):
                return None
            return registry_error(401, "UNAUTHORIZED", "authentication required",
                                  {"WWW-Authenticate": 'Basic realm="fake"'})
        header = request.headers.get("Authorization", "")
        granted = self.tokens.get(header[7:], set()) if header.startswith("Bearer ") else set()
        if all(f"{repo}:{a}" in granted for a in actions):
            return None
        challenge = f'Bearer realm="{REALM}",service="{HOST}",scope="{scope}"'
        if header:
            challenge += ',error="insufficient_scope"'
        return registry_error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})

    # -- API -----------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            return self._token(request)
        self.requests.append(request)
        path = request.url.path
        if path == "/v2/":
            return self._authorized(request, "", []) or httpx.Response(200, json={})
        m = re.fullmatch(r"/v2/(.+)/(blobs|manifests)/(.+)", path)
        assert m, path
        repo, kind, ref = m.groups()
        write = request.method in ("POST", "PUT", "PATCH", "DELETE") or (
            kind == "blobs" and request.method == "HEAD" and "upload" not in ref)
        actions = ["pull", "push"] if write else ["pull"]
        if request.method == "POST" and request.url.params.get("from"):
            if denied := self._authorized(request, request.url.params["from"], ["pull"]):
                return denied
        if denied := self._authorized(request, repo, actions):
            return denied
        if kind == "manifests":
            return self._manifest(request, repo, ref)
        if ref.startswith("uploads/"):
            return self._upload(request, repo, ref)
        blob = self.blobs.get(repo, {}).get(ref)
        if blob is None:
            return registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(blob)), "Docker-Content-Digest": ref})
        return httpx.Response(200, content=blob, headers={"Docker-Content-Digest": ref})

    def _manifest(self, request: httpx.Request, repo: str, ref: str) -> httpx.Response:
        if request.method == "PUT":
            data = request.read()
            digest = sha(data)
            entry = (data, request.headers["Content-Type"])
            self.manifests.setdefault(repo, {})[ref] = entry
            self.manifests[repo][digest] = entry
            return httpx.Response(201, headers={"Docker-Content-Digest": digest, "Location": f"/v2/{repo}/manifests/{digest}"})
        if repo not in self.manifests:
            return registry_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        if ref not in self.manifests[repo]:
            return registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        data, media_type = self.manifests[repo][ref]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": sha(data), "Content-Length": str(len(data))}
        return httpx.Response(200, content=b"" if request.method == "HEAD" else data, headers=headers)

    def _upload(self, request: httpx.Request, repo: str, ref: str) -> httpx.Response:
        if request.method == "POST":
            mount, source = request.url.params.get("mount"), request.url.params.get("from")
            if self.mount and mount and mount in self.blobs.get(source or "", {}):
                self.blobs.setdefault(repo, {})[mount] = self.blobs[source][mount]
                return httpx.Response(201, headers={"Docker-Content-Digest": mount, "Location": f"/v2/{repo}/blobs/{mount}"})
            session = uuid.uuid4().hex
            location = f"/v2/{repo}/blobs/uploads/{session}?_state=opaque"
            if self.upload_host:
                location = f"https://{self.upload_host}{location}"
            return httpx.Response(202, headers={"Location": location})
        if request.method == "PUT":
            assert request.url.params["_state"] == "opaque"  # the Location's own query survives
            digest = request.url.params["digest"]
            data = request.read()
            if sha(data) != digest:
                return registry_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
            self.blobs.setdefault(repo, {})[digest] = data
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        raise AssertionError(request.method)


def put_manifest(fake: FakeRegistry, repo: str, tag: str, data: bytes, media_type: str = OCI_MANIFEST) -> None:
    fake.manifests.setdefault(repo, {})[tag] = (data, media_type)
    fake.manifests[repo][sha(data)] = (data, media_type)


MANIFEST = b'{"schemaVersion":2,  "mediaType":"application/vnd.oci.image.manifest.v1+json" ,"layers":[]}\n'


# -- defaults ------------------------------------------------------------------------------------


def test_plain_http_only_for_loopback_hosts() -> None:
    assert str(RegistryClient("127.0.0.1:5000").base_url) == "http://127.0.0.1:5000"
    assert str(RegistryClient("localhost").base_url) == "http://localhost"
    assert str(RegistryClient("[::1]:5000").base_url) == "http://[::1]:5000"
    assert str(RegistryClient(HOST).base_url) == f"https://{HOST}"
    assert str(RegistryClient(HOST, insecure=True).base_url) == f"http://{HOST}"
    assert str(RegistryClient("127.0.0.1:5000", insecure=False).base_url) == "https://127.0.0.1:5000"


def test_api_host_override_applies_to_the_default_registry_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBUILD_DEFAULT_REGISTRY", "names.example.com")
    monkeypatch.setenv("MLBUILD_DEFAULT_REGISTRY_API", "api.example.com:8443")
    client = RegistryClient("names.example.com")
    assert client.registry == "names.example.com"  # messages and credentials use the written name
    assert str(client.base_url) == "https://api.example.com:8443"
    assert str(RegistryClient(HOST).base_url) == f"https://{HOST}"
    monkeypatch.delenv("MLBUILD_DEFAULT_REGISTRY_API")
    assert str(RegistryClient("names.example.com").base_url) == "https://names.example.com"


# -- pulling: exact bytes and digests ------------------------------------------------------------


def test_get_manifest_returns_exact_bytes_and_their_digest() -> None:
    fake = FakeRegistry()
    put_manifest(fake, "team/model", "v1", MANIFEST)
    with fake.client() as client:
        got = client.get_manifest("team/model", "v1")
        assert got.data == MANIFEST
        assert got.digest == sha(MANIFEST)
        assert got.media_type == OCI_MANIFEST and not got.is_index
        assert client.get_manifest("team/model", sha(MANIFEST)).data == MANIFEST
    accept = fake.requests[0].headers["Accept"]
    assert all(t in accept for t in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST))


def test_manifest_pulled_by_digest_is_verified() -> None:
    fake = FakeRegistry()
    wanted = sha(b"what we asked for")
    fake.manifests["team/model"] = {wanted: (MANIFEST, OCI_MANIFEST)}  # serves other bytes
    with fake.client() as client, pytest.raises(FetchError) as err:
        client.get_manifest("team/model", wanted)
    assert str(err.value).startswith(f"digest mismatch for manifest {HOST}/team/model@{wanted}: "
                                     f"expected {wanted}, the content received is {sha(MANIFEST)}")


def test_wrong_docker_content_digest_on_a_tag_pull_is_a_mismatch() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=MANIFEST, headers={"Content-Type": OCI_MANIFEST,
                                                              "Docker-Content-Digest": sha(b"other")})

    with RegistryClient(HOST, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(FetchError, match="digest mismatch for manifest"):
            client.get_manifest("team/model", "v1")


def test_media_type_from_the_document_when_the_header_is_generic() -> None:
    fake = FakeRegistry()
    put_manifest(fake, "a", "json", MANIFEST, media_type="application/json")
    put_manifest(fake, "a", "v1", b'{"schemaVersion":1,"name":"a"}',
                 media_type="application/vnd.docker.distribution.manifest.v1+prettyjws")
    with fake.client() as client:
        assert client.get_manifest("a", "json").media_type == OCI_MANIFEST
        with pytest.raises(FetchError) as err:
            client.get_manifest("a", "v1")
    assert "unsupported media type 'application/vnd.docker.distribution.manifest.v1+prettyjws'" in str(err.value)
    assert "schema 1" in err.value.hint


def test_oversized_manifest_is_refused() -> None:
    big = b" " * (4 * 1024 * 1024 + 1)
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=big, headers={"Content-Type": OCI_MANIFEST}))
    with RegistryClient(HOST, transport=transport) as client, pytest.raises(FetchError, match="more than 4194304 bytes"):
        client.get_manifest("a", "b")


def test_blob_is_verified_and_download_is_atomic(tmp_path: Path) -> None:
    fake = FakeRegistry()
    good = b"layer bytes" * 1000
    fake.blobs["a"] = {sha(good): good, sha(b"claimed"): b"served instead"}
    with fake.client() as client:
        assert client.get_blob("a", sha(good)) == good
        assert client.download_blob("a", sha(good), tmp_path / "ok") == len(good)
        assert (tmp_path / "ok").read_bytes() == good
        with pytest.raises(FetchError) as err:
            client.download_blob("a", sha(b"claimed"), tmp_path / "bad")
        with pytest.raises(FetchError, match="has 11000 bytes, its descriptor says 11001"):
            client.get_blob("a", sha(good), size=len(good) + 1)
        with pytest.raises(FetchError, match="larger than the 5 bytes"):
            client.get_blob("a", sha(good), size=5)
    assert str(err.value).startswith(f"digest mismatch for blob {HOST}/a@{sha(b'claimed')}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]  # no partial file left


def test_invalid_digests_are_refused_before_any_request() -> None:
    fake = FakeRegistry()
    with fake.client() as client:
        with pytest.raises(FetchError, match="invalid digest 'sha256:abc'"):
            client.get_manifest("a", "sha256:abc")
        with pytest.raises(FetchError, match="invalid digest"):
            client.get_blob("a", "nope")
        with pytest.raises(PublishError, match="invalid digest"):
            client.push_blob("a", "sha256:XYZ", b"x", 1)
    assert fake.requests == []


# -- auth flows ----------------------------------------------------------------------------------


def test_bearer_anonymous_pull_fetches_a_token_without_credentials() -> None:
    fake = FakeRegistry(auth="bearer")
    put_manifest(fake, "library/python", "3.11", MANIFEST)
    with fake.client() as client:
        assert client.get_manifest("library/python", "3.11").data == MANIFEST
    (token_req,) = fake.token_requests
    assert "Authorization" not in token_req.headers
    assert token_req.url.params.get_list("scope") == ["repository:library/python:pull"]
    assert token_req.url.params["service"] == HOST
    assert [r.headers.get("Authorization") for r in fake.requests] == [None, "Bearer tok-0"]


def test_bearer_with_credentials_caches_tokens_per_scope_and_asks_ahead() -> None:
    fake = FakeRegistry(auth="bearer")
    put_manifest(fake, "team/model", "v1", MANIFEST)
    creds = Credentials("alice", "right", "a test")
    with fake.client(credentials=creds) as client:
        client.get_manifest("team/model", "v1")
        client.get_manifest("team/model", "v1")  # same scope: the cached token
        client.push_blob("team/model", sha(b"data"), b"data", 4)  # new scope: token asked first
    assert len(fake.token_requests) == 2
    assert all(r.headers["Authorization"] == "Basic " + base64.b64encode(b"alice:right").decode()
               for r in fake.token_requests)
    assert fake.token_requests[1].url.params.get_list("scope") == ["repository:team/model:pull,push"]
    # one 401 in total: the first request; afterwards every request carries a fitting token
    assert [r.headers.get("Authorization") is None for r in fake.requests].count(True) == 1
    assert fake.blobs["team/model"][sha(b"data")] == b"data"


def test_bearer_bad_credentials_name_the_registry_user_and_source() -> None:
    fake = FakeRegistry(auth="bearer")
    with fake.client(credentials=Credentials("alice", "wrong", "/home/u/.docker/config.json auths")) as client:
        with pytest.raises(PublishError) as err:
            client.push_manifest("team/model", "v1", MANIFEST, OCI_MANIFEST)
    assert str(err.value) == (
        f"registry {HOST} rejected the credentials of user 'alice' (from /home/u/.docker/config.json auths) "
        f"while pushing manifest {HOST}/team/model:v1"
    )
    assert f"docker login {HOST}" in err.value.hint


def test_anonymous_push_says_credentials_are_needed_and_where_it_looked(tmp_path: Path) -> None:
    from mlbuild._oci.auth import DockerConfig

    fake = FakeRegistry(auth="bearer")
    with fake.client(credential_source=DockerConfig(tmp_path)) as client, pytest.raises(PublishError) as err:
        client.push_blob("team/model", sha(b"d"), b"d", 1)
    assert str(err.value) == (f"registry {HOST} needs credentials to push team/model and none were found "
                              f"for it (looked in {tmp_path / 'config.json'})")


def test_token_without_the_scope_for_a_user_is_access_denied() -> None:
    fake = FakeRegistry(auth="bearer", users={"bob": "pw"}, pushers=set())  # bob may pull, not push
    with fake.client(credentials=Credentials("bob", "pw", "a test")) as client, pytest.raises(PublishError) as err:
        client.push_blob("team/model", sha(b"d"), b"d", 1)
    assert str(err.value).startswith(f"registry {HOST} denied push access to team/model for user 'bob' (from a test)")
    assert "UNAUTHORIZED: authentication required" in str(err.value)


def test_basic_challenge_retries_with_credentials_then_sends_them_up_front() -> None:
    fake = FakeRegistry(auth="basic")
    put_manifest(fake, "team/model", "v1", MANIFEST)
    with fake.client(credentials=Credentials("alice", "right")) as client:
        client.get_manifest("team/model", "v1")
        client.get_manifest("team/model", "v1")
    assert [r.headers.get("Authorization", "")[:5] for r in fake.requests] == ["", "Basic", "Basic"]
    assert fake.token_requests == []


def test_basic_challenge_with_wrong_or_no_credentials() -> None:
    fake = FakeRegistry(auth="basic")
    put_manifest(fake, "team/model", "v1", MANIFEST)
    with fake.client(credentials=Credentials("alice", "nope", "env")) as client, pytest.raises(FetchError) as bad:
        client.get_manifest("team/model", "v1")
    assert str(bad.value).startswith(f"registry {HOST} rejected the credentials of user 'alice' (from env)")
    with fake.client() as client, pytest.raises(FetchError) as none:
        client.get_manifest("team/model", "v1")
    assert str(none.value).startswith(f"registry {HOST} needs credentials to pull team/model")


def test_credentials_are_looked_up_only_when_challenged() -> None:
    class Counting:
        lookups = 0

        def lookup(self, registry: str) -> Credentials | None:
            Counting.lookups += 1
            return Credentials("alice", "right", "counting")

        def describe(self) -> str:
            return "counting"

    open_fake = FakeRegistry()
    put_manifest(open_fake, "a", "v1", MANIFEST)
    with open_fake.client(credential_source=Counting()) as client:
        client.get_manifest("a", "v1")
    assert Counting.lookups == 0
    closed = FakeRegistry(auth="basic")
    put_manifest(closed, "a", "v1", MANIFEST)
    with closed.client(credential_source=Counting()) as client:
        client.get_manifest("a", "v1")
        client.get_manifest("a", "v1")
    assert Counting.lookups == 1


def test_broken_docker_config_surfaces_as_config_error(tmp_path: Path) -> None:
    from mlbuild._oci.auth import DockerConfig

    (tmp_path / "config.json").write_text("{oops")
    fake = FakeRegistry(auth="basic")
    with fake.client(credential_source=DockerConfig(tmp_path)) as client, pytest.raises(ConfigError, match="not valid JSON"):
        client.get_manifest("a", "v1")


def test_token_service_failures() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            return httpx.Response(503, text="down for maintenance")
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="x"'})

    with RegistryClient(HOST, transport=httpx.MockTransport(handler), credential_source=NoCredentials()) as client:
        with pytest.raises(FetchError, match=r"token service auth.example.com of registry .* answered 503 "
                                             r"Service Unavailable while pulling manifest .*: down for maintenance"):
            client.get_manifest("a", "v1")

    def no_token(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            return httpx.Response(200, json={"nothing": True})
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})

    with RegistryClient(HOST, transport=httpx.MockTransport(no_token), credential_source=NoCredentials()) as client:
        with pytest.raises(FetchError, match="answered without a token"):
            client.get_manifest("a", "v1")


# -- error mapping -------------------------------------------------------------------------------


def test_not_found_names_the_repository_or_the_reference() -> None:
    fake = FakeRegistry()
    put_manifest(fake, "team/model", "v1", MANIFEST)
    with fake.client() as client:
        with pytest.raises(FetchError) as no_repo:
            client.get_manifest("team/other", "v1")
        with pytest.raises(FetchError) as no_tag:
            client.get_manifest("team/model", "v2")
    assert str(no_repo.value) == f"repository not found: {HOST}/team/other (NAME_UNKNOWN: repository name not known to registry)"
    assert str(no_tag.value) == f"manifest not found: {HOST}/team/model:v2 (MANIFEST_UNKNOWN: manifest unknown)"


def test_server_error_shows_status_and_registry_code_and_is_not_retried() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return registry_error(500, "UNKNOWN", "unknown error")

    with RegistryClient(HOST, transport=httpx.MockTransport(handler), retry_backoff=0) as client:
        with pytest.raises(FetchError) as err:
            client.get_manifest("team/model", "v1")
    assert str(err.value) == (f"registry {HOST} failed with 500 Internal Server Error while pulling manifest "
                              f"{HOST}/team/model:v1 (GET /v2/team/model/manifests/v1): UNKNOWN: unknown error")
    assert len(seen) == 1


def test_gateway_errors_on_reads_are_retried() -> None:
    answers = [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "0"}),
               httpx.Response(200, content=MANIFEST, headers={"Content-Type": OCI_MANIFEST})]
    transport = httpx.MockTransport(lambda r: answers.pop(0))
    with RegistryClient(HOST, transport=transport, retry_backoff=0) as client:
        assert client.get_manifest("a", "b").data == MANIFEST
    assert answers == []
    again = [httpx.Response(502)] * 3
    with RegistryClient(HOST, transport=httpx.MockTransport(lambda r: again.pop(0)), retry_backoff=0) as client:
        with pytest.raises(FetchError, match="failed with 502 Bad Gateway"):
            client.get_manifest("a", "b")


def test_forbidden_and_other_refusals() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return registry_error(400, "MANIFEST_INVALID", "manifest invalid")
        return registry_error(403, "DENIED", "requested access to the resource is denied")

    with RegistryClient(HOST, transport=httpx.MockTransport(handler), credential_source=NoCredentials()) as client:
        with pytest.raises(PublishError) as invalid:
            client.push_manifest("a", "v1", MANIFEST, OCI_MANIFEST)
        with pytest.raises(FetchError) as denied:
            client.get_manifest("a", "v1")
    assert str(invalid.value) == (f"registry {HOST} refused pushing manifest {HOST}/a:v1: 400 Bad Request: "
                                  "MANIFEST_INVALID: manifest invalid (PUT /v2/a/manifests/v1)")
    assert str(denied.value).startswith(f"registry {HOST} needs credentials to pull a")


def test_timeout_and_connection_errors_name_the_host() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with RegistryClient(HOST, transport=httpx.MockTransport(slow), timeout=7) as client:
        with pytest.raises(FetchError) as err:
            client.get_manifest("a", "v1")
        with pytest.raises(PublishError, match=f"registry {HOST} did not answer within"):
            client.push_blob("a", sha(b"x"), b"x", 1)
    assert str(err.value).startswith(f"registry {HOST} did not answer within ")
    assert "(GET /v2/a/manifests/v1; timeout 7 s)" in str(err.value)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number", request=request)

    with RegistryClient(HOST, transport=httpx.MockTransport(refused)) as client, pytest.raises(FetchError) as err:
        client.ping()
    assert str(err.value).startswith(f"cannot connect to registry {HOST} (https://{HOST}) while pulling API root")
    assert "plain HTTP" in err.value.hint


# -- pushing -------------------------------------------------------------------------------------


def test_push_manifest_sends_and_hashes_the_exact_bytes() -> None:
    fake = FakeRegistry()
    with fake.client() as client:
        digest = client.push_manifest("team/model", "v1", MANIFEST, OCI_MANIFEST)
    assert digest == sha(MANIFEST)
    (put,) = fake.requests
    assert put.method == "PUT" and put.url.path == "/v2/team/model/manifests/v1"
    assert put.read() == MANIFEST  # not re-serialized: whitespace and key order kept
    assert put.headers["Content-Type"] == OCI_MANIFEST


def test_push_manifest_checks_digest_ref_and_the_registry_answer() -> None:
    fake = FakeRegistry()
    with fake.client() as client:
        assert client.push_manifest("a", sha(MANIFEST), MANIFEST, OCI_MANIFEST) == sha(MANIFEST)
        with pytest.raises(PublishError, match="hashes to sha256:.*not to the digest it is pushed as"):
            client.push_manifest("a", sha(b"other"), MANIFEST, OCI_MANIFEST)
    lying = httpx.MockTransport(lambda r: httpx.Response(201, headers={"Docker-Content-Digest": sha(b"other")}))
    with RegistryClient(HOST, transport=lying) as client, pytest.raises(PublishError) as err:
        client.push_manifest("a", "v1", MANIFEST, OCI_MANIFEST)
    assert str(err.value).startswith(f"digest mismatch for manifest {HOST}/a:v1: expected {sha(MANIFEST)}, "
                                     f"the registry's Docker-Content-Digest is {sha(b'other')}")


def test_upload_sequence_head_post_put(tmp_path: Path) -> None:
    fake = FakeRegistry()
    data = b"\x1f\x8b layer" * 300_000  # > 1 chunk, from a file: streamed
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(data)
    with fake.client() as client:
        assert client.push_blob("team/model", sha(data), path, len(data)) == "uploaded"
        assert client.push_blob("team/model", sha(data), path, len(data)) == "exists"
    assert [c.split(" ")[0] for c in fake.calls] == ["HEAD", "POST", "PUT", "HEAD"]
    post, put = fake.requests[1], fake.requests[2]
    assert post.url.path == "/v2/team/model/blobs/uploads/" and "mount" not in post.url.params
    assert put.url.params["digest"] == sha(data)
    assert put.headers["Content-Length"] == str(len(data))
    assert put.headers["Content-Type"] == "application/octet-stream"
    assert fake.blobs["team/model"][sha(data)] == data


def test_cross_repo_mount_and_fallback_when_not_offered() -> None:
    fake = FakeRegistry(auth="bearer")
    data = b"shared base layer"
    fake.blobs["base/python"] = {sha(data): data}
    creds = Credentials("alice", "right")
    with fake.client(credentials=creds) as client:
        assert client.push_blob("team/model", sha(data), data, len(data), mount_from="base/python") == "mounted"
    post = next(r for r in fake.requests if r.method == "POST" and r.headers.get("Authorization"))
    assert post.url.params["mount"] == sha(data) and post.url.params["from"] == "base/python"
    assert not any(r.method == "PUT" for r in fake.requests)
    # the token asked for covers pulling from the source repository too
    assert "repository:base/python:pull" in fake.token_requests[-1].url.params.get_list("scope")

    no_mount = FakeRegistry(mount=False)
    no_mount.blobs["base/python"] = {sha(data): data}
    with no_mount.client() as client:
        assert client.push_blob("team/model", sha(data), data, len(data), mount_from="base/python") == "uploaded"
    # the mount POST's 202 is itself the upload session: no second POST
    assert [c.split(" ")[0] for c in no_mount.calls] == ["HEAD", "POST", "PUT"]


def test_blob_data_must_match_its_digest_and_size(tmp_path: Path) -> None:
    fake = FakeRegistry()
    with fake.client() as client:
        with pytest.raises(PublishError, match="does not match its descriptor"):
            client.push_blob("a", sha(b"abc"), b"abd", 3)
        with pytest.raises(PublishError, match="does not match its descriptor"):
            client.push_blob("a", sha(b"abc"), b"abc", 4)
        assert fake.requests == []
        path = tmp_path / "changed"
        path.write_bytes(b"x" * (3 << 20))
        with pytest.raises(PublishError, match=f"blob file {re.escape(str(path))} for .* has 3145728 bytes, its descriptor says 10"):
            client.push_blob("a", sha(b"x" * 10), path, 10)
        # Same size, other content: found while streaming, before the last chunk is sent.
        with pytest.raises(PublishError, match=f"blob file {re.escape(str(path))} does not hash to"):
            client.push_blob("a", sha(b"y" * (3 << 20)), path, 3 << 20)
    assert "a" not in fake.blobs


def test_digest_invalid_from_the_registry_is_explained() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/a/blobs/uploads/1?_state=s"})
        return registry_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")

    with RegistryClient(HOST, transport=httpx.MockTransport(handler)) as client, pytest.raises(PublishError) as err:
        client.push_blob("a", sha(b"x"), b"x", 1)
    assert "the uploaded data does not hash to that digest" in str(err.value)


def test_no_authorization_is_sent_to_an_upload_location_on_another_origin() -> None:
    fake = FakeRegistry(auth="basic", upload_host="storage.example.com")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.example.com":
            seen.append(request)
            return httpx.Response(201, headers={"Docker-Content-Digest": request.url.params["digest"]})
        return fake.handle(request)

    with RegistryClient(HOST, transport=httpx.MockTransport(handler), credentials=Credentials("alice", "right")) as client:
        assert client.push_blob("a", sha(b"x"), b"x", 1) == "uploaded"
    (put,) = seen
    assert "Authorization" not in put.headers


# -- platforms -----------------------------------------------------------------------------------


def index_doc(*platforms: dict) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(json.dumps(p).encode()), "size": 100 + i, "platform": p}
        for i, p in enumerate(platforms)]}).encode()


AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
ATTEST = {"os": "unknown", "architecture": "unknown"}


def test_resolve_platform() -> None:
    index = index_doc(ATTEST, AMD64, ARM64)
    assert resolve_platform(index, "linux/amd64") == Descriptor(OCI_MANIFEST, sha(json.dumps(AMD64).encode()), 101, "linux/amd64")
    arm = resolve_platform(index, "linux/arm64")
    assert arm.digest == sha(json.dumps(ARM64).encode()) and arm.platform == "linux/arm64/v8"
    assert resolve_platform(index, "linux/arm64/v8") == arm
    assert RegistryClient.resolve_platform(index, "aarch64") == arm
    with pytest.raises(FetchError) as err:
        resolve_platform(index_doc(AMD64, ATTEST), "linux/arm64", image="x/y:1")
    assert str(err.value) == "x/y:1 has no linux/arm64 image; it offers linux/amd64"
    with pytest.raises(FetchError, match="is not an image index"):
        resolve_platform(MANIFEST, "linux/amd64")
    with pytest.raises(FetchError, match="is not valid JSON"):
        resolve_platform(b"<html>", "linux/amd64")


def test_get_platform_manifest_follows_the_index() -> None:
    fake = FakeRegistry()
    arm_manifest = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{"arm":1}]}'
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(arm_manifest), "size": len(arm_manifest), "platform": ARM64}]}).encode()
    put_manifest(fake, "library/python", "3.11", index, OCI_INDEX)
    put_manifest(fake, "library/python", "arm", arm_manifest)
    put_manifest(fake, "library/python", "single", MANIFEST)
    with fake.client() as client:
        got = client.get_platform_manifest("library/python", "3.11", "linux/arm64")
        assert (got.data, got.digest) == (arm_manifest, sha(arm_manifest))
        assert client.get_platform_manifest("library/python", "single", "linux/arm64").data == MANIFEST
        with pytest.raises(FetchError, match=f"{HOST}/library/python:3.11 has no linux/amd64 image"):
            client.get_platform_manifest("library/python", "3.11", "linux/amd64")


def test_head_manifest() -> None:
    fake = FakeRegistry()
    put_manifest(fake, "a", "v1", MANIFEST)
    with fake.client() as client:
        assert client.head_manifest("a", "v1") == Descriptor(OCI_MANIFEST, sha(MANIFEST), len(MANIFEST))
        assert client.head_manifest("a", "v2") is None
