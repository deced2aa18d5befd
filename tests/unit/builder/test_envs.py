"""install_env(): the uv command line, the venv-like layout, scrubbing, and error mapping.

A fake Runner plays uv: it fills the --target directory the way uv does (flat packages, bin/
scripts with the host's shebang, RECORD listing bin/...). The real uv runs in
tests/integration/builder/test_envs_real.py."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlbuild._envs import install_env, target_tags
from mlbuild._errors import FetchError, NoWheelError
from mlbuild._platforms import parse_platform
from support.runner import Call, ScriptedRunner

ARM = parse_platform("linux/arm64")
AMD = parse_platform("linux/amd64")


FakeRunner = ScriptedRunner  # records calls, answers as uv would (see tests/support/runner.py)


def rec_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass
class FakeDist:
    name: str
    version: str
    tags: tuple[str, ...] = ("py3-none-any",)
    scripts: dict[str, bytes] = field(default_factory=dict)
    built_by_uv: bool = False


def fake_uv(*dists: FakeDist) -> Callable[[Call], tuple[int, str, str]]:
    def action(call: Call) -> tuple[int, str, str]:
        target = Path(call.args[call.args.index("--target") + 1])
        for d in dists:
            pkg = target / d.name
            (pkg / "__pycache__").mkdir(parents=True)
            (pkg / "__init__.py").write_text("x = 1\n")
            (pkg / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0pyc")
            info = target / f"{d.name}-{d.version}.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {d.name}\nVersion: {d.version}\n")
            (info / "WHEEL").write_text("Wheel-Version: 1.0\n" + "".join(f"Tag: {t}\n" for t in d.tags))
            (info / "direct_url.json").write_text('{"url": "file:///home/someone/wheels/x.whl"}')
            if d.built_by_uv:
                (info / "uv_build.json").write_text("{}")
            records = [f"{d.name}/__init__.py,{rec_hash(b'x = 1' + bytes([10]))},6",
                       f"{d.name}/__pycache__/__init__.cpython-311.pyc,,",
                       f"{info.name}/direct_url.json,,", f"{info.name}/RECORD,,"]
            for script, body in d.scripts.items():
                (target / "bin").mkdir(exist_ok=True)
                (target / "bin" / script).write_bytes(body)
                records.append(f"bin/{script},{rec_hash(body)},{len(body)}")
            (info / "RECORD").write_text("\n".join(reversed(records)) + "\n")
        return 0, "", ""

    return action


SCRIPT = b"#!/root/.pyenv/versions/3.11.7/bin/python\n# -*- coding: utf-8 -*-\nimport sys\nfrom tool import main\nsys.exit(main())\n"
TRAMPOLINE = b"#!/bin/sh\n'''exec' '/very/long/path/bin/python' \"$0\" \"$@\"\n' '''\nimport sys\nfrom tool import main\n"


def test_command_line(tmp_path):
    req = tmp_path / "mlbuild.lock"
    req.write_text("")
    runner = FakeRunner(fake_uv())
    install_env(req, tmp_path / "env", python="3.12", platform=ARM, env_path_in_image="/opt/e",
                runner=runner, cache_dir=tmp_path / "cache")
    (call,) = runner.calls
    a = call.args
    assert a[1:3] == ("pip", "install")
    assert a[a.index("--python-version") + 1] == "3.12"
    assert a[a.index("--python-platform") + 1] == "aarch64-manylinux_2_36"
    for flag in ("--require-hashes", "--no-deps", "--link-mode=hardlink"):
        assert flag in a
    assert "--compile-bytecode" not in a
    assert a[a.index("-r") + 1] == str(req)
    assert a[a.index("--cache-dir") + 1] == str(tmp_path / "cache")
    assert Path(a[a.index("--target") + 1]).parent.parent == tmp_path  # assembled beside the target
    assert call.env == {"UV_COMPILE_BYTECODE": "0"}


def test_layout_scripts_and_scrubbing(tmp_path):
    runner = FakeRunner(fake_uv(
        FakeDist("tool", "1.0", scripts={"tool": SCRIPT, "tool-long": TRAMPOLINE, "helper.sh": b"#!/bin/sh\necho hi\n"}),
        FakeDist("fast", "2.0", tags=("cp312-cp312-manylinux_2_17_aarch64", "cp312-cp312-manylinux2014_aarch64")),
    ))
    env = install_env(tmp_path / "lock", tmp_path / "env", python="3.12", platform=ARM,
                      env_path_in_image="/opt/mlbuild/model-env/", runner=runner)
    site = tmp_path / "env" / "lib" / "python3.12" / "site-packages"
    assert env.root == tmp_path / "env" and env.site_packages == site
    assert env.packages == (("fast", "2.0"), ("tool", "1.0"))
    assert sorted(p.name for p in (tmp_path / "env").iterdir()) == ["bin", "lib"]
    assert (site / "tool" / "__init__.py").is_file() and not (site / "bin").exists()

    tool = (tmp_path / "env" / "bin" / "tool").read_bytes()
    assert tool.startswith(b"#!/opt/mlbuild/model-env/bin/python\n# -*- coding")
    assert (tmp_path / "env" / "bin" / "tool-long").read_bytes().startswith(
        b"#!/opt/mlbuild/model-env/bin/python\nimport sys\n")
    assert (tmp_path / "env" / "bin" / "helper.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "env" / "bin" / "tool").stat().st_mode & 0o777 == 0o755

    assert not list(site.rglob("__pycache__")) and not list(site.rglob("*.pyc"))
    assert not list(site.rglob("direct_url.json"))
    record = (site / "tool-1.0.dist-info" / "RECORD").read_text().splitlines()
    assert record == sorted(record)
    assert f"../../../bin/tool,{rec_hash(tool)},{len(tool)}" in record
    assert not any("direct_url" in r or "__pycache__" in r or r.startswith("bin/") for r in record)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp dir gone


def test_env_published_first_by_another_build_is_kept(tmp_path):
    """Two builds of the same uncached lock: the one that finishes second keeps the first one's
    env (same key, same content; it may be streaming into an image) and drops its own."""
    target = tmp_path / "env"
    uv = fake_uv(FakeDist("six", "1.17.0"))

    def other_build_finishes_first(call):
        result = uv(call)
        (target / "lib").mkdir(parents=True)
        (target / "lib" / "in-use").write_text("being read by the other build")
        return result

    runner = FakeRunner(other_build_finishes_first)
    env = install_env(tmp_path / "lock", target, python="3.11", platform=AMD, env_path_in_image="/e", runner=runner)
    before = (target / "lib" / "in-use").stat().st_ino
    assert (target / "lib" / "in-use").read_text() == "being read by the other build"  # not moved aside
    assert (target / "lib" / "in-use").stat().st_ino == before
    assert env.root == target and env.packages == (("six", "1.17.0"),)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # our copy dropped


def test_stale_file_or_empty_dir_at_the_target_is_replaced(tmp_path):
    for stale in ("file", "empty-dir"):
        target = tmp_path / stale
        target.write_text("x") if stale == "file" else target.mkdir()
        install_env(tmp_path / "lock", target, python="3.11", platform=AMD, env_path_in_image="/e",
                    runner=FakeRunner(fake_uv(FakeDist("six", "1.17.0"))))
        assert (target / "lib" / "python3.11" / "site-packages" / "six").is_dir()


def test_wheel_built_from_sdist_for_the_host_is_refused(tmp_path):
    runner = FakeRunner(fake_uv(FakeDist("six", "1.17.0"),
                                FakeDist("cext", "0.3", tags=("cp311-cp311-linux_x86_64",), built_by_uv=True)))
    with pytest.raises(NoWheelError) as info:
        install_env(tmp_path / "lock", tmp_path / "env", python="3.11", platform=AMD, env_path_in_image="/e",
                    runner=runner)
    assert info.value.exit_code == 4
    assert "cext==0.3 has no wheel for python 3.11 on linux/amd64" in info.value.message
    assert "built from source" in info.value.message
    assert not (tmp_path / "env").exists()
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("tags", [("cp311-cp311-manylinux_2_17_x86_64",),  # wrong python (3.12 wanted)
                                  ("cp312-cp312-manylinux_2_17_x86_64",),  # wrong machine (arm64 wanted)
                                  ("cp312-cp312-manylinux_2_39_aarch64",)])  # glibc newer than bookworm's
def test_non_matching_wheel_is_refused(tmp_path, tags):
    with pytest.raises(NoWheelError, match="fast==1.0 has no wheel for python 3.12 on linux/arm64"):
        install_env(tmp_path / "lock", tmp_path / "env", python="3.12", platform=ARM, env_path_in_image="/e",
                    runner=FakeRunner(fake_uv(FakeDist("fast", "1.0", tags=tags))))


def test_pure_python_wheel_built_from_sdist_is_fine(tmp_path):
    env = install_env(tmp_path / "lock", tmp_path / "env", python="3.13", platform=ARM, env_path_in_image="/e",
                      runner=FakeRunner(fake_uv(FakeDist("docopt", "0.6.2", tags=("py2-none-any", "py3-none-any"),
                                                         built_by_uv=True))))
    assert env.packages == (("docopt", "0.6.2"),)
    assert not list(env.site_packages.rglob("uv_build.json"))


@pytest.mark.parametrize("stderr,error,fragment", [
    ("error: Failed to prepare distributions\n  Caused by: Failed to download `six==1.17.0`\n"
     "  Caused by: Hash mismatch for `six==1.17.0`\n\nExpected:\n  sha256:aaaa\n\nComputed:\n  sha256:bbbb\n",
     FetchError, "hash mismatch for six==1.17.0"),
    ("error: Failed to build `cext==0.3`\n  Caused by: The build backend returned an error\n",
     NoWheelError, "cext==0.3 has no wheel for python 3.12 on linux/arm64"),
    ("error: Distribution `torch==2.5.0 @ registry+https://index.invalid/simple` can't be installed because it "
     "doesn't have a source distribution or wheel for the current platform\n",
     NoWheelError, "torch==2.5.0 @ registry+https://index.invalid/simple has no wheel"),
    ("error: Request failed after 3 retries\n  Caused by: connection refused\n", FetchError,
     "failed: error: Request failed after 3 retries"),
])
def test_uv_failures_map_to_fetch_errors(tmp_path, stderr, error, fragment):
    with pytest.raises(FetchError) as info:
        install_env(tmp_path / "lock", tmp_path / "env", python="3.12", platform=ARM, env_path_in_image="/e",
                    runner=FakeRunner(lambda call: (2, "", stderr)))
    assert type(info.value) is error
    assert fragment in info.value.message
    assert info.value.details and info.value.hint
    assert list(tmp_path.iterdir()) == []


def test_target_tags():
    tags = {str(t) for t in target_tags("3.12", ARM)}
    assert {"cp312-cp312-manylinux_2_17_aarch64", "cp312-abi3-manylinux_2_28_aarch64", "py3-none-any",
            "cp310-abi3-manylinux2014_aarch64"} <= tags
    assert not tags & {"cp311-cp311-manylinux_2_17_aarch64", "cp312-cp312-linux_aarch64",
                       "cp312-cp312-manylinux_2_17_x86_64", "cp313-abi3-manylinux_2_17_aarch64"}


def test_isolated_venv_published_first_by_another_process_is_kept(tmp_path, monkeypatch):
    """`mlbuild serve --isolated` twice at once for one lock: the second keeps the first's venv
    (it may be running from it) instead of failing with "Directory not empty"."""
    import mlbuild._lock
    from mlbuild._lock import Lock
    from mlbuild._platforms import Platform
    from mlbuild._serve import isolated_python

    model = tmp_path / "model"
    model.mkdir()
    (model / "predict.py").write_text("def predict(x: dict) -> dict:\n    return x\n")
    (model / "mlbuild.toml").write_text('name = "m"\npython = "3.11"\n')
    lock = Lock(path=model / "mlbuild.lock", python="3.11", platforms=(str(Platform.host()),), resolver="uv",
                requirements_sha256="0" * 64, packages=(), digest="sha256:" + "4" * 64)
    monkeypatch.setattr(mlbuild._lock, "ensure_lock", lambda *a, **k: lock)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    venv = tmp_path / "cache" / "mlbuild" / "venvs" / f"{'4' * 24}-py3.11"

    def uv(call):
        if call.args[1] == "venv":
            (Path(call.args[-1]) / "bin").mkdir(parents=True)
            (Path(call.args[-1]) / "bin" / "python").write_text("ours")
        else:  # while we sync, the other process publishes the same venv
            (venv / "bin").mkdir(parents=True)
            (venv / "bin" / "python").write_text("theirs")
        return 0, "", ""

    python = isolated_python(model, runner=FakeRunner(uv))
    assert python == str(venv / "bin" / "python") and Path(python).read_text() == "theirs"
    assert [p.name for p in venv.parent.iterdir()] == [venv.name]  # our copy removed
