"""mlbuild.save(): the directory it writes, its refusals, and the generated predict.py at work."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import cloudpickle
import mlbuild
import numpy as np
import pytest
import tomllib
from mlbuild._errors import SaveError
from mlbuild._save import check_payload_python, save
from mlbuild._save._predict import describe_entry, render_predict
from mlbuild._spec import load_spec

PY = "%d.%d" % sys.version_info[:2]


class Scaler:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, rows: list[list[float]]) -> list[float]:
        return [sum(r) * self.factor for r in rows]


def _import_predict(model_dir: Path, name: str = "saved_predict"):
    spec = importlib.util.spec_from_file_location(name, model_dir / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_save_writes_a_loadable_model_directory(tmp_path):
    saved = mlbuild.save(Scaler(2.0), tmp_path / "model", name="scaler")
    root = tmp_path / "model"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "artifacts", "artifacts/model.pkl", "artifacts/payload.json", "mlbuild.toml", "predict.py",
        "requirements.txt",
    ]
    config = tomllib.loads((root / "mlbuild.toml").read_text())
    assert config == {"name": "scaler", "python": PY, "entrypoint": "predict:Model"}
    spec = load_spec(root)  # the regular spec loader accepts what save wrote
    assert (spec.name, spec.python, spec.entrypoint) == ("scaler", PY, "predict:Model")
    assert spec.requirements.requirements == saved.requirements
    info = json.loads((root / "artifacts" / "payload.json").read_text())
    assert info["python"] == PY and info["cloudpickle"] == cloudpickle.__version__
    assert info["object"].endswith("Scaler") and info["method"] == "predict"

    module = _import_predict(root)
    model = module.Model()
    model.load()
    assert model.predict([[1.0, 2.0], [3.0, 4.0]]) == [6.0, 14.0]


def test_generated_predict_copies_builtin_hints_and_drops_others(tmp_path):
    import typing

    save(Scaler(1.0), tmp_path / "typed")
    typed = _import_predict(tmp_path / "typed", "typed_predict")
    assert typing.get_type_hints(typed.Model.predict) == {"rows": list[list[float]], "return": list[float]}

    class ArrayModel:
        def predict(self, x: np.ndarray) -> np.ndarray:
            return x * 2

    save(ArrayModel(), tmp_path / "untyped")
    untyped = _import_predict(tmp_path / "untyped", "untyped_predict")
    assert typing.get_type_hints(untyped.Model.predict) == {}
    assert "numpy" not in (tmp_path / "untyped" / "predict.py").read_text()


def test_plain_function_and_async_predict_are_served(tmp_path):
    def double(values):
        return [v * 2 for v in values]

    # Real objects, not the strings `from __future__ import annotations` would leave here.
    double.__annotations__ = {"values": list[int], "return": list[int]}
    save(double, tmp_path / "fn")
    fn = _import_predict(tmp_path / "fn", "fn_predict")
    model = fn.Model()
    model.load()
    assert model.predict([1, 2]) == [2, 4]
    assert (tmp_path / "fn" / "mlbuild.toml").read_text().count('name = "double"') == 1

    class Async:
        async def predict(self, x: dict) -> dict:
            await asyncio.sleep(0)
            return {"n": len(x)}

    save(Async(), tmp_path / "async")
    am = _import_predict(tmp_path / "async", "async_predict")
    inst = am.Model()
    inst.load()
    assert asyncio.run(inst.predict({"a": 1})) == {"n": 1}


def test_main_script_classes_travel_by_value(tmp_path):
    # The notebook case: the class exists only in __main__ of a process that is gone by load time.
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import mlbuild

        def postprocess(v):
            return round(v, 3)

        class Affine:
            def __init__(self):
                self.a, self.b = 3.0, 0.5
            def predict(self, x: list[float]) -> list[float]:
                return [postprocess(self.a * v + self.b) for v in x]

        mlbuild.save(Affine(), {str(tmp_path / 'model')!r})
    """))
    subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path)
    probe = (
        "import importlib.util, json, sys\n"
        "s = importlib.util.spec_from_file_location('predict', 'predict.py')\n"
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n"
        "o = m.Model(); o.load(); print(json.dumps(o.predict([1.0, 2.0])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, cwd=tmp_path / "model", capture_output=True, text=True
    )
    assert json.loads(out.stdout) == [3.5, 6.5]


