"""Publishers: where a built OCI image goes, each its own small object behind one protocol.

    LayoutPublisher       an OCI layout directory (also the default: <cache>/oci/images/<tag>)
    ArchivePublisher      a .tar that `docker load` and `skopeo copy oci-archive:` both take
    RegistryPublisher     a registry push of exactly those bytes (from a layout)
    EngineLoadPublisher   `docker load` into the local engine (from an archive)

Publishers run in order and hand on what they wrote (``Published``), so a push reuses the layout
``--output DIR`` wrote and a load reuses the archive ``--output FILE.tar`` wrote; otherwise
they write a temporary one under the oci cache. The docker backend needs none of this: the
engine builds the image where it is used, so the engine is its publisher.
"""

from __future__ import annotations

import dataclasses
import platform as _host
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ._oci.layout import write_archive, write_layout
from ._result import Published
from ._runner import Runner, SubprocessRunner

if TYPE_CHECKING:  # pragma: no cover
    from ._backends.oci import OciImage
    from ._oci.registry import RegistryClient

__all__ = [
    "ArchivePublisher", "EngineLoadPublisher", "LayoutPublisher", "Published", "Publisher", "RegistryPublisher",
    "publishers_for",
]

# The architecture a docker-archive's manifest.json names first when the image has several.
HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(_host.machine().lower(), "amd64")


class Publisher(Protocol):
    def publish(self, image: OciImage, so_far: Published) -> Published: ...


def _scratch(image: OciImage) -> tempfile.TemporaryDirectory[str]:
    (image.oci_dir / "tmp").mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=image.oci_dir / "tmp")


@dataclass(frozen=True)
class LayoutPublisher:
    dest: Path | None = None  # None: <oci cache>/images/<tag>

    def publish(self, image: OciImage, so_far: Published) -> Published:
        dest = self.dest or image.oci_dir / "images" / image.tag.replace("/", "_").replace(":", "_")
        return dataclasses.replace(so_far, layout=write_layout(dest, image.images, image.tag))


@dataclass(frozen=True)
class ArchivePublisher:
    dest: Path

    def publish(self, image: OciImage, so_far: Published) -> Published:
        path = write_archive(self.dest, image.images, image.tag, epoch=image.epoch, host_arch=HOST_ARCH)
        return dataclasses.replace(so_far, archive=path)


@dataclass(frozen=True)
class EngineLoadPublisher:
    runner: Runner | None = None

    def publish(self, image: OciImage, so_far: Published) -> Published:
        from ._oci.publish import docker_load

        runner = self.runner or SubprocessRunner()
        if so_far.archive is not None:
            return dataclasses.replace(so_far, loaded=docker_load(so_far.archive, runner))
        with _scratch(image) as tmp:
            archive = write_archive(Path(tmp) / "image.tar", image.images, image.tag, epoch=image.epoch,
                                    host_arch=HOST_ARCH)
            return dataclasses.replace(so_far, loaded=docker_load(archive, runner))


@dataclass(frozen=True)
class RegistryPublisher:
    reference: str
    client: RegistryClient | None = None

    def publish(self, image: OciImage, so_far: Published) -> Published:
        from ._oci.publish import push_layout

        if so_far.layout is not None:
            digest = push_layout(so_far.layout, self.reference, client=self.client)
        else:
            with _scratch(image) as tmp:
                layout = write_layout(Path(tmp) / "layout", image.images, image.tag)
                digest = push_layout(layout, self.reference, client=self.client)
        return dataclasses.replace(so_far, pushed=f"{self.reference}@{digest}")


@dataclass(frozen=True)
class Publishers:
    """Several publishers, run in order."""

    steps: tuple[Publisher, ...]

    def publish(self, image: OciImage, so_far: Published) -> Published:
        for step in self.steps:
            so_far = step.publish(image, so_far)
        return so_far


def publishers_for(
    *,
    output: str | Path | None = None,
    push: str | None = None,
    load: bool = False,
    runner: Runner | None = None,
    registry_client: RegistryClient | None = None,
) -> Publishers:
    """The publishers `mlbuild image --output/--push/--load` ask for; with none of them, a layout
    in the cache (so a build always leaves its image somewhere to be found)."""
    steps: list[Publisher] = []
    if output is not None:
        target = Path(output)
        steps.append(ArchivePublisher(target) if target.suffix == ".tar" else LayoutPublisher(target))
    elif not load and not push:
        steps.append(LayoutPublisher())
    if load:
        steps.append(EngineLoadPublisher(runner))
    if push:
        steps.append(RegistryPublisher(push, registry_client))
    return Publishers(tuple(steps))

