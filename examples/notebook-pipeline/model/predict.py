"""Serve __main__.ChurnModel, saved by mlbuild.save() (mlbuild 0.1.0).

Generated file: save the model again rather than editing it. It loads only the payload baked
into this directory (artifacts/model.pkl), once, in load(); request bodies reach predict() as
parsed JSON and are never unpickled.
"""

import hashlib
import sys
from pathlib import Path

PAYLOAD = Path(__file__).resolve().parent / "artifacts/model.pkl"
PAYLOAD_SHA256 = "72d34ab00afa7641090583e2e480d1b53aa5cb181d3304f6ad6fda4d31d41853"
SAVED_PYTHON = "3.11"
SAVED_CLOUDPICKLE = "3.1.3"


class PayloadMismatchError(RuntimeError):
    """This environment cannot load the payload the way it was saved."""


def _check_python() -> None:
    running = "%d.%d" % sys.version_info[:2]
    if running != SAVED_PYTHON:
        raise PayloadMismatchError(
            f"{PAYLOAD.name} was pickled by Python {SAVED_PYTHON} but this is Python {running}; "
            f"build the image for python = \"{SAVED_PYTHON}\" (mlbuild.toml) or save the model again "
            f"from a Python {running} session"
        )


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError:
        raise PayloadMismatchError(
            f"cloudpickle is not installed in the model environment; add "
            f"cloudpickle=={SAVED_CLOUDPICKLE} to requirements.txt"
        ) from None
    if cloudpickle.__version__ != SAVED_CLOUDPICKLE:
        raise PayloadMismatchError(
            f"{PAYLOAD.name} was written by cloudpickle {SAVED_CLOUDPICKLE} but this environment has "
            f"cloudpickle {cloudpickle.__version__}; pin cloudpickle=={SAVED_CLOUDPICKLE} in "
            f"requirements.txt or save the model again with cloudpickle {cloudpickle.__version__}"
        )
    return cloudpickle


class Model:
    """Loads the pickled object once, then hands each request's input to its predict."""

    def load(self) -> None:
        _check_python()
        cloudpickle = _cloudpickle()
        try:
            data = PAYLOAD.read_bytes()
        except FileNotFoundError:
            raise PayloadMismatchError(f"{PAYLOAD} is missing; save the model again") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != PAYLOAD_SHA256:
            # A Git LFS pointer, a truncated copy or a hand-replaced file: refuse rather than
            # unpickle bytes this predict.py was not generated for.
            raise PayloadMismatchError(
                f"{PAYLOAD} is not the payload mlbuild.save() wrote (sha256 {digest[:12]}..., "
                f"expected {PAYLOAD_SHA256[:12]}...); save the model again"
            )
        self._obj = cloudpickle.loads(data)

    def predict(self, rows: list[list[float]]) -> list[dict]:
        return self._obj.predict(rows)

