"""select_model_files(): code vs artefacts, secrets and caches left out with reasons, globs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlbuild._files import select_model_files
from mlbuild._globs import glob_match
from mlbuild._spec import load_spec

PROJECTS = Path(__file__).resolve().parents[2] / "fixtures" / "projects"


def make(root: Path, rels: list[str], config: str = "") -> Path:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "def predict(x):\n    return x\n" if rel == "predict.py" else rel
        path.write_text("" if rel.endswith(".toml") else text)
    if config:
        (root / "mlbuild.toml").write_text(config)
    return root


def as_posix(paths) -> list[str]:
    return [p.as_posix() for p in paths]


def test_secrets_fixture_never_baked():
    files = select_model_files(load_spec(PROJECTS / "secrets-present"))
    assert as_posix(files.code) == ["predict.py", "requirements.txt"]
    assert as_posix(files.artifacts) == ["model.bin"]
    excluded = {p.as_posix(): why for p, why in files.excluded}
    for secret in [".env", ".env.production", "server.pem", "id_rsa", ".netrc", "credentials-prod.json", ".aws"]:
        assert "secrets" in excluded[secret], secret


def test_code_artifacts_and_caches(tmp_path):
    root = make(tmp_path, [
        "predict.py", "helpers/util.py", "requirements.txt", "mlbuild.lock", "pyproject.toml",
        "artifacts/model.pt", "artifacts/vocab.json", "README.md",
        "__pycache__/predict.cpython-311.pyc", "helpers/__pycache__/util.cpython-311.pyc",
        ".venv/bin/python", "venv/lib/x.py", ".mypy_cache/x", ".pytest_cache/v", ".ipynb_checkpoints/n.ipynb",
        "stray.pyc", ".git/config", ".ssh/id_ed25519", "keys/tls.key",
    ], config='name = "m"\n')
    files = select_model_files(load_spec(root))
    assert as_posix(files.code) == ["helpers/util.py", "mlbuild.lock", "mlbuild.toml", "predict.py",
                                    "pyproject.toml", "requirements.txt"]
    assert as_posix(files.artifacts) == ["README.md", "artifacts/model.pt", "artifacts/vocab.json"]
    excluded = dict((p.as_posix(), why) for p, why in files.excluded)
    assert list(excluded) == sorted(excluded)
    assert excluded[".git"].startswith("may hold secrets") and excluded[".ssh"].startswith("may hold secrets")
    assert excluded["keys/tls.key"].startswith("may hold secrets")
    for cache in ["__pycache__", "helpers/__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                  ".ipynb_checkpoints"]:
        assert excluded[cache] == "cache or local environment", cache
    assert excluded["stray.pyc"] == "cache file"


def test_user_exclude_and_include_globs(tmp_path):
    root = make(tmp_path, [
        "predict.py", "data/raw/a.csv", "data/raw/b.csv", "data/clean.csv", "notes/x.csv", "big/weights.bin",
        "venv/keep.txt", "venv/other.txt",
    ], config='exclude = ["data/raw", "*.csv", "big/"]\ninclude = ["data/raw/b.csv", "venv/keep.txt"]\n')
    files = select_model_files(load_spec(root))
    assert as_posix(files.artifacts) == ["data/raw/b.csv", "venv/keep.txt"]
    excluded = dict((p.as_posix(), why) for p, why in files.excluded)
    assert excluded["data/raw/a.csv"] == "matches exclude pattern 'data/raw'"
    assert excluded["data/clean.csv"] == "matches exclude pattern '*.csv'"
    assert excluded["notes/x.csv"] == "matches exclude pattern '*.csv'"
    assert excluded["big/weights.bin"] == "matches exclude pattern 'big/'"
    assert excluded["venv/other.txt"] == "cache or local environment"


def test_secret_comes_back_only_when_named_exactly(tmp_path):
    root = make(tmp_path, ["predict.py", "tokenizer.key", "other.key", ".env"],
                config='include = ["tokenizer.key", "**", "*.key"]\n')
    files = select_model_files(load_spec(root))
    assert as_posix(files.artifacts) == ["tokenizer.key"]
    excluded = {p.as_posix() for p, _ in files.excluded}
    assert {"other.key", ".env"} <= excluded


def test_symlinks_leaving_the_directory_and_special_files(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    root = make(tmp_path / "m", ["predict.py", "inside.txt", "sub/a.txt"])
    os.symlink(outside, root / "escape.txt")
    os.symlink(root / "inside.txt", root / "alias.txt")
    os.symlink(root / "missing", root / "dangling")
    os.symlink(root / "sub", root / "subdir-link")
    os.mkfifo(root / "pipe")
    files = select_model_files(load_spec(root))
    excluded = dict((p.as_posix(), why) for p, why in files.excluded)
    assert excluded["escape.txt"] == "symlink pointing outside the model directory"
    assert excluded["dangling"] == "broken symlink"
    assert excluded["subdir-link"] == "symlinked directory (not followed)"
    assert excluded["pipe"] == "not a regular file"
    assert "alias.txt" in as_posix(files.artifacts)


@pytest.mark.parametrize("pattern,path,expected", [
    ("*.csv", "a.csv", True), ("*.csv", "deep/dir/a.csv", True), ("data/*.csv", "data/a.csv", True),
    ("data/*.csv", "data/x/a.csv", False), ("data/**/*.csv", "data/x/y/a.csv", True),
    ("data/**/*.csv", "data/a.csv", True), ("data", "data/x/y", True), ("data", "database", False),
    ("/top.txt", "top.txt", True), ("/top.txt", "sub/top.txt", False), ("a?c", "abc", True),
    ("[ab].txt", "b.txt", True), ("[!ab].txt", "c.txt", True), ("**", "any/thing", True),
])
def test_glob_semantics(pattern, path, expected):
    assert glob_match(pattern, path) is expected


def test_output_does_not_depend_on_creation_order(tmp_path):
    rels = ["predict.py", "b/x.bin", "a/y.bin", "c.py", "a/z.py", "B.bin"]
    first = select_model_files(load_spec(make(tmp_path / "one" / "m", rels)))
    second = select_model_files(load_spec(make(tmp_path / "two" / "m", list(reversed(rels)))))
    assert first == second
    assert as_posix(first.code) == ["a/z.py", "c.py", "predict.py"]
    assert as_posix(first.artifacts) == ["B.bin", "a/y.bin", "b/x.bin"]


def test_symlink_to_a_secret_or_excluded_file_is_left_out(tmp_path):
    root = make(tmp_path / "m", [
        "predict.py", ".env", ".ssh/id_rsa", "raw/data.csv", "__pycache__/x.pyc", "real.bin",
        ".config/gcloud/adc.json",
    ], config='exclude = ["raw"]\ninclude = ["settings.txt"]\n')
    links = {
        "settings.txt": ".env",  # named exactly by include: still must not re-include the target
        "weights.bin": ".ssh/id_rsa",
        "data.csv": "raw/data.csv",
        "cache.bin": "__pycache__/x.pyc",
        "gcp.json": ".config/gcloud/adc.json",
        "alias.bin": "real.bin",
        "sub/deep.bin": "../.env",
    }
    for link, target in links.items():
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / link)
    os.symlink(root / ".env", root / "absolute.txt")
    files = select_model_files(load_spec(root))
    excluded = dict((p.as_posix(), why) for p, why in files.excluded)
    for link in ["settings.txt", "weights.bin", "data.csv", "cache.bin", "gcp.json", "sub/deep.bin"]:
        assert excluded[link] == f"symlink to an excluded file: {os.path.normpath(Path(link).parent / links[link])}"
    assert excluded["absolute.txt"] == "symlink to an excluded file: .env"
    assert as_posix(files.artifacts) == ["alias.bin", "real.bin"]


def test_symlink_to_a_file_the_include_list_takes_back_is_kept(tmp_path):
    root = make(tmp_path / "m", ["predict.py", "raw/keep.csv", "tokenizer.key"],
                config='exclude = ["raw"]\ninclude = ["raw/keep.csv", "tokenizer.key"]\n')
    os.symlink("raw/keep.csv", root / "keep.csv")
    os.symlink("tokenizer.key", root / "tok.bin")
    files = select_model_files(load_spec(root))
    assert as_posix(files.artifacts) == ["keep.csv", "raw/keep.csv", "tok.bin", "tokenizer.key"]


@pytest.mark.parametrize("secret", [
    ".docker/config.json", ".kube/config", ".azure/accessTokens.json", ".config/gcloud/credentials.db",
    "nested/.config/gcloud/x", ".gnupg/pubring.kbx", ".git-credentials", "credentials", "aws/credentials",
    "cert.p12", "cert.pfx", "store.jks", "release.keystore", ".npmrc", ".streamlit/secrets.toml",
    "my-service-account-key.json", "service-account.json", ".htpasswd",
])
def test_common_credential_files_are_never_baked(tmp_path, secret):
    root = make(tmp_path / "m", ["predict.py", secret, ".config/other.txt"], config='include = ["**"]\n')
    files = select_model_files(load_spec(root))
    assert as_posix(files.artifacts) == [".config/other.txt"]
    reasons = {why for _, why in files.excluded}
    assert reasons == {"may hold secrets (never baked)"}


@pytest.mark.parametrize("pattern,path,expected", [
    ("[]", "[]", True), ("data/[!]", "data/[!]", True), ("[]a].txt", "].txt", True),
    ("[]a].txt", "a.txt", True), ("[!]].txt", "x.txt", True), ("[!]].txt", "].txt", False),
    ("[[]x", "[x", True), ("a[!b]c", "a/c", False), ("[\\]", "\\", True), ("[a-c]", "b", True),
])
def test_brackets_like_fnmatch(pattern, path, expected):
    assert glob_match(pattern, path) is expected


@pytest.mark.parametrize("key,pattern", [("exclude", "[z-a]"), ("include", "data/[9-0].csv"), ("exclude", "")])
def test_bad_glob_is_a_config_error_at_load(tmp_path, key, pattern):
    from mlbuild._errors import ConfigError

    root = make(tmp_path / "m", ["predict.py"], config=f'{key} = ["*.bin", {pattern!r}]\n')
    with pytest.raises(ConfigError) as info:
        load_spec(root)
    message = str(info.value)
    assert message.startswith(f"{root / 'mlbuild.toml'}: key {key!r}: ")
    assert repr(pattern) in message and "not a valid glob" in message
    assert "[[]" in info.value.hint


@pytest.mark.parametrize("pattern", ["[]", "data/[!]"])
def test_unclosed_bracket_globs_load_and_select(tmp_path, pattern):
    root = make(tmp_path / "m", ["predict.py", "a.bin"], config=f'exclude = [{pattern!r}]\n')
    assert as_posix(select_model_files(load_spec(root)).artifacts) == ["a.bin"]
