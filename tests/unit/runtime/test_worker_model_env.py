"""The worker in a *different* interpreter env than the test's: a fresh venv holding only the
clashing_pins fixture's requirements (pydantic 1.10.13, starlette 0.14.2). The model must see
its own versions, and pydantic v1 models must work for input schema, validation and output.

Needs uv (in the dev venv) and the package index (or uv's cache); slow on a cold cache."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlbuild_runtime.worker import protocol as P
from mlbuild_runtime.worker.launch import worker_command, worker_env

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"
UV = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(UV is None, reason="uv is not installed in the test environment"),
]


@pytest.fixture(scope="module")
def v1_python(tmp_path_factory) -> str:
    env_dir = tmp_path_factory.mktemp("model-env")
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(env_dir)], check=True)
    python = str(env_dir / "bin" / "python")
    subprocess.run([UV, "pip", "install", "-q", "--python", python, "-r",
                    str(FIXTURES / "clashing_pins" / "requirements.txt")], check=True)
    return python


def run(python: str, fixture: str, bodies: list[bytes]) -> tuple[list, int, str]:
    stdin = b"".join(P.encode(P.REQUEST, i, b) for i, b in enumerate(bodies, 1))
    stdin += P.encode(P.SHUTDOWN, 0)
    proc = subprocess.run(worker_command(python), input=stdin, capture_output=True, timeout=120,
                          env=worker_env(os.environ, str(FIXTURES / fixture)), cwd="/")
    stream = io.BytesIO(proc.stdout)
    frames = []
    while (frame := P.read_frame(stream)) is not None:
        frames.append((P.KIND_NAMES[frame[0]], frame[1], json.loads(frame[2])))
    return frames, proc.returncode, proc.stderr.decode()


def test_clashing_pins_model_sees_its_own_versions(v1_python):
    frames, code, log = run(v1_python, "clashing_pins", [b'{"k": 1}'])
    assert [f[0] for f in frames] == ["HELLO", "READY", "RESULT"], log
    assert frames[2][2] == {"pydantic": "1.10.13", "starlette": "0.14.2", "echo": {"k": 1}}
    assert code == 0


def test_pydantic_v1_input_model(v1_python):
    frames, code, log = run(v1_python, "pydantic_input", [
        b'{"customer": "c", "items": [{"name": "a", "price": 1.5, "tags": ["x"]}]}',
        b'{"customer": "c", "items": [{"name": "a", "price": -1}, {"price": 2}]}',
    ])
    assert [f[0] for f in frames] == ["HELLO", "READY", "RESULT", "ERROR"], log
    hello = frames[0][2]
    schema = hello["input_schema"]
    assert schema["title"] == "Order" and schema["required"] == ["customer", "items"]
    item = schema["properties"]["items"]["items"]
    assert item["title"] == "Item" and item["properties"]["price"]["minimum"] == 0
    assert "$ref" not in json.dumps(schema)
    assert hello["output_schema"]["title"] == "Quote"
    assert frames[2][2] == {"customer": "c", "total": 1.5, "n_items": 1}
    err = frames[3][2]
    assert err["status"] == 422
    assert sorted((tuple(e["loc"]), e["type"]) for e in err["detail"]) == [
        (("body", "items", 0, "price"), "value_error.number.not_ge"),
        (("body", "items", 1, "name"), "value_error.missing"),
    ]
    assert code == 0
