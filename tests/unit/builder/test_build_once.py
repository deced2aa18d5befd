"""One `mlbuild image` does the common work once, whichever backend builds: the spec is parsed
once and the model directory is walked once (the pipeline makes one BuildPlan; backends read it
and never go back to the directory or the config). Counted with the real pipeline and real
backends; only the engine (a fake docker client), the lock and the env installs are stand-ins."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from mlbuild._lock import Lock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oci"))  # ocifixtures: a synthetic base
from ocifixtures import debian_like_layers, image_config, write_docker_archive  # noqa: E402
from test_backend_docker import FakeClient  # noqa: E402 - the engine without an engine

REPO = Path(__file__).resolve().parents[3]
ECHO = REPO / "tests" / "fixtures" / "models" / "echo"


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A model, fakes for the lock and the envs, and counters on load_spec and the walk."""
    import mlbuild._envs as envs_mod
    import mlbuild._lock as lock_mod
    import mlbuild._spec as spec_mod

    model = tmp_path / "echo"
    shutil.copytree(ECHO, model, ignore=shutil.ignore_patterns("__pycache__"))
    (model / "mlbuild.lock").write_text("# fake lock\n")
    lock = Lock(model / "mlbuild.lock", "3.11", ("linux/amd64",), "uv", "0" * 64, (), "sha256:" + "1" * 64)
    monkeypatch.setattr(lock_mod, "ensure_lock", lambda spec, **kw: lock)

    def fake_env(kind, requirements_file, digest, **kw):
        root = tmp_path / "envs" / kind
        site = root / "lib" / "python3.11" / "site-packages"
        site.mkdir(parents=True, exist_ok=True)
        (site / f"{kind}_mod.py").write_text("x = 1\n")
        return root

    monkeypatch.setattr(envs_mod, "installed_env", fake_env)

    counts = {"load_spec": 0, "walks": 0}
    real_load = spec_mod.load_spec

    def counting_load(*args, **kwargs):
        counts["load_spec"] += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(spec_mod, "load_spec", counting_load)
    real_walk = os.walk

    def counting_walk(top, *args, **kwargs):
        if Path(top).resolve() == model.resolve():
            counts["walks"] += 1
        return real_walk(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", counting_walk)
    return model, counts


def test_docker_backend_parses_the_spec_once_and_walks_the_model_once(counted, monkeypatch):
    import mlbuild
    import mlbuild._backends.docker as docker_mod

    model, counts = counted
    client = FakeClient()
    monkeypatch.setattr(docker_mod, "engine_client", lambda *a, **k: client)
    result = mlbuild.build_image(model, tag="echo:1", base_image="base:1", python="3.11", backend="docker", quiet=True)
    assert result.backend == "docker" and client.api.calls  # it really built (through the fake engine)
    assert "model/code/predict.py" in client.api.calls[-1]["names"]
    assert counts == {"load_spec": 1, "walks": 1}


def test_oci_backend_parses_the_spec_once_and_walks_the_model_once(counted, tmp_path, monkeypatch):
    import mlbuild

    model, counts = counted
    monkeypatch.setenv("MLBUILD_CACHE_DIR", str(tmp_path / "cache"))
    layers = debian_like_layers()
    archive = write_docker_archive(tmp_path / "base.tar", layers, config=image_config(layers))
    result = mlbuild.build_image(model, tag="echo:1", base_image=f"docker-archive:{archive}", python="3.11",
                                 backend="oci", output=tmp_path / "out", quiet=True)
    assert result.backend == "oci" and (tmp_path / "out" / "index.json").is_file()
    assert counts == {"load_spec": 1, "walks": 1}


def test_the_plan_installs_every_platform_and_refuses_a_lock_that_misses_one(counted, monkeypatch):
    import mlbuild._envs as envs_mod
    import mlbuild._lock as lock_mod
    from mlbuild._errors import ConfigError
    from mlbuild._plan import BuildRequest, make_plan

    model, counts = counted
    installed: list[tuple[str, str]] = []
    real_fake = envs_mod.installed_env

    def recording(kind, requirements_file, digest, **kw):
        installed.append((kind, kw["platform"]))
        return real_fake(kind, requirements_file, digest, **kw)

    monkeypatch.setattr(envs_mod, "installed_env", recording)
    with pytest.raises(ConfigError, match="is locked for linux/amd64, not for all of linux/amd64, linux/arm64"):
        make_plan(model, BuildRequest(platforms=("linux/arm64", "linux/amd64"), python="3.11"))
    assert installed == []  # refused before any install

    both = Lock(model / "mlbuild.lock", "3.11", ("linux/amd64", "linux/arm64"), "uv", "0" * 64, (), "sha256:" + "1" * 64)
    monkeypatch.setattr(lock_mod, "ensure_lock", lambda spec, **kw: both)
    plan = make_plan(model, BuildRequest(platforms=("linux/arm64", "linux/amd64"), python="3.11"))
    assert plan.platforms == ("linux/amd64", "linux/arm64") and plan.tag == f"{plan.spec.name}:{plan.spec.version}"
    assert sorted(installed) == [("model", "linux/amd64"), ("model", "linux/arm64"),
                                 ("server", "linux/amd64"), ("server", "linux/arm64")]
