"""What a build returns: ``ImageResult`` (every backend) and ``OciImageResult`` (the oci backend
adds its digest, platforms and where the publishers put the image). Printed by `mlbuild image`,
as one line or as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ImageResult", "OciImageResult", "Published"]


@dataclass(frozen=True)
class ImageResult:
    tag: str
    image_id: str
    size_bytes: int
    seconds: float
    lock_digest: str
    base_image: str
    excluded: tuple[str, ...] = ()
    backend: str = "docker"
    env_image: str | None = None  # the cached env image it was built FROM, if any
    base_digest: str | None = None  # the base's manifest digest (sha256:...), when it has one
    dockerfile: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        """Every field (subclasses' too) as JSON-ready values, for `mlbuild image --json`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "dockerfile":
                continue  # long, and `mlbuild dockerfile` prints it
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        out["seconds"] = round(self.seconds, 3)
        return out

    def summary(self) -> str:
        """One line for humans: what was built, how big, how long."""
        name = self.tag or self.image_id
        short_id = self.image_id.split(":", 1)[-1][:12]
        return f"built {name} ({short_id}, {self.size_bytes / 1e6:.0f} MB, {self.backend}) in {self.seconds:.1f} s"


@dataclass(frozen=True)
class OciImageResult(ImageResult):
    digest: str = ""  # manifest digest (one platform) or index digest (several)
    platforms: tuple[str, ...] = ()
    layout: Path | None = None
    archive: Path | None = None
    pushed: str | None = None  # reference@digest
    loaded: str | None = None
    timings: tuple[tuple[str, float], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Published:
    """Where the publishers put an oci image (_publish)."""

    layout: Path | None = None
    archive: Path | None = None
    pushed: str | None = None  # reference@digest
    loaded: str | None = None  # what the engine said it loaded
