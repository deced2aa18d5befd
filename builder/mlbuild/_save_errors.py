"""The error mlbuild.save() raises (kept apart so the _save_* modules can share it)."""

from __future__ import annotations

from ._errors import ConfigError

__all__ = ["SaveError"]


class SaveError(ConfigError):
    """mlbuild.save() cannot turn this object into a model directory (it does not pickle, has
    no predict, the target directory is taken, the Python versions disagree...). Exit code 2
    like other configuration errors: the input is wrong, not the machine."""
