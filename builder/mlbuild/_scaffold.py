"""`mlbuild init DIR`: a model directory that builds and serves as it is."""

from __future__ import annotations

import re
from pathlib import Path

from ._errors import ConfigError

_PREDICT = '''"""Entrypoint: mlbuild calls Model().load() once per worker, then predict() per request."""

from pathlib import Path


class Model:
    def load(self) -> None:
        # Load weights/encoders here, by path relative to this directory (the working
        # directory at run time), e.g. joblib.load("artifacts/model.joblib").
        self.greeting = (Path(__file__).parent / "artifacts" / "greeting.txt").read_text().strip()

    def predict(self, name: str) -> str:
        return f"{self.greeting}, {name}!"
'''

_TOML = '''# mlbuild configuration; every key is optional. See `mlbuild --help` and README.md.
name = "{name}"
version = "0.1.0"
# entrypoint = "predict:Model"
# python = "3.11"
# base_image = "python:3.11-slim"
# system_packages = []
# port = 8080

# [env]
# MY_SETTING = "value"
'''


def _sanitize(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return cleaned or "model"


def scaffold(directory: Path, *, name: str | None = None) -> list[Path]:
    """Create predict.py, requirements.txt, mlbuild.toml and artifacts/ in DIRECTORY.
    Refuses to overwrite any existing file (lists which)."""
    directory = Path(directory)
    files = {
        directory / "predict.py": _PREDICT,
        directory / "requirements.txt": "# one requirement per line, e.g. scikit-learn==1.5.2\n",
        directory / "mlbuild.toml": _TOML.format(name=_sanitize(name or directory.resolve().name)),
        directory / "artifacts" / "greeting.txt": "Hello\n",
    }
    existing = [p for p in files if p.exists()]
    if existing:
        raise ConfigError(
            f"mlbuild init: {existing[0]} already exists",
            hint="choose an empty or new directory; mlbuild init never overwrites files",
        )
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
