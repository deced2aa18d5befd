"""Image reference parsing: Docker's grammar, short names resolved against a run-time default
registry (never a host written in the code), and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlbuild._errors import ConfigError
from mlbuild._oci.base import open_base
from mlbuild._oci.publish import push_layout
from mlbuild._oci.reference import Reference, api_host, default_registry, is_digest, parse_reference
from mlbuild._platforms import parse_platform
from mlbuild._runner import CommandFailed, CommandResult

D = "sha256:" + "ab" * 32
REG = "registry.example.com"
WITH_DEFAULT = {"MLBUILD_DEFAULT_REGISTRY": REG}
NO_REGISTRY_HINT = (
    "write the full reference (host/repository:tag), or set MLBUILD_DEFAULT_REGISTRY "
    "to the registry short names should use"
)


@pytest.fixture
def no_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports, these tests see the variables unset."""
    for name in ("MLBUILD_DEFAULT_REGISTRY", "MLBUILD_DEFAULT_REGISTRY_API", "MLBUILD_DEFAULT_REGISTRY_LIBRARY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("localhost/model", "localhost", "model", "latest", None),
        ("localhost:5000/model:v1", "localhost:5000", "model", "v1", None),
        ("127.0.0.1:5000/a/b/c:1.0", "127.0.0.1:5000", "a/b/c", "1.0", None),
        ("127.0.0.1:5000/python", "127.0.0.1:5000", "python", "latest", None),  # no library/ added
        (f"{REG}/org/model", REG, "org/model", "latest", None),
        (f"{REG}:443/org/model@{D}", f"{REG}:443", "org/model", None, D),
        (f"{REG}/model:v2@{D}", REG, "model", "v2", D),
        ("[::1]:5000/model:x", "[::1]:5000", "model", "x", None),
        ("Upper.example.com/m", "Upper.example.com", "m", "latest", None),
        (f"  {REG}/python:3  ", REG, "python", "3", None),
    ],
)
def test_full_references_need_no_default_registry(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    assert parse_reference(text, env={}) == Reference(registry, repository, tag, digest)
    # The default registry does not change a reference that writes its own.
    assert parse_reference(text, env={**WITH_DEFAULT, "MLBUILD_DEFAULT_REGISTRY_LIBRARY": "1"}) == Reference(
        registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "repository", "tag", "digest"),
    [
        ("python", "python", "latest", None),
        ("python:3.11-slim", "python", "3.11-slim", None),
        ("team/model", "team/model", "latest", None),
        (f"model:v2@{D}", "model", "v2", D),
        ("my-reg/model", "my-reg/model", "latest", None),  # no . or : -> a path on the default
        ("a__b/c.d-e_f", "a__b/c.d-e_f", "latest", None),
        ("  python:3  ", "python", "3", None),
    ],
)
def test_short_names_use_the_default_registry(text: str, repository: str, tag: str | None, digest: str | None) -> None:
    assert parse_reference(text, env=WITH_DEFAULT) == Reference(REG, repository, tag, digest)
    port = {"MLBUILD_DEFAULT_REGISTRY": "127.0.0.1:5000"}
    assert parse_reference(text, env=port) == Reference("127.0.0.1:5000", repository, tag, digest)


@pytest.mark.parametrize("text", ["python:3.11-slim", "library/python", "python", f"team/model@{D}"])
def test_short_names_without_a_default_registry_are_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_reference(text, env={})
    assert str(err.value).splitlines()[0] == f"image reference {text!r} names no registry"
    assert err.value.hint == NO_REGISTRY_HINT


def test_empty_default_registry_counts_as_unset() -> None:
    with pytest.raises(ConfigError, match="names no registry"):
        parse_reference("python:3.11-slim", env={"MLBUILD_DEFAULT_REGISTRY": "  "})


