"""Image reference parsing: Docker's normalization rules and clear errors."""

from __future__ import annotations

import pytest

from mlbuild._errors import ConfigError
from mlbuild._oci.reference import Reference, api_host, is_digest, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("python", "docker.io", "library/python", "latest", None),
        ("python:3.11-slim", "docker.io", "library/python", "3.11-slim", None),
        ("team/model", "docker.io", "team/model", "latest", None),
        ("docker.io/python", "docker.io", "library/python", "latest", None),
        ("index.docker.io/library/python:3", "docker.io", "library/python", "3", None),
        ("localhost/model", "localhost", "model", "latest", None),
        ("localhost:5000/model:v1", "localhost:5000", "model", "v1", None),
        ("127.0.0.1:5000/a/b/c:1.0", "127.0.0.1:5000", "a/b/c", "1.0", None),
        ("registry.example.com/org/model", "registry.example.com", "org/model", "latest", None),
        (f"registry.example.com:443/org/model@{D}", "registry.example.com:443", "org/model", None, D),
        (f"model:v2@{D}", "docker.io", "library/model", "v2", D),
        ("[::1]:5000/model:x", "[::1]:5000", "model", "x", None),
        ("my-reg/model", "docker.io", "my-reg/model", "latest", None),  # no . or : -> a Hub path
        ("a__b/c.d-e_f", "docker.io", "a__b/c.d-e_f", "latest", None),
        ("  python:3  ", "docker.io", "library/python", "3", None),
    ],
)
def test_normalizes_like_docker(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    assert parse_reference(text) == Reference(registry, repository, tag, digest)


def test_str_and_ref() -> None:
    ref = parse_reference("127.0.0.1:5000/m:1")
    assert str(ref) == "127.0.0.1:5000/m:1"
    assert ref.ref == "1"
    pinned = ref.with_digest(D)
    assert str(pinned) == f"127.0.0.1:5000/m:1@{D}"
    assert pinned.ref == D  # the digest wins: it is exact
    assert str(parse_reference(f"python@{D}")) == f"docker.io/library/python@{D}"
    assert parse_reference("python").name == "docker.io/library/python"
    assert ref.with_tag("2").tag == "2"


def test_default_tag_can_be_changed() -> None:
    assert parse_reference("python", default_tag="3.11").tag == "3.11"


def test_api_host_maps_docker_hub_only() -> None:
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"


def test_is_digest() -> None:
    assert is_digest(D)
    assert is_digest("sha512:" + "0" * 128)
    assert not is_digest("sha256:" + "AB" * 32)  # uppercase hex is not canonical
    assert not is_digest("sha256:abc")
    assert not is_digest("md5:" + "0" * 32)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "it is empty"),
        ("Python", "repository 'library/Python' must be lowercase"),
        ("team/Model", "must be lowercase"),
        ("python:bad tag", "tag 'bad tag' is not valid"),
        ("python:", "tag '' is not valid"),
        ("python@sha256:abc", "is not a sha256:<64 hex>"),
        ("https://registry.example.com/x", "no scheme"),
        ("registry.example.com/", "repository name is missing"),
        ("a//b", "is not valid"),
        ("-a/b", "is not valid"),
        ("bad_host!:5000/x", "is not a host[:port]"),
        ("x" * 300, "longer than 255"),
    ],
)
def test_bad_references_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_reference(text)
    assert str(err.value).startswith(f"invalid image reference {text!r}: ")
    assert why in str(err.value)
    assert err.value.hint and "[registry/]repository[:tag]" in err.value.hint
