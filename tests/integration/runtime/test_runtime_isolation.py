"""THE ISOLATION TEST: the model runs in its own venv whose pins clash with the server's
(pydantic 1 / starlette 0.14 vs the server's pydantic 2 / modern starlette) and sees exactly
its own versions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydantic
import pytest
import starlette
from uv import find_uv_bin

REQUIREMENTS = Path(__file__).resolve().parents[2] / "fixtures" / "models" / "clashing_pins" / "requirements.txt"


@pytest.fixture(scope="session")
def clashing_venv(tmp_path_factory) -> str:
    """A real venv with the fixture's pins, built once per session (uv caches the wheels)."""
    venv = tmp_path_factory.mktemp("clashing-pins") / "venv"
    uv = find_uv_bin()
    subprocess.run([uv, "venv", "--quiet", "--python", "3.11", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    subprocess.run([uv, "pip", "install", "--quiet", "--python", python, "-r", str(REQUIREMENTS)],
                   check=True, timeout=600)  # fmt: skip
    return python


def test_model_sees_its_own_pins_not_the_servers(start_server, clashing_venv):
    # The premise: the server env really has the other major versions.
    assert pydantic.VERSION.startswith("2.")
    assert starlette.__version__ != "0.14.2"
    server = start_server("clashing_pins", python=clashing_venv)
    with server.client() as client:
        response = client.post("/predict", json={"k": "v"})
        assert response.status_code == 200, response.text
        assert response.json() == {"pydantic": "1.10.13", "starlette": "0.14.2", "echo": {"k": "v"}}
        assert client.get("/metadata").json()["python"].startswith("3.11.")
