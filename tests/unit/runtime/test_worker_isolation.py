"""The worker is standard-library only and runs in an interpreter that has nothing else:
launch.py's argv/env, an import scan, and a real run under `python -I -S` (no site-packages)."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from mlbuild_runtime.worker import launch
from mlbuild_runtime.worker import protocol as P
from mlbuild_runtime.worker.launch import BOOTSTRAP, worker_command, worker_env

WORKER_DIR = Path(launch.__file__).resolve().parent
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"


def test_worker_command_shape():
    cmd = worker_command("/opt/mlbuild/model-env/bin/python")
    assert cmd == ["/opt/mlbuild/model-env/bin/python", "-c", BOOTSTRAP, str(WORKER_DIR)]
    assert os.path.isabs(cmd[3])
    assert (WORKER_DIR / "__init__.py").is_file() and (WORKER_DIR / "__main__.py").is_file()


def test_worker_env_drops_path_variables_and_sets_worker_ones(tmp_path):
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/server/site", "PYTHONHOME": "/server",
            "MLBUILD_ENTRYPOINT": "stale:thing", "HOME": "/root"}
    env = worker_env(base, str(tmp_path / "m"), "predict:Model")
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "MODEL_DIR": str(tmp_path / "m"),
                   "MLBUILD_ENTRYPOINT": "predict:Model", "PYTHONUNBUFFERED": "1"}
    assert base["PYTHONPATH"] == "/server/site"  # the caller's mapping is untouched
    assert "MLBUILD_ENTRYPOINT" not in worker_env(base, "rel/dir")
    assert worker_env(base, "rel/dir")["MODEL_DIR"] == os.path.abspath("rel/dir")


def test_worker_modules_import_only_the_standard_library():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offenders = []
    files = sorted(WORKER_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "__main__.py", "protocol.py", "launch.py",
                                       "schema.py", "validate.py", "serialize.py", "hints.py",
                                       "loader.py"}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue  # relative imports stay inside the package
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in stdlib]
    assert offenders == []


def _run_isolated(fixture: str, body: bytes) -> tuple[dict, bytes, int]:
    """Run the worker under `-I -S`: no site-packages, no PYTHON* variables, no user site.
    A third-party or absolute mlbuild_runtime import anywhere in the worker would fail here."""
    cmd = worker_command(sys.executable)
    cmd[1:1] = ["-I", "-S"]
    stdin = P.encode(P.REQUEST, 7, body) + P.encode(P.SHUTDOWN, 0)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60,
                          env=worker_env(os.environ, str(FIXTURES / fixture)), cwd="/")
    stream = io.BytesIO(proc.stdout)
    frames = []
    while (frame := P.read_frame(stream)) is not None:
        frames.append(frame)
    kinds = [P.KIND_NAMES[k] for k, _, _ in frames]
    assert kinds == ["HELLO", "READY", "RESULT"], (kinds, proc.stderr.decode())
    return json.loads(frames[0][2]), frames[2][2], proc.returncode


def test_echo_runs_with_no_site_packages_at_all():
    hello, result, code = _run_isolated("echo", b'{"x": [1, 2]}')
    assert hello["entrypoint"] == "predict:predict"
    assert json.loads(result) == {"x": [1, 2]}
    assert code == 0


def test_typed_inputs_run_with_no_site_packages_at_all():
    hello, result, code = _run_isolated("typed_inputs", b'{"mode": "sum", "values": [1, 2]}')
    assert hello["input_schema"]["title"] == "Request"
    assert json.loads(result) == {"mode": "sum", "value": 3.0, "label": None}
    assert code == 0


def test_bootstrap_does_not_leak_server_path(tmp_path):
    """PYTHONPATH given to the server does not reach the worker through worker_env."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "leaky_probe.py").write_text("X = 1\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "predict.py").write_text(
        "import importlib.util\n"
        "def predict(x):\n"
        "    return importlib.util.find_spec('leaky_probe') is not None\n")
    env = worker_env(dict(os.environ, PYTHONPATH=str(shadow)), str(model))
    stdin = P.encode(P.REQUEST, 1, b"{}") + P.encode(P.SHUTDOWN, 0)
    proc = subprocess.run(worker_command(sys.executable), input=stdin, capture_output=True,
                          env=env, cwd=str(shadow), timeout=60)
    stream = io.BytesIO(proc.stdout)
    frames = [P.read_frame(stream) for _ in range(3)]
    assert P.KIND_NAMES[frames[2][0]] == "RESULT", proc.stderr.decode()
    assert json.loads(frames[2][2]) is False
    assert proc.returncode == 0
