"""The build context: which files, where, and a tar whose bytes depend only on the content."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from mlbuild._context import (
    BuildContext,
    ContextEntry,
    context_for_app,
    context_for_env,
    full_context,
)
from mlbuild._errors import BuildError
from mlbuild._files import select_model_files
from mlbuild._imagefacts import FIXED_EPOCH, RUNTIME_PTH_NAME
from mlbuild._resources import runtime_package_dir
from mlbuild._spec import load_spec


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)  # mode from the umask, as a checkout gets it
    if executable:
        os.chmod(path, path.stat().st_mode | 0o100)


def _sources(root: Path) -> dict[str, Path]:
    """A model dir, two fake installed envs and a runtime package dir under ``root``."""
    model = root / "model"
    _write(model / "predict.py", "def predict(x: dict) -> dict:\n    return x\n")
    _write(model / "helpers" / "rules.py", "THRESHOLD = 0.5\n")
    _write(model / "artifacts" / "weights.bin", "\x00" * 100)
    _write(model / "Dockerfile.j2", '{% extends "Dockerfile.j2" %}\n')
    _write(model / "__pycache__" / "predict.cpython-311.pyc", "junk")
    _write(model / "mlbuild.toml", 'name = "ctx"\npython = "3.11"\n')
    server = root / "server-env"
    _write(server / "lib/python3.11/site-packages/fastapi/__init__.py", "x = 1\n")
    _write(server / "bin/uvicorn", "#!/opt/mlbuild/server-env/bin/python\n", executable=True)
    model_env = root / "model-env"
    _write(model_env / "lib/python3.11/site-packages/numpy/__init__.py", "y = 2\n")
    _write(model_env / "lib/python3.11/site-packages/numpy/__pycache__/x.pyc", "junk")
    os.symlink("numpy", model_env / "lib/python3.11/site-packages/numpy_alias")
    runtime = root / "runtime" / "mlbuild_runtime"
    _write(runtime / "__init__.py", "")
    _write(runtime / "worker" / "__main__.py", "print()\n")
    _write(runtime / "worker" / "__pycache__" / "m.pyc", "junk")
    return {"model": model, "server": server, "model_env": model_env, "runtime": runtime}


def _contexts(src: dict[str, Path]) -> BuildContext:
    spec = load_spec(src["model"])
    files = select_model_files(spec)
    env = context_for_env(dockerfile="FROM a\n", dockerignore="**/*.pyc\n", server_env=src["server"], model_env=src["model_env"], python="3.11")
    app = context_for_app(dockerfile="FROM b\n", dockerignore="**/*.pyc\n", spec_directory=spec.directory, files=files, runtime_dir=src["runtime"])
    return full_context(env, app, "FROM c\n")


def _tar_bytes(ctx: BuildContext) -> bytes:
    return b"".join(ctx.iter_tar())


def test_layout_and_exclusions(tmp_path):
    ctx = _contexts(_sources(tmp_path))
    names = [e.arcname for e in ctx.entries]
    assert names == sorted(names)
    for expected in (
        "Dockerfile",
        ".dockerignore",
        "model/code/predict.py",
        "model/code/helpers/rules.py",
        "model/code/mlbuild.toml",
        "model/artifacts/artifacts/weights.bin",
        "runtime/mlbuild_runtime/worker/__main__.py",
        "server-env/bin/uvicorn",
        f"server-env/lib/python3.11/site-packages/{RUNTIME_PTH_NAME}",
        "model-env/lib/python3.11/site-packages/numpy/__init__.py",
    ):
        assert expected in names, expected
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    # The model's template configures the build; it is not shipped.
    assert not any(n.endswith("Dockerfile.j2") for n in names)
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(ctx))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("Dockerfile").read() == b"FROM c\n"
        pth = tar.extractfile(f"server-env/lib/python3.11/site-packages/{RUNTIME_PTH_NAME}").read()
        assert pth == b"/opt/mlbuild/runtime\n"
    assert members["server-env/bin/uvicorn"].mode == 0o755
    assert members["model/code/predict.py"].mode == 0o644
    assert members["model/code"].isdir() and members["model/code"].mode == 0o755
    link = members["model-env/lib/python3.11/site-packages/numpy_alias"]
    assert link.issym() and link.linkname == "numpy"
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members.values()} == {(0, 0, "", "", FIXED_EPOCH)}


def test_tar_is_byte_identical_across_checkouts(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    old = os.umask(0o077)  # a strict umask: files come out 0600 / dirs 0700
    try:
        a = _sources(tmp_path / "a")
    finally:
        os.umask(old)
    os.umask(0o002)
    try:
        b = _sources(tmp_path / "b")
    finally:
        os.umask(old)
    for path in (tmp_path / "b").rglob("*"):
        os.utime(path, (1_234_567_890, 1_234_567_890), follow_symlinks=False)
    assert (a["model"] / "predict.py").stat().st_mode != (b["model"] / "predict.py").stat().st_mode
    first, second = _tar_bytes(_contexts(a)), _tar_bytes(_contexts(b))
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()
    # And SOURCE_DATE_EPOCH is the mtime of every member when set.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(_contexts(a)))) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1_700_000_000}


def test_content_change_changes_the_tar(tmp_path):
    src = _sources(tmp_path)
    before = _tar_bytes(_contexts(src))
    _write(src["model"] / "predict.py", "def predict(x: dict) -> dict:\n    return {}\n")
    assert _tar_bytes(_contexts(src)) != before


def test_missing_env_is_a_build_error(tmp_path):
    with pytest.raises(BuildError, match="missing"):
        context_for_env(dockerfile="", dockerignore="", server_env=tmp_path / "nope", model_env=tmp_path, python="3.11")


def test_runtime_package_is_the_installed_one():
    runtime = runtime_package_dir()
    assert (runtime / "__init__.py").is_file() and (runtime / "worker").is_dir()
    ctx = BuildContext([ContextEntry("x", data=b"1")], mtime=5)
    assert [e.arcname for e in ctx.entries] == ["x"] and ctx.mtime == 5
