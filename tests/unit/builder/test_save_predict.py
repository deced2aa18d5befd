"""The generated predict.py: hint copying, and serving through the real stdlib worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from mlbuild._save import save
from mlbuild._save._predict import render_annotation

RUNTIME = Path(__file__).resolve().parents[3] / "runtime" / "mlbuild_runtime"


@pytest.mark.parametrize(
    ("hint", "text"),
    [
        (int, "int"),
        (type(None), "None"),
        (list[list[float]], "list[list[float]]"),
        (dict[str, float], "dict[str, float]"),
        (tuple[int, ...], "tuple[int, ...]"),
        (typing.List[int], "list[int]"),  # noqa: UP006 - the typing alias is what is tested
        (typing.Optional[str], "typing.Union[str, None]"),
        (int | str, "typing.Union[int, str]"),
        (typing.Literal["a", 1, None], "typing.Literal['a', 1, None]"),
        (typing.Any, "typing.Any"),
        (dict[str, list[typing.Any]], "dict[str, list[typing.Any]]"),
    ],
)
def test_builtin_and_typing_hints_are_rendered_as_source(hint, text):
    assert render_annotation(hint) == text
    # The text evaluates back to an equivalent hint with nothing but typing imported.
    back = eval(text, {"typing": typing})  # noqa: S307 - our own rendered text
    same = (typing.get_origin(back), typing.get_args(back)) == (typing.get_origin(hint), typing.get_args(hint))
    assert back == hint or same


@pytest.mark.parametrize(
    "hint",
    [np.ndarray, list[np.ndarray], typing.Optional[np.ndarray], dict[str, Path], typing.Literal[1.5],
     typing.Callable[[int], int]],
)
def test_other_hints_leave_the_parameter_untyped(hint):
    assert render_annotation(hint) is None


class RowSum:
    def __init__(self, weights: list[float]) -> None:
        self.weights = np.asarray(weights)

    def predict(self, rows: list[list[float]]) -> list[float]:
        return (np.asarray(rows) @ self.weights).tolist()


def _have_worker() -> bool:
    return (RUNTIME / "worker" / "__main__.py").is_file()


@pytest.mark.skipif(not _have_worker(), reason="runtime/mlbuild_runtime/worker/__main__.py not written yet")
def test_generated_predict_runs_in_the_real_worker(tmp_path):
    sys.path.insert(0, str(RUNTIME.parent))
    try:
        from mlbuild_runtime.worker import protocol
        from mlbuild_runtime.worker.launch import worker_command, worker_env
    finally:
        sys.path.remove(str(RUNTIME.parent))
    save(RowSum([1.0, 10.0]), tmp_path / "model")
    proc = subprocess.Popen(
        worker_command(sys.executable),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path / "model",
        env=worker_env(os.environ, str(tmp_path / "model")),
    )
    try:
        kind, _, payload = protocol.read_frame(proc.stdout)
        assert protocol.KIND_NAMES[kind] == "HELLO", payload
        hello = json.loads(payload)
        # The copied hints reach the worker's schema: an array of arrays of numbers.
        assert hello["input_schema"]["type"] == "array"
        assert hello["input_schema"]["items"]["items"]["type"] == "number"
        kind, _, payload = protocol.read_frame(proc.stdout)
        assert protocol.KIND_NAMES[kind] == "READY", payload
        proc.stdin.write(protocol.encode(protocol.REQUEST, 7, json.dumps([[1, 2], [3, 4]]).encode()))
        proc.stdin.flush()
        kind, request_id, payload = protocol.read_frame(proc.stdout)
        assert (protocol.KIND_NAMES[kind], request_id) == ("RESULT", 7)
        assert json.loads(payload) == [21.0, 43.0]
        proc.stdin.write(protocol.encode(protocol.SHUTDOWN, 0))
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
