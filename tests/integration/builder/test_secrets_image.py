"""The secrets corpus built into a real image: the model directory in the image holds exactly the
files that are not credentials, no layer carries a credential, and the build listed every file
it left out. The unit tests (tests/unit/builder/test_secrets.py) prove the selection; this proves
that what the image holds is that selection (oci backend: no engine needed to build, only to read
the base image)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "fixtures" / "projects" / "secrets-corpus"
MODEL_DIR = "opt/mlbuild/model/"
KEPT = {
    "keys.py", "mlbuild.lock", "predict.py", "requirements.txt", "README.md", "added_tokens.json",
    "artifacts/model.bin", "environment.yml", "envs/base.yml", "id_to_label.json", "merges.txt",
    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "tokens.txt", "vocab.txt",
}
# What the corpus's fake credentials hold (keys with their bodies, tokens, passwords); the kept
# README and keys.py only mention such things.
MARKERS = re.compile(rb"PRIVATE KEY-----\s*(?:\\n)?[A-Za-z0-9+/=]{16}|Proc-Type|FAKEfake|fake-not-a-real|"
                     rb"hf_fake|\"type\": \"service_account\"|password")

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _layer_files(archive: Path) -> dict[str, bytes]:
    """Every regular file of every layer of the docker-archive, by path (upper layers win)."""
    files: dict[str, bytes] = {}
    with tarfile.open(archive) as outer:
        (manifest,) = json.load(outer.extractfile("manifest.json"))
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(layer).read())) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        files[member.name] = tar.extractfile(member).read()
    return files


def test_the_corpus_image_holds_no_credential(base_image, copy_model, tmp_path):
    from mlbuild._build import build_directory as build_image

    model = copy_model(CORPUS)
    lines: list[str] = []
    build_image(model, tag="mlbuild-test/secrets-corpus:it", base_image=f"docker:{base_image}",
                backend="oci", output=tmp_path / "image.tar", progress=lines.append)
    files = _layer_files(tmp_path / "image.tar")

    in_model = {name[len(MODEL_DIR):] for name in files if name.startswith(MODEL_DIR)}
    assert in_model == KEPT
    for name, data in files.items():
        if name.startswith(MODEL_DIR):
            assert not MARKERS.search(data), name

    # The build said what it left out, each corpus file that is not kept, with a reason.
    left_out = {m.group(1) for m in map(re.compile(r"^left out (\S+): (.+)$").match, lines) if m}
    corpus = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file()}
    listed_or_under = {f for f in corpus - KEPT if f in left_out or any(f.startswith(d + "/") for d in left_out)}
    assert listed_or_under == corpus - KEPT
