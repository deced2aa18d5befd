"""`mlbuild serve` on the host: the real server process, over HTTP."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tests" / "fixtures" / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became ready")


def serve(model_dir: Path, *extra: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlbuild._cli", "serve", str(model_dir), "--port", str(port), "--host", "127.0.0.1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_serve_runs_the_model_in_this_interpreter_and_stops_cleanly():
    proc, url = serve(MODELS / "echo", "--workers", "2")
    try:
        wait_ready(url, proc)
        r = httpx.post(f"{url}/predict", json={"q": 1})
        assert r.status_code == 200 and r.json() == {"q": 1}
        meta = httpx.get(f"{url}/metadata").json()
        assert meta["entrypoint"] == "predict:predict"
        assert meta["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    finally:
        assert stop(proc) == 0


@pytest.mark.slow
def test_serve_isolated_uses_a_venv_made_from_the_lock(tmp_path, monkeypatch):
    """--isolated: the worker runs in a venv holding exactly the model's lock, so the model
    sees its own pinned pydantic 1.x while the server runs pydantic 2."""
    model = tmp_path / "clashing"
    shutil.copytree(MODELS / "clashing_pins", model)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    proc, url = serve(model, "--isolated")
    try:
        wait_ready(url, proc)
        assert (model / "mlbuild.lock").exists()  # written on first use, like `mlbuild image`
        body = httpx.post(f"{url}/predict", json={}).json()
        assert body["pydantic"] == "1.10.13"
        assert body["starlette"] == "0.14.2"
        venvs = list((tmp_path / "cache" / "mlbuild" / "venvs").iterdir())
        assert len(venvs) == 1
    finally:
        assert stop(proc) == 0
