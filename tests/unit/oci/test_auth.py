"""Credentials from the Docker config (inline, helpers, stores) and challenge/token plumbing."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from mlbuild._errors import ConfigError
from mlbuild._oci.auth import (
    Challenge,
    Credentials,
    DockerConfig,
    NoCredentials,
    basic_header,
    parse_challenges,
    parse_token_response,
    repository_scope,
    token_request,
)
from mlbuild._runner import CommandFailed, CommandResult, SubprocessRunner


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_config(tmp_path: Path, doc: object) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return tmp_path


class FakeRunner:
    """Answers credential-helper calls from a table keyed by program; records the argv."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def run(self, args: Sequence[str], *, cwd=None, env=None, check=True, timeout=None) -> CommandResult:
        argv = tuple(str(a) for a in args)
        self.calls.append(argv)
        code, out = self.answers.get(argv[-1], (127, "sh: 1: not found"))
        result = CommandResult(argv, code, out if code == 0 else "", "" if code == 0 else out)
        if check and code != 0:
            raise CommandFailed(result)
        return result


# -- inline auths ------------------------------------------------------------------------------


def test_inline_auth_is_decoded_and_its_source_named(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {"127.0.0.1:5000": {"auth": b64("alice:pa:ss")}}})
    creds = DockerConfig(tmp_path).lookup("127.0.0.1:5000")
    assert creds == Credentials("alice", "pa:ss", f"{tmp_path / 'config.json'} auths['127.0.0.1:5000']")
    assert "pa:ss" not in repr(creds)  # secrets stay out of logs and tracebacks


def test_keys_with_scheme_and_path_match_the_host(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {"https://registry.example.com/v2/": {"auth": b64("u:p")},
                                      "other.example.com": {"auth": b64("x:y")}}})
    creds = DockerConfig(tmp_path).lookup("registry.example.com")
    assert (creds.username, creds.password) == ("u", "p")
    assert DockerConfig(tmp_path).lookup("registry.example.com:5000") is None


def test_exact_host_key_wins_over_its_url_forms(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {"https://registry.example.com": {"auth": b64("url:1")},
                                      "registry.example.com": {"auth": b64("exact:2")}}})
    assert DockerConfig(tmp_path).lookup("registry.example.com").username == "exact"


def test_no_host_gets_a_special_key(tmp_path: Path) -> None:
    # A legacy index-style URL key matches only its own host, like any other key: the lookup
    # never maps one registry name onto another host's entry.
    write_config(tmp_path, {"auths": {"https://index.example.com/v1/": {"auth": b64("idx:tok")}}})
    assert DockerConfig(tmp_path).lookup("index.example.com").username == "idx"
    assert DockerConfig(tmp_path).lookup("example.com") is None
    assert DockerConfig(tmp_path).lookup("registry.example.com") is None


def test_username_password_fields_and_identity_token(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {
        "a.example.com": {"username": "u", "password": "p"},
        "b.example.com": {"identitytoken": "refresh-me"},
        "c.example.com": {},
    }})
    cfg = DockerConfig(tmp_path)
    assert (cfg.lookup("a.example.com").username, cfg.lookup("a.example.com").password) == ("u", "p")
    assert cfg.lookup("b.example.com").identity_token == "refresh-me"
    assert cfg.lookup("c.example.com") is None


def test_missing_config_means_anonymous(tmp_path: Path) -> None:
    cfg = DockerConfig(tmp_path / "nowhere")
    assert cfg.lookup("127.0.0.1:5000") is None
    assert cfg.describe() == str(tmp_path / "nowhere" / "config.json")


