"""Requirement inference: only what the saved object references, pinned to running versions."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import sys
import textwrap

import cloudpickle
import numpy as np
import pytest
from mlbuild._save import save
from mlbuild._save._requirements import analyse_and_pickle, classify_modules


def _pin(dist: str) -> str:
    return f"{md.distribution(dist).metadata['Name']}=={md.version(dist)}"


class NumpyOnly:
    def __init__(self) -> None:
        self.weights = np.array([0.5, -1.0, 2.0])

    def predict(self, rows: list[list[float]]) -> list[float]:
        return (np.asarray(rows) @ self.weights).tolist()


def test_numpy_only_object_pins_exactly_numpy_and_cloudpickle(tmp_path):
    # The venv holds pandas, scikit-learn, fastapi, pydantic...; none of them may leak in.
    installed = {d.metadata["Name"] for d in md.distributions()}
    assert {"pandas", "scikit-learn", "fastapi"} <= installed
    saved = save(NumpyOnly(), tmp_path / "m")
    assert saved.requirements == (_pin("cloudpickle"), _pin("numpy"))
    lines = [ln for ln in (tmp_path / "m" / "requirements.txt").read_text().splitlines() if not ln.startswith("#")]
    assert lines == [_pin("cloudpickle"), _pin("numpy")]


def test_scikit_learn_estimator_pins_scikit_learn_not_pandas():
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    found = analyse_and_pickle(model).distributions
    assert found["scikit-learn"] == md.version("scikit-learn")
    assert found["numpy"] == md.version("numpy")
    assert found["cloudpickle"] == cloudpickle.__version__
    assert "pandas" not in found and "fastapi" not in found


def test_import_inside_a_by_value_function_body_is_pinned():
    def predict(x):
        import pandas  # imported only when called: invisible in globals, visible in the bytecode

        return pandas.Series(x).sum()

    # A closure defined in a test function pickles by value, like one from __main__.
    found = analyse_and_pickle(predict).distributions
    assert found["pandas"] == md.version("pandas")


def test_plain_function_with_stdlib_only_pins_only_cloudpickle():
    import math

    def predict(x: float) -> float:
        return math.sqrt(x)

    assert analyse_and_pickle(predict).distributions == {"cloudpickle": cloudpickle.__version__}


def test_explicit_requirements_extend_and_override(tmp_path):
    saved = save(
        NumpyOnly(), tmp_path / "m", requirements=["numpy>=1.26", "requests==2.32.0 ; python_version >= '3.8'"]
    )
    assert saved.requirements == (
        _pin("cloudpickle"),
        "numpy>=1.26",
        'requests==2.32.0; python_version >= "3.8"',
    )


def test_user_module_is_captured_by_value_and_not_pinned(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mlbuild_test_userfeat.py").write_text(textwrap.dedent("""
        import numpy as np

        class Doubler:
            def predict(self, x):
                return (np.asarray(x) * 2).tolist()
    """))
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module("mlbuild_test_userfeat")
    try:
        saved = save(module.Doubler(), tmp_path / "m")
    finally:
        sys.modules.pop("mlbuild_test_userfeat", None)
    assert saved.by_value_modules == ("mlbuild_test_userfeat",)
    assert saved.requirements == (_pin("cloudpickle"), _pin("numpy"))
    info = json.loads((tmp_path / "m" / "artifacts" / "payload.json").read_text())
    assert info["by_value_modules"] == ["mlbuild_test_userfeat"]
    # The registration was temporary: pickling the class now goes by reference again.
    assert "mlbuild_test_userfeat" not in cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES


class _FakeDist:
    def __init__(self, name: str, version: str, direct_url: dict | None) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self._direct_url = direct_url

    def read_text(self, filename: str) -> str | None:
        if filename == "direct_url.json" and self._direct_url is not None:
            return json.dumps(self._direct_url)
        return None


def test_classify_sorts_stdlib_installed_local_and_unknown():
    dists = {
        "numpy": _FakeDist("numpy", "2.0.0", None),
        "myproj": _FakeDist("myproj", "0.1", {"url": "file:///home/me/myproj", "dir_info": {"editable": True}}),
        "fromindex": _FakeDist("FromIndex", "1.2", {"url": "https://example.invalid/x.whl", "archive_info": {}}),
    }
    found = classify_modules(
        ["numpy.linalg", "json.decoder", "myproj.features", "fromindex", "__main__", "no_such_module_xyz"],
        packages={"numpy": ["numpy"], "myproj": ["myproj"], "fromindex": ["fromindex"]},
        get_distribution=dists.__getitem__,
    )
    assert found.distributions == {"numpy": "2.0.0", "FromIndex": "1.2"}
    assert found.user_modules == {"myproj"}  # editable install: its code travels by value
    assert found.stdlib == {"json"}
    assert found.unknown == {"no_such_module_xyz"}


def test_cloudpickle_override_that_changes_its_version_is_refused(tmp_path):
    from mlbuild._errors import SaveError

    with pytest.raises(SaveError, match=r"requirements\[0\] = 'cloudpickle>=2' would not install cloudpickle"):
        save(NumpyOnly(), tmp_path / "m", requirements=["cloudpickle>=2"])
    assert not (tmp_path / "m").exists()