def test_default_registry_is_read_from_the_environment_at_each_call(
    no_default_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_reference("python:3.11-slim")
    assert str(err.value).splitlines()[0] == "image reference 'python:3.11-slim' names no registry"
    assert default_registry() is None
    monkeypatch.setenv("MLBUILD_DEFAULT_REGISTRY", "127.0.0.1:5000")
    assert default_registry() == "127.0.0.1:5000"
    assert str(parse_reference("python:3.11-slim")) == "127.0.0.1:5000/python:3.11-slim"


@pytest.mark.parametrize("value", ["https://registry.example.com", "registry.example.com/v2", "bad host", "h:port"])
def test_malformed_default_registry_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_reference("python", env={"MLBUILD_DEFAULT_REGISTRY": value})
    assert str(err.value).splitlines()[0] == f"environment variable MLBUILD_DEFAULT_REGISTRY={value!r} is not a host[:port]"
    assert err.value.hint and "MLBUILD_DEFAULT_REGISTRY" in err.value.hint


@pytest.mark.parametrize(("flag", "expected"), [("1", "library/python"), ("true", "library/python"),
                                                ("0", "python"), ("", "python")])
def test_library_prefix_only_when_asked_and_only_for_one_part_short_names(flag: str, expected: str) -> None:
    env = {**WITH_DEFAULT, "MLBUILD_DEFAULT_REGISTRY_LIBRARY": flag}
    assert parse_reference("python:3.11", env=env).repository == expected
    assert parse_reference("team/model", env=env).repository == "team/model"
    assert parse_reference(f"{REG}/python", env=env).repository == "python"  # written registry: as is


def test_str_and_ref() -> None:
    ref = parse_reference("127.0.0.1:5000/m:1", env={})
    assert str(ref) == "127.0.0.1:5000/m:1"
    assert ref.ref == "1"
    pinned = ref.with_digest(D)
    assert str(pinned) == f"127.0.0.1:5000/m:1@{D}"
    assert pinned.ref == D  # the digest wins: it is exact
    assert str(parse_reference(f"python@{D}", env=WITH_DEFAULT)) == f"{REG}/python@{D}"
    lib = {**WITH_DEFAULT, "MLBUILD_DEFAULT_REGISTRY_LIBRARY": "1"}
    assert parse_reference("python", env=lib).name == f"{REG}/library/python"
    assert ref.with_tag("2").tag == "2"


def test_default_tag_can_be_changed() -> None:
    assert parse_reference("python", default_tag="3.11", env=WITH_DEFAULT).tag == "3.11"


def test_api_host_is_the_registry_unless_the_default_has_an_api_override() -> None:
    assert api_host("127.0.0.1:5000", env={}) == "127.0.0.1:5000"
    assert api_host(REG, env=WITH_DEFAULT) == REG
    split = {**WITH_DEFAULT, "MLBUILD_DEFAULT_REGISTRY_API": "api.example.com"}
    assert api_host(REG, env=split) == "api.example.com"
    assert api_host("other.example.com", env=split) == "other.example.com"
    # A malformed default does not get in the way of a registry written in full.
    assert api_host("127.0.0.1:5000", env={"MLBUILD_DEFAULT_REGISTRY": "https://bad"}) == "127.0.0.1:5000"
    # Without a default registry the override has nothing to apply to.
    assert api_host(REG, env={"MLBUILD_DEFAULT_REGISTRY_API": "api.example.com"}) == REG
    with pytest.raises(ConfigError, match=r"MLBUILD_DEFAULT_REGISTRY_API='https://x' is not a host\[:port\]"):
        api_host(REG, env={**WITH_DEFAULT, "MLBUILD_DEFAULT_REGISTRY_API": "https://x"})


# -- where references are parsed: registry operations need a registry, local sources do not ----


class _NoEngine:
    """A Runner whose every command fails as if the image were not in the engine."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, args, *, cwd=None, env=None, check=True, timeout=None) -> CommandResult:
        self.calls.append([str(a) for a in args])
        raise CommandFailed(CommandResult(tuple(args), 1, "", "Error: No such image: python:3.11-slim"))


def test_registry_base_and_push_refuse_short_names_without_a_default(no_default_registry: None, tmp_path: Path) -> None:
    class NeverCalled:
        def __getattr__(self, name: str):
            raise AssertionError(f"the registry client was used ({name}) for an unresolvable reference")

    with pytest.raises(ConfigError, match=r"^image reference 'python:3.11-slim' names no registry"):
        open_base("python:3.11-slim", parse_platform("linux/amd64"), cache_dir=tmp_path, registry_client=NeverCalled())
    (tmp_path / "index.json").write_text(json.dumps({"manifests": []}))
    with pytest.raises(ConfigError, match=r"^image reference 'team/model:1' names no registry"):
        push_layout(tmp_path, "team/model:1", client=NeverCalled())


def test_local_sources_need_no_default_registry(no_default_registry: None, tmp_path: Path, docker_archive) -> None:
    amd64 = parse_platform("linux/amd64")
    archive = docker_archive()
    assert open_base(f"docker-archive:{archive}", amd64).layers
    # docker:REF goes to the engine, which resolves short names itself: the error is the
    # engine's "not there", not a missing default registry.
    runner = _NoEngine()
    with pytest.raises(ConfigError, match="is not in the local Docker engine"):
        open_base("docker:python:3.11-slim", amd64, runner=runner, cache_dir=tmp_path)
    assert runner.calls[0][-1] == "python:3.11-slim"


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
        ("Python", "repository 'Python' must be lowercase"),
        ("team/Model", "must be lowercase"),
        ("python:bad tag", "tag 'bad tag' is not valid"),
        ("python:", "tag '' is not valid"),
        ("python@sha256:abc", "is not a sha256:<64 hex>"),
        ("https://registry.example.com/x", "no scheme"),
        ("team/Model:1", "must be lowercase"),  # a syntax error wins over a missing registry
        ("registry.example.com/", "repository name is missing"),
        ("a//b", "is not valid"),
        ("-a/b", "is not valid"),
        ("bad_host!:5000/x", "is not a host[:port]"),
        ("x" * 300, "longer than 255"),
    ],
)
def test_bad_references_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_reference(text, env=WITH_DEFAULT)
    assert str(err.value).startswith(f"invalid image reference {text!r}: ")
    with pytest.raises(ConfigError) as err:
        parse_reference(text, env={})
    assert str(err.value).startswith(f"invalid image reference {text!r}: ")
    assert why in str(err.value)
    assert err.value.hint and "[registry/]repository[:tag]" in err.value.hint