def test_docker_config_env_and_home_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, {"auths": {"h.example.com": {"auth": b64("env:1")}}})
    assert DockerConfig(env={"DOCKER_CONFIG": str(tmp_path)}).lookup("h.example.com").username == "env"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert DockerConfig(env={}).path == tmp_path / "home" / ".docker" / "config.json"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON (line 1"),
        ("[]", "is not a JSON object"),
        (json.dumps({"auths": []}), "'auths' must be an object"),
        (json.dumps({"auths": {"h.example.com": {"auth": "%%%"}}}), "auths['h.example.com'].auth is not base64"),
        (json.dumps({"auths": {"h.example.com": {"auth": b64("no-colon")}}}), "is not base64 of 'user:password'"),
    ],
)
def test_broken_config_is_a_config_error_naming_file_and_key(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        DockerConfig(tmp_path).lookup("h.example.com")
    assert str(tmp_path / "config.json") in str(err.value)
    assert expected in str(err.value)
    assert err.value.hint


# -- credential helpers ------------------------------------------------------------------------


def test_cred_helper_for_the_host_is_asked_with_the_server_url(tmp_path: Path) -> None:
    write_config(tmp_path, {"credHelpers": {"registry.example.com": "secretservice"},
                            "auths": {"registry.example.com": {"auth": b64("inline:ignored")}}})
    runner = FakeRunner({"docker-credential-secretservice": (0, json.dumps(
        {"ServerURL": "registry.example.com", "Username": "helped", "Secret": "s3"}))})
    creds = DockerConfig(tmp_path, runner=runner).lookup("registry.example.com")
    assert (creds.username, creds.password) == ("helped", "s3")
    assert creds.source.startswith("docker-credential-secretservice (credHelpers['registry.example.com']")
    (argv,) = runner.calls
    assert argv[:2] == ("sh", "-c")
    assert argv[-2:] == ("registry.example.com", "docker-credential-secretservice")


def test_creds_store_applies_to_every_host_and_falls_back_to_inline(tmp_path: Path) -> None:
    write_config(tmp_path, {"credsStore": "pass", "auths": {"h.example.com": {"auth": b64("inline:p")}}})
    runner = FakeRunner({"docker-credential-pass": (1, "credentials not found in native keychain")})
    creds = DockerConfig(tmp_path, runner=runner).lookup("h.example.com")
    assert creds.username == "inline"  # the store had nothing: the inline entry is used
    assert runner.calls[0][-2:] == ("h.example.com", "docker-credential-pass")
    assert DockerConfig(tmp_path, runner=runner).lookup("none.example.com") is None


def test_helper_identity_token(tmp_path: Path) -> None:
    write_config(tmp_path, {"credsStore": "desktop"})
    runner = FakeRunner({"docker-credential-desktop": (0, json.dumps({"Username": "<token>", "Secret": "rt"}))})
    creds = DockerConfig(tmp_path, runner=runner).lookup("registry.example.com:5000")
    assert creds.identity_token == "rt"
    assert runner.calls[0][-2] == "registry.example.com:5000"  # the host as written, no rewriting


def test_missing_helper_and_failing_helper_are_config_errors(tmp_path: Path) -> None:
    write_config(tmp_path, {"credHelpers": {"a.example.com": "gone", "b.example.com": "broken",
                                            "c.example.com": "garbled"}})
    runner = FakeRunner({"docker-credential-broken": (1, "keyring is locked"),
                         "docker-credential-garbled": (0, "not json")})
    cfg = DockerConfig(tmp_path, runner=runner)
    with pytest.raises(ConfigError, match=r"credential helper docker-credential-gone named by "
                                          r"credHelpers\['a.example.com'\] in .* is not installed"):
        cfg.lookup("a.example.com")
    with pytest.raises(ConfigError, match=r"docker-credential-broken failed for b.example.com \(exit 1\): keyring is locked"):
        cfg.lookup("b.example.com")
    with pytest.raises(ConfigError, match="not JSON with Username and Secret"):
        cfg.lookup("c.example.com")


def test_real_helper_program_gets_the_url_on_stdin(tmp_path: Path) -> None:
    """Through the real SubprocessRunner: the shell pipe really feeds the helper's stdin."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-echo"
    helper.write_text('#!/bin/sh\n[ "$1" = get ] || exit 3\nurl=$(cat)\n'
                      'printf \'{"ServerURL":"%s","Username":"user-for-%s","Secret":"x"}\' "$url" "$url"\n')
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    write_config(tmp_path, {"credsStore": "echo"})
    runner = SubprocessRunner(extra_env={"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    creds = DockerConfig(tmp_path, runner=runner).lookup("127.0.0.1:5000")
    assert creds.username == "user-for-127.0.0.1:5000"
    with pytest.raises(ConfigError, match="is not installed"):
        write_config(tmp_path, {"credsStore": "absent-helper"})
        DockerConfig(tmp_path, runner=runner).lookup("127.0.0.1:5000")


def test_no_credentials_source() -> None:
    assert NoCredentials().lookup("anything") is None
    assert "anonymous" in NoCredentials().describe()


# -- challenges and tokens ---------------------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    (c,) = parse_challenges(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a/b:pull,push repository:c:pull"'
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.example.com/token"
    assert c.service == "registry.example.com"
    assert c.scopes == ("repository:a/b:pull,push", "repository:c:pull")


def test_parse_basic_and_multiple_challenges_and_escapes() -> None:
    cs = parse_challenges('Basic realm="say \\"hi\\", ok", Bearer realm=https://a.example.com/t,error="insufficient_scope"')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].realm == 'say "hi", ok'
    assert cs[1].realm == "https://a.example.com/t"
    assert cs[1].get("error") == "insufficient_scope"
    assert parse_challenges("") == []


def test_token_request_anonymous_and_basic() -> None:
    challenge = Challenge("bearer", (("realm", "https://auth.example.com/token?x=1"), ("service", "reg"),
                                      ("scope", "repository:a:pull")))
    anon = token_request(challenge, [repository_scope("a", "pull"), repository_scope("b", "pull", "push")], None)
    assert anon.method == "GET"
    assert "Authorization" not in anon.headers
    assert anon.url.params.get_list("scope") == ["repository:a:pull", "repository:b:pull,push"]
    assert anon.url.params["service"] == "reg" and anon.url.params["x"] == "1"
    with_creds = token_request(challenge, [], Credentials("u", "p"))
    assert with_creds.headers["Authorization"] == basic_header(Credentials("u", "p")) == "Basic " + b64("u:p")


def test_token_request_with_identity_token_is_an_oauth_refresh() -> None:
    challenge = Challenge("bearer", (("realm", "https://auth.example.com/token"), ("service", "reg")))
    req = token_request(challenge, ["repository:a:pull"], Credentials("<token>", "", identity_token="rt"))
    assert req.method == "POST"
    form = dict(httpx.QueryParams(req.read().decode()))
    assert form == {"grant_type": "refresh_token", "refresh_token": "rt", "client_id": "mlbuild",
                    "scope": "repository:a:pull", "service": "reg"}


def test_token_request_needs_an_http_realm() -> None:
    with pytest.raises(ValueError, match="realm"):
        token_request(Challenge("bearer", (("realm", "ftp://x"),)), [], None)


def test_parse_token_response() -> None:
    assert parse_token_response(b'{"token": "t", "expires_in": 300}') == ("t", 300.0)
    assert parse_token_response(b'{"access_token": "a"}') == ("a", 60.0)
    with pytest.raises(ValueError):
        parse_token_response(b'{"nothing": 1}')
