"""The CLI is a thin layer: --help everywhere, clear one-line errors with the class's exit
code, and real runs of the commands that need no Docker engine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlbuild._cli import main_inner

REPO = Path(__file__).resolve().parents[2]
PROJECTS = REPO / "tests" / "fixtures" / "projects"
MODELS = REPO / "tests" / "fixtures" / "models"
COMMANDS = ["init", "lock", "dockerfile", "image", "serve", "predict", "run"]


def mlbuild(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlbuild._cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    out = mlbuild(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Usage: mlbuild {command}")


def test_version():
    from mlbuild import __version__

    out = mlbuild("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"mlbuild, version {__version__}"


@pytest.mark.parametrize(
    ("project", "command", "code", "words"),
    [
        ("unknown-key", "dockerfile", 2, ["mlbuild.toml", "entrypiont", "did you mean 'entrypoint'"]),
        ("missing-predict", "lock", 2, ["predict.py"]),
        ("toml-syntax-error", "image", 2, ["mlbuild.toml:3:", "TOML syntax error"]),
        ("missing-entrypoint-attr", "dockerfile", 2, ["predict"]),
        # the lock is checked after the engine (docker backend: no engine, no work at all)
        pytest.param("stale-lock", "image", 3, ["mlbuild.lock", "mlbuild lock"], marks=pytest.mark.docker),
    ],
)
def test_bad_model_directories_fail_with_one_clear_line_and_the_class_exit_code(project, command, code, words):
    args = [command, str(PROJECTS / project)]
    if command == "image":
        args += ["--backend", "docker", "--base", "mlbuild-test/python:3.11-bookworm"]
    out = mlbuild(*args)
    assert out.returncode == code, (out.returncode, out.stderr)
    first = out.stderr.splitlines()[0]
    assert first.startswith("error: ")
    for word in words:
        assert word in out.stderr, (word, out.stderr)
    assert "Traceback" not in out.stderr
    assert "hint: " in out.stderr


def test_main_inner_raises_instead_of_printing():
    from mlbuild import ConfigError

    with pytest.raises(ConfigError):
        main_inner(["dockerfile", str(PROJECTS / "unknown-key")])


def test_usage_error_exit_code_is_click_s():
    out = mlbuild("image")  # missing DIRECTORY
    assert out.returncode == 2
    assert "Missing argument" in out.stderr


def test_init_then_predict_from_the_directory(tmp_path):
    target = tmp_path / "my model"
    out = mlbuild("init", str(target))
    assert out.returncode == 0, out.stderr
    assert (target / "predict.py").exists() and (target / "mlbuild.toml").exists()
    pred = mlbuild("predict", str(target), "--input", '"World"')
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout) == "Hello, World!"
    # init never overwrites
    again = mlbuild("init", str(target))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_predict_directory_validates_input_against_the_hints():
    good = mlbuild("predict", str(MODELS / "echo"), "--input", '{"a": [1, 2]}')
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == {"a": [1, 2]}
    bad = mlbuild("predict", str(MODELS / "echo"), "--input", "[1, 2]")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: invalid input")


def test_predict_with_input_that_is_not_json():
    out = mlbuild("predict", str(MODELS / "echo"), "--input", "{nope")
    assert out.returncode == 2
    assert out.stderr.startswith("error: --input is not valid JSON")


def test_predict_reports_a_failing_load():
    out = mlbuild("predict", str(MODELS / "load_raises"), "--input", "1")
    assert out.returncode == 7
    assert "load failed" in out.stderr.splitlines()[-2] or "load failed" in out.stderr


def test_bad_glob_in_the_config_is_one_clear_line():
    out = mlbuild("dockerfile", str(PROJECTS / "bad-glob"))
    assert out.returncode == 2, out.stderr
    first = out.stderr.splitlines()[0]
    assert first.startswith(f"error: {PROJECTS / 'bad-glob' / 'mlbuild.toml'}: key 'exclude': ")
    assert "'[z-a]'" in first and "Traceback" not in out.stderr
    assert "hint: " in out.stderr


UNWRITABLE = ["file-as-parent"] + (["/proc/x"] if Path("/proc/self").is_dir() else [])


@pytest.mark.parametrize("where", UNWRITABLE)
def test_init_where_nothing_can_be_written_is_a_config_error(tmp_path, where):
    if where == "file-as-parent":
        (tmp_path / "file").write_text("")
        where = str(tmp_path / "file" / "model")
    out = mlbuild("init", where)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"error: mlbuild init: cannot create {where}: ")
    assert "Traceback" not in out.stderr and "hint: " in out.stderr


def _fail_on_third_write(monkeypatch):
    real = Path.write_text
    calls = []

    def write_text(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_init_failing_midway_leaves_no_new_directory(tmp_path, monkeypatch):
    from mlbuild import ConfigError
    from mlbuild._scaffold import scaffold

    _fail_on_third_write(monkeypatch)
    with pytest.raises(ConfigError, match="No space left on device"):
        scaffold(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # neither the target nor the staging directory


def test_init_into_an_existing_directory_is_all_or_nothing(tmp_path, monkeypatch):
    from mlbuild import ConfigError
    from mlbuild._scaffold import scaffold

    target = tmp_path / "existing"
    (target / "artifacts").mkdir(parents=True)
    (target / "README.md").write_text("mine\n")
    (target / "artifacts" / "weights.bin").write_text("w")
    before = sorted(p.relative_to(target).as_posix() for p in target.rglob("*"))

    with monkeypatch.context() as patch:
        _fail_on_third_write(patch)
        with pytest.raises(ConfigError):
            scaffold(target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == before

    # A failure while moving the files in (after some are in) is rolled back too.
    real_link = os.link
    links = []

    def link(src, dst, *args, **kwargs):
        links.append(dst)
        if len(links) == 3:
            raise PermissionError(13, "Permission denied", str(dst))
        return real_link(src, dst, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "link", link)
        with pytest.raises(ConfigError, match="Permission denied"):
            scaffold(target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == before

    created = scaffold(target)
    assert [p.relative_to(target).as_posix() for p in created] == [
        "predict.py", "requirements.txt", "mlbuild.toml", "artifacts/greeting.txt"]
    assert (target / "README.md").read_text() == "mine\n"
    assert (target / "artifacts" / "weights.bin").read_text() == "w"
    assert sorted(p.name for p in target.iterdir()) == [
        "README.md", "artifacts", "mlbuild.toml", "predict.py", "requirements.txt"]
    with pytest.raises(ConfigError, match="already exists"):
        scaffold(target)


@pytest.mark.parametrize("base", ["python:3.11-slim${X:+$(id)}", "python:3.11-slim`id`", "python:3.11-slim\nRUN id"])
def test_dockerfile_refuses_a_hostile_base_override_as_image_does(tmp_path, base):
    """`mlbuild dockerfile --base` once printed a base holding `$(...)` as-is, into a RUN step."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "predict.py").write_text("def predict(x):\n    return x\n")
    out = mlbuild("dockerfile", str(model), "--base", base)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    first = out.stderr.splitlines()[0]
    assert first.startswith("error: override base_image=") and "image reference" in first, first
    assert "hint: " in out.stderr and "Traceback" not in out.stderr


def test_dockerfile_refuses_a_hostile_base_image_in_the_config():
    out = mlbuild("dockerfile", str(PROJECTS / "base-image-command-substitution"))
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    first = out.stderr.splitlines()[0]
    assert first.startswith(f"error: {PROJECTS / 'base-image-command-substitution' / 'mlbuild.toml'}: key 'base_image': ")
    assert "$(id)" in first and "Traceback" not in out.stderr


def test_dockerfile_refuses_a_system_package_with_a_newline():
    out = mlbuild("dockerfile", str(PROJECTS / "system-package-newline"))
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == "", "no Dockerfile is printed for a refused spec"
    first = out.stderr.splitlines()[0]
    assert "mlbuild.toml: key 'system_packages'" in first and "'bash\\n'" in first, first
