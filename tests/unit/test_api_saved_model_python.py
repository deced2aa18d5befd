"""A saved (pickled) model only loads on the Python minor version that pickled it: the build
refuses another target before doing anything."""

import shutil
from pathlib import Path

import mlbuild
import pytest

SAVED = Path(__file__).resolve().parents[2] / "examples" / "notebook-pipeline" / "model"


@pytest.mark.parametrize("backend", ["docker", "oci"])
def test_build_refuses_a_python_other_than_the_payloads(tmp_path, backend):
    model = tmp_path / "model"
    shutil.copytree(SAVED, model)
    before = sorted(p.name for p in model.rglob("*"))
    with pytest.raises(mlbuild.ConfigError) as info:
        mlbuild.build_image(model, python="3.12", backend=backend, output=tmp_path / "out.tar")
    message = str(info.value)
    assert "model.pkl was pickled by Python 3.11" in message and "3.12" in message and "3.11" in message
    assert sorted(p.name for p in model.rglob("*")) == before  # nothing written, no lock refreshed
    assert not (tmp_path / "out.tar").exists()


def test_the_model_directorys_errors_come_before_the_engine_check(tmp_path, monkeypatch):
    # No engine answers (DOCKER_HOST points at nothing): a saved model with the wrong Python is
    # still reported as that, not as "no Docker engine", and nothing is locked.
    model = tmp_path / "model"
    shutil.copytree(SAVED, model)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    with pytest.raises(mlbuild.ConfigError, match="pickled by Python 3.11"):
        mlbuild.build_image(model, python="3.12", backend="docker")


def test_without_an_engine_the_docker_backend_says_so_before_locking(tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(SAVED, model)
    (model / "mlbuild.lock").unlink()  # a lock would have to be written: it must not be
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    with pytest.raises(mlbuild.EngineUnavailableError):
        mlbuild.build_image(model, backend="docker")
    assert not (model / "mlbuild.lock").exists()
