"""The entrypoint is found by reading the source (AST); user code is never imported."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlbuild._entrypoint import find_entrypoint, module_file, parse_entrypoint
from mlbuild._errors import EntrypointError


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_rule_prefers_class_model(tmp_path):
    write(tmp_path, "predict.py", "class Model:\n    pass\n\ndef predict(x):\n    return x\n")
    ep = find_entrypoint(tmp_path, None)
    assert (str(ep), ep.kind, ep.line) == ("predict:Model", "class", 1)


def test_default_rule_falls_back_to_function_predict(tmp_path):
    write(tmp_path, "predict.py", "Model = None\n\nasync def predict(x):\n    return x\n")
    ep = find_entrypoint(tmp_path, None)  # Model is a variable, not a class: the function wins
    assert (str(ep), ep.kind, ep.line) == ("predict:predict", "async function", 3)


def test_user_code_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    write(tmp_path, "predict.py", f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n"
                                  "def predict(x):\n    return x\n")
    assert str(find_entrypoint(tmp_path, None)) == "predict:predict"
    assert not marker.exists()


@pytest.mark.parametrize("source,kind", [
    ("from json import loads as handler\n", "import"),
    ("import os.path as handler\n", "import"),
    ("handler = lambda x: x\n", "variable"),
    ("handler: object = object()\n", "variable"),
    ("a, (b, handler) = 1, (2, 3)\n", "variable"),
    ("try:\n    from fast import handler\nexcept ImportError:\n    def handler(x):\n        return x\n", "function"),
    ("if True:\n    class handler:\n        pass\n", "class"),
])
def test_names_bound_any_way_at_top_level_count(tmp_path, source, kind):
    write(tmp_path, "app.py", source)
    assert find_entrypoint(tmp_path, "app:handler").kind == kind


def test_names_inside_functions_do_not_count(tmp_path):
    write(tmp_path, "app.py", "def outer():\n    def handler(x):\n        return x\n")
    with pytest.raises(EntrypointError, match="defines no top-level name 'handler'"):
        find_entrypoint(tmp_path, "app:handler", source="cfg: key 'entrypoint'")


def test_packages_and_dotted_modules(tmp_path):
    write(tmp_path, "pkg/__init__.py", "def predict(x):\n    return x\n")
    write(tmp_path, "pkg/sub/mod.py", "class Model:\n    pass\n")
    assert find_entrypoint(tmp_path, "pkg:predict").file == tmp_path / "pkg" / "__init__.py"
    assert find_entrypoint(tmp_path, "pkg.sub.mod:Model").file == tmp_path / "pkg" / "sub" / "mod.py"
    assert module_file(tmp_path, "pkg.nope") is None


@pytest.mark.parametrize("text", ["predict", "predict.Model", "predict:", ":Model", "pre dict:Model",
                                  "predict:Model:x", "1mod:Model", "predict:Mo-del"])
def test_malformed_entrypoints(text):
    with pytest.raises(ValueError, match="module:attr"):
        parse_entrypoint(text)


def test_malformed_entrypoint_error_names_the_source(tmp_path):
    write(tmp_path, "predict.py", "def predict(x):\n    return x\n")
    with pytest.raises(EntrypointError, match=r"^m.toml: key 'entrypoint': bad entrypoint"):
        find_entrypoint(tmp_path, "predict.predict", source="m.toml: key 'entrypoint'")


def test_missing_attr_suggests_a_close_name(tmp_path):
    write(tmp_path, "predict.py", "class Model:\n    pass\n\ndef predict_batch(x):\n    return x\n")
    with pytest.raises(EntrypointError) as info:
        find_entrypoint(tmp_path, "predict:predict_bach", source="m.toml: key 'entrypoint'")
    assert "did you mean 'predict_batch'?" in info.value.message
    assert info.value.exit_code == 2
