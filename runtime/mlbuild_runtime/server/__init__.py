"""The HTTP server (server env): FastAPI + uvicorn over model worker subprocesses.

Public API: ``create_app(settings, pool=None)``, ``Settings`` (+ ``SettingsError``), ``Health``,
``WorkerPool``; ``cli.main`` runs it (``python -m mlbuild_runtime``).
"""

from ._app import create_app
from ._health import Health, HealthReport
from ._pool import WorkerPool
from ._settings import Settings, SettingsError

__all__ = ["Health", "HealthReport", "Settings", "SettingsError", "WorkerPool", "create_app"]
