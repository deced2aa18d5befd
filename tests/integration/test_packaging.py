"""The wheel is what users install: it must carry the templates, the runtime and the server
lock, and the runtime must stay free of the builder and its dependencies."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    from uv import find_uv_bin

    subprocess.run([find_uv_bin(), "build", "--wheel", "--out-dir", str(out), str(REPO)], check=True, capture_output=True)
    (found,) = out.glob("mlbuild-*.whl")
    return found


def test_wheel_contains_builder_runtime_templates_and_server_lock(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mlbuild/__init__.py" in names
    assert "mlbuild/_cli.py" in names
    assert "mlbuild/templates/Dockerfile.j2" in names
    assert "mlbuild/_data/server.lock" in names
    assert "mlbuild_runtime/__init__.py" in names
    assert "mlbuild_runtime/worker/protocol.py" in names
    assert any(n.startswith("mlbuild_runtime/server/") for n in names)
    # No test code, no repo-only files.
    assert not any(n.startswith(("tests/", "builder/", "runtime/", "templates/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mlbuild = mlbuild._cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel alone (no dependencies) installed into a directory of its own."""
    from uv import find_uv_bin

    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [find_uv_bin(), "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return target


def test_installed_wheel_imports_runtime_without_builder_or_jinja2(installed):
    target = installed
    code = (
        "import sys; import mlbuild_runtime, mlbuild_runtime.server, mlbuild_runtime.worker.protocol; "
        "bad = [m for m in ('mlbuild', 'jinja2', 'docker', 'click') if m in sys.modules]; "
        "print(mlbuild_runtime.__file__); print(','.join(bad))"
    )
    # The server's own deps (fastapi...) come from this venv; only the wheel's packages from target.
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    file_line, bad_line = out.stdout.split("\n")[:2]
    assert file_line.startswith(str(target))
    assert bad_line == ""


def test_installed_wheel_finds_its_templates(installed):
    target = installed
    code = "from mlbuild._templates import templates_dir; print(templates_dir())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(target)}, check=True)
    assert out.stdout.strip().startswith(str(target))