def test_existing_non_empty_directory_is_refused_then_overwritten(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(SaveError, match=r"already exists and is not empty") as info:
        save(Scaler(1.0), target)
    assert "overwrite=True" in info.value.hint
    assert (target / "keep.txt").read_text() == "mine"
    save(Scaler(1.0), target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "predict.py").is_file()
    # No temp or aside directories are left next to the target.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_empty_existing_directory_is_used(tmp_path):
    (tmp_path / "model").mkdir()
    save(Scaler(1.0), tmp_path / "model")
    assert (tmp_path / "model" / "predict.py").is_file()


def test_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    import mlbuild._save as save_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(save_module, "_swap_into_place", broken)
    with pytest.raises(OSError, match="disk full"):
        save(Scaler(1.0), tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


class Step:
    def __init__(self, handle) -> None:
        self.cache_file = handle

    def transform(self, x):
        return x


class Pipe:
    def __init__(self, steps) -> None:
        self.steps = steps

    def predict(self, x):
        return x


@pytest.mark.parametrize(
    ("make", "type_name"),
    [
        (lambda p: open(p / "cache.bin", "wb"), "_io.BufferedWriter"),
        (lambda p: threading.Lock(), "_thread.lock"),
        (lambda p: socket.socket(), "socket.socket"),
    ],
    ids=["open-file", "lock", "socket"],
)
def test_unpicklable_leaf_is_named_by_its_attribute_path(tmp_path, make, type_name):
    leaf = make(tmp_path)
    try:
        model = Pipe([("scale", Step(None)), ("cache", Step(leaf))])
        with pytest.raises(SaveError) as info:
            save(model, tmp_path / "model")
    finally:
        leaf.close() if hasattr(leaf, "close") else None
    message = str(info.value)
    assert message.startswith(f"mlbuild.save(): cannot pickle model.steps[1][1].cache_file (a {type_name})")
    assert "model.steps[1][1].cache_file" in info.value.hint
    assert not (tmp_path / "model").exists()


def test_slots_and_dict_keys_are_walked(tmp_path):
    class Slotted:
        __slots__ = ("inner",)

        def __init__(self) -> None:
            self.inner = {"lock": threading.Lock()}

        def predict(self, x):
            return x

    with pytest.raises(SaveError, match=r"cannot pickle model\.inner\['lock'\] \(a _thread\.lock\)"):
        save(Slotted(), tmp_path / "model")


def test_python_argument_must_match_the_running_minor_version(tmp_path):
    other = "3.10" if PY != "3.10" else "3.12"
    with pytest.raises(SaveError, match=rf'python="{other}" differs from the running Python {PY}'):
        save(Scaler(1.0), tmp_path / "model", python=other)
    with pytest.raises(SaveError, match="is not a minor version"):
        save(Scaler(1.0), tmp_path / "model", python="3")
    assert save(Scaler(1.0), tmp_path / "model", python=PY).python == PY


def test_build_target_python_differing_from_the_payload_is_refused(tmp_path):
    save(Scaler(1.0), tmp_path / "model")
    check_payload_python(tmp_path / "model", PY)  # same minor: fine
    with pytest.raises(SaveError, match=rf"pickled by Python {PY} but the build targets Python 3\.99") as info:
        check_payload_python(tmp_path / "model", "3.99")
    assert f'python = "{PY}"' in info.value.hint
    hand_written = tmp_path / "plain"
    hand_written.mkdir()
    check_payload_python(hand_written, "3.99")  # not a saved model: nothing to check


def test_save_and_build_refuses_a_mismatched_python_before_building(tmp_path, monkeypatch):
    import mlbuild._api as api
    from mlbuild._api import save_and_build

    def must_not_build(*args, **kwargs):
        raise AssertionError("build_image must not run")

    public_build_image = api.build_image  # the real entry point, which dispatches objects to save
    monkeypatch.setattr(api, "build_image", must_not_build)
    with pytest.raises(SaveError, match="differs from the running Python"):
        public_build_image(Scaler(1.0), tag="x:1", python="3.10" if PY != "3.10" else "3.12")
    with pytest.raises(SaveError, match="differs from the running Python"):
        save_and_build(Scaler(1.0), tag="x:1", workdir=tmp_path / "w", python="3.99")


def test_save_and_build_passes_the_saved_directory_to_build_image(tmp_path, monkeypatch):
    import mlbuild._api as api
    from mlbuild._api import save_and_build

    seen = {}

    def fake_build(path, **kwargs):
        seen["files"] = sorted(p.name for p in Path(path).iterdir())
        seen["kwargs"] = kwargs
        return "result"

    monkeypatch.setattr(api, "build_image", fake_build)
    assert save_and_build(Scaler(1.0), tag="t:1", workdir=tmp_path / "w", base_image="b") == "result"
    assert seen == {
        "files": ["artifacts", "mlbuild.toml", "predict.py", "requirements.txt"],
        "kwargs": {"tag": "t:1", "base_image": "b"},
    }
    # Saving again into the same workdir replaces the earlier save...
    save_and_build(Scaler(2.0), tag="t:2", workdir=tmp_path / "w")
    # ...but an unrelated non-empty directory is never clobbered.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(SaveError, match="already exists and is not empty"):
        save_and_build(Scaler(1.0), tag="t:3", workdir=tmp_path / "other")


def test_objects_that_cannot_be_served_are_refused(tmp_path):
    with pytest.raises(SaveError, match="got the class Scaler, not an instance"):
        save(Scaler, tmp_path / "m")
    with pytest.raises(SaveError, match="has no predict\\(\\) method and is not callable"):
        save(object(), tmp_path / "m")

    class TwoArgs:
        def predict(self, x, y):
            return x

    with pytest.raises(SaveError, match=r"TwoArgs.predict\(\) needs more than one argument \(y\)"):
        save(TwoArgs(), tmp_path / "m")
    with pytest.raises(SaveError, match="is not a valid model name"):
        save(Scaler(1.0), tmp_path / "m", name="Bad Name")
    with pytest.raises(SaveError, match="must be a list of requirement strings"):
        save(Scaler(1.0), tmp_path / "m", requirements="numpy")
    with pytest.raises(SaveError, match=r"requirements\[1\] = 'not a req!!' is not a valid requirement"):
        save(Scaler(1.0), tmp_path / "m", requirements=["numpy", "not a req!!"])
    assert not (tmp_path / "m").exists()


def _rewrite_predict(model_dir: Path, **overrides) -> None:
    info = json.loads((model_dir / "artifacts" / "payload.json").read_text())
    values = {
        "object_path": info["object"], "payload_name": "artifacts/model.pkl",
        "payload_sha256": info["sha256"], "python": info["python"],
        "cloudpickle_version": info["cloudpickle"], "mlbuild_version": info["mlbuild"],
    }
    values.update(overrides)
    (model_dir / "predict.py").write_text(render_predict(describe_entry(Scaler(1.0)), **values))


def test_load_refuses_a_payload_from_another_cloudpickle_version(tmp_path):
    save(Scaler(1.0), tmp_path / "m")
    _rewrite_predict(tmp_path / "m", cloudpickle_version="2.2.1")  # as if saved under cloudpickle 2.2.1
    module = _import_predict(tmp_path / "m", "cp_predict")
    running = cloudpickle.__version__
    expected = rf"written by cloudpickle 2\.2\.1 but this environment has cloudpickle {running}"
    with pytest.raises(RuntimeError, match=expected):
        module.Model().load()


def test_load_refuses_another_python_minor_version(tmp_path):
    save(Scaler(1.0), tmp_path / "m")
    _rewrite_predict(tmp_path / "m", python="3.9")
    module = _import_predict(tmp_path / "m", "py_predict")
    with pytest.raises(RuntimeError, match=rf"pickled by Python 3\.9 but this is Python {PY}"):
        module.Model().load()


def test_load_refuses_a_changed_payload(tmp_path):
    save(Scaler(1.0), tmp_path / "m")
    (tmp_path / "m" / "artifacts" / "model.pkl").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n"
    )
    module = _import_predict(tmp_path / "m", "lfs_predict")
    with pytest.raises(RuntimeError, match="is not the payload mlbuild.save\\(\\) wrote"):
        module.Model().load()


def test_saving_the_same_script_twice_gives_identical_bytes(tmp_path):
    # cloudpickle tags each by-value class with a random uuid; save() derives them from content
    # so a re-run of a training script does not change the payload (nor the image digest).
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import sys
        import mlbuild

        class Thing:
            def predict(self, x: int) -> int:
                return x + 1

        mlbuild.save(Thing(), sys.argv[1])
    """))
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(script), str(tmp_path / out)], check=True, cwd=tmp_path)
    for rel in ("artifacts/model.pkl", "predict.py", "requirements.txt", "mlbuild.toml", "artifacts/payload.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_stable_tracker_ids_keep_same_named_classes_distinct():
    from mlbuild._save._requirements import analyse_and_pickle

    def make(offset):
        class A:  # two different classes with one name, both pickled by value
            def predict(self, x):
                return x + offset

        return A()

    payload = analyse_and_pickle([make(1), make(2)]).payload
    first, second = cloudpickle.loads(payload)
    assert type(first) is not type(second)
    assert (first.predict(0), second.predict(0)) == (1, 2)


def test_committed_notebook_example_is_consistent():
    # examples/notebook-pipeline/model is committed so a fresh clone builds it; it must be what
    # save() writes: payload matching its recorded digest, and a lock matching its requirements.
    import hashlib

    from mlbuild._lock import read_lock

    root = Path(__file__).resolve().parents[3] / "examples" / "notebook-pipeline" / "model"
    info = json.loads((root / "artifacts" / "payload.json").read_text())
    assert hashlib.sha256((root / "artifacts" / "model.pkl").read_bytes()).hexdigest() == info["sha256"]
    assert f'PAYLOAD_SHA256 = "{info["sha256"]}"' in (root / "predict.py").read_text()
    assert info["object"] == "__main__.ChurnModel"
    spec = load_spec(root)
    assert spec.python == info["python"] and spec.entrypoint == "predict:Model"
    names = {r.split("==")[0] for r in spec.requirements.requirements}
    assert names == {"cloudpickle", "numpy", "scikit-learn"}
    assert f"cloudpickle=={info['cloudpickle']}" in spec.requirements.requirements
    lock = read_lock(root / "mlbuild.lock")
    assert lock.requirements_sha256 == spec.requirements.sha256 and lock.python == spec.python


def test_callable_instance_without_predict_is_served_through_call(tmp_path):
    class Scorer:
        async def __call__(self, text: str) -> int:
            return len(text)

    entry = describe_entry(Scorer())
    assert (entry.method, entry.is_async, entry.param) == ("__call__", True, "text")
    assert (entry.input_annotation, entry.output_annotation) == ("str", "int")
    save(Scorer(), tmp_path / "m")
    module = _import_predict(tmp_path / "m", "call_predict")
    model = module.Model()
    model.load()
    assert asyncio.run(model.predict("abcd")) == 4
