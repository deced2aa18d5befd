"""No error mlbuild prints carries a URL's credentials, whichever module raised it."""

from __future__ import annotations

import pytest
from mlbuild._errors import ConfigError, FetchError, MlbuildError
from mlbuild._redact import find_credential_url, mask_url_credentials
from mlbuild._spec import load_spec

TOKEN = "ghp_s3cr3tTOKENvalue"


@pytest.mark.parametrize("cls", [MlbuildError, ConfigError, FetchError])
def test_every_error_masks_url_credentials(cls):
    exc = cls(
        f"could not fetch https://user:{TOKEN}@pkgs.example/simple/x",
        hint=f"try https://{TOKEN}@pkgs.example/",
        details=f"uv: error: GET https://__token__:{TOKEN}@pkgs.example/x.whl -> 401",
    )
    rendered = exc.render()
    assert TOKEN not in rendered and TOKEN not in str(exc)
    assert rendered.count("https://****@pkgs.example/") == 3


def test_invalid_requirement_with_a_token_is_reported_masked(tmp_path):
    (tmp_path / "predict.py").write_text("def predict(x):\n    return x\n")
    # not a valid requirement (a space in the name), and it carries a token in its URL
    (tmp_path / "requirements.txt").write_text(f"bad name @ https://user:{TOKEN}@pkgs.example/x.whl\n")
    with pytest.raises(ConfigError) as info:
        load_spec(tmp_path)
    assert TOKEN not in info.value.render()


# --------------------------------------------------------------------------- secrets in a query or fragment


@pytest.mark.parametrize("text,found", [
    # GitLab's package registry
    (f"pkg @ https://gitlab.invalid/api/v4/projects/1/packages/pypi/files/x/pkg.whl?private_token={TOKEN}",
     "https://gitlab.invalid/api/v4/projects/1/packages/pypi/files/x/pkg.whl?private_token=****"),
    # a presigned S3 URL: every X-Amz-* value is masked, the signature and the access key among them
    (f"pkg @ https://b.s3.invalid/pkg.whl?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA{TOKEN}"
     f"%2F20240101%2Fus-east-1&X-Amz-Signature={TOKEN}",
     "https://b.s3.invalid/pkg.whl?X-Amz-Algorithm=****&X-Amz-Credential=****&X-Amz-Signature=****"),
    # S3's older form and an Azure SAS: only the secret keys are masked
    (f"https://b.s3.invalid/x.whl?AWSAccessKeyId=AKIA&Expires=1700000000&Signature={TOKEN}",
     "https://b.s3.invalid/x.whl?AWSAccessKeyId=****&Expires=1700000000&Signature=****"),
    (f"https://acct.blob.invalid/c/x.whl?sv=2022-11-02&sp=r&SIG={TOKEN}",
     "https://acct.blob.invalid/c/x.whl?sv=2022-11-02&sp=r&SIG=****"),
    # a fragment may hold one after the hash that pins the file
    (f"pkg @ https://h.invalid/pkg.whl#sha256=abc123&token={TOKEN}", "https://h.invalid/pkg.whl#sha256=abc123&token=****"),
    (f"https://h.invalid/x.whl?api_key={TOKEN}", "https://h.invalid/x.whl?api_key=****"),
    (f"https://h.invalid/x.whl?accessToken={TOKEN}", "https://h.invalid/x.whl?accessToken=****"),
    (f"https://h.invalid/x.whl?PASSWORD={TOKEN}", "https://h.invalid/x.whl?PASSWORD=****"),
    (f"https://h.invalid/x.whl?private%5Ftoken={TOKEN}", "https://h.invalid/x.whl?private%5Ftoken=****"),
    # a bare ssh user name is no credential, a token in its query is
    (f"pkg @ git+ssh://git@h.invalid/org/pkg.git?auth={TOKEN}", "git+ssh://****@h.invalid/org/pkg.git?auth=****"),
])
def test_a_secret_query_or_fragment_parameter_is_a_credential(text, found):
    assert find_credential_url(text) == found
    assert TOKEN not in mask_url_credentials(text)


@pytest.mark.parametrize("text", [
    "pkg @ https://h.invalid/pkg-1.0-py3-none-any.whl#sha256=" + "a" * 64,
    "pkg @ git+https://h.invalid/org/repo.git#egg=pkg&subdirectory=python/pkg",
    "pkg @ https://h.invalid/pkg.whl#md5=abc",
    "https://h.invalid/x?author=me&keyword=fast&design=1&monkey=2",
    "https://h.invalid/x?token&key=",  # no value, nothing secret to carry
])
def test_parameters_that_pin_or_locate_a_file_are_not_credentials(text):
    assert find_credential_url(text) is None
    assert mask_url_credentials(text) == text


@pytest.mark.parametrize("url", [
    "https://user:p@ss{t}@host.invalid/x.whl",  # pip and urllib split at the last "@"
    "https://user:{t}@@host.invalid/x.whl",
    "https://us@er:{t}@host.invalid/x.whl",
])
def test_a_password_holding_an_at_sign_is_masked_whole(url):
    url = url.format(t=TOKEN)
    assert find_credential_url(f"pkg @ {url}") == "https://****@host.invalid/x.whl"
    assert mask_url_credentials(f"GET {url} -> 401") == "GET https://****@host.invalid/x.whl -> 401"
    exc = MlbuildError(f"could not fetch {url}", hint=f"see {url}", details=f"GET {url}")
    assert TOKEN not in exc.render() and "ss" + TOKEN not in exc.render()
    assert "@host.invalid" in exc.render() and "@ss" not in exc.render()


def test_every_error_masks_secret_query_parameters():
    url = f"https://h.invalid/pkg.whl?X-Amz-Signature={TOKEN}&private_token={TOKEN}#sha256=abc"
    exc = FetchError(f"could not fetch `{url}`", hint=url, details=f"uv: GET {url}")
    assert TOKEN not in exc.render()
    assert exc.message == ("could not fetch `https://h.invalid/pkg.whl?X-Amz-Signature=****&private_token=****"
                           "#sha256=abc`")
