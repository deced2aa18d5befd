"""Where the files a build reads besides the model's code are: mlbuild's templates (found the same
way in a checkout and in the wheel), the runtime package copied into every image, and the model's
own Dockerfile.j2. A leaf without Jinja2: mlbuild.save and the oci backend need nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import BuildError

if TYPE_CHECKING:  # pragma: no cover
    from ._spec import ModelSpec

__all__ = ["MODEL_TEMPLATE_NAME", "model_template_path", "runtime_package_dir", "templates_dir"]

# The model directory may hold this file: a template that extends ours (build configuration,
# never copied into the image).
MODEL_TEMPLATE_NAME = "Dockerfile.j2"


def templates_dir() -> Path:
    """mlbuild's templates: packaged as mlbuild/templates in the wheel, templates/ in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent.parent / "templates"):
        if (candidate / "Dockerfile.j2").is_file():
            return candidate
    raise BuildError(  # pragma: no cover - a broken installation
        f"mlbuild's Dockerfile template is missing (looked in {here / 'templates'})",
        hint="reinstall mlbuild",
    )


def model_template_path(spec: ModelSpec) -> Path | None:
    path = Path(spec.directory) / MODEL_TEMPLATE_NAME
    return path if path.is_file() else None


def runtime_package_dir() -> Path:
    """The installed mlbuild_runtime package (copied into every image as a directory)."""
    import mlbuild_runtime

    return Path(mlbuild_runtime.__file__).resolve().parent
