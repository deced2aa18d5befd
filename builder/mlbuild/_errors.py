"""Every error mlbuild raises on purpose, and the exit code the CLI gives each class.

The tree (catch a parent to catch its children)::

    MlbuildError                 exit 1   anything mlbuild reports on purpose
    ├── ConfigError              exit 2   the model directory or its config is wrong
    │   ├── EntrypointError      exit 2   predict.py / the entrypoint is missing or wrong
    │   └── SaveError            exit 2   mlbuild.save() cannot make a model directory of an object
    ├── LockError                exit 3   the environment could not be locked
    │   ├── ResolutionError      exit 3   the resolver found no solution
    │   └── StaleLockError       exit 3   mlbuild.lock no longer matches the requirements
    ├── FetchError               exit 4   wheels could not be fetched / installed for the target
    │   └── NoWheelError         exit 4   a package needs compiling and has no wheel for the target
    ├── BuildError               exit 5   the image build failed
    │   └── EngineUnavailableError exit 6 no Docker engine answers
    ├── RunError                 exit 7   a built image did not start or become ready
    └── PublishError             exit 8   writing or pushing the image failed

Each error's ``str()`` is one line saying what failed and where; ``hint`` says what to do.
The CLI prints ``error: <message>`` then ``hint: <hint>`` and exits with ``exit_code``;
it never prints a traceback for these.
"""

from __future__ import annotations

from ._redact import mask_url_credentials

__all__ = [
    "MlbuildError",
    "ConfigError",
    "EntrypointError",
    "SaveError",
    "LockError",
    "ResolutionError",
    "StaleLockError",
    "FetchError",
    "NoWheelError",
    "BuildError",
    "EngineUnavailableError",
    "RunError",
    "PublishError",
]


class MlbuildError(Exception):
    """Base of every error mlbuild reports on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: str | None = None) -> None:
        # The first line must stand alone: it is what a user sees in CI logs.
        # Masked here, once, for every error: resolver or installer output quoted in an
        # error must not carry a URL's credentials into a terminal or a CI log.
        message = mask_url_credentials(message)
        super().__init__(message)
        self.message = message
        self.hint = None if hint is None else mask_url_credentials(hint)
        self.details = None if details is None else mask_url_credentials(details)  # longer text (resolver output, build log tail), shown after the hint

    def __str__(self) -> str:
        return self.message

    def render(self) -> str:
        """The full text the CLI prints: message, hint, details."""
        lines = [f"error: {self.message}"]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        if self.details:
            lines.append(self.details.rstrip())
        return "\n".join(lines)


class ConfigError(MlbuildError):
    exit_code = 2


class EntrypointError(ConfigError):
    pass


class SaveError(ConfigError):
    """mlbuild.save() cannot turn this object into a model directory (it does not pickle, has
    no predict, the target directory is taken, the Python versions disagree...). Exit code 2
    like other configuration errors: the input is wrong, not the machine."""


class LockError(MlbuildError):
    exit_code = 3


class ResolutionError(LockError):
    pass


class StaleLockError(LockError):
    pass


class FetchError(MlbuildError):
    exit_code = 4


class NoWheelError(FetchError):
    pass


class BuildError(MlbuildError):
    exit_code = 5


class EngineUnavailableError(BuildError):
    exit_code = 6


class RunError(MlbuildError):
    exit_code = 7


class PublishError(MlbuildError):
    exit_code = 8
