"""Real resolvers against the package index: uv (and pip-tools) lock small real sets."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from mlbuild._errors import ResolutionError
from mlbuild._lock import ensure_lock, lock, read_lock
from mlbuild._runner import SubprocessRunner
from mlbuild._spec import load_spec


def model(tmp_path: Path, requirements: str, config: str = "") -> Path:
    root = tmp_path / "m"
    root.mkdir()
    (root / "predict.py").write_text("def predict(x):\n    return x\n")
    (root / "requirements.txt").write_text(requirements)
    if config:
        (root / "mlbuild.toml").write_text(config)
    return root


def no_host_names(text: str) -> bool:
    return "://" not in text and not re.search(r"^\s*--(extra-)?index-url", text, re.M)


def test_uv_locks_six_and_numpy_for_one_platform(tmp_path):
    root = model(tmp_path, "six\nnumpy>=1.26\n", config='python = "3.12"\n')
    spec = load_spec(root)
    result = lock(spec, platforms=("linux/arm64",), runner=SubprocessRunner())
    assert result == read_lock(root / "mlbuild.lock")
    assert {p.name for p in result.packages} == {"numpy", "six"}
    assert all(p.hashes and all(h.startswith("sha256:") for h in p.hashes) for p in result.packages)
    assert (result.python, result.platforms) == ("3.12", ("linux/arm64",))
    text = (root / "mlbuild.lock").read_text()
    assert no_host_names(text)
    assert "# via -r requirements.in" in text  # stable annotation, no temp path
    # The lock is fresh for the spec it came from.
    assert ensure_lock(spec, platforms=("linux/arm64",), write_if_missing=False) == result


def test_uv_universal_lock_for_two_platforms(tmp_path):
    root = model(tmp_path, "six\n")
    result = lock(load_spec(root), platforms=("linux/amd64", "linux/arm64"), runner=SubprocessRunner())
    assert result.platforms == ("linux/amd64", "linux/arm64")
    assert [p.name for p in result.packages] == ["six"]


def test_unresolvable_set_reports_the_resolvers_explanation(tmp_path):
    root = model(tmp_path, "numpy==0.0.1\n")
    with pytest.raises(ResolutionError) as info:
        lock(load_spec(root), runner=SubprocessRunner())
    exc = info.value
    assert exc.exit_code == 3
    assert "numpy==0.0.1" in exc.message and "requirements.txt" in exc.message
    assert "numpy==0.0.1" in exc.details and "unsatisfiable" in exc.details
    assert not (root / "mlbuild.lock").exists()


def test_pip_tools_locks_for_the_host(tmp_path):
    host_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = model(tmp_path, "six\n")
    result = lock(load_spec(root), python=host_py, resolver="pip-tools", runner=SubprocessRunner())
    assert result.resolver == "pip-tools"
    assert [p.name for p in result.packages] == ["six"] and result.packages[0].hashes
    assert no_host_names((root / "mlbuild.lock").read_text())
