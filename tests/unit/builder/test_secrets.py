"""Secrets never reach an image: select_model_files() leaves credential files out by name
(case-insensitively) and by content (private keys, service-account keys, AWS secrets in small
text files), lists each with a reason, keeps the ML files that merely look alike, and lets an
``include`` entry naming a file's exact path bring it back on purpose.

tests/fixtures/projects/secrets-corpus/ is a real model directory holding one fake credential of
every kind (and the benign look-alikes); its keys are syntactically PEM but not keys."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from mlbuild._files import select_model_files
from mlbuild._spec import load_spec

PROJECTS = Path(__file__).resolve().parents[2] / "fixtures" / "projects"
CORPUS = PROJECTS / "secrets-corpus"

BY_NAME = "may hold secrets (never baked)"
PRIVATE_KEY = "holds a private key (never baked)"
SERVICE_ACCOUNT = "holds a service-account key (never baked)"
AWS_SECRET = "holds an AWS secret access key (never baked)"

# Every credential in the corpus, with the reason the build must give for leaving it out.
CORPUS_SECRETS = {
    # baked without a word before issue 9
    ".ENV": BY_NAME, "Id_Rsa": BY_NAME, ".pgpass": BY_NAME, ".vault-token": BY_NAME,
    ".dockercfg": BY_NAME, "kubeconfig": BY_NAME, "terraform.tfstate": BY_NAME,
    ".bash_history": BY_NAME, "secrets.json": BY_NAME, "token.txt": BY_NAME, "prod.env": BY_NAME,
    "artifacts/sa.json": SERVICE_ACCOUNT,
    # what a security reviewer expects besides
    ".env.local": BY_NAME, ".envrc": BY_NAME, ".my.cnf": BY_NAME, "staging.kubeconfig": BY_NAME,
    "terraform.tfstate.backup": BY_NAME, "prod.tfvars": BY_NAME, ".zsh_history": BY_NAME,
    ".python_history": BY_NAME, "secret.yaml": BY_NAME, "hf_token": BY_NAME, "credentials.csv": BY_NAME,
    ".s3cfg": BY_NAME, ".boto": BY_NAME, "htpasswd": BY_NAME, "client.ovpn": BY_NAME,
    ".terraformrc": BY_NAME, "terraform.rc": BY_NAME, ".git-credentials": BY_NAME, ".netrc": BY_NAME,
    "_netrc": BY_NAME, "kaggle.json": BY_NAME, ".databrickscfg": BY_NAME,
    "client_secret_1234.apps.googleusercontent.com.json": BY_NAME, "id_ed25519": BY_NAME,
    "id_ecdsa": BY_NAME, "id_dsa": BY_NAME, "id_ed25519.pub": BY_NAME, "certs/Server.PEM": BY_NAME,
    "signing/public_key.pem": BY_NAME, ".huggingface/token": BY_NAME, ".config/gh": BY_NAME,
    # by content, under names that say nothing
    "artifacts/deploy_key": PRIVATE_KEY, "notes/setup.txt": PRIVATE_KEY,
    "artifacts/signing.txt": PRIVATE_KEY, "config/storage.ini": AWS_SECRET,
}
CORPUS_CODE = ["keys.py", "mlbuild.lock", "predict.py", "requirements.txt"]
CORPUS_ARTIFACTS = [
    "README.md", "added_tokens.json", "artifacts/model.bin", "environment.yml", "envs/base.yml",
    "id_to_label.json", "merges.txt", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json", "tokens.txt", "vocab.txt",
]
# What the corpus's fake credentials contain; none of it may be in a file that is kept.
SECRET_MARKERS = re.compile(
    r"PRIVATE KEY-----\s*(?:\\n)?[A-Za-z0-9+/=]{16}|Proc-Type: 4,ENCRYPTED|fake-not-a-real|FAKEfake|hf_fake|password|"
    r"\"type\": \"service_account\"|oauth_token|client_secret\"|\"auth\"|token = "
)

FAKE_B64 = "RkFLRS1LRVktRk9SLU1MQlVJTEQtVEVTVFMtT05MWS1OT1QtQS1SRUFMLUtFWQ=="


def fake_pem(kind: str = "RSA PRIVATE KEY") -> str:
    return f"-----BEGIN {kind}-----\n{FAKE_B64}\n{FAKE_B64}\n-----END {kind}-----\n"


def excluded_map(files) -> dict[str, str]:
    return {p.as_posix(): why for p, why in files.excluded}


def copy_corpus(tmp_path: Path, config: str = "") -> Path:
    root = tmp_path / "m"
    shutil.copytree(CORPUS, root, symlinks=True)
    if config:
        (root / "mlbuild.toml").write_text(config)
    return root


def small_model(tmp_path: Path, files: dict[str, str | bytes], config: str = "") -> Path:
    root = tmp_path / "m"
    root.mkdir()
    (root / "predict.py").write_text("def predict(x):\n    return x\n")
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if config:
        (root / "mlbuild.toml").write_text(config)
    return root


# --------------------------------------------------------------------------- the corpus

def test_corpus_leaves_every_secret_out_and_lists_it_with_its_reason():
    files = select_model_files(load_spec(CORPUS))
    assert excluded_map(files) == CORPUS_SECRETS


def test_corpus_keeps_the_ml_files_that_look_alike():
    files = select_model_files(load_spec(CORPUS))
    assert [p.as_posix() for p in files.code] == CORPUS_CODE
    assert [p.as_posix() for p in files.artifacts] == CORPUS_ARTIFACTS


def test_no_kept_corpus_file_holds_a_credential():
    # The invariant itself, independent of the rule lists: read what would be baked.
    files = select_model_files(load_spec(CORPUS))
    for rel in (*files.code, *files.artifacts):
        text = (CORPUS / rel).read_bytes().decode("utf-8", "replace")
        assert not SECRET_MARKERS.search(text), rel
    # ... while the fakes left out by content do hold one (so the marker check is not vacuous).
    for rel, why in CORPUS_SECRETS.items():
        if why != BY_NAME:
            assert SECRET_MARKERS.search((CORPUS / rel).read_text()), rel


# --------------------------------------------------------------------------- one test per finding

ISSUE_9_FINDINGS = [".ENV", "Id_Rsa", ".pgpass", ".vault-token", ".dockercfg", "kubeconfig",
                    "terraform.tfstate", ".bash_history", "secrets.json", "token.txt", "prod.env",
                    "artifacts/sa.json"]


@pytest.mark.parametrize("rel", ISSUE_9_FINDINGS)
def test_issue_9_finding_is_no_longer_baked(tmp_path, rel):
    root = small_model(tmp_path, {rel: (CORPUS / rel).read_bytes(), "model.bin": b"\0weights"})
    files = select_model_files(load_spec(root))
    assert excluded_map(files) == {rel: CORPUS_SECRETS[rel]}
    assert [p.as_posix() for p in files.artifacts] == ["model.bin"]


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize("rel", [
    ".Env", ".ENV.production", "Prod.Env", "ID_RSA", "id_RSA.old", "ID_ED25519_SK", "Server.KEY",
    "CREDENTIALS", "aws/Credentials", "Credentials.JSON", "my_credentials.yaml", "AccessKeys.csv",
    "SECRETS.TOML", ".NETRC", "Store.JKS", "cluster.KUBECONFIG", "kubeconfig.yaml", "prod.TFVARS",
    "vars.tfvars.json", ".psql_history", ".mysql_history", ".node_repl_history", "github_token",
    "access_token.txt", "oauth-token.json", "token.json", "TOKEN", "api.token", "secrets",
    "app.secret", ".HTPASSWD", "Office.OVPN", "vault.kdbx", "putty.ppk", ".yarnrc.yml",
    ".pypirc", ".npmrc", "service_account.json", "my-service-account-key.json",
    ".cache/huggingface/token", ".cache/huggingface/stored_tokens", "wg0.conf.key",
])
def test_credential_file_names_are_matched_case_insensitively(tmp_path, rel):
    root = small_model(tmp_path, {rel: "x\n"}, config='include = ["**"]\n')  # a broad include is no excuse
    files = select_model_files(load_spec(root))
    assert excluded_map(files) == {rel: BY_NAME}


@pytest.mark.parametrize("directory", [
    ".SSH", ".Aws", ".GIT", "sub/.Docker", ".terraform", ".config/GH", ".oci", ".password-store",
    ".Config/Gcloud",
])
def test_credential_directories_are_matched_case_insensitively(tmp_path, directory):
    root = small_model(tmp_path, {f"{directory}/config": "x\n", "keep.txt": "x\n"})
    files = select_model_files(load_spec(root))
    assert excluded_map(files) == {directory: BY_NAME}
    assert [p.as_posix() for p in files.artifacts] == ["keep.txt"]


@pytest.mark.parametrize("rel", [
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokens.txt", "vocab.txt", "merges.txt", "tokenizer.model", "sentencepiece.bpe.model",
    "environment.yml", "envs/base.yml", "env.py", "environment.py", "id_to_label.json", "ids.npy",
    "keys.py", "key_points.csv", "secretary_bird.jpg", "token_classifier.onnx", "histogram.json",
    "history.csv", "training_history.json", "credit_scores.csv", "kubernetes.md", "tf_state.pt",
])
def test_ml_files_that_look_like_secrets_are_kept(tmp_path, rel):
    root = small_model(tmp_path, {rel: "x\n"})
    files = select_model_files(load_spec(root))
    assert excluded_map(files) == {}
    assert rel in [p.as_posix() for p in (*files.code, *files.artifacts)]


# --------------------------------------------------------------------------- content

@pytest.mark.parametrize("kind", [
    "RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY", "OPENSSH PRIVATE KEY", "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK",
])
def test_a_private_key_block_under_any_name_is_left_out(tmp_path, kind):
    root = small_model(tmp_path, {"artifacts/blob.dat": "header\n" + fake_pem(kind)})
    assert excluded_map(select_model_files(load_spec(root))) == {"artifacts/blob.dat": PRIVATE_KEY}


def test_a_private_key_inside_code_is_left_out(tmp_path):
    root = small_model(tmp_path, {"helpers.py": f'KEY = """{fake_pem()}"""\n'})
    assert excluded_map(select_model_files(load_spec(root))) == {"helpers.py": PRIVATE_KEY}


@pytest.mark.parametrize("text,reason", [
    ('{"type":"service_account","private_key":"x"}', SERVICE_ACCOUNT),
    ("aws_secret_access_key=FAKEfakeFAKEfakeFAKEfakeFAKEfakeFAKEfake\n", AWS_SECRET),
    ('AWS_SECRET_ACCESS_KEY: "FAKEfakeFAKEfake/FAKEfake+FAKEfakeFAKEfa"\n', AWS_SECRET),
    ('{"SecretAccessKey": "FAKEfakeFAKEfakeFAKEfakeFAKEfakeFAKEfake"}', AWS_SECRET),
    ("PuTTY-User-Key-File-3: ssh-ed25519\nPrivate-Lines: 1\nFAKE\n", PRIVATE_KEY),
])
def test_other_credentials_are_found_by_content(tmp_path, text, reason):
    root = small_model(tmp_path, {"conf/settings.cfg": text})
    assert excluded_map(select_model_files(load_spec(root))) == {"conf/settings.cfg": reason}


@pytest.mark.parametrize("text", [
    "Keys look like -----BEGIN PRIVATE KEY----- ... and never belong here.\n",
    'secret = os.environ["AWS_SECRET_ACCESS_KEY"]\naws_secret_access_key = "<your key>"\n',
    '{"type": "service_account", "client_email": "x@y"}\n',  # no key in it: not a credential
    fake_pem("PUBLIC KEY") + fake_pem("CERTIFICATE"),
])
def test_text_that_only_mentions_a_credential_is_kept(tmp_path, text):
    root = small_model(tmp_path, {"notes.txt": text})
    assert excluded_map(select_model_files(load_spec(root))) == {}


def test_content_scan_reads_only_small_text_files(tmp_path):
    # A big file is never opened (its size says so): 1 GiB sparse, a key at the start.
    root = small_model(tmp_path, {"big.bin": fake_pem()})
    with open(root / "big.bin", "r+b") as fh:
        fh.truncate(1 << 30)
    # A file whose first bytes are binary is not read on.
    (root / "weights.bin").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + b"\1" * 20_000 + fake_pem().encode())
    # Just under the cap, text: read.
    (root / "small.txt").write_bytes(b"a" * (64 * 1024 - 200) + fake_pem().encode())
    files = select_model_files(load_spec(root))
    assert excluded_map(files) == {"small.txt": PRIVATE_KEY}
    assert [p.as_posix() for p in files.artifacts] == ["big.bin", "weights.bin"]


def test_files_left_out_by_name_or_exclude_are_not_read(tmp_path, monkeypatch):
    root = small_model(tmp_path, {".env": "A=1\n", "raw/data.csv": "x\n", "kept.txt": "x\n"},
                       config='exclude = ["raw"]\n')
    opened: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    select_model_files(load_spec(root))
    assert ".env" not in opened and "data.csv" not in opened and "kept.txt" in opened


def test_a_symlink_to_a_file_holding_a_key_is_left_out(tmp_path):
    root = small_model(tmp_path, {"artifacts/deploy": fake_pem("OPENSSH PRIVATE KEY")},
                       config='include = ["weights.bin"]\n')  # naming the link does not vouch for it
    os.symlink("artifacts/deploy", root / "weights.bin")
    assert excluded_map(select_model_files(load_spec(root))) == {
        "artifacts/deploy": PRIVATE_KEY,
        "weights.bin": "symlink to an excluded file: artifacts/deploy",
    }


# --------------------------------------------------------------------------- include

def test_an_exact_include_brings_back_a_name_or_content_exclusion(tmp_path):
    config = 'include = ["artifacts/sa.json", "Id_Rsa", "notes/setup.txt", "config/storage.ini"]\n'
    files = select_model_files(load_spec(copy_corpus(tmp_path, config)))
    kept = {p.as_posix() for p in (*files.code, *files.artifacts)}
    assert {"artifacts/sa.json", "Id_Rsa", "notes/setup.txt", "config/storage.ini"} <= kept
    assert excluded_map(files) == {k: v for k, v in CORPUS_SECRETS.items()
                                   if k not in ("artifacts/sa.json", "Id_Rsa", "notes/setup.txt",
                                                "config/storage.ini")}


@pytest.mark.parametrize("pattern", ["**", "artifacts/*", "artifacts", "*.json", "artifacts/sa.*"])
def test_a_wildcard_include_never_brings_back_a_secret(tmp_path, pattern):
    files = select_model_files(load_spec(copy_corpus(tmp_path, f"include = [{pattern!r}]\n")))
    assert excluded_map(files) == CORPUS_SECRETS
